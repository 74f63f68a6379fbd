output "network" {
  description = "The cluster's VPC network."
  value       = module.weft_cluster.network
}

output "node_names" {
  description = "weft node instances."
  value       = module.weft_cluster.node_names
}

output "node_internal_ips" {
  description = "weft node addresses."
  value       = module.weft_cluster.node_internal_ips
}

output "node_service_account" {
  description = "Service account of the weft nodes."
  value       = module.weft_cluster.node_service_account
}

output "etcd_endpoints" {
  description = "etcd client URLs."
  value       = module.weft_cluster.etcd_endpoints
}
