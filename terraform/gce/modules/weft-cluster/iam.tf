# The node service account and a custom role with only what weft's gce backend calls:
#   compute.routes.create / delete       insert and delete its own routes
#   compute.routes.get / list            read them back, find stale and flannel-named ones
#   compute.globalOperations.get         wait for each insert/delete to finish
#   compute.instances.get                its own instance (selfLink, network interface)
#   compute.networks.get                 the instance's network (selfLink for the route)
#   compute.networks.updatePolicy        routes.insert/delete also check this on the route's network
#   compute.instances.use                routes.insert checks it on the nextHopInstance
# Granted at project level: Compute Engine routes are project-global resources and custom roles
# cannot be bound to a single network.

resource "google_service_account" "node" {
  project      = var.project
  account_id   = "${var.name}-node"
  display_name = "weft node (${var.name})"
  description  = "weft agents of ${var.name}: GCE routes with the node as next hop"
}

resource "google_project_iam_custom_role" "weft" {
  project     = var.project
  role_id     = "weftNode_${replace(var.name, "-", "_")}"
  title       = "weft node (${var.name})"
  description = "What weft's gce backend needs: its routes, its instance and network, global operations"
  permissions = [
    "compute.globalOperations.get",
    "compute.instances.get",
    "compute.instances.use",
    "compute.networks.get",
    "compute.networks.updatePolicy",
    "compute.projects.get",
    "compute.routes.create",
    "compute.routes.delete",
    "compute.routes.get",
    "compute.routes.list",
  ]
}

resource "google_project_iam_member" "node_weft" {
  project = var.project
  role    = google_project_iam_custom_role.weft.id
  member  = "serviceAccount:${google_service_account.node.email}"
}

# etcd members call no Google API: a service account with no role (never the default one).
resource "google_service_account" "etcd" {
  project      = var.project
  account_id   = "${var.name}-etcd"
  display_name = "etcd (${var.name})"
  description  = "etcd members of ${var.name}: no permissions"
}
