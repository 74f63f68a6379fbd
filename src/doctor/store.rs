//! The store, reached with the configured credentials: etcd (a real get of the network config
//! key), kube (the API answers), local (the state file is readable). Pure judge.

use crate::config::{StoreKind, StoreSection};

use super::Check;

pub const NAME: &str = "store";

/// What asking the store gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreProbe {
    /// Opening it or the request failed.
    Unreachable(String),
    /// It answered, but holds no network config (etcd, local).
    NoConfig,
    /// The network config it holds is not one weft can run.
    BadConfig(String),
    /// It answered with a usable network config: `network` says what (CIDR and backend).
    Ok { network: String },
}

/// Where this store is, for the detail line.
fn location(section: &StoreSection) -> String {
    match section.kind {
        StoreKind::Etcd => format!("etcd {} (key {}/config)", section.endpoints.join(","), section.prefix),
        StoreKind::Local => format!("local store {}", section.path.display()),
        StoreKind::Kube => "the Kubernetes API".to_string(),
    }
}

pub fn judge(section: &StoreSection, probe: &StoreProbe) -> Check {
    let at = location(section);
    match probe {
        StoreProbe::Ok { network } => Check::pass(NAME, format!("{at} answered: {network}")),
        StoreProbe::Unreachable(e) => {
            let fix = match section.kind {
                StoreKind::Etcd => format!(
                    "check store.endpoints (now {:?}) and, for TLS or auth, store.ca_file, store.cert_file, \
                     store.key_file, store.username, store.password: `etcdctl --endpoints={} get {}/config` must \
                     answer from this host",
                    section.endpoints,
                    section.endpoints.join(","),
                    section.prefix
                ),
                StoreKind::Local => {
                    format!(
                        "check store.path (now {}): its state.json must be readable by root",
                        section.path.display()
                    )
                }
                StoreKind::Kube => {
                    "check store.kubeconfig (empty: the in-cluster service account) and store.node_name \
                                    (or NODE_NAME): `kubectl get node <name>` must work with those credentials"
                        .to_string()
                }
            };
            Check::fail(NAME, format!("{at}: {e}"), fix)
        }
        StoreProbe::NoConfig => Check::fail(
            NAME,
            format!("{at} answered, but holds no network config: agents wait for one"),
            "publish weft.toml's [network]: weft network apply",
        ),
        StoreProbe::BadConfig(e) => Check::fail(
            NAME,
            format!("{at} holds a network config weft cannot use: {e}"),
            "fix [network] in weft.toml and publish it again: weft network apply",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_answer_and_its_fix() {
        let etcd = StoreSection { endpoints: vec!["http://192.0.2.1:2379".into()], ..StoreSection::default() };
        let ok = judge(&etcd, &StoreProbe::Ok { network: "10.244.0.0/16, backend vxlan".into() });
        assert!(ok.ok);
        assert_eq!(
            ok.detail,
            "etcd http://192.0.2.1:2379 (key /coreos.com/network/config) answered: 10.244.0.0/16, backend vxlan"
        );
        let down = judge(&etcd, &StoreProbe::Unreachable("connection refused".into()));
        assert!(!down.ok && down.detail.ends_with("connection refused"));
        assert!(down.fix.unwrap().contains("store.endpoints (now [\"http://192.0.2.1:2379\"])"));
        let empty = judge(&etcd, &StoreProbe::NoConfig);
        assert_eq!(empty.fix.as_deref(), Some("publish weft.toml's [network]: weft network apply"));
        assert!(!judge(&etcd, &StoreProbe::BadConfig("bad CIDR".into())).ok);
        let local = StoreSection { kind: StoreKind::Local, path: "/nowhere".into(), ..StoreSection::default() };
        let down = judge(&local, &StoreProbe::Unreachable("no such directory".into()));
        assert!(down.fix.unwrap().contains("store.path (now /nowhere)"));
        let kube = StoreSection { kind: StoreKind::Kube, ..StoreSection::default() };
        assert!(judge(&kube, &StoreProbe::Unreachable("401".into())).fix.unwrap().contains("store.kubeconfig"));
    }
}
