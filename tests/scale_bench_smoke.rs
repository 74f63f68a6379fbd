//! Smoke run of the store-scale benchmark (benches/scale.rs) in its quick mode: 200 agents'
//! store clients acquire leases at once against a real etcd and watch each other's.

#[path = "../benches/scale.rs"]
mod scale;

#[test]
fn quick_scale_benchmark_converges_and_every_change_is_seen() {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    let report = runtime.block_on(scale::run(200));
    report.print();
    assert_eq!(report.duplicates, 0);
    assert_eq!(report.unseen, 0, "every rewritten lease reaches every other agent's watch");
    assert_eq!(report.seen.len(), 100 * 199);
}
