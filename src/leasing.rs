//! Getting and keeping this host's lease: take back the subnet we held, else a random free one,
//! with a create-if-absent write so two hosts never hold one subnet; renew before it runs out.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rand::Rng;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::lease::{self, Expiry, Lease, LeaseAttrs, LeaseKey};
use crate::network::{Network, SubnetSpace};
use crate::store::{LeaseListing, LeaseStore, LeaseWrite, RawLease, Revision, StoreError, WriteOutcome};

/// How often to retry when another host wins the race for the subnet we picked.
const CONFLICT_RETRIES: usize = 16;
/// Random picks before falling back to listing every free subnet.
const RANDOM_TRIES: usize = 32;
/// Past this many subnets, a space is not listed subnet by subnet: random picks find a free one
/// (an IPv6 network holds far more subnets than a cluster has hosts).
const MOST_LISTED: u64 = 1 << 20;

/// The lease this host holds and the revision of our last write to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnLease {
    pub lease: Lease,
    pub revision: Revision,
    /// When the lease runs out by this host's monotonic clock, fixed when it was written (`None`:
    /// a reservation). Renewal is timed by it, not by the wall clock: a clock stepped back by an
    /// hour must not let the lease lapse, one stepped forward must not renew it at once.
    pub runs_out: Option<Instant>,
}

impl OwnLease {
    /// The IPv4 subnet, unless the network is IPv6-only.
    pub fn subnet(&self) -> Option<Ipv4Net> {
        self.lease.subnet
    }

    /// The subnet that names the lease ([`LeaseKey::id`]).
    pub fn id(&self) -> IpNet {
        self.lease.id()
    }

    /// The IPv6 subnet of a dual-stack or IPv6-only lease.
    pub fn subnet_v6(&self) -> Option<Ipv6Net> {
        self.lease.subnet_v6
    }

    /// Both subnets, which make the lease's key.
    pub fn key(&self) -> LeaseKey {
        self.lease.key()
    }

    /// Whether the lease has run out by our clock (the store may have given the subnet away).
    pub fn has_run_out(&self) -> bool {
        self.runs_out.is_some_and(|at| at <= Instant::now())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("network {network} is full: all {count} subnets between SubnetMin and SubnetMax are leased or reserved")]
    NetworkFull { network: IpNet, count: u64 },
    #[error("lost the race for a subnet {0} times in a row; will retry")]
    Contended(usize),
    #[error("our lease on {0} was taken or removed")]
    Lost(LeaseKey),
    #[error("the subnet {subnet} assigned to this host is not inside the network {network}")]
    OutsideNetwork { subnet: IpNet, network: IpNet },
    #[error(
        "the network has IPv6 but this host was assigned no IPv6 subnet (a node needs an IPv6 entry in spec.podCIDRs)"
    )]
    NoIpv6Subnet,
    #[error(
        "the network has IPv4 but this host was assigned no IPv4 subnet (a node needs an IPv4 entry in spec.podCIDRs)"
    )]
    NoIpv4Subnet,
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct LeaseRequest<'a> {
    pub network: &'a Network,
    pub attrs: &'a LeaseAttrs,
    pub ttl: Duration,
    /// The subnet written to subnet.env by a previous run.
    pub previous: Option<Ipv4Net>,
    /// The IPv6 subnet written there, in a dual-stack or IPv6-only network.
    pub previous_v6: Option<Ipv6Net>,
    /// The lease this process held until a moment ago, and the revision of its last write: after
    /// a reload changed our public IP, it is rewritten with the new one if nobody wrote it since,
    /// rather than left behind for its TTL while we take another subnet.
    pub handover: Option<(LeaseKey, Revision)>,
}

impl<'a> LeaseRequest<'a> {
    /// A request with nothing of a previous run.
    pub fn new(network: &'a Network, attrs: &'a LeaseAttrs, ttl: Duration) -> Self {
        LeaseRequest { network, attrs, ttl, previous: None, previous_v6: None, handover: None }
    }

    /// Whether `lease` has the subnets this network hands out: one of each family the network
    /// has, inside it.
    fn fits(&self, lease: &Lease) -> bool {
        self.network.fits(&lease.key())
    }

