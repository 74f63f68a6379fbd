# etcd (1 or 3 members) and the weft nodes, spread over the availability zones.

locals {
  # etcd members get fixed addresses (the 10th host of their zone's subnet), so the nodes'
  # weft.toml and etcd's initial cluster are known before anything boots.
  etcd_members = [
    for i in range(var.etcd_count) : {
      name = "${var.name}-etcd-${i}"
      az   = local.azs[i % length(local.azs)]
      ip   = cidrhost(local.private_cidrs[i % length(local.azs)], 10)
    }
  ]
  etcd_initial_cluster = join(",", [for m in local.etcd_members : "${m.name}=http://${m.ip}:2380"])
  etcd_endpoints       = [for m in local.etcd_members : "http://${m.ip}:2379"]

  node_azs = [for i in range(var.node_count) : local.azs[i % length(local.azs)]]

  # The unit shipped in this repository; the nodes install it as /etc/systemd/system/weft.service.
  systemd_unit = file("${path.module}/../../../../config/systemd/weft.service")
}

resource "aws_instance" "etcd" {
  #checkov:skip=CKV_AWS_126:detailed (1-minute) monitoring costs about $2 per instance-month; basic 5-minute metrics are enough for a test cluster, and weft exports its own /metrics.
  count = var.etcd_count

  ami                    = local.ami
  instance_type          = var.etcd_instance_type
  subnet_id              = aws_subnet.private[local.etcd_members[count.index].az].id
  private_ip             = local.etcd_members[count.index].ip
  vpc_security_group_ids = [aws_security_group.cluster.id]
  iam_instance_profile   = var.enable_ssm ? aws_iam_instance_profile.etcd[0].name : null
  ebs_optimized          = true
  monitoring             = false

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    volume_type = "gp3"
    volume_size = 8
    encrypted   = true
  }

  user_data_replace_on_change = true
  user_data = templatefile("${path.module}/templates/etcd-user-data.sh.tpl", {
    etcd_name            = local.etcd_members[count.index].name
    etcd_ip              = local.etcd_members[count.index].ip
    etcd_initial_cluster = local.etcd_initial_cluster
    cluster_name         = var.name
  })

  tags = merge(local.tags, { Name = local.etcd_members[count.index].name, Role = "etcd" })
}

resource "aws_instance" "node" {
  #checkov:skip=CKV_AWS_126:detailed (1-minute) monitoring costs about $2 per instance-month; basic 5-minute metrics are enough for a test cluster, and weft exports its own /metrics.
  count = var.node_count

  ami                    = local.ami
  instance_type          = var.node_instance_type
  subnet_id              = aws_subnet.private[local.node_azs[count.index]].id
  vpc_security_group_ids = [aws_security_group.cluster.id]
  iam_instance_profile   = aws_iam_instance_profile.node.name
  ebs_optimized          = true
  monitoring             = false

  # Pod traffic leaves and enters the node with pod addresses, not the node's own.
  source_dest_check = false

  # IMDSv2 only; weft reads the instance id, region and MAC from it on the host (hop limit 1).
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    volume_type = "gp3"
    volume_size = 8
    encrypted   = true
  }

  user_data_replace_on_change = true
  user_data = templatefile("${path.module}/templates/node-user-data.sh.tpl", {
    cluster_name        = var.name
    weft_release_url    = var.weft_release_url
    weft_release_sha256 = var.weft_release_sha256
    etcd_endpoints      = jsonencode(local.etcd_endpoints)
    pod_cidr            = var.pod_cidr
    pod_subnet_len      = var.pod_subnet_len
    route_table_tag     = local.route_table_tag
    region              = data.aws_region.current.name
    systemd_unit        = local.systemd_unit
  })

  tags = merge(local.tags, { Name = "${var.name}-node-${count.index}", Role = "weft-node" })

  depends_on = [aws_instance.etcd, aws_route_table_association.private, aws_route.private_nat]
}
