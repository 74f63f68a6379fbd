//! Link-time settings of the `weft` binaries.

fn main() {
    // Relative relocations packed (DT_RELR, glibc ≥ 2.36): the dynamic loader reads a few
    // kilobytes at start instead of a table of ~50,000 entries, which would otherwise stay
    // resident for the life of the agent. Older linkers ignore the flag with a warning.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu")
    {
        println!("cargo::rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo::rerun-if-changed=build.rs");
}
