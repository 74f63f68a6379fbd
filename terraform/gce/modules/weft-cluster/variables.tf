variable "project" {
  description = "GCP project of the cluster (the Compute Engine API must be enabled)."
  type        = string
}

variable "name" {
  description = "Cluster name: prefixes every resource; also the network tag of the members."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}$", var.name))
    error_message = "name: 2-21 characters, lower-case letters, digits and dashes, starting with a letter."
  }
}

variable "region" {
  description = "Region of the subnetwork."
  type        = string
}

variable "zones" {
  description = "Zones of var.region the members are spread over."
  type        = list(string)

  validation {
    condition     = length(var.zones) >= 1
    error_message = "zones: at least one."
  }
}

variable "subnet_cidr" {
  description = "CIDR of the subnetwork. Must not overlap pod_cidr."
  type        = string
  default     = "10.10.0.0/20"
}

variable "pod_cidr" {
  description = "weft's cluster network (network.cidr): every node leases one subnet of it."
  type        = string
  default     = "10.244.0.0/16"
}

variable "pod_subnet_len" {
  description = "Length of each node's subnet (network.subnet_len)."
  type        = number
  default     = 24
}

variable "node_count" {
  description = "Number of weft nodes."
  type        = number
  default     = 3
}

variable "node_machine_type" {
  description = "Machine type of the weft nodes."
  type        = string
  default     = "e2-small"
}

variable "etcd_count" {
  description = "etcd members: 1 or 3."
  type        = number
  default     = 1

  validation {
    condition     = contains([1, 3], var.etcd_count)
    error_message = "etcd_count: 1 or 3."
  }
}

variable "etcd_machine_type" {
  description = "Machine type of the etcd members."
  type        = string
  default     = "e2-micro"
}

variable "image" {
  description = "Boot image of every instance."
  type        = string
  default     = "debian-cloud/debian-12"
}

variable "weft_release_url" {
  description = "URL of the weft binary (linux amd64) the nodes download and install as /usr/local/bin/weft."
  type        = string
}

variable "weft_release_sha256" {
  description = "SHA-256 of the file at weft_release_url. Empty: not checked (test clusters only)."
  type        = string
  default     = ""
}

variable "iap_ssh" {
  description = "Allow SSH from Identity-Aware Proxy (`gcloud compute ssh --tunnel-through-iap`) to the members."
  type        = bool
  default     = true
}

variable "labels" {
  description = "Labels for the instances."
  type        = map(string)
  default     = {}
}
