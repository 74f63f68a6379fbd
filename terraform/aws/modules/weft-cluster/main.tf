# A VPC for a weft test cluster: one private subnet per availability zone, each with its own
# route table tagged <route_table_tag_key>=<name> so that weft's aws-vpc backend finds them all
# (route_table_tag discovery); one public subnet holding a NAT gateway for outbound traffic
# (package installs, the weft download, the EC2 API).

data "aws_region" "current" {}

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

data "aws_ami" "debian" {
  count       = var.ami_id == "" ? 1 : 0
  most_recent = true
  owners      = ["136693411437"] # Debian's AWS account

  filter {
    name   = "name"
    values = ["debian-12-amd64-*"]
  }

  filter {
    name   = "architecture"
    values = ["x86_64"]
  }
}

locals {
  azs     = var.availability_zones
  az_keys = { for i, az in local.azs : az => i }
  ami     = var.ami_id != "" ? var.ami_id : data.aws_ami.debian[0].id

  # 10.0.0.0/16 -> private 10.0.0.0/20, 10.0.16.0/20, 10.0.32.0/20; public 10.0.240.0/24.
  private_cidrs = [for i, az in local.azs : cidrsubnet(var.vpc_cidr, 4, i)]
  public_cidr   = cidrsubnet(var.vpc_cidr, 8, 240)

  route_table_tag = "${var.route_table_tag_key}=${var.name}"
  tags            = merge(var.tags, { "weft.io/test-cluster" = var.name })
}

resource "aws_vpc" "this" {
  #checkov:skip=CKV2_AWS_11:test cluster; flow logs (CloudWatch or S3, with retention and KMS) cost more than the cluster's traffic is worth here. Enable them for production VPCs.
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true

  tags = merge(local.tags, { Name = var.name })
}

# Nothing may use the default security group.
resource "aws_default_security_group" "this" {
  vpc_id = aws_vpc.this.id

  tags = merge(local.tags, { Name = "${var.name}-default-unused" })
}

resource "aws_internet_gateway" "this" {
  vpc_id = aws_vpc.this.id

  tags = merge(local.tags, { Name = var.name })
}

resource "aws_subnet" "public" {
  vpc_id                  = aws_vpc.this.id
  cidr_block              = local.public_cidr
  availability_zone       = local.azs[0]
  map_public_ip_on_launch = false

  tags = merge(local.tags, { Name = "${var.name}-public" })
}

# The public route table is not tagged for weft: pod traffic never leaves through the NAT.
resource "aws_route_table" "public" {
  vpc_id = aws_vpc.this.id

  tags = merge(local.tags, { Name = "${var.name}-public" })
}

resource "aws_route" "public_internet" {
  route_table_id         = aws_route_table.public.id
  destination_cidr_block = "0.0.0.0/0"
  gateway_id             = aws_internet_gateway.this.id
}

resource "aws_route_table_association" "public" {
  subnet_id      = aws_subnet.public.id
  route_table_id = aws_route_table.public.id
}

resource "aws_eip" "nat" {
  domain = "vpc"

  tags = merge(local.tags, { Name = "${var.name}-nat" })
}

resource "aws_nat_gateway" "this" {
  allocation_id = aws_eip.nat.id
  subnet_id     = aws_subnet.public.id

  tags = merge(local.tags, { Name = var.name })

  depends_on = [aws_internet_gateway.this]
}

resource "aws_subnet" "private" {
  for_each = local.az_keys

  vpc_id                  = aws_vpc.this.id
  cidr_block              = local.private_cidrs[each.value]
  availability_zone       = each.key
  map_public_ip_on_launch = false

  tags = merge(local.tags, { Name = "${var.name}-private-${each.key}" })
}

# One route table per availability zone, tagged for weft's discovery. weft adds one route per
# node (node's pod subnet -> node's ENI) to every one of them.
resource "aws_route_table" "private" {
  for_each = local.az_keys

  vpc_id = aws_vpc.this.id

  tags = merge(local.tags, {
    Name                      = "${var.name}-private-${each.key}"
    (var.route_table_tag_key) = var.name
  })

  # weft owns the pod-subnet routes in these tables: terraform must not remove them.
  lifecycle {
    ignore_changes = [route]
  }
}

resource "aws_route" "private_nat" {
  for_each = local.az_keys

  route_table_id         = aws_route_table.private[each.key].id
  destination_cidr_block = "0.0.0.0/0"
  nat_gateway_id         = aws_nat_gateway.this.id
}

resource "aws_route_table_association" "private" {
  for_each = local.az_keys

  subnet_id      = aws_subnet.private[each.key].id
  route_table_id = aws_route_table.private[each.key].id
}
