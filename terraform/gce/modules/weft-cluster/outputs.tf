output "network" {
  description = "The cluster's VPC network (weft's network key)."
  value       = google_compute_network.this.name
}

output "subnetwork" {
  description = "The cluster's subnetwork."
  value       = google_compute_subnetwork.this.name
}

output "node_service_account" {
  description = "Service account of the weft nodes."
  value       = google_service_account.node.email
}

output "node_role" {
  description = "The custom role granted to the nodes."
  value       = google_project_iam_custom_role.weft.id
}

output "node_names" {
  description = "weft node instances."
  value       = google_compute_instance.node[*].name
}

output "node_internal_ips" {
  description = "weft node addresses."
  value       = google_compute_instance.node[*].network_interface[0].network_ip
}

output "etcd_endpoints" {
  description = "etcd client URLs, as in the nodes' weft.toml."
  value       = local.etcd_endpoints
}
