//! The load test on moto ([`tb_tests::load`]): requests created concurrently through the api's
//! front door, run by concurrent worker and finalizer invocations fed from the real queues,
//! with duplicate deliveries and 5% of handler runs killed at random points. Every request
//! must end exactly once and exactly like an uninterrupted run (conversation, calls, cost,
//! ledger, one source commit and its receipt commit, one deployment record, its callback), and every user's slot counter and
//! spending total must end exactly right.
//!
//! `TB_LOAD_REQUESTS` sets the number of requests: by default 50, which keeps this test near
//! two and a half minutes on a shared 2-core machine (2 min 26 s in all); 100 takes about six minutes there
//! (moto's DynamoDB is the bottleneck: it copies the table for every transaction item, so
//! the time grows faster than the number of requests).
//! `TB_LOAD_SEED` sets the seed of the kills and duplicates (default: random, printed). Run it
//! alone with its figures: `TB_LOAD_REQUESTS=100 scripts/test -p tb-tests --test load --
//! --nocapture`. Needs what `scripts/test` starts (moto) and Postgres on 127.0.0.1:5432.

use tb_tests::load::{self, LoadSettings};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_request_ends_exactly_once_under_kills_and_duplicate_deliveries() {
    let requests = std::env::var("TB_LOAD_REQUESTS")
        .ok()
        .map(|v| v.parse().expect("TB_LOAD_REQUESTS is a number of requests"))
        .unwrap_or(50);
    let seed = std::env::var("TB_LOAD_SEED")
        .ok()
        .map(|v| v.parse().expect("TB_LOAD_SEED is a number"))
        .unwrap_or_else(rand::random);
    println!("load: {requests} requests, seed {seed}");
    let report = load::run(LoadSettings::faulty(requests, seed)).await;
    println!("{}", report.summary());
    assert!(
        report.problems.is_empty(),
        "seed {seed}: {} problems:\n{}",
        report.problems.len(),
        report.problems.join("\n")
    );
    // The faults really happened: invocations killed (mid-way, or after the handler returned
    // but before its answer, which leaves the message to be redelivered all the same; which
    // of the two a kill becomes depends on timing, so the count is of both).
    let killed = [&report.worker, &report.finalizer]
        .iter()
        .map(|r| r.killed_mid_way + r.killed_after_return)
        .sum::<usize>();
    assert!(
        killed > 0 || requests < 20,
        "seed {seed}: no invocation was killed"
    );
    assert!(report.worker.duplicates + report.finalizer.duplicates > 0 || requests < 20);
}
