//! `subnet.env`: what CNI plugins and docker helpers read to learn the host's subnet. Written by
//! the agent and read back by the agent (its previous subnet), the CNI plugin and the lab: the
//! format is known here only.

use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

const NETWORK: &str = "FLANNEL_NETWORK";
const SUBNET: &str = "FLANNEL_SUBNET";
const IPV6_NETWORK: &str = "FLANNEL_IPV6_NETWORK";
const IPV6_SUBNET: &str = "FLANNEL_IPV6_SUBNET";
const MTU: &str = "FLANNEL_MTU";
const IPMASQ: &str = "FLANNEL_IPMASQ";
/// rw-r--r--, as flannel writes it.
pub const FILE_MODE: u32 = 0o644;

/// Why a subnet.env could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SubnetEnvError {
    /// A known key with a value that does not parse; `line` counts from 1.
    #[error("line {line}: {key}: {reason}")]
    BadValue { line: usize, key: &'static str, reason: String },
    #[error("{key}: missing")]
    Missing { key: &'static str },
    #[error("reading {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The contents of subnet.env: each family's network and this host's subnet, as network
/// addresses. At least one family is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// The IPv4 lines, unless the network is IPv6-only.
    pub ipv4: Option<Ipv4Pair>,
    /// The IPv6 lines, dual-stack or IPv6-only.
    pub ipv6: Option<Ipv6Pair>,
    pub mtu: u32,
    pub ip_masq: bool,
}

/// The IPv4 lines of a host's subnet.env.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Pair {
    pub network: Ipv4Net,
    pub subnet: Ipv4Net,
}

/// The IPv6 lines of a dual-stack or IPv6-only host's subnet.env.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Pair {
    pub network: Ipv6Net,
    pub subnet: Ipv6Net,
}

impl SubnetEnv {
    /// flannel's format: the subnet is written with its first host address (the bridge's).
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Some(v4) = &self.ipv4 {
            text += &format!("{NETWORK}={}\n{SUBNET}={}/{}\n", v4.network, v4.gateway(), v4.subnet.prefix_len());
        }
        if let Some(v6) = &self.ipv6 {
            text +=
                &format!("{IPV6_NETWORK}={}\n{IPV6_SUBNET}={}/{}\n", v6.network, v6.gateway(), v6.subnet.prefix_len());
        }
        text + &format!("{MTU}={}\n{IPMASQ}={}\n", self.mtu, self.ip_masq)
    }

    /// The subnet that names this host's lease ([`crate::lease::LeaseKey::id`]): the IPv4 one,
    /// IPv6-only the IPv6 one.
    pub fn lease_id(&self) -> IpNet {
        match (self.ipv4, self.ipv6) {
            (Some(v4), _) => IpNet::V4(v4.subnet),
            (None, Some(v6)) => IpNet::V6(v6.subnet),
            (None, None) => unreachable!("parsed or built with a family"),
        }
    }

    /// Parses the text as flannel's readers do: `KEY=VALUE` lines, unknown keys, comments and
    /// lines without `=` ignored. `FLANNEL_NETWORK` and `FLANNEL_SUBNET` (or, IPv6-only, the
    /// `FLANNEL_IPV6_` pair) and `FLANNEL_MTU` are required; `FLANNEL_IPMASQ` defaults to false.
    pub fn parse(text: &str) -> Result<SubnetEnv, SubnetEnvError> {
        let keys = Keys::scan(text)?;
        let ipv4 =
            pair(keys.network, keys.subnet, [NETWORK, SUBNET])?.map(|(network, subnet)| Ipv4Pair { network, subnet });
        let ipv6 = pair(keys.ipv6_network, keys.ipv6_subnet, [IPV6_NETWORK, IPV6_SUBNET])?
            .map(|(network, subnet)| Ipv6Pair { network, subnet });
        if ipv4.is_none() && ipv6.is_none() {
            return Err(SubnetEnvError::Missing { key: NETWORK });
        }
        Ok(SubnetEnv {
            ipv4,
            ipv6,
            mtu: keys.mtu.ok_or(SubnetEnvError::Missing { key: MTU })?,
            ip_masq: keys.ip_masq.unwrap_or(false),
        })
    }

    /// Reads and parses the file.
    pub fn read(path: &Path) -> Result<SubnetEnv, SubnetEnvError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| SubnetEnvError::Io { path: path.to_path_buf(), source })?;
        Self::parse(&text)
    }

    /// Writes the file atomically (temp file + rename), so a reader never sees half of it.
    /// World-readable (0644) as flannel writes it, whatever the umask: CNI plugins and docker
    /// helpers running as other users read it. A directory made for it is 0755.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        }
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        // fchmod: not masked by the umask, unlike the mode a file is created with.
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
        tmp.write_all(self.render().as_bytes())?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }
}

