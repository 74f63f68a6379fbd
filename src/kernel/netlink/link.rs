//! Links and addresses, over rtnetlink's request builders (one request at a time is plenty:
//! these run once per start, not once per peer).

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, LinkVxlan};

use crate::kernel::{KernelError, LinkHandle, MacAddr, VxlanSpec};

/// The errno of a failed rtnetlink request, if the kernel refused it.
fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => Some(message.raw_code().saturating_neg()),
        _ => None,
    }
}

fn failed(what: impl std::fmt::Display, error: rtnetlink::Error) -> KernelError {
    let reason = match errno(&error) {
        Some(code) if code > 0 => nix::errno::Errno::from_raw(code).desc().to_string(),
        _ => error.to_string(),
    };
    KernelError::Rejected { op: what.to_string(), reason }
}

/// The link called `name`, as the kernel describes it.
pub async fn message_by_name(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, KernelError> {
    let mut request = std::pin::pin!(handle.link().get().match_name(name.to_string()).execute());
    match request.try_next().await {
        Ok(message) => Ok(message),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(failed(format!("look up link {name}"), e)),
    }
}

/// Every link in the namespace.
pub async fn all(handle: &Handle) -> Result<Vec<LinkHandle>, KernelError> {
    let mut request = std::pin::pin!(handle.link().get().execute());
    let mut links = Vec::new();
    while let Some(message) = request.try_next().await.map_err(|e| failed("list links", e))? {
        links.push(link_handle(&message));
    }
    Ok(links)
}

async fn message_by_index(handle: &Handle, index: u32) -> Result<LinkMessage, KernelError> {
    let mut request = std::pin::pin!(handle.link().get().match_index(index).execute());
    match request.try_next().await {
        Ok(Some(message)) => Ok(message),
        Ok(None) => Err(KernelError::Link(format!("link {index} vanished"))),
        Err(e) => Err(failed(format!("look up link {index}"), e)),
    }
}

pub fn link_handle(message: &LinkMessage) -> LinkHandle {
    let mut link = LinkHandle { index: message.header.index, name: String::new(), mac: MacAddr::default(), mtu: 0 };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name.clone(),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::Address(bytes) => {
                if let Ok(mac) = <[u8; 6]>::try_from(bytes.as_slice()) {
                    link.mac = MacAddr(mac);
                }
            }
            _ => {}
        }
    }
    link
}

/// What makes two vxlan devices interchangeable for weft (MTU is adjusted, not compared).
#[derive(Debug, Default, PartialEq, Eq)]
struct VxlanIdentity {
    vni: Option<u32>,
    port: Option<u16>,
    local: Option<IpAddr>,
    underlay: Option<u32>,
    gbp: bool,
}

impl VxlanIdentity {
    fn wanted(spec: &VxlanSpec) -> Self {
        VxlanIdentity {
            vni: Some(spec.vni),
            port: Some(spec.port),
            local: Some(spec.local),
            underlay: Some(spec.underlay_index),
            gbp: spec.gbp,
        }
    }

    fn found(info: &[InfoVxlan]) -> Self {
        let mut found = VxlanIdentity::default();
        for attribute in info {
            match attribute {
                InfoVxlan::Id(vni) => found.vni = Some(*vni),
                InfoVxlan::Port(port) => found.port = Some(*port),
                InfoVxlan::Local(ip) => found.local = Some((*ip).into()),
                InfoVxlan::Local6(ip) => found.local = Some((*ip).into()),
                InfoVxlan::Link(index) => found.underlay = Some(*index),
                InfoVxlan::Gbp => found.gbp = true,
                _ => {}
            }
        }
        found
    }

