//! The delegate plugin's config, built as flannel's CNI plugin builds it: a bridge (`cni0`) that
//! is the pods' gateway, host-local IPAM over this host's subnet (both of them, dual-stack: one
//! range set each, so a pod gets an address of each family), a route to the whole cluster
//! network of each family (through the bridge), the MTU the agent chose, and masquerading only
//! when the agent does not do it.
//! Keys the operator put under `delegate` (or `ipam`) win over every derived one.

use serde_json::{json, Map, Value};

use super::conf::NetConf;
use crate::subnet_env::SubnetEnv;

/// The bridge flannel's setups use; CNI's bridge plugin defaults to it too.
pub const DEFAULT_BRIDGE: &str = "cni0";

/// The delegate's network config. Pure: the same inputs always give the same JSON.
pub fn build(conf: &NetConf, subnet: &SubnetEnv) -> Map<String, Value> {
    let mut delegate = conf.delegate.clone();
    delegate.insert("name".into(), json!(conf.name));
    delegate.insert("cniVersion".into(), json!(conf.cni_version));
    let default = |d: &mut Map<String, Value>, key: &str, value: Value| {
        d.entry(key.to_string()).or_insert(value);
    };
    default(&mut delegate, "type", json!("bridge"));
    // When the agent masquerades traffic leaving the cluster, the bridge must not do it twice.
    default(&mut delegate, "ipMasq", json!(!subnet.ip_masq));
    default(&mut delegate, "mtu", json!(subnet.mtu));
    if delegate.get("type") == Some(&json!("bridge")) {
        default(&mut delegate, "bridge", json!(DEFAULT_BRIDGE));
        default(&mut delegate, "isGateway", json!(true));
    }
    if let Some(runtime) = &conf.runtime_config {
        delegate.insert("runtimeConfig".into(), runtime.clone());
    }
    delegate.insert("ipam".into(), Value::Object(ipam(conf, subnet)));
    delegate
}

fn ipam(conf: &NetConf, subnet: &SubnetEnv) -> Map<String, Value> {
    let mut ipam = conf.ipam.clone();
    ipam.entry("type").or_insert(json!("host-local"));
    let v4 = subnet.ipv4.map(|v4| json!([{ "subnet": v4.subnet.to_string() }]));
    let v6 = subnet.ipv6.map(|v6| json!([{ "subnet": v6.subnet.to_string() }]));
    let ranges: Vec<Value> = v4.into_iter().chain(v6).collect();
    ipam.insert("ranges".into(), Value::Array(ranges));
    // Routes the operator listed come first; the cluster network is always reachable. Its
    // gateway is spelled out although the bridge would use it anyway: the bridge plugin's CHECK
    // looks for the route exactly as the result lists it, and a gateway-less one never matches.
    let mut routes = match ipam.remove("routes") {
        Some(Value::Array(routes)) => routes,
        _ => Vec::new(),
    };
    if let Some(v4) = &subnet.ipv4 {
        routes.push(json!({ "dst": v4.network.to_string(), "gw": v4.gateway().to_string() }));
    }
    if let Some(v6) = &subnet.ipv6 {
        routes.push(json!({ "dst": v6.network.to_string(), "gw": v6.gateway().to_string() }));
    }
    ipam.insert("routes".into(), Value::Array(routes));
    ipam
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(ip_masq: bool) -> SubnetEnv {
        SubnetEnv {
            ipv4: Some(crate::subnet_env::Ipv4Pair {
                network: "10.244.0.0/16".parse().unwrap(),
                subnet: "10.244.3.0/24".parse().unwrap(),
            }),
            ipv6: None,
            mtu: 1450,
            ip_masq,
        }
    }

    fn conf(json: &str) -> NetConf {
        NetConf::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn builds_flannels_bridge_config() {
        let c = conf(r#"{"cniVersion":"1.0.0","name":"weft","type":"weft-cni"}"#);
        assert_eq!(
            Value::Object(build(&c, &subnet(true))),
            json!({
                "name": "weft",
                "cniVersion": "1.0.0",
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": false,
                "mtu": 1450,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.244.3.0/24"}]],
                    "routes": [{"dst": "10.244.0.0/16", "gw": "10.244.3.1"}]
                }
            })
        );
    }

    #[test]
    fn the_bridge_masquerades_when_the_agent_does_not() {
        let c = conf(r#"{"cniVersion":"1.0.0","name":"weft"}"#);
        assert_eq!(build(&c, &subnet(false))["ipMasq"], json!(true));
    }

    #[test]
    fn operator_keys_win_and_extra_routes_are_kept() {
        let c = conf(
            r#"{"cniVersion":"0.4.0","name":"weft",
                "delegate":{"bridge":"br-pods","mtu":1400,"hairpinMode":true,"isDefaultGateway":true},
                "ipam":{"routes":[{"dst":"192.0.2.0/24"}]},
                "runtimeConfig":{"portMappings":[]}}"#,
        );
        let d = build(&c, &subnet(true));
        assert_eq!(d["bridge"], "br-pods");
        assert_eq!(d["mtu"], 1400);
        assert_eq!(d["hairpinMode"], true);
        assert_eq!(d["isDefaultGateway"], true);
        assert_eq!(d["cniVersion"], "0.4.0");
        assert_eq!(d["runtimeConfig"], json!({"portMappings": []}));
        assert_eq!(d["ipam"]["routes"], json!([{"dst": "192.0.2.0/24"}, {"dst": "10.244.0.0/16", "gw": "10.244.3.1"}]));
    }

    #[test]
    fn a_dual_stack_host_hands_out_an_address_of_each_family() {
        let c = conf(r#"{"cniVersion":"1.0.0","name":"weft"}"#);
        let mut env = subnet(true);
        env.ipv6 = Some(crate::subnet_env::Ipv6Pair {
            network: "2001:db8:42::/56".parse().unwrap(),
            subnet: "2001:db8:42:3::/64".parse().unwrap(),
        });
        let d = build(&c, &env);
        assert_eq!(d["ipam"]["ranges"], json!([[{"subnet": "10.244.3.0/24"}], [{"subnet": "2001:db8:42:3::/64"}]]));
        assert_eq!(
            d["ipam"]["routes"],
            json!([
                {"dst": "10.244.0.0/16", "gw": "10.244.3.1"},
                {"dst": "2001:db8:42::/56", "gw": "2001:db8:42:3::1"}
            ])
        );
    }

    #[test]
    fn an_ipv6_only_host_hands_out_ipv6_only() {
        let c = conf(r#"{"cniVersion":"1.0.0","name":"weft"}"#);
        let mut env = subnet(true);
        env.ipv4 = None;
        env.ipv6 = Some(crate::subnet_env::Ipv6Pair {
            network: "2001:db8:42::/56".parse().unwrap(),
            subnet: "2001:db8:42:3::/64".parse().unwrap(),
        });
        let d = build(&c, &env);
        assert_eq!(d["ipam"]["ranges"], json!([[{"subnet": "2001:db8:42:3::/64"}]]));
        assert_eq!(d["ipam"]["routes"], json!([{"dst": "2001:db8:42::/56", "gw": "2001:db8:42:3::1"}]));
    }

    #[test]
    fn other_delegates_get_no_bridge_keys() {
        let c = conf(r#"{"cniVersion":"1.0.0","name":"weft","delegate":{"type":"ipvlan","master":"eth0"}}"#);
        let d = build(&c, &subnet(true));
        assert!(d.get("bridge").is_none() && d.get("isGateway").is_none());
        assert_eq!(d["ipam"]["type"], "host-local");
    }
}