/// The subnet a previous run wrote, if the file is there and readable: an agent restarting takes
/// that subnet back when it can.
pub fn previous_subnet(path: &Path) -> Option<Ipv4Net> {
    Keys::scan(&std::fs::read_to_string(path).ok()?).ok()?.subnet
}

/// The IPv6 subnet a previous dual-stack or IPv6-only run wrote.
pub fn previous_subnet_v6(path: &Path) -> Option<Ipv6Net> {
    Keys::scan(&std::fs::read_to_string(path).ok()?).ok()?.ipv6_subnet
}

/// One family's network and subnet lines: both or neither.
fn pair<N>(network: Option<N>, subnet: Option<N>, keys: [&'static str; 2]) -> Result<Option<(N, N)>, SubnetEnvError> {
    match (network, subnet) {
        (Some(network), Some(subnet)) => Ok(Some((network, subnet))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(SubnetEnvError::Missing { key: keys[1] }),
        (None, Some(_)) => Err(SubnetEnvError::Missing { key: keys[0] }),
    }
}

impl Ipv4Pair {
    /// The bridge's address: the subnet's first host.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet.network()) + 1)
    }
}

impl Ipv6Pair {
    /// The bridge's IPv6 address: the subnet's first host, as flannel writes it.
    pub fn gateway(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.subnet.network()) + 1)
    }
}

/// The known keys of one file, each as far as it was there.
#[derive(Debug, Default)]
struct Keys {
    network: Option<Ipv4Net>,
    subnet: Option<Ipv4Net>,
    ipv6_network: Option<Ipv6Net>,
    ipv6_subnet: Option<Ipv6Net>,
    mtu: Option<u32>,
    ip_masq: Option<bool>,
}

