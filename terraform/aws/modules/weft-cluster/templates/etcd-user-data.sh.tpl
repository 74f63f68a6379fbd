#!/bin/bash
# cloud-init user-data of an etcd member of the weft cluster ${cluster_name} (Debian's etcd-server).
# Plain interpolations only, no template directives.
set -euo pipefail
exec > >(tee -a /var/log/etcd-user-data.log) 2>&1

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Configure before the package's service first starts, so it never forms a one-member cluster.
install -d -m 0755 /etc/default
cat > /etc/default/etcd <<'ETCD_ENV'
ETCD_NAME="${etcd_name}"
ETCD_DATA_DIR="/var/lib/etcd/default"
ETCD_LISTEN_PEER_URLS="http://${etcd_ip}:2380"
ETCD_LISTEN_CLIENT_URLS="http://${etcd_ip}:2379,http://127.0.0.1:2379"
ETCD_INITIAL_ADVERTISE_PEER_URLS="http://${etcd_ip}:2380"
ETCD_ADVERTISE_CLIENT_URLS="http://${etcd_ip}:2379"
ETCD_INITIAL_CLUSTER="${etcd_initial_cluster}"
ETCD_INITIAL_CLUSTER_STATE="new"
ETCD_INITIAL_CLUSTER_TOKEN="${cluster_name}"
ETCD_ENV
apt-get install -y -qq -o Dpkg::Options::=--force-confold etcd-server >/dev/null
systemctl enable etcd.service
systemctl restart etcd.service
