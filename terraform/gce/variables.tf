variable "project" {
  description = "GCP project (Compute Engine API enabled)."
  type        = string
}

variable "region" {
  description = "Region of the test cluster."
  type        = string
  default     = "us-central1"
}

variable "zones" {
  description = "Zones of var.region the instances are spread over."
  type        = list(string)
  default     = ["us-central1-a", "us-central1-b", "us-central1-c"]
}

variable "name" {
  description = "Cluster name (resource prefix)."
  type        = string
  default     = "weft-test"
}

variable "weft_release_url" {
  description = "URL of the weft linux-amd64 binary the nodes install."
  type        = string
}

variable "weft_release_sha256" {
  description = "SHA-256 of that binary; empty skips the check."
  type        = string
  default     = ""
}

variable "node_count" {
  description = "Number of weft nodes."
  type        = number
  default     = 3
}

variable "etcd_count" {
  description = "etcd members: 1 or 3."
  type        = number
  default     = 1
}