    /// The previous run's subnet of the family that names leases (IPv6 in an IPv6-only network).
    fn previous_id(&self) -> Option<IpNet> {
        match self.network.ipv4 {
            Some(_) => self.previous.map(IpNet::V4),
            None => self.previous_v6.map(IpNet::V6),
        }
    }

    /// Whether `lease` was written by this host: by either public address (see
    /// [`LeaseAttrs::is_same_host`]; every IPv6-only host publishes 0.0.0.0, as flannel does).
    fn is_ours(&self, lease: &Lease) -> bool {
        lease.attrs.is_same_host(self.attrs)
    }
}

/// Acquires a lease for this host.
pub async fn acquire(store: &dyn LeaseStore, request: &LeaseRequest<'_>) -> Result<OwnLease, LeaseError> {
    acquire_listed(store, request).await.map(|(own, _)| own)
}

/// [`acquire`], also returning the listing of every lease it chose from (taken before our own
/// write), so the caller can hand the other hosts to its backend without listing them again; a
/// watch from the listing's revision delivers everything after it, our own write included.
/// `None` when the store assigned our subnet and nothing was listed.
pub async fn acquire_listed(
    store: &dyn LeaseStore,
    request: &LeaseRequest<'_>,
) -> Result<(OwnLease, Option<LeaseListing>), LeaseError> {
    if let Some(key) = store.assigned_subnet().await? {
        return Ok((acquire_assigned(store, request, key).await?, None));
    }
    let mut prefer = request.previous_id();
    for _ in 0..CONFLICT_RETRIES {
        let listing = store.list_leases().await?;
        let leases = readable(&listing.leases, request.attrs);
        if let Some((existing, revision)) = ours(&leases, request).or_else(|| handed_over(&listing.leases, request)) {
            // A reservation for us stays a reservation: it never expires.
            let ttl = if existing.is_reservation() { None } else { Some(request.ttl) };
            let json = request.attrs.to_json();
            match store.update_lease(LeaseWrite::new(existing.key(), &json, ttl), revision).await? {
                WriteOutcome::Written { revision, expiry } => {
                    info!(subnet = %existing.key(), "took back our previous lease");
                    return Ok((own(existing.key(), request.attrs, expiry, revision), Some(listing)));
                }
                WriteOutcome::Conflict => continue,
            }
        }
        if let Some(outgrown) = outgrown(&leases, request) {
            // Our lease from before IPv6 was turned on (or off): its key cannot name the new
            // pair of subnets, so it goes, and its IPv4 subnet is the first choice of the new one.
            // (Created first, the new key would hold the IPv4 subnet twice for a moment.)
            if store.delete_lease(outgrown.key()).await? {
                info!(subnet = %outgrown.key(), "released our lease of the network's old shape");
            }
            let naming = request.network.lease_space();
            prefer = prefer.or(outgrown.key().subnets().find(|s| naming.contains_subnet(s)));
            continue;
        }
        let taken = Taken::from_keys(&listing.leases);
        let key = choose_key(request, &taken, prefer)?;
        let json = request.attrs.to_json();
        match store.create_lease(LeaseWrite::new(key, &json, Some(request.ttl))).await? {
            WriteOutcome::Written { revision, expiry } => {
                info!(subnet = %key, "acquired a new lease");
                return Ok((own(key, request.attrs, expiry, revision), Some(listing)));
            }
            WriteOutcome::Conflict => continue,
        }
    }
    Err(LeaseError::Contended(CONFLICT_RETRIES))
}

/// Every subnet some key holds, of either family.
struct Taken {
    v4: HashSet<IpNet>,
    v6: HashSet<IpNet>,
}

impl Taken {
    fn from_keys(leases: &[RawLease]) -> Taken {
        let mut taken = Taken { v4: HashSet::new(), v6: HashSet::new() };
        for key in leases.iter().filter_map(|raw| lease::parse_lease_key(&raw.key).ok()) {
            taken.v4.extend(key.subnet.map(IpNet::from));
            taken.v6.extend(key.subnet_v6.map(IpNet::from));
        }
        taken
    }

    /// The taken subnets of `space`'s family.
    fn of(&self, space: &SubnetSpace) -> &HashSet<IpNet> {
        match space.network {
            IpNet::V4(_) => &self.v4,
            IpNet::V6(_) => &self.v6,
        }
    }
}

