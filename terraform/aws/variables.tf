variable "region" {
  description = "AWS region of the test cluster."
  type        = string
  default     = "us-east-1"
}

variable "availability_zones" {
  description = "Three availability zones of var.region (change them with the region)."
  type        = list(string)
  default     = ["us-east-1a", "us-east-1b", "us-east-1c"]
}

variable "name" {
  description = "Cluster name (resource prefix and route table tag value)."
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
  description = "Number of weft nodes (spread over three availability zones)."
  type        = number
  default     = 3
}

variable "etcd_count" {
  description = "etcd members: 1 or 3."
  type        = number
  default     = 1
}

variable "enable_ssm" {
  description = "Allow `aws ssm start-session` to the instances."
  type        = bool
  default     = false
}
