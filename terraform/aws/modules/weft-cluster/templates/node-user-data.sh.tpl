#!/bin/bash
# cloud-init user-data of a weft node (aws-vpc backend), rendered by terraform's templatefile().
# Only plain interpolations are used here, no template directives: tests/deploy.rs renders this
# file with test values and runs `weft config check` on the weft.toml it writes.
set -euo pipefail
exec > >(tee -a /var/log/weft-user-data.log) 2>&1

# Forwarding on before weft starts (the agent also turns it on, but the unit may forbid it).
cat > /etc/sysctl.d/90-weft.conf <<'WEFT_SYSCTL'
net.ipv4.ip_forward = 1
WEFT_SYSCTL
sysctl --system >/dev/null

# weft itself.
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq curl ca-certificates >/dev/null
curl --fail --silent --show-error --location --retry 5 -o /tmp/weft '${weft_release_url}'
WEFT_SHA256='${weft_release_sha256}'
if [ -n "$WEFT_SHA256" ]; then
  echo "$WEFT_SHA256  /tmp/weft" | sha256sum --check --strict
fi
install -m 0755 /tmp/weft /usr/local/bin/weft
rm -f /tmp/weft

# Its configuration: aws-vpc, every route table tagged for this cluster, the cluster's etcd.
install -d -m 0755 /etc/weft
cat > /etc/weft/weft.toml <<'WEFT_TOML'
# Written by cloud-init for the weft cluster ${cluster_name}.
[agent]
listen = "127.0.0.1:9810"

[store]
kind = "etcd"
endpoints = ${etcd_endpoints}

[network]
cidr = "${pod_cidr}"
subnet_len = ${pod_subnet_len}

[network.backend]
type = "aws-vpc"
route_table_tag = "${route_table_tag}"
region = "${region}"
WEFT_TOML
chmod 0644 /etc/weft/weft.toml
weft config check --config /etc/weft/weft.toml >/dev/null

# The systemd unit from config/systemd/weft.service.
cat > /etc/systemd/system/weft.service <<'WEFT_UNIT'
${systemd_unit}
WEFT_UNIT

# Publish the network config (the same on every node, so whichever node comes first wins and
# the others change nothing). etcd may still be booting: retry for up to ten minutes.
for attempt in $(seq 1 120); do
  if weft network apply --config /etc/weft/weft.toml; then
    break
  fi
  echo "weft network apply failed (attempt $attempt), retrying in 5s"
  sleep 5
done

systemctl daemon-reload
systemctl enable --now weft.service
