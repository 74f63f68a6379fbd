//! Puts a [`Topology`] into the kernel: a switch namespace with a bridge, and each node joined to
//! it by a veth pair. Every netlink request is made from a connection opened inside the namespace
//! it changes, so the machine's own namespace is never touched.

use std::fs::File;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use ipnet::{Ipv4Net, Ipv6Net};
use rtnetlink::packet_route::link::{LinkAttribute, State};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::topology::{Node, Topology, HOST_IFACE, SWITCH_BRIDGE, UNDERLAY_MTU};
use super::LabError;
use crate::netns::{Netns, NETNS_DIR};

/// How long a new link may take to report carrier.
const LINK_UP_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds the switch and every host. On failure what was built stays: the caller removes it with
/// [`teardown`], which finds everything by the prefix.
pub fn build(topology: &Topology) -> Result<(), LabError> {
    build_switch(topology)?;
    for node in topology.host_nodes() {
        join(topology, &node)?;
    }
    Ok(())
}

/// The switch namespace and its bridge.
pub fn build_switch(topology: &Topology) -> Result<Netns, LabError> {
    let switch = create_ns(&topology.switch_ns())?;
    in_ns(&switch, "create the switch bridge", |handle| async move {
        let bridge = LinkBridge::new(SWITCH_BRIDGE).mtu(UNDERLAY_MTU).up().build();
        handle.link().add(bridge).execute().await.map_err(LabError::netlink(format!("create bridge {SWITCH_BRIDGE}")))
    })?;
    Ok(switch)
}

/// Creates `node`'s namespace and joins it to the switch: `eth0` with the node's underlay
/// address, its peer a port of the switch bridge.
pub fn join(topology: &Topology, node: &Node) -> Result<Netns, LabError> {
    let switch = Netns::open(&topology.switch_ns()).map_err(LabError::io("open the switch namespace"))?;
    let ns = create_ns(&node.ns)?;
    veth_pair(&ns, HOST_IFACE, &switch, &node.switch_port, UNDERLAY_MTU)?;
    configure(&switch, &node.switch_port, None, Some(SWITCH_BRIDGE))?;
    configure(&ns, HOST_IFACE, Some(node.addr_net()), None)?;
    wait_up(&ns, HOST_IFACE)?;
    wait_up(&switch, &node.switch_port)?;
    Ok(ns)
}

/// A veth pair between two namespaces: made in `inner` (named `inner_name` there), its peer moved
/// into `outer` by the namespace's file descriptor and named `outer_name`. Both ends stay down.
pub fn veth_pair(inner: &Netns, inner_name: &str, outer: &Netns, outer_name: &str, mtu: u32) -> Result<(), LabError> {
    let what = format!("veth {inner_name} in {} to {outer_name} in {}", inner.name, outer.name);
    let target = File::open(&outer.path).map_err(LabError::io(format!("open {}", outer.name)))?;
    let (inner_name, outer_name) = (inner_name.to_string(), outer_name.to_string());
    in_ns(inner, &what.clone(), move |handle| async move {
        let fail = |step: &str| LabError::netlink(format!("{what}: {step}"));
        let veth = LinkVeth::new(&inner_name, &outer_name).mtu(mtu).build();
        handle.link().add(veth).execute().await.map_err(fail("create"))?;
        let peer = link_index(&handle, &outer_name).await?;
        // The peer is created with the default MTU; set it before it leaves.
        let moved = LinkUnspec::new_with_index(peer).mtu(mtu).setns_by_fd(target.as_raw_fd()).build();
        handle.link().set(moved).execute().await.map_err(fail("move the peer"))?;
        drop(target);
        Ok(())
    })
}

/// Brings `link` in `ns` up, with an address and/or as a port of `controller`.
pub fn configure(ns: &Netns, link: &str, addr: Option<Ipv4Net>, controller: Option<&str>) -> Result<(), LabError> {
    let what = format!("configure {link} in {}", ns.name);
    let (link, controller) = (link.to_string(), controller.map(str::to_string));
    in_ns(ns, &what.clone(), move |handle| async move {
        let fail = |step: &str| LabError::netlink(format!("{what}: {step}"));
        let index = link_index(&handle, &link).await?;
        let mut change = LinkUnspec::new_with_index(index).up();
        if let Some(controller) = controller {
            change = change.controller(link_index(&handle, &controller).await?);
        }
        handle.link().set(change.build()).execute().await.map_err(fail("set up"))?;
        if let Some(addr) = addr {
            handle
                .address()
                .add(index, addr.addr().into(), addr.prefix_len())
                .execute()
                .await
                .map_err(fail(&format!("add {addr}")))?;
        }
        Ok(())
    })
}

/// A bridge `name` in `ns`, up, with `addr` when given (an IPv6-only pod's bridge has none).
pub fn bridge(ns: &Netns, name: &str, addr: Option<Ipv4Net>) -> Result<(), LabError> {
    let what = format!("create bridge {name} in {}", ns.name);
    let owned = name.to_string();
    in_ns(ns, &what.clone(), move |handle| async move {
        handle.link().add(LinkBridge::new(&owned).up().build()).execute().await.map_err(LabError::netlink(what))
    })?;
    configure(ns, name, addr, None)
}

/// The default route of `ns`, via `gateway`.
pub fn default_route(ns: &Netns, gateway: Ipv4Addr) -> Result<(), LabError> {
    let what = format!("default route via {gateway} in {}", ns.name);
    in_ns(ns, &what.clone(), move |handle| async move {
        let route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gateway).build();
        handle.route().add(route).execute().await.map_err(LabError::netlink(what))
    })
}

