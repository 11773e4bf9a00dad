//! The DynamoDB capacity of one request's lifecycle, counted by the store (read and write
//! request units by DynamoDB's rules from the sizes of the items actually read and written;
//! see `ReadStats` and `WriteStats`), for conversations of 10, 25 and 50 iterations.
//!
//! The store calls follow the pipeline's code: admission (`tb_frontdoor::limits::admit`),
//! each worker slice (`tb_pipeline::worker`: load, claim, conversation read, one commit per
//! iteration, the hand-over commit), and the finalizer (`tb_pipeline::finalizer`: load,
//! claim, the calls read for usage, one commit per step of `STEPS`, the final commit, the
//! slot given back and recorded). Printed as a table (run with `--nocapture`); the test
//! fails if what an iteration writes grows with the conversation.

mod common;

use common::{call, new_request, turn};
use tb_aws::DynamoStore;
use tb_aws::testing::TestAws;
use tb_core::domain::{Phase, RequestId, UserId};
use tb_pipeline::{Appended, StateStore};

/// `tb_pipeline::SliceSettings::standard().iterations_per_slice`.
const ITERATIONS_PER_SLICE: usize = 25;
/// `tb_pipeline::finalizer::STEPS.len()`.
const FINALIZER_STEPS: usize = 5;
/// The tool result of each iteration, in bytes (a file listing, a short command output).
const TOOL_RESULT_BYTES: usize = 1_000;

#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Units {
    read: f64,
    write: u64,
}

fn units(store: &DynamoStore) -> Units {
    Units {
        read: store.read_stats().half_read_units as f64 / 2.0,
        write: store.write_stats().write_units,
    }
}

fn since(store: &DynamoStore, before: Units) -> Units {
    let now = units(store);
    Units {
        read: now.read - before.read,
        write: now.write - before.write,
    }
}

struct Lifecycle {
    admission: Units,
    /// Per iteration, the mean over the conversation.
    iteration: Units,
    /// Per slice, without its iterations: load, claim, conversation read, hand-over.
    slice_overhead: Units,
    finalize: Units,
    total: Units,
}

async fn lifecycle(store: &DynamoStore, iterations: usize) -> Lifecycle {
    let start = units(store);
    let owner = format!("user_cap{iterations}");
    let (mut rec, first) = new_request(&owner, 1_000_000);
    let user = UserId::parse(&owner).unwrap();

    // Admission: the idempotent retry's load, the slot, the running requests, the create.
    let before = units(store);
    let absent = RequestId::parse("req_capacity_retry_absent").unwrap();
    assert_eq!(store.load(&absent).await.unwrap(), None);
    assert!(store.acquire_slot(&user, 5).await.unwrap());
    store.running_for_owner(&user, 1000).await.unwrap();
    rec.holds_slot = true;
    store.create(&rec, &first).await.unwrap();
    let admission = since(store, before);

    let mut iteration = Units::default();
    let mut slice_overhead = Units::default();
    let mut done = 0;
    while done < iterations {
        let before = units(store);
        let loaded = store.load(&rec.id).await.unwrap().unwrap();
        assert_eq!(loaded, rec);
        rec.phase = Phase::Running;
        save(store, &mut rec, &[], &[]).await;
        store.conversation(&rec).await.unwrap();
        slice_overhead = add(slice_overhead, since(store, before));
        for _ in 0..ITERATIONS_PER_SLICE.min(iterations - done) {
            done += 1;
            let before = units(store);
            let messages = turn(done, TOOL_RESULT_BYTES);
            let calls = [call(done as u32)];
            rec.agent.iteration += 1;
            save(store, &mut rec, &messages, &calls).await;
            iteration = add(iteration, since(store, before));
        }
        let before = units(store);
        if done == iterations {
            rec.phase = Phase::Finalizing;
        } else {
            rec.seq += 1;
        }
        save(store, &mut rec, &[], &[]).await;
        slice_overhead = add(slice_overhead, since(store, before));
    }

    let before = units(store);
    store.load(&rec.id).await.unwrap().unwrap();
    save(store, &mut rec, &[], &[]).await; // the claim
    store.conversation(&rec).await.unwrap(); // the calls, for the usage ledger
    for step in 0..FINALIZER_STEPS {
        rec.push_activity(format!("step {step}: done"));
        save(store, &mut rec, &[], &[]).await;
    }
    rec.phase = Phase::Succeeded;
    save(store, &mut rec, &[], &[]).await;
    // The slot given back in the same transaction that records it.
    rec.holds_slot = false;
    let v = rec.version;
    rec.version += 1;
    store.commit_releasing_slot(&rec, v).await.unwrap();
    let finalize = since(store, before);

    let slices = iterations.div_ceil(ITERATIONS_PER_SLICE);
    Lifecycle {
        admission,
        iteration: Units {
            read: iteration.read / iterations as f64,
            write: iteration.write / iterations as u64,
        },
        slice_overhead: Units {
            read: slice_overhead.read / slices as f64,
            write: slice_overhead.write / slices as u64,
        },
        finalize,
        total: since(store, start),
    }
}

fn add(a: Units, b: Units) -> Units {
    Units {
        read: a.read + b.read,
        write: a.write + b.write,
    }
}

async fn save(
    store: &DynamoStore,
    rec: &mut tb_pipeline::RequestRecord,
    messages: &[tb_core::Message],
    calls: &[tb_core::ModelCall],
) {
    let first_index = rec.agent.messages;
    rec.agent.messages += messages.len();
    rec.agent.calls += calls.len();
    tb_pipeline::ports::save_next(
        store,
        rec,
        Appended {
            first_index,
            messages,
            calls,
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn request_units_per_lifecycle_and_what_grows_with_the_conversation() {
    let aws = TestAws::new().await;
    let store = aws.store();
    println!(
        "| iterations | admission RRU / WRU | per iteration RRU / WRU | per slice overhead RRU / WRU | finalize RRU / WRU | whole request RRU / WRU |"
    );
    println!("|---:|---|---|---|---|---|");
    let mut per_iteration = Vec::new();
    for iterations in [10, 25, 50] {
        let l = lifecycle(&store, iterations).await;
        println!(
            "| {iterations} | {} / {} | {} / {} | {} / {} | {} / {} | {} / {} |",
            l.admission.read,
            l.admission.write,
            l.iteration.read,
            l.iteration.write,
            l.slice_overhead.read,
            l.slice_overhead.write,
            l.finalize.read,
            l.finalize.write,
            l.total.read,
            l.total.write
        );
        per_iteration.push(l.iteration.write);
        assert_eq!(l.iteration.read, 0.0, "an iteration reads nothing");
    }
    assert!(
        per_iteration.windows(2).all(|w| w[0] == w[1]),
        "write units per iteration grew with the conversation: {per_iteration:?}"
    );
}
