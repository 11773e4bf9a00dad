//! Bytes written per commit do not grow with the conversation: an iteration writes its new
//! items and the fixed-size `STATE` item, never the history.
//!
//! This takes about half a minute against moto, whose `TransactWriteItems` deep-copies the
//! whole table for rollback (so its time, unlike DynamoDB's, grows with the table).

mod common;

use common::{call, new_request, step, turn};
use tb_aws::testing::TestAws;
use tb_pipeline::StateStore;

#[tokio::test]
async fn bytes_written_per_commit_stay_flat_as_the_conversation_grows_to_1000_messages() {
    let aws = TestAws::new().await;
    let store = aws.store();
    let (mut record, first) = new_request("user_a", 1_000);
    store.create(&record, &first).await.unwrap();

    let mut per_commit = Vec::new();
    for i in 1..=500u32 {
        let before = store.bytes_written();
        step(&store, &mut record, &turn(i as usize, 300), &[call(i)])
            .await
            .unwrap();
        per_commit.push(store.bytes_written() - before);
    }
    assert_eq!(record.agent.messages, 1_001);

    let (fifth, last) = (per_commit[4], per_commit[499]);
    assert!(
        fifth > 300,
        "the commit must have written its items ({fifth} bytes)"
    );
    assert!(
        (last as f64) < fifth as f64 * 1.2,
        "iteration 500 wrote {last} bytes, iteration 5 wrote {fifth}: writes grow with the conversation"
    );
    let max = *per_commit.iter().max().unwrap();
    assert!(
        (max as f64) < fifth as f64 * 1.2,
        "the largest commit wrote {max} bytes, iteration 5 {fifth}"
    );

    // And the whole conversation still reads back, across query pages.
    let (messages, calls) = store.conversation(&record).await.unwrap();
    assert_eq!((messages.len(), calls.len()), (1_001, 500));
    assert_eq!(messages[1_000], turn(500, 300)[1]);
    eprintln!("bytes per commit: iteration 5 = {fifth}, iteration 500 = {last}, max = {max}");
}