/// The subnets of a new lease: the previous run's subnet when it is free, else a random free
/// one, of the family that names leases; in a dual-stack network the IPv6 subnet that goes with
/// the IPv4 one ([`ipv6_for`]).
fn choose_key(request: &LeaseRequest<'_>, taken: &Taken, previous: Option<IpNet>) -> Result<LeaseKey, LeaseError> {
    let space = request.network.lease_space();
    let id = match previous.filter(|p| space.in_allocation_range(p) && !taken.of(space).contains(p)) {
        Some(previous) => previous,
        None => choose_free(space, taken.of(space), &mut rand::rng())
            .ok_or(LeaseError::NetworkFull { network: space.network, count: space.subnet_count() })?,
    };
    let subnet = match id {
        IpNet::V4(subnet) => subnet,
        IpNet::V6(v6) => return Ok(LeaseKey::ipv6_only(v6)),
    };
    let Some(space) = &request.network.ipv6 else {
        return Ok(LeaseKey::from(subnet));
    };
    // Our own previous pair is kept whole.
    let ours = request.previous_v6.filter(|_| previous == Some(id));
    let subnet_v6 = ipv6_for(request.network, subnet, &taken.v6, ours)
        .ok_or(LeaseError::NetworkFull { network: space.network, count: space.subnet_count() })?;
    Ok(LeaseKey { subnet: Some(subnet), subnet_v6: Some(subnet_v6) })
}

/// The IPv6 subnet that goes with a new lease of `subnet` in a dual-stack network: `preferred`
/// when free, else the one in `subnet`'s place (its position in the IPv6 range), else any free
/// one. Pairing by position means two agents racing for subnets can only collide on their IPv4
/// subnet, which the store's create refuses to give twice. `None`: IPv4 only, or no IPv6 subnet
/// is free.
pub fn ipv6_for(
    network: &Network,
    subnet: Ipv4Net,
    taken: &HashSet<IpNet>,
    preferred: Option<Ipv6Net>,
) -> Option<Ipv6Net> {
    let space = network.ipv6.as_ref()?;
    let paired = network.ipv4.as_ref()?.position(&subnet.into()).map(|i| space.nth_subnet(i));
    let mut candidates = [preferred.map(IpNet::from), paired].into_iter().flatten();
    let chosen = match candidates.find(|c| space.in_allocation_range(c) && !taken.contains(c)) {
        Some(free) => free,
        None => choose_free(space, taken, &mut rand::rng())?,
    };
    match chosen {
        IpNet::V6(net) => Some(net),
        IpNet::V4(_) => None,
    }
}

/// Takes the subnet the store assigned to this host (Kubernetes: the node's podCIDR): nothing to
/// choose, only our attributes to write.
async fn acquire_assigned(
    store: &dyn LeaseStore,
    request: &LeaseRequest<'_>,
    assigned: LeaseKey,
) -> Result<OwnLease, LeaseError> {
    let network = request.network;
    let key = LeaseKey {
        subnet: held(network.ipv4.as_ref(), assigned.subnet, LeaseError::NoIpv4Subnet)?,
        subnet_v6: held(network.ipv6.as_ref(), assigned.subnet_v6, LeaseError::NoIpv6Subnet)?,
    };
    let json = request.attrs.to_json();
    match store.create_lease(LeaseWrite::new(key, &json, None)).await? {
        WriteOutcome::Written { revision, expiry } => {
            info!(subnet = %key, "holding the subnet assigned to this host");
            Ok(own(key, request.attrs, expiry, revision))
        }
        // The assignment changed between reading and writing it.
        WriteOutcome::Conflict => Err(LeaseError::Contended(1)),
    }
}

/// The assigned subnet of one family: held when the network has the family (it must then be
/// assigned, inside the family's network), not used when the network lacks it.
fn held<N: Into<IpNet> + Copy>(
    space: Option<&SubnetSpace>,
    subnet: Option<N>,
    missing: LeaseError,
) -> Result<Option<N>, LeaseError> {
    match (space, subnet) {
        (None, _) => Ok(None),
        (Some(_), None) => Err(missing),
        (Some(space), Some(subnet)) if !space.contains_subnet(&subnet.into()) => {
            Err(LeaseError::OutsideNetwork { subnet: subnet.into(), network: space.network })
        }
        (Some(_), subnet) => Ok(subnet),
    }
}

