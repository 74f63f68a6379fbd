//! `scripts/setup.sh` checks Rust before anything else and says what to install. Each case stops
//! before the script touches apt: no cargo, cargo only in the sudo user's ~/.cargo/bin, a rustc
//! older than Cargo.toml's rust-version.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/setup.sh");
/// Where the tools the script uses live, without rustup's directory.
const SYSTEM_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

fn setup(path: &str, sudo_user: Option<&str>) -> Output {
    let mut command = Command::new("bash");
    command.arg(SCRIPT).env_clear().env("PATH", path);
    if let Some(user) = sudo_user {
        command.env("SUDO_USER", user);
    }
    command.output().expect("run setup.sh")
}

fn fake_tool(dir: &Path, name: &str, output: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\necho '{output}'\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn rust_version() -> String {
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    let line = manifest.lines().find(|l| l.starts_with("rust-version")).expect("rust-version in Cargo.toml");
    line.split('"').nth(1).unwrap().to_string()
}

#[test]
fn setup_says_how_to_install_rust_when_cargo_is_missing() {
    assert!(!Path::new("/usr/bin/cargo").exists(), "this test needs a machine without a system cargo");
    let out = setup(SYSTEM_PATH, None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("weft needs Rust >= {}", rust_version())), "{err}");
    assert!(err.contains("https://sh.rustup.rs | sh -s -- -y"), "{err}");
}

#[test]
fn setup_under_sudo_points_at_the_users_cargo() {
    let home = std::env::var("HOME").unwrap();
    assert!(Path::new(&home).join(".cargo/bin/cargo").exists(), "needs rustup's cargo in {home}/.cargo/bin");
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
    let out = setup(SYSTEM_PATH, Some(user.trim()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("cargo is in {home}/.cargo/bin")), "{err}");
    assert!(err.contains("sudo env \"PATH=$PATH\""), "{err}");
}

#[test]
fn setup_refuses_a_rustc_older_than_rust_version() {
    let dir = tempfile::tempdir().unwrap();
    fake_tool(dir.path(), "cargo", "cargo 1.63.0");
    fake_tool(dir.path(), "rustc", "rustc 1.63.0 (4b91a6ea7 2022-08-08)");
    let path = format!("{}:{SYSTEM_PATH}", dir.path().display());
    let out = setup(&path, None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("rustc 1.63.0 at {}/rustc is older than {}", dir.path().display(), rust_version())),
        "{err}"
    );
    assert!(err.contains("apt-get remove -y rustc cargo"), "{err}");
}
