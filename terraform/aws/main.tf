# Example root: a three-AZ weft test cluster on the aws-vpc backend.
#
#   terraform init
#   terraform apply -var weft_release_url=https://example.com/weft-linux-amd64
#
# See README.md for the cost and for checking the routes weft writes.

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      Project   = "weft"
      ManagedBy = "terraform"
    }
  }
}

module "weft_cluster" {
  source = "./modules/weft-cluster"

  name                = var.name
  availability_zones  = var.availability_zones
  weft_release_url    = var.weft_release_url
  weft_release_sha256 = var.weft_release_sha256
  node_count          = var.node_count
  etcd_count          = var.etcd_count
  enable_ssm          = var.enable_ssm

  # The defaults, spelled out: VPC and pod network must not overlap.
  vpc_cidr           = "10.0.0.0/16"
  pod_cidr           = "10.244.0.0/16"
  pod_subnet_len     = 24
  node_instance_type = "t3.small"
  etcd_instance_type = "t3.micro"
}
