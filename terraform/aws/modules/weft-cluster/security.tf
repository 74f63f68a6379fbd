# One security group for every cluster member (nodes and etcd): all traffic among members and
# from the pod network (with aws-vpc, pod addresses reach nodes unencapsulated); outbound only to
# members, the pod network and the internet on HTTP(S) (packages, the weft download, AWS APIs).
# No inbound rule from outside the VPC: reach nodes with SSM (var.enable_ssm) if needed.

resource "aws_security_group" "cluster" {
  name        = "${var.name}-cluster"
  description = "weft cluster ${var.name}: nodes and etcd"
  vpc_id      = aws_vpc.this.id

  tags = merge(local.tags, { Name = "${var.name}-cluster" })
}

resource "aws_vpc_security_group_ingress_rule" "members" {
  security_group_id            = aws_security_group.cluster.id
  description                  = "All traffic between cluster members (etcd, vxlan fallback, pod traffic)"
  referenced_security_group_id = aws_security_group.cluster.id
  ip_protocol                  = "-1"
}

resource "aws_vpc_security_group_ingress_rule" "pods" {
  security_group_id = aws_security_group.cluster.id
  description       = "Pod network: aws-vpc routes deliver pod addresses unencapsulated"
  cidr_ipv4         = var.pod_cidr
  ip_protocol       = "-1"
}

resource "aws_vpc_security_group_egress_rule" "members" {
  security_group_id            = aws_security_group.cluster.id
  description                  = "All traffic to cluster members"
  referenced_security_group_id = aws_security_group.cluster.id
  ip_protocol                  = "-1"
}

resource "aws_vpc_security_group_egress_rule" "pods" {
  security_group_id = aws_security_group.cluster.id
  description       = "All traffic to the pod network"
  cidr_ipv4         = var.pod_cidr
  ip_protocol       = "-1"
}

resource "aws_vpc_security_group_egress_rule" "vpc_dns" {
  security_group_id = aws_security_group.cluster.id
  description       = "DNS to the VPC resolver"
  cidr_ipv4         = var.vpc_cidr
  ip_protocol       = "udp"
  from_port         = 53
  to_port           = 53
}

resource "aws_vpc_security_group_egress_rule" "https" {
  security_group_id = aws_security_group.cluster.id
  description       = "HTTPS: EC2 API, weft release download, packages"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "http" {
  security_group_id = aws_security_group.cluster.id
  description       = "HTTP: Debian package mirrors (signed packages)"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
}