/// Rewrites our lease with a fresh TTL (and the current attributes).
pub async fn renew(
    store: &dyn LeaseStore,
    current: &OwnLease,
    attrs: &LeaseAttrs,
    ttl: Duration,
) -> Result<OwnLease, LeaseError> {
    let ttl = if current.lease.is_reservation() { None } else { Some(ttl) };
    let json = attrs.to_json();
    match store.update_lease(LeaseWrite::new(current.key(), &json, ttl), current.revision).await? {
        WriteOutcome::Written { revision, expiry } => Ok(own(current.key(), attrs, expiry, revision)),
        WriteOutcome::Conflict => Err(LeaseError::Lost(current.key())),
    }
}

/// How long until our lease should be renewed, `margin` before it runs out; zero when it is
/// already due, `None` for a reservation.
pub fn renew_in(own: &OwnLease, margin: Duration) -> Option<Duration> {
    let left = own.runs_out?.saturating_duration_since(Instant::now());
    Some(left.saturating_sub(margin))
}

fn own(key: LeaseKey, attrs: &LeaseAttrs, expiry: Expiry, revision: Revision) -> OwnLease {
    let now = Instant::now();
    let runs_out = match expiry {
        Expiry::Never => None,
        // Not said until when: renew at once, which tells us.
        Expiry::Unknown => Some(now),
        Expiry::At(when) => Some(now + when.duration_since(SystemTime::now()).unwrap_or_default()),
    };
    let lease = Lease { subnet: key.subnet, subnet_v6: key.subnet_v6, attrs: attrs.clone(), expiry };
    OwnLease { lease, revision, runs_out }
}

/// The leases with our public addresses (and the unreadable ones, to warn about), parsed. The
/// others are only skimmed for their addresses: parsing every lease in full (its BackendData as
/// a JSON tree) is a good part of an agent's start in a 10,000-host cluster.
fn readable(raw: &[RawLease], attrs: &LeaseAttrs) -> Vec<(Lease, Revision)> {
    #[derive(serde::Deserialize)]
    struct Skim {
        #[serde(rename = "PublicIP")]
        public_ip: std::net::Ipv4Addr,
        #[serde(rename = "PublicIPv6", default)]
        public_ipv6: Option<std::net::Ipv6Addr>,
    }
    raw.iter()
        .filter(|r| {
            serde_json::from_slice::<Skim>(&r.value)
                .map_or(true, |skim| LeaseAttrs::same_host(skim.public_ip, skim.public_ipv6, attrs))
        })
        .filter_map(|r| match r.parse() {
            Ok(lease) => Some((lease, r.mod_revision)),
            Err(e) => {
                warn!(key = %r.key, error = %e, "skipping malformed lease");
                None
            }
        })
        .collect()
}

/// The lease already held by our public IP, preferring the subnet we last wrote to subnet.env.
fn ours(leases: &[(Lease, Revision)], request: &LeaseRequest<'_>) -> Option<(Lease, Revision)> {
    let mine = leases.iter().filter(|(l, _)| request.is_ours(l) && request.fits(l));
    let mut candidates: Vec<_> = mine.cloned().collect();
    let previous = request.previous_id();
    candidates.sort_by_key(|(l, _)| Some(l.id()) != previous);
    candidates.into_iter().next()
}

/// A lease of ours with a subnet of the network whose other side is not as the network wants it:
/// taken before a family was turned on, or off.
fn outgrown(leases: &[(Lease, Revision)], request: &LeaseRequest<'_>) -> Option<Lease> {
    leases
        .iter()
        .map(|(l, _)| l)
        .find(|l| {
            request.is_ours(l)
                && l.key().subnets().any(|s| request.network.is_lease_sized(&s))
                && !request.fits(l)
                && !l.is_reservation()
        })
        .cloned()
}

/// The lease handed over from before a reload, if it is still as we last wrote it.
fn handed_over(raw: &[RawLease], request: &LeaseRequest<'_>) -> Option<(Lease, Revision)> {
    let (key, revision) = request.handover?;
    let key = lease::subnet_key(key);
    let entry = raw.iter().find(|r| r.key == key && r.mod_revision == revision)?;
    let lease = entry.parse().ok()?;
    request.fits(&lease).then_some((lease, revision))
}

