//! `weft network import`: kube-flannel's ConfigMap (as in kube-flannel.yml) or flannel's config
//! in a real etcd, printed as a `[network]` table that weft then takes as its own config.

mod common;

use std::process::Command;

use common::etcd::EtcdServer;
use common::weft::{Setup, WEFT};

/// The ConfigMap as kube-flannel.yml ships it, among the manifest's other documents.
const KUBE_FLANNEL_YML: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: kube-flannel
---
kind: ConfigMap
apiVersion: v1
metadata:
  name: kube-flannel-cfg
  namespace: kube-flannel
data:
  cni-conf.json: |
    {"name": "cbr0", "cniVersion": "0.3.1", "plugins": [{"type": "flannel"}]}
  net-conf.json: |
    {
      "Network": "10.42.0.0/16",
      "EnableNFTables": false,
      "Backend": {
        "Type": "vxlan",
        "VNI": 7
      }
    }
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: kube-flannel-ds
"#;

fn import(args: &[&str]) -> std::process::Output {
    Command::new(WEFT).args(["network", "import"]).args(args).output().expect("run weft")
}

#[test]
fn kube_flannel_yml_becomes_a_network_table_weft_accepts() {
    let setup = Setup::new("");
    let manifest = setup.path("kube-flannel.yml");
    std::fs::write(&manifest, KUBE_FLANNEL_YML).unwrap();
    // No weft.toml needed: importing is how the first one is written.
    let out = import(&[manifest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("Not carried over (weft does not use them): EnableNFTables."), "{table}");
    // The table as weft's config, with a store: `config check` takes it, and the network is
    // flannel's.
    let store = setup.path("store");
    std::fs::write(&setup.config, format!("[store]\nkind = \"local\"\npath = \"{}\"\n\n{table}", store.display()))
        .unwrap();
    let checked: serde_json::Value =
        serde_json::from_str(&setup.ok(&["config", "check", "-o", "json"])).expect("config check's JSON");
    let value =
        |key: &str| checked["values"].as_array().unwrap().iter().find(|v| v["key"] == key).unwrap()["value"].clone();
    assert_eq!(value("network.cidr"), "10.42.0.0/16", "{checked}");
    assert_eq!(value("network.backend.vni"), 7, "{checked}");
    setup.ok(&["network", "apply"]);
    let shown: serde_json::Value = serde_json::from_str(&setup.ok(&["network", "show", "-o", "json"])).unwrap();
    let backend = &shown["config"]["Backend"];
    assert_eq!((&backend["Type"], &backend["VNI"]), (&serde_json::json!("vxlan"), &serde_json::json!(7)), "{shown}");
}

#[test]
fn from_flannel_reads_flannels_config_in_etcd() {
    let etcd = EtcdServer::start();
    let flannel = r#"{"Network":"10.50.0.0/16","SubnetLen":26,"Backend":{"Type":"host-gw"}}"#;
    etcd.etcdctl(&["put", "/coreos.com/network/config", flannel]);
    let setup = Setup::new(&format!("[store]\nkind = \"etcd\"\nendpoints = [\"{}\"]\n", etcd.endpoint));
    let table = setup.ok(&["network", "import", "--from-flannel"]);
    assert!(table.contains("cidr = \"10.50.0.0/16\"") && table.contains("subnet_len = 26"), "{table}");
    assert!(table.contains("type = \"host-gw\""), "{table}");
}

#[test]
fn input_that_holds_no_network_config_is_refused_naming_it() {
    let setup = Setup::new("");
    let file = setup.path("secret.yaml");
    std::fs::write(&file, "kind: Secret\ndata:\n  token: aGk=\n").unwrap();
    let out = import(&[file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("secret.yaml: no flannel network config found"), "{stderr}");
    let out = import(&[setup.path("missing.json").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.json"));
}
