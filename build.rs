//! Build-time settings of the `weft` binaries: link flags and the git revision `weft version`
//! prints.

use std::path::Path;
use std::process::Command;

fn main() {
    // Relative relocations packed (DT_RELR, glibc ≥ 2.36): the dynamic loader reads a few
    // kilobytes at start instead of a table of ~50,000 entries, which would otherwise stay
    // resident for the life of the agent. Older linkers ignore the flag with a warning.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu")
    {
        println!("cargo::rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    order_symbols();
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rustc-env=WEFT_GIT_REVISION={}", revision());
}

/// The functions an agent runs, laid out first (`link/symbol-order.txt`, recorded from a `dist`
/// build by `scripts/symbol-order.sh`). The kernel maps a binary's code in 64 KiB windows around
/// each page run, so the agent's ~2 MB of code spread over a 14 MB text section kept most of it
/// resident, the cloud SDKs' too. Optimised builds on x86_64 Linux only, where rustc links with
/// rust-lld (the only linker here that reads the file); `WEFT_SYMBOL_ORDER=off` leaves it out.
/// Names the build does not have (another profile, rustc or lock file) are skipped silently.
fn order_symbols() {
    println!("cargo::rerun-if-env-changed=WEFT_SYMBOL_ORDER");
    let file = Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default()).join("link/symbol-order.txt");
    println!("cargo::rerun-if-changed={}", file.display());
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let wanted = var("PROFILE") == "release" && var("WEFT_SYMBOL_ORDER") != "off";
    if wanted && var("TARGET") == "x86_64-unknown-linux-gnu" && file.exists() {
        println!("cargo::rustc-link-arg-bin=weft=-Wl,--symbol-ordering-file={}", file.display());
        println!("cargo::rustc-link-arg-bin=weft=-Wl,--no-warn-symbol-ordering");
    }
}

/// `WEFT_GIT_REVISION` when set (a packager's tarball build), else `git rev-parse --short HEAD`,
/// else "unknown" (no git, no .git). Reruns only when HEAD or the branch it names moves, not on
/// every change under .git.
fn revision() -> String {
    println!("cargo::rerun-if-env-changed=WEFT_GIT_REVISION");
    if let Some(given) = std::env::var("WEFT_GIT_REVISION").ok().filter(|r| !r.trim().is_empty()) {
        return given.trim().to_string();
    }
    // Worktrees keep HEAD in their own git dir and the branches in the common one: ask git.
    for path in ["HEAD", "packed-refs"] {
        watch(git(&["rev-parse", "--git-path", path]));
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch(git(&["rev-parse", "--git-path", &branch]));
    }
    git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into())
}

/// Watches a file that exists: a missing one would make cargo rerun this script every build.
fn watch(path: Option<String>) {
    if let Some(path) = path.filter(|p| Path::new(p).exists()) {
        println!("cargo::rerun-if-changed={path}");
    }
}

/// Git's answer, trimmed; `None` when git is missing or fails (not a repository).
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}
