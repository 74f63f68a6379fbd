# Example root: a weft test cluster on the gce backend, spread over three zones.
#
#   terraform init
#   terraform apply -var project=my-project -var weft_release_url=https://example.com/weft-linux-amd64
#
# See README.md for the cost and for checking the routes weft writes.

provider "google" {
  project = var.project
  region  = var.region
}

module "weft_cluster" {
  source = "./modules/weft-cluster"

  project             = var.project
  name                = var.name
  region              = var.region
  zones               = var.zones
  weft_release_url    = var.weft_release_url
  weft_release_sha256 = var.weft_release_sha256
  node_count          = var.node_count
  etcd_count          = var.etcd_count

  # The defaults, spelled out: subnetwork and pod network must not overlap.
  subnet_cidr       = "10.10.0.0/20"
  pod_cidr          = "10.244.0.0/16"
  pod_subnet_len    = 24
  node_machine_type = "e2-small"
  etcd_machine_type = "e2-micro"
}
