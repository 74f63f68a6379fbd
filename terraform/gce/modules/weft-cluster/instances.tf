# etcd (1 or 3 members) and the weft nodes, spread over the zones.

locals {
  # etcd members get fixed addresses (hosts 10, 11, 12 of the subnetwork), so the nodes'
  # weft.toml and etcd's initial cluster are known before anything boots.
  etcd_members = [
    for i in range(var.etcd_count) : {
      name = "${var.name}-etcd-${i}"
      zone = var.zones[i % length(var.zones)]
      ip   = cidrhost(var.subnet_cidr, 10 + i)
    }
  ]
  etcd_initial_cluster = join(",", [for m in local.etcd_members : "${m.name}=http://${m.ip}:2380"])
  etcd_endpoints       = [for m in local.etcd_members : "http://${m.ip}:2379"]

  # The unit shipped in this repository; the nodes install it as /etc/systemd/system/weft.service.
  systemd_unit = file("${path.module}/../../../../config/systemd/weft.service")

  # Hardened instance metadata, for every member.
  metadata = {
    block-project-ssh-keys = "true"
    enable-oslogin         = "TRUE"
    serial-port-enable     = "false"
  }
}

resource "google_compute_instance" "etcd" {
  #checkov:skip=CKV_GCP_38:boot disks are encrypted at rest by Google-managed keys; customer-supplied keys would have to be handled by whoever runs terraform, which a throwaway test cluster does not need.
  count = var.etcd_count

  project      = var.project
  name         = local.etcd_members[count.index].name
  zone         = local.etcd_members[count.index].zone
  machine_type = var.etcd_machine_type
  tags         = [local.tag]
  labels       = merge(local.labels, { role = "etcd" })

  boot_disk {
    initialize_params {
      image = var.image
      size  = 10
      type  = "pd-balanced"
    }
  }

  network_interface {
    subnetwork = google_compute_subnetwork.this.id
    network_ip = local.etcd_members[count.index].ip
  }

  service_account {
    email  = google_service_account.etcd.email
    scopes = ["cloud-platform"]
  }

  shielded_instance_config {
    enable_secure_boot          = true
    enable_vtpm                 = true
    enable_integrity_monitoring = true
  }

  metadata = local.metadata
  metadata_startup_script = templatefile("${path.module}/templates/etcd-startup.sh.tpl", {
    etcd_name            = local.etcd_members[count.index].name
    etcd_ip              = local.etcd_members[count.index].ip
    etcd_initial_cluster = local.etcd_initial_cluster
    cluster_name         = var.name
  })

  depends_on = [google_compute_router_nat.this]
}

resource "google_compute_instance" "node" {
  #checkov:skip=CKV_GCP_36:the gce backend routes each node's pod subnet to the node itself (nextHopInstance); without IP forwarding GCE drops that traffic.
  #checkov:skip=CKV_GCP_38:boot disks are encrypted at rest by Google-managed keys; customer-supplied keys would have to be handled by whoever runs terraform, which a throwaway test cluster does not need.
  count = var.node_count

  project      = var.project
  name         = "${var.name}-node-${count.index}"
  zone         = var.zones[count.index % length(var.zones)]
  machine_type = var.node_machine_type
  tags         = [local.tag]
  labels       = merge(local.labels, { role = "weft-node" })

  # Packets for the node's pod subnet arrive with pod addresses, and pods send with them.
  can_ip_forward = true

  boot_disk {
    initialize_params {
      image = var.image
      size  = 10
      type  = "pd-balanced"
    }
  }

  network_interface {
    subnetwork = google_compute_subnetwork.this.id
  }

  # IAM (the custom role) limits what the account may do; the scope only has to let it through.
  service_account {
    email  = google_service_account.node.email
    scopes = ["cloud-platform"]
  }

  shielded_instance_config {
    enable_secure_boot          = true
    enable_vtpm                 = true
    enable_integrity_monitoring = true
  }

  metadata = local.metadata
  metadata_startup_script = templatefile("${path.module}/templates/node-startup.sh.tpl", {
    cluster_name        = var.name
    weft_release_url    = var.weft_release_url
    weft_release_sha256 = var.weft_release_sha256
    etcd_endpoints      = jsonencode(local.etcd_endpoints)
    pod_cidr            = var.pod_cidr
    pod_subnet_len      = var.pod_subnet_len
    project             = var.project
    network             = google_compute_network.this.name
    systemd_unit        = local.systemd_unit
  })

  depends_on = [google_compute_instance.etcd, google_project_iam_member.node_weft, google_compute_router_nat.this]
}
