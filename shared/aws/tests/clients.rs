//! `AwsSettings::clients` builds working clients from the standard environment alone
//! (`AWS_ENDPOINT_URL`, credentials, region), as the functions do.

use tb_aws::testing::TestAws;
use tb_core::ports::Archive;
use tb_pipeline::{Queue, StateStore, WorkMessage};

#[tokio::test]
async fn clients_from_the_environment_reach_the_endpoint_in_aws_endpoint_url() {
    let aws = TestAws::new().await;
    for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"] {
        assert!(
            std::env::var(var).is_ok_and(|v| !v.is_empty()),
            "{var} is not set; `eval \"$(infra/moto.sh env)\"` sets it for moto"
        );
    }
    // The settings as a function reads them, pointing at this test's resources.
    let s = &aws.settings;
    let env = |k: &str| match k {
        "TB_TABLE" => Some(s.table.clone()),
        "TB_WORK_QUEUE_URL" => Some(s.work_queue_url.clone()),
        "TB_FINALIZE_QUEUE_URL" => Some(s.finalize_queue_url.clone()),
        "S3_PROJECTS_BUCKET" => Some(s.bucket.clone()),
        _ => None,
    };
    let settings = tb_aws::AwsSettings::from_env(env).unwrap();
    assert_eq!(
        &settings, s,
        "the dead-letter queue URL is the work queue URL plus -dlq"
    );
    let clients = settings.clients().await;

    // S3 (path-style against a local endpoint), DynamoDB and SQS all answer.
    let archive = settings.archive(&clients);
    archive
        .put(
            "k",
            b"x",
            "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881",
        )
        .await
        .unwrap();
    assert_eq!(archive.get("k").await.unwrap(), Some(b"x".to_vec()));
    let id = tb_core::domain::RequestId::generate();
    assert_eq!(settings.store(&clients).load(&id).await.unwrap(), None);
    settings
        .queue(&clients)
        .send_work(
            &WorkMessage::Continue {
                request_id: id,
                seq: 0,
            },
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        aws.receive_work(std::time::Duration::from_secs(1))
            .await
            .len(),
        1
    );
}