impl Keys {
    fn scan(text: &str) -> Result<Keys, SubnetEnvError> {
        let mut keys = Keys::default();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = value.trim();
            let bad = |key: &'static str, reason: String| SubnetEnvError::BadValue { line: index + 1, key, reason };
            // The subnet is written with the bridge's address (10.244.3.1/24): the range is its network.
            let net =
                |key: &'static str| value.parse::<Ipv4Net>().map(|n| n.trunc()).map_err(|e| bad(key, e.to_string()));
            let net6 =
                |key: &'static str| value.parse::<Ipv6Net>().map(|n| n.trunc()).map_err(|e| bad(key, e.to_string()));
            match key.trim() {
                NETWORK => keys.network = Some(net(NETWORK)?),
                SUBNET => keys.subnet = Some(net(SUBNET)?),
                IPV6_NETWORK => keys.ipv6_network = Some(net6(IPV6_NETWORK)?),
                IPV6_SUBNET => keys.ipv6_subnet = Some(net6(IPV6_SUBNET)?),
                MTU => keys.mtu = Some(value.parse().map_err(|e: std::num::ParseIntError| bad(MTU, e.to_string()))?),
                IPMASQ => {
                    keys.ip_masq =
                        Some(value.parse().map_err(|e: std::str::ParseBoolError| bad(IPMASQ, e.to_string()))?)
                }
                _ => {}
            }
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_flannels_format_and_reads_it_back() {
        let env = SubnetEnv {
            ipv4: Some(Ipv4Pair {
                network: "10.244.0.0/16".parse().unwrap(),
                subnet: "10.244.3.0/24".parse().unwrap(),
            }),
            ipv6: None,
            mtu: 1450,
            ip_masq: false,
        };
        assert_eq!(
            env.render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/flannel/subnet.env");
        env.write(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), env.render());
        assert_eq!(previous_subnet(&path), Some("10.244.3.0/24".parse().unwrap()));
        assert_eq!(previous_subnet(&dir.path().join("missing")), None);
        // The previous subnet needs only its own key; reading the whole file needs the others.
        std::fs::write(&path, "FLANNEL_SUBNET=10.244.9.1/24\n").unwrap();
        assert_eq!(previous_subnet(&path), Some("10.244.9.0/24".parse().unwrap()));
        assert!(matches!(SubnetEnv::read(&path), Err(SubnetEnvError::Missing { key: "FLANNEL_NETWORK" })));
        std::fs::write(&path, "FLANNEL_MTU=1450\n").unwrap();
        assert!(matches!(SubnetEnv::read(&path), Err(SubnetEnvError::Missing { key: "FLANNEL_NETWORK" })), "no family");
        let absent = SubnetEnv::read(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(&absent, SubnetEnvError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound));
    }

    const FLANNELD: &str =
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

    #[test]
    fn parses_flannels_format() {
        let env = SubnetEnv::parse(FLANNELD).unwrap();
        let v4 = env.ipv4.unwrap();
        assert_eq!(v4.network.to_string(), "10.244.0.0/16");
        assert_eq!(v4.subnet.to_string(), "10.244.3.0/24");
        assert_eq!(env.mtu, 1450);
        assert!(env.ip_masq);
        assert_eq!(v4.gateway().to_string(), "10.244.3.1");
        assert_eq!(SubnetEnv::parse(&env.render()).unwrap(), env);
    }

    #[test]
    fn a_dual_stack_file_is_flannels() {
        // As flanneld writes it (pkg/subnet/subnet.go, WriteSubnetFile): the IPv6 lines after the
        // IPv4 ones, each subnet with its first host address.
        let flanneld = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\n\
                        FLANNEL_IPV6_NETWORK=2001:db8:42::/56\nFLANNEL_IPV6_SUBNET=2001:db8:42:3::1/64\n\
                        FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";
        let env = SubnetEnv::parse(flanneld).unwrap();
        let v6 = env.ipv6.unwrap();
        assert_eq!(v6.subnet.to_string(), "2001:db8:42:3::/64");
        assert_eq!(v6.gateway().to_string(), "2001:db8:42:3::1");
        assert_eq!(env.render(), flanneld);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subnet.env");
        env.write(&path).unwrap();
        assert_eq!(previous_subnet_v6(&path), Some(v6.subnet));
        let half = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_IPV6_NETWORK=2001:db8::/56\nFLANNEL_MTU=1\n";
        assert!(matches!(SubnetEnv::parse(half), Err(SubnetEnvError::Missing { key: "FLANNEL_IPV6_SUBNET" })));
        let bad = "FLANNEL_IPV6_SUBNET=10.0.0.1/24\n";
        assert!(matches!(SubnetEnv::parse(bad), Err(SubnetEnvError::BadValue { key: "FLANNEL_IPV6_SUBNET", .. })));
    }

    #[test]
    fn an_ipv6_only_file_is_flannels() {
        // As flanneld writes it with EnableIPv4 false: no IPv4 lines at all.
        let flanneld = "FLANNEL_IPV6_NETWORK=2001:db8:42::/56\nFLANNEL_IPV6_SUBNET=2001:db8:42:3::1/64\n\
                        FLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n";
        let env = SubnetEnv::parse(flanneld).unwrap();
        assert_eq!(env.ipv4, None);
        assert_eq!(env.ipv6.unwrap().subnet.to_string(), "2001:db8:42:3::/64");
        assert_eq!(env.render(), flanneld);
    }

    #[test]
    fn unknown_keys_comments_and_stray_lines_are_ignored_and_ipmasq_defaults_to_false() {
        let text = "# written by flanneld\nFLANNEL_NETWORK=10.244.0.0/16\n\nFLANNEL_IPV6_NETWORK=fd00::/56\n\
                    junk\nFLANNEL_IPV6_SUBNET=fd00:0:0:3::1/64\nFLANNEL_SUBNET_X=nope\n FLANNEL_SUBNET = 10.244.3.1/24 \nFLANNEL_MTU=1450\n";
        let env = SubnetEnv::parse(text).unwrap();
        assert_eq!(env.ipv4.unwrap().subnet.to_string(), "10.244.3.0/24");
        assert!(!env.ip_masq);
    }

    #[test]
    fn a_malformed_value_names_its_line_and_key() {
        let cases = [
            ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=big\n", 3, "FLANNEL_MTU"),
            ("FLANNEL_SUBNET=x\n", 1, "FLANNEL_SUBNET"),
            ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_IPMASQ=yes\n", 2, "FLANNEL_IPMASQ"),
        ];
        for (text, line, key) in cases {
            let err = SubnetEnv::parse(text).unwrap_err();
            assert!(
                matches!(err, SubnetEnvError::BadValue { line: l, key: k, .. } if l == line && k == key),
                "{err:?}"
            );
            assert!(err.to_string().starts_with(&format!("line {line}: {key}: ")), "{err}");
        }
    }

    #[test]
    fn a_missing_required_key_is_named() {
        let err = SubnetEnv::parse("FLANNEL_NETWORK=10.244.0.0/16\n").unwrap_err();
        assert!(matches!(err, SubnetEnvError::Missing { key: "FLANNEL_SUBNET" }), "{err:?}");
        assert_eq!(err.to_string(), "FLANNEL_SUBNET: missing");
        let err = SubnetEnv::parse("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\n").unwrap_err();
        assert!(matches!(err, SubnetEnvError::Missing { key: "FLANNEL_MTU" }), "{err:?}");
    }
}
