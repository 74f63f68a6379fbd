//! Smoke run of the cloud overflow benchmark (benches/cloud_overflow.rs) in its quick mode: 200
//! aws-vpc agents with overflow on, over 3 tables of 50 routes. The benchmark asserts as it goes:
//! the cluster settles, no table goes past its capacity, a settled cluster writes nothing, freed
//! slots are taken by overflowed hosts. Here, on top: the steady state's EC2 bill does not grow
//! with the cluster once the leader's view is shared (issue 17).

#[path = "../benches/cloud_overflow.rs"]
mod cloud_overflow;

use cloud_overflow::Sharing;

#[test]
fn quick_cloud_benchmark_settles() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let without = runtime.block_on(cloud_overflow::run(200, Sharing::None));
    let with = runtime.block_on(cloud_overflow::run(200, Sharing::LeaderView));
    assert!(without.of("DescribeRouteTables") >= 200.0, "every agent describes: {without:?}");
    // The leader's describe each recheck, and one prober per full table asking once its
    // refusal is old (a describe and a refused CreateRoute every TRUSTED_CHECKS + 1 rechecks).
    assert!(with.of("DescribeRouteTables") < 2.0, "{with:?}");
    assert!(with.per_cluster() < 3.0, "{with:?}");
    assert!(without.of("CreateRoute") < 1.0, "overflowed hosts that are not probers do not ask: {without:?}");
}
