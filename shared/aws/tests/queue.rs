//! `SqsQueue` against moto: bodies arrive intact, delays are honoured and capped, poison
//! messages are parked with their reason.

use std::time::Duration;

use tb_aws::testing::TestAws;
use tb_core::domain::RequestId;
use tb_pipeline::{FinalizeMessage, Queue, WorkMessage};

fn request() -> RequestId {
    RequestId::generate()
}

#[tokio::test]
async fn work_and_finalize_messages_arrive_intact_on_their_own_queues() {
    let aws = TestAws::new().await;
    let queue = aws.queue();
    let work = WorkMessage::Continue {
        request_id: request(),
        seq: 7,
    };
    let finalize = FinalizeMessage::Finalize {
        request_id: request(),
    };
    queue.send_work(&work, Duration::ZERO).await.unwrap();
    queue.send_finalize(&finalize).await.unwrap();

    let got = aws.receive_work(Duration::from_secs(1)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        serde_json::from_str::<WorkMessage>(&got[0].body).unwrap(),
        work
    );
    assert_eq!(got[0].body, serde_json::to_string(&work).unwrap());
    aws.delete(&aws.settings.work_queue_url, &got[0]).await;

    let got = aws.receive_finalize(Duration::from_secs(1)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        serde_json::from_str::<FinalizeMessage>(&got[0].body).unwrap(),
        finalize
    );
    aws.delete(&aws.settings.finalize_queue_url, &got[0]).await;

    assert!(aws.receive_work(Duration::ZERO).await.is_empty());
    assert!(aws.receive_finalize(Duration::ZERO).await.is_empty());
}

#[tokio::test]
async fn a_delayed_work_message_is_invisible_until_its_delay_has_passed() {
    let aws = TestAws::new().await;
    let queue = aws.queue();
    let work = WorkMessage::Continue {
        request_id: request(),
        seq: 1,
    };
    queue
        .send_work(&work, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(
        aws.receive_work(Duration::ZERO).await.is_empty(),
        "visible before its delay"
    );
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    let got = aws.receive_work(Duration::from_secs(2)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        serde_json::from_str::<WorkMessage>(&got[0].body).unwrap(),
        work
    );
}

#[tokio::test]
async fn a_delay_beyond_fifteen_minutes_is_capped_rather_than_rejected() {
    let aws = TestAws::new().await;
    let queue = aws.queue();
    let work = WorkMessage::Continue {
        request_id: request(),
        seq: 1,
    };
    // SQS rejects DelaySeconds above 900; the adapter sends 900.
    queue
        .send_work(&work, Duration::from_secs(3_600))
        .await
        .unwrap();
    assert!(aws.receive_work(Duration::ZERO).await.is_empty());
}

#[tokio::test]
async fn a_dead_letter_lands_on_the_work_dead_letter_queue_with_its_reason() {
    let aws = TestAws::new().await;
    let queue = aws.queue();
    queue
        .dead_letter("not json {", "malformed work message: not JSON")
        .await
        .unwrap();
    let bodies = aws.work_dlq_bodies().await;
    assert_eq!(bodies.len(), 1);
    let parked: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(
        parked,
        serde_json::json!({"reason": "malformed work message: not JSON", "body": "not json {"})
    );
    assert!(aws.receive_work(Duration::ZERO).await.is_empty());
}

#[tokio::test]
async fn a_message_received_three_times_without_being_deleted_moves_to_the_dead_letter_queue() {
    let aws = TestAws::new().await;
    let queue = aws.queue();
    let work = WorkMessage::Continue {
        request_id: request(),
        seq: 1,
    };
    queue.send_work(&work, Duration::ZERO).await.unwrap();
    let mut receives = 0;
    for _ in 0..20 {
        let got = aws.receive_work(Duration::from_secs(1)).await;
        receives += got.len();
        if receives >= 3 && !aws.work_dlq_bodies().await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(receives, 3);
    assert_eq!(
        aws.work_dlq_bodies().await,
        vec![serde_json::to_string(&work).unwrap()]
    );
}