    /// "vni 2 (want 1), dstport 4789 (want 8472)", or empty when they match.
    fn mismatches(&self, want: &VxlanIdentity) -> Vec<String> {
        let mut out = Vec::new();
        mismatch(&mut out, "vni", &self.vni, &want.vni);
        mismatch(&mut out, "dstport", &self.port, &want.port);
        mismatch(&mut out, "local", &self.local, &want.local);
        mismatch(&mut out, "underlay device", &self.underlay, &want.underlay);
        if self.gbp != want.gbp {
            out.push(format!("gbp {} (want {})", self.gbp, want.gbp));
        }
        out
    }
}

fn mismatch<T: PartialEq + std::fmt::Display>(out: &mut Vec<String>, what: &str, have: &Option<T>, want: &Option<T>) {
    if have != want {
        let show = |v: &Option<T>| v.as_ref().map_or("none".to_string(), T::to_string);
        out.push(format!("{what} {} (want {})", show(have), show(want)));
    }
}

/// The kind of a link and, for vxlan, its settings.
fn kind_and_vxlan(message: &LinkMessage) -> (Option<InfoKind>, Option<Vec<InfoVxlan>>) {
    let (mut kind, mut vxlan) = (None, None);
    for attribute in &message.attributes {
        let LinkAttribute::LinkInfo(infos) = attribute else {
            continue;
        };
        for info in infos {
            match info {
                LinkInfo::Kind(k) => kind = Some(k.clone()),
                LinkInfo::Data(InfoData::Vxlan(data)) => vxlan = Some(data.clone()),
                _ => {}
            }
        }
    }
    (kind, vxlan)
}

/// Adopts an existing device when it is the vxlan device `spec` describes, or explains why not.
async fn adopt_vxlan(handle: &Handle, spec: &VxlanSpec, existing: &LinkMessage) -> Result<LinkHandle, KernelError> {
    let name = &spec.name;
    let (kind, vxlan) = kind_and_vxlan(existing);
    let Some(vxlan) = vxlan.filter(|_| kind == Some(InfoKind::Vxlan)) else {
        let kind = kind.map_or("unknown".to_string(), |k| k.to_string());
        return Err(KernelError::Link(format!("{name} exists but is a {kind} device, not vxlan")));
    };
    let mismatches = VxlanIdentity::found(&vxlan).mismatches(&VxlanIdentity::wanted(spec));
    if !mismatches.is_empty() {
        return Err(KernelError::Link(format!(
            "{name} exists with {}; delete it or change the configuration",
            mismatches.join(", ")
        )));
    }
    let link = link_handle(existing);
    let up = existing.header.flags.contains(LinkFlags::Up);
    if link.mtu != spec.mtu || !up {
        let change = LinkUnspec::new_with_index(link.index).mtu(spec.mtu).up().build();
        handle.link().set(change).execute().await.map_err(|e| failed(format!("set {name} mtu {} up", spec.mtu), e))?;
    }
    Ok(LinkHandle { mtu: spec.mtu, ..link })
}

async fn create_vxlan(handle: &Handle, spec: &VxlanSpec) -> Result<(), rtnetlink::Error> {
    let builder = LinkVxlan::new(&spec.name, spec.vni).dev(spec.underlay_index);
    let builder = match spec.local {
        IpAddr::V4(local) => builder.local(local),
        IpAddr::V6(local) => builder.local6(local),
    };
    let mut builder = builder.port(spec.port).learning(spec.learning).mtu(spec.mtu).up();
    if spec.gbp {
        builder = builder.gbp();
    }
    if let Some(mac) = spec.mac {
        builder = builder.address(mac.0.to_vec());
    }
    handle.link().add(builder.build()).execute().await
}

pub async fn ensure_vxlan(handle: &Handle, spec: &VxlanSpec) -> Result<LinkHandle, KernelError> {
    if let Some(existing) = message_by_name(handle, &spec.name).await? {
        return adopt_vxlan(handle, spec, &existing).await;
    }
    match create_vxlan(handle, spec).await {
        // Someone created it in between: judge theirs like any existing device.
        Err(e) if errno(&e) == Some(libc::EEXIST) => {}
        Err(e) => return Err(failed(format!("create vxlan {}", spec.name), e)),
        Ok(()) => {}
    }
    let created = message_by_name(handle, &spec.name)
        .await?
        .ok_or_else(|| KernelError::Link(format!("{} vanished after creation", spec.name)))?;
    adopt_vxlan(handle, spec, &created).await
}

