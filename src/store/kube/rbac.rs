//! Every Kubernetes API call the kube store makes, as the RBAC rules that allow it. The
//! manifest (`config/kubernetes/weft.yaml`) grants exactly these: the test below compares its
//! ClusterRole and Role with them, and `tests/kube.rs` checks that the store's requests to a test
//! API server need nothing more and use all of it.

/// Verbs on one resource of one API group (`""`: the core group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiAccess {
    pub group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
}

/// Cluster-wide, the ClusterRole `weft`: every node read and watched (they are the leases); our
/// own node's annotations written through the status subresource, as flannel writes them
/// (`KubeStore::write_own`, `delete_lease`). Never `nodes: patch`.
pub const NODE_ACCESS: &[ApiAccess] = &[
    ApiAccess { group: "", resource: "nodes", verbs: &["get", "list", "watch"] },
    ApiAccess { group: "", resource: "nodes/status", verbs: &["patch"] },
];

/// In the agent's namespace, the Role `weft-leader`: the coordination Lease of `lead()` (read,
/// made once, then replaced on the resourceVersion read).
pub const LEADER_ACCESS: &[ApiAccess] =
    &[ApiAccess { group: "coordination.k8s.io", resource: "leases", verbs: &["get", "create", "update"] }];

/// `(group, resource, verb)` for each verb of `rules`, sorted.
pub fn triples(rules: &[ApiAccess]) -> std::collections::BTreeSet<(String, String, String)> {
    rules
        .iter()
        .flat_map(|r| r.verbs.iter().map(move |v| (r.group.to_string(), r.resource.to_string(), v.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde::Deserialize;
    use serde_json::Value;

    use super::*;

    const MANIFEST: &str = include_str!("../../../config/kubernetes/weft.yaml");

    /// The rules of the manifest's `kind` named `name`, as triples.
    fn granted(documents: &[Value], kind: &str, name: &str) -> BTreeSet<(String, String, String)> {
        let role = documents
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("weft.yaml has no {kind} {name}"));
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .unwrap_or_else(|| panic!("{kind} {name}: not a list: {v}"))
                .iter()
                .map(|s| s.as_str().expect("a string").to_string())
                .collect()
        };
        let mut out = BTreeSet::new();
        for rule in role["rules"].as_array().expect("rules") {
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    for verb in strings(&rule["verbs"]) {
                        out.insert((group.clone(), resource.clone(), verb));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn the_manifest_grants_exactly_what_the_store_calls() {
        let documents: Vec<Value> = serde_yaml::Deserializer::from_str(MANIFEST)
            .map(|doc| Value::deserialize(doc).expect("weft.yaml is YAML"))
            .filter(|doc| !doc.is_null())
            .collect();
        assert_eq!(granted(&documents, "ClusterRole", "weft"), triples(NODE_ACCESS));
        assert_eq!(granted(&documents, "Role", "weft-leader"), triples(LEADER_ACCESS));
        let roles: Vec<&Value> =
            documents.iter().filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role").collect();
        assert_eq!(roles.len(), 2, "no other role: {roles:?}");
    }
}
