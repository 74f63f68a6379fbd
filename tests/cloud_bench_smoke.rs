//! Smoke run of the cloud overflow benchmark (benches/cloud_overflow.rs) in its quick mode: 200
//! aws-vpc agents with overflow on, over 3 tables of 50 routes. The benchmark asserts as it goes:
//! the cluster settles, no table goes past its capacity, a settled cluster writes nothing, freed
//! slots are taken by overflowed hosts.

#[path = "../benches/cloud_overflow.rs"]
mod cloud_overflow;

#[test]
fn quick_cloud_benchmark_settles() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(cloud_overflow::run(200));
}
