# The node role: exactly what weft's aws-vpc backend calls, and writes only where IAM can scope
# them.
#   ec2:DescribeInstances, DescribeRouteTables, DescribeNetworkInterfaces
#       read-only; EC2 Describe* actions support no resource-level scoping, so Resource = "*".
#   ec2:CreateRoute, ReplaceRoute, DeleteRoute
#       only on route tables of this account and region carrying the cluster tag
#       (ec2:ResourceTag/<route_table_tag_key> = <name>), which are exactly the tables weft
#       discovers. The public table (NAT) is untagged, so weft cannot touch it.
#   ec2:ModifyNetworkInterfaceAttribute
#       weft turns source/dest check off on its ENI (terraform already does, so this is a
#       safety net); limited to network interfaces in this VPC (ec2:Vpc condition).

data "aws_iam_policy_document" "assume_ec2" {
  statement {
    sid     = "EC2AssumeRole"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

locals {
  arn_prefix = "arn:${data.aws_partition.current.partition}:ec2:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}"
}

data "aws_iam_policy_document" "weft" {
  statement {
    sid    = "Discover"
    effect = "Allow"
    actions = [
      "ec2:DescribeInstances",
      "ec2:DescribeNetworkInterfaces",
      "ec2:DescribeRouteTables",
    ]
    resources = ["*"]
  }

  statement {
    sid    = "RoutesInTaggedTables"
    effect = "Allow"
    actions = [
      "ec2:CreateRoute",
      "ec2:DeleteRoute",
      "ec2:ReplaceRoute",
    ]
    resources = ["${local.arn_prefix}:route-table/*"]

    condition {
      test     = "StringEquals"
      variable = "ec2:ResourceTag/${var.route_table_tag_key}"
      values   = [var.name]
    }
  }

  statement {
    sid       = "SourceDestCheck"
    effect    = "Allow"
    actions   = ["ec2:ModifyNetworkInterfaceAttribute"]
    resources = ["${local.arn_prefix}:network-interface/*"]

    condition {
      test     = "ArnEquals"
      variable = "ec2:Vpc"
      values   = ["${local.arn_prefix}:vpc/${aws_vpc.this.id}"]
    }
  }
}

resource "aws_iam_role" "node" {
  name               = "${var.name}-weft-node"
  description        = "weft nodes of ${var.name}: routes in the cluster's tagged route tables"
  assume_role_policy = data.aws_iam_policy_document.assume_ec2.json

  tags = local.tags
}

resource "aws_iam_role_policy" "weft" {
  name   = "weft-aws-vpc"
  role   = aws_iam_role.node.id
  policy = data.aws_iam_policy_document.weft.json
}

resource "aws_iam_role_policy_attachment" "ssm" {
  count = var.enable_ssm ? 1 : 0

  role       = aws_iam_role.node.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "node" {
  name = "${var.name}-weft-node"
  role = aws_iam_role.node.name

  tags = local.tags
}

# etcd members call no AWS API: a role only when SSM is wanted.
resource "aws_iam_role" "etcd" {
  count = var.enable_ssm ? 1 : 0

  name               = "${var.name}-etcd"
  description        = "etcd members of ${var.name}: SSM access only"
  assume_role_policy = data.aws_iam_policy_document.assume_ec2.json

  tags = local.tags
}

resource "aws_iam_role_policy_attachment" "etcd_ssm" {
  count = var.enable_ssm ? 1 : 0

  role       = aws_iam_role.etcd[0].name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "etcd" {
  count = var.enable_ssm ? 1 : 0

  name = "${var.name}-etcd"
  role = aws_iam_role.etcd[0].name

  tags = local.tags
}
