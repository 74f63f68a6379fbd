//! subnet.env is world-readable (0644) as flannel writes it, even under a umask of 077. A test
//! binary of its own: the umask is the whole process's.

use std::os::unix::fs::PermissionsExt;

use weft::subnet_env::SubnetEnv;

#[test]
fn subnet_env_is_world_readable_under_a_strict_umask() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flannel/subnet.env");
    let env = SubnetEnv {
        ipv4: Some(weft::subnet_env::Ipv4Pair {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.3.0/24".parse().unwrap(),
        }),
        ipv6: None,
        mtu: 1450,
        ip_masq: true,
    };
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let written = env.write(&path).and_then(|()| env.write(&path));
    nix::sys::stat::umask(old);
    written.unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o644, "subnet.env");
    assert_eq!(mode(path.parent().unwrap()), 0o755, "the directory made for it");
    assert_eq!(SubnetEnv::read(&path).unwrap(), env);
}
