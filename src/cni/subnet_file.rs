//! Reads `subnet.env` as written by the agent (or by flanneld).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::error::{CniError, Code};

/// What the delegate config is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetFile {
    /// The cluster network: pods route it through the bridge.
    pub network: Ipv4Net,
    /// This host's pod subnet (network address, e.g. 10.244.3.0/24).
    pub subnet: Ipv4Net,
    pub mtu: u32,
    /// Whether the agent masquerades; the bridge then must not.
    pub ip_masq: bool,
}

/// Parses the file's text; `source` names it in errors.
pub fn parse(text: &str, source: &str) -> Result<SubnetFile, CniError> {
    let bad = |key: &str, why: String| {
        CniError::new(Code::Decode, format!("{source}: {key}: {why}"), text.trim().to_string())
    };
    let mut network = None;
    let mut subnet = None;
    let mut mtu = None;
    let mut ip_masq = None;
    for line in text.lines() {
        let Some((key, value)) = line.trim().split_once('=') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "FLANNEL_NETWORK" => {
                let net: Ipv4Net = value.parse().map_err(|e| bad(key, format!("{e}")))?;
                network = Some(net.trunc());
            }
            // Written with the bridge's address (10.244.3.1/24): the range is its network.
            "FLANNEL_SUBNET" => {
                let net: Ipv4Net = value.parse().map_err(|e| bad(key, format!("{e}")))?;
                subnet = Some(net.trunc());
            }
            "FLANNEL_MTU" => mtu = Some(value.parse::<u32>().map_err(|e| bad(key, e.to_string()))?),
            "FLANNEL_IPMASQ" => ip_masq = Some(value.parse::<bool>().map_err(|e| bad(key, e.to_string()))?),
            _ => {}
        }
    }
    let missing = |key: &str| bad(key, "missing".to_string());
    Ok(SubnetFile {
        network: network.ok_or_else(|| missing("FLANNEL_NETWORK"))?,
        subnet: subnet.ok_or_else(|| missing("FLANNEL_SUBNET"))?,
        mtu: mtu.ok_or_else(|| missing("FLANNEL_MTU"))?,
        ip_masq: ip_masq.ok_or_else(|| missing("FLANNEL_IPMASQ"))?,
    })
}

/// Reads the file. Missing means the agent has not taken up its lease yet: the runtime should
/// try again later rather than give up on the pod.
pub fn read(path: &std::path::Path) -> Result<SubnetFile, CniError> {
    let source = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, &source),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CniError::new(
            Code::TryAgainLater,
            format!("{source} does not exist yet: is the weft agent running on this host?"),
            e.to_string(),
        )),
        Err(e) => Err(CniError::new(Code::Io, format!("reading {source}"), e.to_string())),
    }
}

impl SubnetFile {
    /// The bridge's address: the subnet's first host.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet.network()) + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_agents_format() {
        let text =
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
        let file = parse(text, "subnet.env").unwrap();
        assert_eq!(file.network.to_string(), "10.244.0.0/16");
        assert_eq!(file.subnet.to_string(), "10.244.3.0/24");
        assert_eq!(file.mtu, 1450);
        assert!(file.ip_masq);
        assert_eq!(file.gateway().to_string(), "10.244.3.1");
    }

    #[test]
    fn bad_or_missing_keys_are_decode_errors() {
        let missing = parse("FLANNEL_NETWORK=10.244.0.0/16\n", "f").unwrap_err();
        assert_eq!(missing.code, Code::Decode);
        assert!(missing.msg.contains("FLANNEL_SUBNET"), "{}", missing.msg);
        let bad =
            parse("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=x\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n", "f")
                .unwrap_err();
        assert!(bad.msg.contains("FLANNEL_SUBNET"), "{}", bad.msg);
    }

    #[test]
    fn an_absent_file_means_try_again_later() {
        let err = read(std::path::Path::new("/nonexistent/weft/subnet.env")).unwrap_err();
        assert_eq!(err.code, Code::TryAgainLater);
    }
}
