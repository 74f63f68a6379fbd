//! Who this node is on EC2: instance, VPC, subnet and the interface that carries its address.

use std::net::Ipv4Addr;

use weft_aws::{Ec2, Ec2Error, Instance, InstanceMetadata, Interface};

use crate::backend::BackendError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub instance_id: String,
    pub vpc_id: String,
    /// The instance's subnet: its route table is the fallback.
    pub subnet_id: String,
    /// Where our subnet's route points.
    pub interface_id: String,
}

/// The interface carrying one of `addresses` (the public IP weft announces first, then the
/// external interface's); else the primary interface the metadata service named.
pub fn choose_interface<'a>(instance: &'a Instance, addresses: &[Ipv4Addr], primary: &str) -> Option<&'a Interface> {
    addresses
        .iter()
        .find_map(|addr| instance.interfaces.iter().find(|i| i.private_ips.contains(addr)))
        .or_else(|| instance.interfaces.iter().find(|i| i.id == primary))
}

/// Looks the instance up and turns the chosen interface's source/dest check off, so EC2 delivers
/// packets for pod addresses to it. Not being allowed to is a warning: the operator may have
/// done it already, or will.
pub async fn discover(ec2: &dyn Ec2, meta: &InstanceMetadata, addresses: &[Ipv4Addr]) -> Result<Node, BackendError> {
    let instance = ec2
        .instance(&meta.instance_id)
        .await
        .map_err(|e| super::cloud_error(format!("looking up instance {}", meta.instance_id), e))?;
    let interface = choose_interface(&instance, addresses, &meta.interface_id).ok_or_else(|| {
        super::cloud_error(
            format!("instance {}", instance.id),
            format!("no network interface with address {addresses:?} nor {}", meta.interface_id),
        )
    })?;
    if interface.source_dest_check != Some(false) {
        match ec2.set_source_dest_check(&interface.id, false).await {
            Ok(()) => tracing::info!(interface = %interface.id, "source/dest check turned off"),
            Err(e @ Ec2Error::AccessDenied { .. }) => tracing::warn!(
                interface = %interface.id, error = %e,
                "cannot turn the source/dest check off: pods on other hosts will not reach this one until it is"
            ),
            Err(e) => {
                return Err(super::cloud_error(format!("turning the source/dest check off on {}", interface.id), e))
            }
        }
    }
    Ok(Node {
        instance_id: instance.id.clone(),
        vpc_id: instance.vpc_id.clone(),
        subnet_id: instance.subnet_id.clone(),
        interface_id: interface.id.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interface(id: &str, ips: &[&str], index: i32) -> Interface {
        Interface {
            id: id.into(),
            subnet_id: "subnet-1".into(),
            private_ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
            source_dest_check: Some(true),
            device_index: Some(index),
        }
    }

    #[test]
    fn picks_the_interface_with_our_address() {
        let instance = Instance {
            id: "i-1".into(),
            vpc_id: "vpc-1".into(),
            subnet_id: "subnet-1".into(),
            interfaces: vec![interface("eni-0", &["10.0.1.5"], 0), interface("eni-1", &["10.0.2.7", "10.0.2.8"], 1)],
        };
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(choose_interface(&instance, &[ip("10.0.2.8")], "eni-0").unwrap().id, "eni-1");
        assert_eq!(choose_interface(&instance, &[ip("127.0.0.1"), ip("10.0.1.5")], "eni-1").unwrap().id, "eni-0");
        assert_eq!(choose_interface(&instance, &[ip("192.0.2.1")], "eni-1").unwrap().id, "eni-1");
        assert!(choose_interface(&instance, &[ip("192.0.2.1")], "eni-9").is_none());
    }
}