/// The address of `message` when it is of `want`'s family and weft may replace it (an IPv6
/// link-local address is the kernel's, never stale).
fn address_like(message: &AddressMessage, want: &IpNet) -> Option<IpNet> {
    let family = if want.addr().is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    if message.header.family != family {
        return None;
    }
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS the peer's on point-to-point links.
    let local = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let address = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    let ip = local.or(address)?;
    if let IpAddr::V6(v6) = ip {
        if v6.segments()[0] & 0xffc0 == 0xfe80 {
            return None;
        }
    }
    IpNet::new(ip, message.header.prefix_len).ok()
}

pub async fn ensure_address(handle: &Handle, ifindex: u32, want: IpNet) -> Result<(), KernelError> {
    let mut present = false;
    let mut addresses = std::pin::pin!(handle.address().get().set_link_index_filter(ifindex).execute());
    let mut stale = Vec::new();
    while let Some(message) =
        addresses.try_next().await.map_err(|e| failed(format!("list addresses of link {ifindex}"), e))?
    {
        if message.header.index != ifindex {
            continue;
        }
        match address_like(&message, &want) {
            Some(have) if have == want => present = true,
            Some(have) => stale.push((have, message)),
            None => {}
        }
    }
    // Remove the others first: with the wanted one added first, removing a primary address in
    // the same subnet would take the new (secondary) one with it.
    for (have, message) in stale {
        match handle.address().del(message).execute().await {
            Err(e) if errno(&e) == Some(libc::EADDRNOTAVAIL) => {}
            Err(e) => return Err(failed(format!("delete address {have} from link {ifindex}"), e)),
            Ok(()) => {}
        }
    }
    if !present {
        handle
            .address()
            .add(ifindex, want.addr(), want.prefix_len())
            .execute()
            .await
            .map_err(|e| failed(format!("add address {want} to link {ifindex}"), e))?;
    }
    set_up(handle, ifindex).await
}

async fn set_up(handle: &Handle, index: u32) -> Result<(), KernelError> {
    let message = message_by_index(handle, index).await?;
    if message.header.flags.contains(LinkFlags::Up) {
        return Ok(());
    }
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| failed(format!("set link {index} up"), e))
}

pub async fn delete_link(handle: &Handle, index: u32) -> Result<(), KernelError> {
    match handle.link().del(index).execute().await {
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
        Err(e) => Err(failed(format!("delete link {index}"), e)),
        Ok(()) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn spec() -> VxlanSpec {
        VxlanSpec {
            name: "flannel.1".into(),
            vni: 1,
            port: 8472,
            local: Ipv4Addr::new(198, 51, 100, 1).into(),
            underlay_index: 2,
            gbp: false,
            learning: false,
            mtu: 1450,
            mac: None,
        }
    }

    #[test]
    fn explains_vxlan_mismatches() {
        let found = VxlanIdentity::found(&[
            InfoVxlan::Id(2),
            InfoVxlan::Port(8472),
            InfoVxlan::Local(Ipv4Addr::new(198, 51, 100, 1)),
            InfoVxlan::Link(2),
        ]);
        assert_eq!(found.mismatches(&VxlanIdentity::wanted(&spec())), ["vni 2 (want 1)"]);
        let bare = VxlanIdentity::found(&[InfoVxlan::Id(1), InfoVxlan::Gbp]);
        assert_eq!(
            bare.mismatches(&VxlanIdentity::wanted(&spec())),
            [
                "dstport none (want 8472)",
                "local none (want 198.51.100.1)",
                "underlay device none (want 2)",
                "gbp true (want false)"
            ]
        );
    }
}
