variable "name" {
  description = "Cluster name: prefixes every resource and is the value of the route table tag weft discovers."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.name))
    error_message = "name: 2-31 characters, lower-case letters, digits and dashes, starting with a letter."
  }
}

variable "vpc_cidr" {
  description = "CIDR of the VPC. Must not overlap pod_cidr."
  type        = string
  default     = "10.0.0.0/16"
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

variable "availability_zones" {
  description = "Availability zones (names) of the private subnets, one subnet and one route table each. Named explicitly so the set never changes when AWS adds a zone."
  type        = list(string)

  validation {
    condition     = length(var.availability_zones) >= 1 && length(var.availability_zones) <= 16
    error_message = "availability_zones: 1 to 16 zones (the VPC is cut into 16 private /20s)."
  }
}

variable "route_table_tag_key" {
  description = "Tag key put on every private route table (value: var.name); weft's route_table_tag is <key>=<name>."
  type        = string
  default     = "weft.io/cluster"
}

variable "node_count" {
  description = "Number of weft nodes, spread over the availability zones."
  type        = number
  default     = 3

  validation {
    condition     = var.node_count >= 1 && var.node_count <= 45
    error_message = "node_count: 1 to 45 (a route table holds 50 routes by default)."
  }
}

variable "node_instance_type" {
  description = "Instance type of the weft nodes."
  type        = string
  default     = "t3.small"
}

variable "etcd_count" {
  description = "etcd members: 1 (one small instance) or 3 (a set across three zones)."
  type        = number
  default     = 1

  validation {
    condition     = contains([1, 3], var.etcd_count)
    error_message = "etcd_count: 1 or 3."
  }
}

variable "etcd_instance_type" {
  description = "Instance type of the etcd members."
  type        = string
  default     = "t3.micro"
}

variable "ami_id" {
  description = "AMI for every instance. Empty: the latest Debian 12 (amd64) published by Debian."
  type        = string
  default     = ""
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

variable "enable_ssm" {
  description = "Attach AmazonSSMManagedInstanceCore to the node role so `aws ssm start-session` reaches the nodes (no SSH, no public IP)."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
