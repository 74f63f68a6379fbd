//! Leases of ours beside the one we hold. A create whose answer was lost (etcd lost its leader,
//! the connection broke) may still land after we gave up on it and took another subnet: by
//! flannel's rule a lease with our public IP is ours, so the orphan would stay until its TTL ran
//! out (a day by default), keeping a subnet from every other host. The agent deletes it.

use crate::lease::{Expiry, LeaseAttrs, LeaseKey};
use crate::store::{LeaseUpdate, RawLease, Revision};

/// The leases in `update` that carry our public address (see [`LeaseAttrs::is_same_host`]) but
/// are not our own lease, each with the revision it was seen at (deleted only if unchanged
/// since). Reservations (no TTL) are an operator's and stay; a lease that does not parse is
/// nobody's to judge.
pub(super) fn orphans(update: &LeaseUpdate, own: LeaseKey, ours: &LeaseAttrs) -> Vec<(LeaseKey, Revision)> {
    let entries: &[RawLease] = match update {
        LeaseUpdate::Put(raw) => std::slice::from_ref(raw),
        LeaseUpdate::Resync(entries, _) => entries,
        LeaseUpdate::Deleted { .. } => &[],
    };
    entries
        .iter()
        .filter(|raw| raw.expiry != Expiry::Never)
        .filter_map(|raw| Some((raw.parse().ok()?, raw.mod_revision)))
        .filter(|(lease, _)| lease.attrs.is_same_host(ours) && lease.key() != own)
        .map(|(lease, revision)| (lease.key(), revision))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const US: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

    fn us() -> LeaseAttrs {
        LeaseAttrs::new(US, "vxlan", serde_json::json!({"VNI": 1}))
    }

    fn raw(key: &str, ip: Ipv4Addr, expiry: Expiry, revision: Revision) -> RawLease {
        let attrs = LeaseAttrs::new(ip, "vxlan", serde_json::json!({"VNI": 1}));
        RawLease { key: key.into(), value: attrs.to_json().into_bytes(), expiry, mod_revision: revision }
    }

    fn own() -> LeaseKey {
        key("10.244.1.0-24")
    }

    fn key(text: &str) -> LeaseKey {
        crate::lease::parse_lease_key(text).unwrap()
    }

    #[test]
    fn a_second_lease_with_our_address_is_an_orphan() {
        let update = LeaseUpdate::Put(raw("10.244.7.0-24", US, Expiry::Unknown, 42));
        assert_eq!(orphans(&update, own(), &us()), [(key("10.244.7.0-24"), 42)]);
    }

    #[test]
    fn our_own_lease_others_reservations_and_garbage_are_not() {
        let garbage =
            RawLease { key: "10.244.9.0-24".into(), value: b"{".to_vec(), expiry: Expiry::Unknown, mod_revision: 3 };
        let entries = vec![
            raw("10.244.1.0-24", US, Expiry::Unknown, 1),
            raw("10.244.2.0-24", Ipv4Addr::new(192, 0, 2, 2), Expiry::Unknown, 2),
            raw("10.244.3.0-24", US, Expiry::Never, 3),
            garbage,
            raw("10.244.4.0-24", US, Expiry::Unknown, 5),
            // Our own subnet under another key (before IPv6 was turned on): an orphan too.
            raw("10.244.1.0-24&2001:db8:42:1::-64", US, Expiry::Unknown, 4),
        ];
        let update = LeaseUpdate::Resync(entries, 5);
        assert_eq!(
            orphans(&update, own(), &us()),
            [(key("10.244.4.0-24"), 5), (key("10.244.1.0-24&2001:db8:42:1::-64"), 4)]
        );
        let deleted = LeaseUpdate::Deleted { key: "10.244.4.0-24".into(), revision: 6 };
        assert!(orphans(&deleted, own(), &us()).is_empty());
    }

    /// IPv6-only hosts all publish 0.0.0.0: only our IPv6 address makes a lease ours.
    #[test]
    fn ipv6_only_leases_of_other_hosts_are_not_orphans() {
        let v6_host = |last: u16| {
            let ip = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last);
            LeaseAttrs::new(Ipv4Addr::UNSPECIFIED, "vxlan", serde_json::Value::Null)
                .with_v6(ip, serde_json::Value::Null)
        };
        let at = |key: &str, attrs: LeaseAttrs, revision| RawLease {
            key: key.into(),
            value: attrs.to_json().into_bytes(),
            expiry: Expiry::Unknown,
            mod_revision: revision,
        };
        let entries = vec![
            at("0.0.0.0-0&2001:db8:42:1::-64", v6_host(1), 1),
            at("0.0.0.0-0&2001:db8:42:2::-64", v6_host(2), 2),
            at("0.0.0.0-0&2001:db8:42:3::-64", v6_host(1), 3),
        ];
        let own = key("0.0.0.0-0&2001:db8:42:1::-64");
        let update = LeaseUpdate::Resync(entries, 3);
        assert_eq!(orphans(&update, own, &v6_host(1)), [(key("0.0.0.0-0&2001:db8:42:3::-64"), 3)]);
    }
}
