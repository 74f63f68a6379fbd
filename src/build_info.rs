//! What this binary is: its version, the git revision it was built from and the optional parts
//! (cargo features) compiled in — for `weft version`, `weft_build_info` and `config check`, which
//! refuses a backend or store this build lacks.

use std::fmt;

use serde::Serialize;

use crate::config::StoreKind;
use crate::network::backend::BackendKind;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// `git rev-parse --short HEAD` at build time; "unknown" when built without git (a tarball).
pub const REVISION: &str = env!("WEFT_GIT_REVISION");

/// An optional part of weft, a cargo feature of the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Feature {
    /// The aws-vpc backend.
    Aws,
    /// The gce backend.
    Gce,
    /// `store.kind = "kube"`.
    Kube,
}

impl Feature {
    pub const ALL: [Feature; 3] = [Feature::Aws, Feature::Gce, Feature::Kube];

    pub fn name(self) -> &'static str {
        match self {
            Feature::Aws => "aws",
            Feature::Gce => "gce",
            Feature::Kube => "kube",
        }
    }

    /// Whether this binary was built with it.
    pub fn compiled(self) -> bool {
        match self {
            Feature::Aws => cfg!(feature = "aws"),
            Feature::Gce => cfg!(feature = "gce"),
            Feature::Kube => cfg!(feature = "kube"),
        }
    }
}

/// The features this binary was built with, in [`Feature::ALL`]'s order.
pub fn features() -> Vec<Feature> {
    Feature::ALL.into_iter().filter(|f| f.compiled()).collect()
}

/// The features as one label value: `aws,gce,kube` ("" when none).
pub fn features_label(features: &[Feature]) -> String {
    features.iter().map(|f| f.name()).collect::<Vec<_>>().join(",")
}

/// The feature a backend needs, if it is an optional one.
pub fn backend_feature(kind: BackendKind) -> Option<Feature> {
    match kind {
        BackendKind::AwsVpc => Some(Feature::Aws),
        BackendKind::Gce => Some(Feature::Gce),
        BackendKind::Vxlan | BackendKind::HostGw | BackendKind::Alloc => None,
    }
}

/// The feature a store needs, if it is an optional one.
pub fn store_feature(kind: StoreKind) -> Option<Feature> {
    match kind {
        StoreKind::Kube => Some(Feature::Kube),
        StoreKind::Etcd | StoreKind::Local => None,
    }
}

/// A part of the configuration this binary cannot run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotCompiled {
    /// `backend aws-vpc`, `store kube`.
    pub what: String,
    pub feature: Feature,
}

impl fmt::Display for NotCompiled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} needs the `{}` feature; this weft was built without it (rebuild with `--features {}`)",
            self.what,
            self.feature.name(),
            self.feature.name()
        )
    }
}

/// What of `backend` and `store` a binary built with `compiled` lacks (backend first).
pub fn missing_features(backend: BackendKind, store: StoreKind, compiled: &[Feature]) -> Vec<NotCompiled> {
    let store_name = match store {
        StoreKind::Etcd => "etcd",
        StoreKind::Kube => "kube",
        StoreKind::Local => "local",
    };
    [
        (backend_feature(backend), format!("backend {}", backend.as_str())),
        (store_feature(store), format!("store {store_name}")),
    ]
    .into_iter()
    .filter_map(|(feature, what)| {
        feature.filter(|f| !compiled.contains(f)).map(|feature| NotCompiled { what, feature })
    })
    .collect()
}

/// `weft version`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildInfo {
    pub version: &'static str,
    pub revision: &'static str,
    pub features: Vec<Feature>,
}

impl BuildInfo {
    pub fn current() -> Self {
        BuildInfo { version: VERSION, revision: REVISION, features: features() }
    }

    /// `weft 0.1.0 (rev 1a2b3c4) features: aws, gce, kube`.
    pub fn render(&self) -> String {
        let features = if self.features.is_empty() {
            "none".to_string()
        } else {
            self.features.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
        };
        format!("weft {} (rev {}) features: {features}\n", self.version, self.revision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORES: [StoreKind; 3] = [StoreKind::Etcd, StoreKind::Kube, StoreKind::Local];

    /// Every subset of the optional features.
    fn builds() -> Vec<Vec<Feature>> {
        (0..8u8)
            .map(|bits| {
                Feature::ALL.into_iter().enumerate().filter(|(i, _)| bits & (1 << i) != 0).map(|(_, f)| f).collect()
            })
            .collect()
    }

    #[test]
    fn every_backend_and_store_against_every_build() {
        for compiled in builds() {
            for backend in BackendKind::ALL {
                for store in STORES {
                    let missing = missing_features(backend, store, &compiled);
                    let mut want = Vec::new();
                    let backend_needs = match backend {
                        BackendKind::AwsVpc => Some(Feature::Aws),
                        BackendKind::Gce => Some(Feature::Gce),
                        _ => None,
                    };
                    if let Some(f) = backend_needs.filter(|f| !compiled.contains(f)) {
                        want.push(f);
                    }
                    if store == StoreKind::Kube && !compiled.contains(&Feature::Kube) {
                        want.push(Feature::Kube);
                    }
                    let got: Vec<Feature> = missing.iter().map(|m| m.feature).collect();
                    assert_eq!(got, want, "{backend:?} {store:?} built with {compiled:?}");
                }
            }
        }
    }

    #[test]
    fn refusal_names_the_part_and_the_feature() {
        let missing = missing_features(BackendKind::AwsVpc, StoreKind::Kube, &[Feature::Gce]);
        let text: Vec<String> = missing.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 2);
        assert!(
            text[0].starts_with("backend aws-vpc needs the `aws` feature; this weft was built without it"),
            "{}",
            text[0]
        );
        assert!(text[1].starts_with("store kube needs the `kube` feature"), "{}", text[1]);
        let gce = missing_features(BackendKind::Gce, StoreKind::Etcd, &[]);
        assert!(gce[0].to_string().starts_with("backend gce needs the `gce` feature"), "{}", gce[0]);
    }

    #[test]
    fn version_line_and_label() {
        let info = BuildInfo { version: "1.2.3", revision: "abc1234", features: vec![Feature::Aws, Feature::Kube] };
        assert_eq!(info.render(), "weft 1.2.3 (rev abc1234) features: aws, kube\n");
        assert_eq!(features_label(&info.features), "aws,kube");
        let bare = BuildInfo { features: vec![], ..info };
        assert!(bare.render().ends_with("features: none\n"));
        assert_eq!(features_label(&[]), "");
        assert!(!REVISION.is_empty());
    }
}
