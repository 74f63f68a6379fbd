output "vpc_id" {
  description = "The cluster's VPC."
  value       = aws_vpc.this.id
}

output "private_subnet_ids" {
  description = "Private subnet per availability zone."
  value       = { for az, s in aws_subnet.private : az => s.id }
}

output "private_route_table_ids" {
  description = "The route tables weft writes to, per availability zone (tagged for discovery)."
  value       = { for az, rt in aws_route_table.private : az => rt.id }
}

output "route_table_tag" {
  description = "weft's route_table_tag (key=value) for this cluster."
  value       = local.route_table_tag
}

output "security_group_id" {
  description = "Security group of every cluster member."
  value       = aws_security_group.cluster.id
}

output "node_role_arn" {
  description = "IAM role of the weft nodes."
  value       = aws_iam_role.node.arn
}

output "node_instance_ids" {
  description = "weft node instances."
  value       = aws_instance.node[*].id
}

output "node_private_ips" {
  description = "weft node addresses (their public_ip in weft's terms)."
  value       = aws_instance.node[*].private_ip
}

output "etcd_endpoints" {
  description = "etcd client URLs, as in the nodes' weft.toml."
  value       = local.etcd_endpoints
}