/// `ip <args>` in `ns`: the lab's IPv6 addresses are added without duplicate address detection
/// (`nodad`, which iproute2 says in one word), their uniqueness being the lab's own.
fn ip(ns: &Netns, args: &[&str]) -> Result<(), LabError> {
    let what = format!("ip {} in {}", args.join(" "), ns.name);
    let out = ns.command("ip").and_then(|mut c| c.args(args).output()).map_err(LabError::io(what.clone()))?;
    if !out.status.success() {
        return Err(LabError::Invalid(format!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(())
}

/// Adds IPv6 address `addr` to `link` in `ns`, usable at once (no duplicate address detection).
pub fn add_ipv6(ns: &Netns, link: &str, addr: Ipv6Net) -> Result<(), LabError> {
    ip(ns, &["-6", "addr", "add", &addr.to_string(), "dev", link, "nodad"])
}

/// Waits until no IPv6 address on `link` in `ns` is tentative: the link-local one runs duplicate
/// address detection when the link comes up, and until it ends the switch's bridge may not yet
/// forward the neighbour solicitations of IPv6 (its multicast snooping has heard no report).
pub fn wait_ipv6_settled(ns: &Netns, link: &str) -> Result<(), LabError> {
    let what = format!("ip -6 addr show dev {link} tentative in {}", ns.name);
    let deadline = Instant::now() + IPV6_SETTLE_TIMEOUT;
    loop {
        let out = ns
            .command("ip")
            .and_then(|mut c| c.args(["-6", "addr", "show", "dev", link, "tentative"]).output())
            .map_err(LabError::io(what.clone()))?;
        if out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("inet6") {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LabError::Invalid(format!("{what}: still tentative after {IPV6_SETTLE_TIMEOUT:?}")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How long duplicate address detection may take (the kernel's default is about a second).
const IPV6_SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The IPv6 default route of `ns`, via `gateway`.
pub fn default_route_v6(ns: &Netns, gateway: Ipv6Addr) -> Result<(), LabError> {
    ip(ns, &["-6", "route", "add", "default", "via", &gateway.to_string()])
}

/// Creates a namespace, naming it in the error.
pub fn create_ns(name: &str) -> Result<Netns, LabError> {
    Netns::create(name).map_err(LabError::io(format!("create network namespace {name}")))
}

/// Every namespace in `/run/netns` whose name starts with `prefix`, sorted.
pub fn namespaces_with_prefix(prefix: &str) -> Result<Vec<String>, LabError> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LabError::io(format!("list {NETNS_DIR}"))(e)),
    };
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(prefix))
        .collect();
    names.sort();
    Ok(names)
}

/// Deletes every namespace named with `prefix`, including those of a half-built topology. Keeps
/// going past failures and reports each one. Links inside go with their namespace; a namespace a
/// process still lives in goes when that process ends.
pub fn teardown(prefix: &str) -> Result<Vec<String>, Vec<String>> {
    // An empty prefix would match every namespace on the machine.
    assert!(!prefix.is_empty(), "teardown needs a non-empty prefix");
    let names = namespaces_with_prefix(prefix).map_err(|e| vec![e.to_string()])?;
    let mut failures = Vec::new();
    for name in &names {
        let ns = Netns { name: name.clone(), path: std::path::Path::new(NETNS_DIR).join(name) };
        if let Err(e) = ns.delete() {
            failures.push(format!("delete network namespace {name}: {e}"));
        }
    }
    if failures.is_empty() {
        Ok(names)
    } else {
        Err(failures)
    }
}

/// Runs `f` with a netlink handle whose socket lives inside `ns`.
pub fn in_ns<T, F, Fut>(ns: &Netns, what: &str, f: F) -> Result<T, LabError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, LabError>>,
{
    let context = format!("{what}: netlink in {}", ns.name);
    let outcome = ns.block_on(move || async move {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(LabError::io("open a netlink socket"))?;
        let task = tokio::spawn(connection);
        let result = f(handle).await;
        task.abort();
        result
    });
    outcome.map_err(LabError::io(context))?
}

/// The index of `name` in the handle's namespace.
pub async fn link_index(handle: &Handle, name: &str) -> Result<u32, LabError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(link.header.index),
        Ok(None) => Err(LabError::Invalid(format!("no link named {name}"))),
        Err(e) => Err(LabError::netlink(format!("look up link {name}"))(e)),
    }
}

/// Waits until `link` in `ns` is operationally up. Carrier changes reach the bridge through the
/// kernel's link-watch work, which may lag by up to a second (more on a busy machine); a bridge
/// port forwards only after that, so a packet sent before is lost.
pub fn wait_up(ns: &Netns, link: &str) -> Result<(), LabError> {
    let what = format!("wait for {link} in {} to come up", ns.name);
    let owned = link.to_string();
    in_ns(ns, &what.clone(), move |handle| async move {
        let deadline = Instant::now() + LINK_UP_TIMEOUT;
        loop {
            let mut links = handle.link().get().match_name(owned.clone()).execute();
            let message = links.try_next().await.map_err(LabError::netlink(what.clone()))?;
            let state = message.and_then(|m| {
                m.attributes.into_iter().find_map(|a| match a {
                    LinkAttribute::OperState(state) => Some(state),
                    _ => None,
                })
            });
            if state == Some(State::Up) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(LabError::Invalid(format!("{what}: still {state:?} after {LINK_UP_TIMEOUT:?}")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}
