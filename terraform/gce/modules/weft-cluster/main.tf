# A VPC network for a weft test cluster on the gce backend: one subnetwork, firewall rules for
# the members and the pod network, Cloud NAT for outbound traffic (no external addresses).

locals {
  tag    = "${var.name}-member"
  labels = merge(var.labels, { "weft-test-cluster" = var.name })
}

resource "google_compute_network" "this" {
  project                 = var.project
  name                    = var.name
  auto_create_subnetworks = false
  routing_mode            = "REGIONAL"
}

resource "google_compute_subnetwork" "this" {
  project                  = var.project
  name                     = "${var.name}-${var.region}"
  region                   = var.region
  network                  = google_compute_network.this.id
  ip_cidr_range            = var.subnet_cidr
  private_ip_google_access = true

  log_config {
    aggregation_interval = "INTERVAL_10_MIN"
    flow_sampling        = 0.1
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

# Members talk to each other freely (etcd, vxlan fallback); pod addresses arrive unencapsulated
# through weft's routes, so the pod network is a source too.
resource "google_compute_firewall" "internal" {
  project     = var.project
  name        = "${var.name}-internal"
  network     = google_compute_network.this.name
  description = "weft cluster ${var.name}: members and the pod network"
  direction   = "INGRESS"

  source_ranges = [var.subnet_cidr, var.pod_cidr]
  target_tags   = [local.tag]

  allow {
    protocol = "all"
  }
}

resource "google_compute_firewall" "iap_ssh" {
  count = var.iap_ssh ? 1 : 0

  project     = var.project
  name        = "${var.name}-iap-ssh"
  network     = google_compute_network.this.name
  description = "SSH through Identity-Aware Proxy only"
  direction   = "INGRESS"

  source_ranges = ["35.235.240.0/20"]
  target_tags   = [local.tag]

  allow {
    protocol = "tcp"
    ports    = ["22"]
  }
}

resource "google_compute_router" "this" {
  project = var.project
  name    = var.name
  region  = var.region
  network = google_compute_network.this.id
}

resource "google_compute_router_nat" "this" {
  project                            = var.project
  name                               = var.name
  router                             = google_compute_router.this.name
  region                             = var.region
  nat_ip_allocate_option             = "AUTO_ONLY"
  source_subnetwork_ip_ranges_to_nat = "ALL_SUBNETWORKS_ALL_IP_RANGES"

  log_config {
    enable = true
    filter = "ERRORS_ONLY"
  }
}
