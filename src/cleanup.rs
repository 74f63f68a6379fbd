//! `weft agent --cleanup`: removes everything weft owns on this host — its vxlan devices (and with
//! them their neighbours and FDB entries), every route and nexthop object with weft's protocol
//! number, its nftables table and its rules in iptables' FORWARD chain. The lease in the store is left to expire.

use tracing::info;

use crate::kernel::{diff, vxlan_device_vni, Kernel, KernelState, Ownership};

/// What was removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub objects: usize,
    pub devices: Vec<String>,
    pub masquerade: bool,
    /// weft's rules in iptables' FORWARD chain.
    pub forward_rules: bool,
}

/// Devices weft creates: `flannel.<vni>`.
pub fn is_weft_device(name: &str) -> bool {
    vxlan_device_vni(name).is_some()
}

/// Removes weft's kernel objects, devices, masquerade table and FORWARD rules; every failure is reported, and a
/// failure does not stop the rest.
pub async fn cleanup(kernel: &dyn Kernel) -> Result<Removed, Vec<String>> {
    let mut errors = Vec::new();
    let mut removed = Removed::default();
    let links = kernel.links().await.map_err(|e| vec![format!("listing links: {e}")])?;
    let devices: Vec<_> = links.iter().filter(|l| is_weft_device(&l.name)).collect();
    let ownership = Ownership { links: devices.iter().map(|l| l.index).collect() };
    match kernel.read_owned(&ownership).await {
        Ok(owned) => {
            let plan = diff(&KernelState::default(), &owned);
            let failures = kernel.apply(&plan.ops).await;
            removed.objects = plan.len() - failures.len();
            errors.extend(failures.into_iter().map(|f| format!("{:?}: {}", f.op, f.error)));
        }
        Err(e) => errors.push(format!("reading weft's routes: {e}")),
    }
    for device in devices {
        match kernel.delete_link(device.index).await {
            Ok(()) => removed.devices.push(device.name.clone()),
            Err(e) => errors.push(format!("deleting {}: {e}", device.name)),
        }
    }
    match tokio::task::spawn_blocking(crate::masq::remove).await {
        Ok(Ok(was_there)) => removed.masquerade = was_there,
        Ok(Err(e)) => errors.push(e.to_string()),
        Err(e) => errors.push(format!("masquerade task: {e}")),
    }
    match tokio::task::spawn_blocking(crate::masq::forward::remove).await {
        Ok(Ok(was_there)) => removed.forward_rules = was_there,
        Ok(Err(e)) => errors.push(e.to_string()),
        Err(e) => errors.push(format!("FORWARD rules task: {e}")),
    }
    info!(
        objects = removed.objects,
        devices = ?removed.devices,
        masquerade = removed.masquerade,
        forward_rules = removed.forward_rules,
        "cleaned up"
    );
    if errors.is_empty() {
        Ok(removed)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::vxlan_device_name;

    #[test]
    fn recognises_weft_devices_only() {
        assert!(is_weft_device(&vxlan_device_name(1)));
        assert!(is_weft_device("flannel.4096"));
        assert!(!is_weft_device("flannel.x"));
        assert!(!is_weft_device("flannel."));
        assert!(!is_weft_device("cni0"));
        assert!(!is_weft_device("eth0"));
    }
}
