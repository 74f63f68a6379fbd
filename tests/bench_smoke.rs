//! Smoke run of the data-plane benchmark (benches/dataplane.rs) in its quick mode: 1,000 leases,
//! every variant, with the debug agent. Checks that every run converges and the namespaces go
//! away; the timings of a debug build say nothing and are not checked.

#[path = "../benches/dataplane.rs"]
mod dataplane;

#[test]
fn quick_benchmark_runs_and_cleans_up() {
    if !nix::unistd::geteuid().is_root() {
        panic!("the benchmark builds network namespaces and needs root; CI runs as root");
    }
    let options = dataplane::Options {
        quick: true,
        headline: false,
        agent: env!("CARGO_BIN_EXE_weft").into(),
        agent_note: "debug build, smoke test".into(),
        lean_agent: None,
    };
    let report = dataplane::run(&options).expect("the benchmark runs");
    assert!(report.complete(), "{:#?}", report.problems);
    let prefix = format!("wbench{}-", std::process::id());
    let left = weft::lab::wire::namespaces_with_prefix(&prefix).unwrap();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}