/// A random subnet of `space`'s allocation range that no key holds.
fn choose_free(space: &SubnetSpace, taken: &HashSet<IpNet>, rng: &mut impl Rng) -> Option<IpNet> {
    let count = space.subnet_count();
    for _ in 0..RANDOM_TRIES {
        let candidate = space.nth_subnet(rng.random_range(0..count));
        if !taken.contains(&candidate) {
            return Some(candidate);
        }
    }
    if count > MOST_LISTED {
        // 32 random picks all taken in a space this large: the odds say it is crowded, not full.
        return (0..RANDOM_TRIES * 32)
            .map(|_| space.nth_subnet(rng.random_range(0..count)))
            .find(|s| !taken.contains(s));
    }
    // Mostly full: pick among what is left.
    let free: Vec<IpNet> = (0..count).map(|i| space.nth_subnet(i)).filter(|s| !taken.contains(s)).collect();
    if free.is_empty() {
        None
    } else {
        Some(free[rng.random_range(0..free.len())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::NetworkSection;
    use rand::SeedableRng;

    fn network(cidr: &str) -> Network {
        Network::new(&NetworkSection { cidr: cidr.into(), ..Default::default() }).unwrap()
    }

    #[test]
    fn free_subnet_avoids_taken_and_fills_up() {
        let n = network("192.0.2.0/24").ipv4.unwrap(); // four /26, three allocatable
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut taken = HashSet::new();
        for _ in 0..3 {
            let s = choose_free(&n, &taken, &mut rng).unwrap();
            assert!(n.in_allocation_range(&s));
            assert!(taken.insert(s));
        }
        assert_eq!(choose_free(&n, &taken, &mut rng), None);
    }

    mod over_memory {
        use super::*;
        use crate::store::memory::MemoryStore;
        use crate::store::LeaseWrite;
        use std::net::Ipv4Addr;

        const TTL: Duration = Duration::from_secs(60);

        fn attrs(last: u8) -> LeaseAttrs {
            LeaseAttrs::new(Ipv4Addr::new(192, 0, 2, last), "alloc", serde_json::Value::Null)
        }

        fn request<'a>(network: &'a Network, attrs: &'a LeaseAttrs, previous: Option<&str>) -> LeaseRequest<'a> {
            LeaseRequest { previous: previous.map(|p| p.parse().unwrap()), ..LeaseRequest::new(network, attrs, TTL) }
        }

        #[tokio::test]
        async fn acquires_a_free_subnet_in_the_range() {
            let (store, n, me) = (MemoryStore::new(), network("10.244.0.0/16"), attrs(1));
            let (own, listing) = acquire_listed(&store, &request(&n, &me, None)).await.unwrap();
            assert!(n.lease_space().in_allocation_range(&own.id()));
            assert!(listing.unwrap().leases.is_empty(), "the listing is from before our write");
            let stored = store.list_leases().await.unwrap();
            assert_eq!(stored.leases.len(), 1);
            assert_eq!(stored.leases[0].parse().unwrap().attrs, me);
            assert_eq!(stored.leases[0].mod_revision, own.revision);
            assert!(matches!(own.lease.expiry, Expiry::At(_)));
        }

        #[tokio::test]
        async fn takes_the_previous_subnet_when_free() {
            let (store, n, me) = (MemoryStore::new(), network("10.244.0.0/16"), attrs(1));
            let own = acquire(&store, &request(&n, &me, Some("10.244.42.0/24"))).await.unwrap();
            assert_eq!(own.id().to_string(), "10.244.42.0/24");
        }

        #[tokio::test]
        async fn takes_back_its_own_lease_rather_than_a_new_one() {
            let (store, n, me) = (MemoryStore::new(), network("10.244.0.0/16"), attrs(1));
            let first = acquire(&store, &request(&n, &me, None)).await.unwrap();
            // Restarted without subnet.env: the lease of our address is found and renewed.
            let again = acquire(&store, &request(&n, &me, None)).await.unwrap();
            assert_eq!(again.subnet(), first.subnet());
            assert!(again.revision > first.revision);
            assert_eq!(store.list_leases().await.unwrap().leases.len(), 1);
        }

        #[tokio::test]
        async fn a_handed_over_lease_moves_to_our_new_address() {
            let (store, n, before) = (MemoryStore::new(), network("10.244.0.0/16"), attrs(1));
            let held = acquire(&store, &request(&n, &before, None)).await.unwrap();
            // A reload changed our public IP: the lease we held is rewritten, not orphaned.
            let after = attrs(9);
            let handover = Some((held.key(), held.revision));
            let moved = acquire(&store, &LeaseRequest { handover, ..request(&n, &after, None) }).await.unwrap();
            assert_eq!(moved.subnet(), held.subnet());
            let stored = store.list_leases().await.unwrap().leases;
            assert_eq!(stored.len(), 1, "one lease, not two");
            assert_eq!(stored[0].parse().unwrap().attrs, after);
            // Written by someone since (here: renewed by the new address): not handed over again.
            let stale = Some((held.key(), held.revision));
            let third = attrs(10);
            let other = acquire(&store, &LeaseRequest { handover: stale, ..request(&n, &third, None) }).await.unwrap();
            assert_ne!(other.subnet(), held.subnet());
        }

        #[tokio::test]
        async fn another_hosts_previous_subnet_is_not_taken() {
            let (store, n) = (MemoryStore::new(), network("10.244.0.0/16"));
            let other = attrs(2);
            acquire(&store, &request(&n, &other, Some("10.244.42.0/24"))).await.unwrap();
            let me = attrs(1);
            let own = acquire(&store, &request(&n, &me, Some("10.244.42.0/24"))).await.unwrap();
            assert_ne!(own.id().to_string(), "10.244.42.0/24");
        }

        #[tokio::test]
        async fn renewal_rewrites_the_lease_and_a_changed_one_is_lost() {
            let (store, n, me) = (MemoryStore::new(), network("10.244.0.0/16"), attrs(1));
            let own = acquire(&store, &request(&n, &me, None)).await.unwrap();
            let renewed = renew(&store, &own, &me, TTL).await.unwrap();
            assert!(renewed.revision > own.revision);
            // Renewing from the stale revision: someone (here, our own renewal) wrote since.
            assert!(matches!(renew(&store, &own, &me, TTL).await, Err(LeaseError::Lost(s)) if s == own.key()));
            // Taken over by another host.
            let json = attrs(2).to_json();
            let write = LeaseWrite::new(own.key(), &json, Some(TTL));
            store.update_lease(write, renewed.revision).await.unwrap();
            assert!(matches!(renew(&store, &renewed, &me, TTL).await, Err(LeaseError::Lost(_))));
            // Removed.
            store.delete_lease(own.key()).await.unwrap();
            assert!(matches!(renew(&store, &renewed, &me, TTL).await, Err(LeaseError::Lost(_))));
        }

        #[tokio::test]
        async fn an_expired_lease_is_lost_and_its_subnet_free_again() {
            tokio::time::pause();
            let (store, n, me) = (MemoryStore::new(), network("10.244.0.0/16"), attrs(1));
            let own = acquire(&store, &request(&n, &me, None)).await.unwrap();
            tokio::time::advance(TTL + Duration::from_secs(1)).await;
            assert!(store.list_leases().await.unwrap().leases.is_empty());
            assert!(matches!(renew(&store, &own, &me, TTL).await, Err(LeaseError::Lost(_))));
            let previous = own.id().to_string();
            let other = attrs(2);
            let taken = acquire(&store, &request(&n, &other, Some(&previous))).await.unwrap();
            assert_eq!(taken.subnet(), own.subnet(), "the expired subnet is free for the next host");
        }

        #[tokio::test]
        async fn a_full_network_says_so() {
            let (store, n) = (MemoryStore::new(), network("192.0.2.0/24")); // three allocatable /26
            for host in 1..=3 {
                acquire(&store, &request(&n, &attrs(host), None)).await.unwrap();
            }
            let full = acquire(&store, &request(&n, &attrs(4), None)).await;
            assert!(matches!(full, Err(LeaseError::NetworkFull { count: 3, .. })), "{full:?}");
        }

        fn dual_stack() -> Network {
            crate::network::dual_stack_for_tests()
        }

        #[tokio::test]
        async fn a_dual_stack_lease_holds_a_subnet_of_each_family_under_one_key() {
            let (store, n, me) = (MemoryStore::new(), dual_stack(), attrs(1));
            let previous_v6 = Some("2001:db8:42:42::/64".parse().unwrap());
            let first = LeaseRequest { previous_v6, ..request(&n, &me, Some("10.244.42.0/24")) };
            let own = acquire(&store, &first).await.unwrap();
            assert_eq!(own.key().to_string(), "10.244.42.0-24&2001:db8:42:42::-64");
            // Restarted without subnet.env: found by our address, both subnets kept.
            let again = acquire(&store, &request(&n, &me, None)).await.unwrap();
            assert_eq!(again.key(), own.key());
            // Another host gets other subnets of both families.
            let other = acquire(&store, &request(&n, &attrs(2), Some("10.244.42.0/24"))).await.unwrap();
            assert_ne!(other.subnet(), own.subnet());
            assert!(n.fits(&other.key()) && other.subnet_v6() != own.subnet_v6());
            let keys: Vec<String> = store.list_leases().await.unwrap().leases.into_iter().map(|r| r.key).collect();
            assert_eq!(keys.len(), 2, "{keys:?}");
        }

        #[tokio::test]
        async fn turning_ipv6_on_re_leases_with_the_same_ipv4_subnet() {
            let store = MemoryStore::new();
            let (v4_only, me) = (network("10.244.0.0/16"), attrs(1));
            let before = acquire(&store, &request(&v4_only, &me, None)).await.unwrap();
            assert_eq!(before.subnet_v6(), None);
            let dual = dual_stack();
            let after = acquire(&store, &request(&dual, &me, None)).await.unwrap();
            assert_eq!(after.subnet(), before.subnet(), "the IPv4 subnet is kept");
            assert!(dual.fits(&after.key()));
            let keys: Vec<String> = store.list_leases().await.unwrap().leases.into_iter().map(|r| r.key).collect();
            assert_eq!(keys, [after.key().to_string()], "the old key is gone, not left beside the new one");
            // And back: the IPv6 side goes, the IPv4 subnet stays.
            let back = acquire(&store, &request(&v4_only, &me, None)).await.unwrap();
            assert_eq!((back.subnet(), back.subnet_v6()), (before.subnet(), None));
        }

        #[tokio::test]
        async fn a_dual_stack_reservation_is_taken_by_its_host() {
            let (store, n, me) = (MemoryStore::new(), dual_stack(), attrs(1));
            let reserved: Ipv4Net = "10.244.7.0/24".parse().unwrap();
            let v6 = ipv6_for(&n, reserved, &HashSet::new(), None).unwrap();
            // Paired by position: the 7th IPv4 subnet of the range, the 7th IPv6 one.
            assert_eq!(v6.to_string(), "2001:db8:42:7::/64");
            let key = LeaseKey { subnet: Some(reserved), subnet_v6: Some(v6) };
            store.create_lease(LeaseWrite::new(key, &me.to_json(), None)).await.unwrap();
            let own = acquire(&store, &request(&n, &me, None)).await.unwrap();
            assert_eq!((own.key(), own.lease.expiry), (key, Expiry::Never));
            // Taken, the paired subnet gives way to a free one.
            let taken: HashSet<IpNet> = [IpNet::from(v6)].into();
            let other = ipv6_for(&n, reserved, &taken, None).unwrap();
            assert!(other != v6 && n.ipv6.unwrap().contains_subnet(&other.into()));
            assert_eq!(ipv6_for(&network("10.244.0.0/16"), reserved, &HashSet::new(), None), None);
        }

        fn ipv6_only() -> Network {
            let section =
                NetworkSection { enable_ipv4: false, ipv6_cidr: "2001:db8:42::/56".into(), ..Default::default() };
            Network::new(&section).unwrap()
        }

        /// An IPv6-only host, as flannel writes it: 0.0.0.0 and its IPv6 address.
        fn attrs_v6(last: u16) -> LeaseAttrs {
            let ip = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last);
            LeaseAttrs::new(Ipv4Addr::UNSPECIFIED, "alloc", serde_json::Value::Null)
                .with_v6(ip, serde_json::Value::Null)
        }

        #[tokio::test]
        async fn an_ipv6_only_lease_is_named_by_its_ipv6_subnet_and_found_by_its_ipv6_address() {
            let (store, n) = (MemoryStore::new(), ipv6_only());
            let (me, other) = (attrs_v6(1), attrs_v6(2));
            let previous_v6 = Some("2001:db8:42:42::/64".parse().unwrap());
            let first = LeaseRequest { previous_v6, ..request(&n, &me, None) };
            let own = acquire(&store, &first).await.unwrap();
            assert_eq!(own.key().to_string(), "0.0.0.0-0&2001:db8:42:42::-64");
            assert_eq!(own.subnet(), None);
            assert_eq!(own.id().to_string(), "2001:db8:42:42::/64");
            // Another host publishes 0.0.0.0 too: it is not us, and gets another subnet.
            let theirs = acquire(&store, &request(&n, &other, None)).await.unwrap();
            assert_ne!(theirs.key(), own.key());
            // Restarted without subnet.env: found by our IPv6 address, not the other host's.
            let again = acquire(&store, &request(&n, &me, None)).await.unwrap();
            assert_eq!(again.key(), own.key());
            assert_eq!(store.list_leases().await.unwrap().leases.len(), 2);
            // The previous subnet of another host is not taken.
            let third = attrs_v6(3);
            let taken = LeaseRequest { previous_v6, ..request(&n, &third, None) };
            assert_ne!(acquire(&store, &taken).await.unwrap().key(), own.key());
        }

        #[tokio::test]
        async fn turning_ipv4_off_re_leases_with_the_same_ipv6_subnet() {
            let store = MemoryStore::new();
            let me = attrs(1).with_v6("2001:db8::1".parse().unwrap(), serde_json::Value::Null);
            let before = acquire(&store, &request(&dual_stack(), &me, None)).await.unwrap();
            // IPv4 off, the host publishes 0.0.0.0: still known by its IPv6 address.
            let me_v6 = attrs_v6(1);
            let after = acquire(&store, &request(&ipv6_only(), &me_v6, None)).await.unwrap();
            assert_eq!((after.subnet(), after.subnet_v6()), (None, before.subnet_v6()));
            let keys: Vec<String> = store.list_leases().await.unwrap().leases.into_iter().map(|r| r.key).collect();
            assert_eq!(keys, [after.key().to_string()], "the dual-stack key is gone");
        }

        #[tokio::test]
        async fn a_reservation_stays_one() {
            let (store, n, me) = (MemoryStore::new(), network("10.244.0.0/16"), attrs(1));
            let json = me.to_json();
            let reserved: Ipv4Net = "10.244.7.0/24".parse().unwrap();
            store.create_lease(LeaseWrite::new(reserved, &json, None)).await.unwrap();
            let own = acquire(&store, &request(&n, &me, None)).await.unwrap();
            assert_eq!(own.subnet(), Some(reserved));
            assert_eq!(own.lease.expiry, Expiry::Never);
            assert_eq!(renew(&store, &own, &me, TTL).await.unwrap().lease.expiry, Expiry::Never);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn renewal_is_timed_by_the_monotonic_clock() {
        let attrs = LeaseAttrs::new("192.0.2.1".parse().unwrap(), "alloc", serde_json::Value::Null);
        let subnet = LeaseKey::from("10.244.1.0/24".parse::<Ipv4Net>().unwrap());
        let margin = Duration::from_secs(600);
        assert_eq!(renew_in(&own(subnet, &attrs, Expiry::Never, 1), margin), None);
        assert_eq!(renew_in(&own(subnet, &attrs, Expiry::Unknown, 1), margin), Some(Duration::ZERO));
        let soon = own(subnet, &attrs, Expiry::At(SystemTime::now() + Duration::from_secs(30)), 1);
        assert_eq!(renew_in(&soon, margin), Some(Duration::ZERO));

        let mut held = own(subnet, &attrs, Expiry::At(SystemTime::now() + Duration::from_secs(3600)), 1);
        let due = renew_in(&held, margin).unwrap();
        assert!(due > Duration::from_secs(2990) && due <= Duration::from_secs(3000), "{due:?}");
        // The wall clock stepped (what it says of the expiry moves), the monotonic one did not:
        // renewal stays where it was.
        held.lease.expiry = Expiry::At(SystemTime::now() - Duration::from_secs(7200));
        assert_eq!(renew_in(&held, margin), Some(due));
        assert!(!held.has_run_out());
        tokio::time::advance(Duration::from_secs(3000)).await;
        assert_eq!(renew_in(&held, margin), Some(Duration::ZERO));
        assert!(!held.has_run_out(), "due for renewal, not run out");
        tokio::time::advance(Duration::from_secs(600)).await;
        assert!(held.has_run_out());
    }
}
