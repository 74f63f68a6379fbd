//! `weft lab`: a small cluster of hosts built from network namespaces on one machine, and the
//! pieces the multi-host integration tests share with it.
//!
//! - [`topology`]: names and addresses (pure);
//! - [`wire`]: namespaces, bridge and veth pairs in the kernel (rtnetlink);
//! - [`pods`]: a bridge and a pod namespace behind each host;
//! - [`agents`]: starting and stopping `weft agent` processes inside host namespaces;
//! - [`probe`]: pod-to-pod ping and `/readyz` from inside a namespace;
//! - [`state`]: the lab's files under `/run/weft-lab` and the configs the agents read;
//! - [`report`]: the tables `weft lab` prints (pure).

pub mod agents;
pub mod pods;
pub mod probe;
pub mod report;
pub mod state;
pub mod topology;
pub mod wire;

pub use topology::{Node, PodAddrs, Topology, LAB_PREFIX};

/// What went wrong while building, probing or removing a lab; always says what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl LabError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
        let what = what.into();
        move |source| LabError::Io { what, source }
    }

    pub fn netlink(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> LabError {
        let what = what.into();
        move |source| LabError::Netlink { what, source }
    }
}

/// Namespaces and bridges need CAP_SYS_ADMIN and CAP_NET_ADMIN; say so before trying.
pub fn require_root(what: &str) -> Result<(), LabError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(LabError::Invalid(format!(
            "{what} needs root: it creates network namespaces, bridges and veth pairs \
             (try: sudo {what})"
        )))
    }
}
