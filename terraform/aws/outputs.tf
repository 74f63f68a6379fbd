output "vpc_id" {
  description = "The cluster's VPC."
  value       = module.weft_cluster.vpc_id
}

output "private_route_table_ids" {
  description = "Route tables weft writes to, per availability zone."
  value       = module.weft_cluster.private_route_table_ids
}

output "route_table_tag" {
  description = "weft's route_table_tag for this cluster."
  value       = module.weft_cluster.route_table_tag
}

output "node_instance_ids" {
  description = "weft node instances."
  value       = module.weft_cluster.node_instance_ids
}

output "node_private_ips" {
  description = "weft node addresses."
  value       = module.weft_cluster.node_private_ips
}

output "etcd_endpoints" {
  description = "etcd client URLs."
  value       = module.weft_cluster.etcd_endpoints
}
