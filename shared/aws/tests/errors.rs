//! SDK failures reach callers as the `PortError` that says what to do about them.

use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::config::Credentials;
use tb_aws::testing::TestAws;
use tb_aws::{AwsClients, DynamoStore, S3Archive};
use tb_core::domain::RequestId;
use tb_core::ports::{Archive, PortError};
use tb_pipeline::StateStore;

#[tokio::test]
async fn an_unreachable_endpoint_is_a_transient_error() {
    // Nothing listens on port 9 (discard) on loopback here; the SDK retries, then gives up.
    let conf = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url("http://127.0.0.1:9")
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .load()
        .await;
    let clients = AwsClients::from_config(&conf);
    let store = DynamoStore::new(clients.dynamo.clone(), clients.s3.clone(), "t", "b");
    let err = store.load(&RequestId::generate()).await.unwrap_err();
    assert!(matches!(err, PortError::Transient(_)), "{err:?}");
    let err = S3Archive::new(clients.s3, "b").get("k").await.unwrap_err();
    assert!(matches!(err, PortError::Transient(_)), "{err:?}");
}

#[tokio::test]
async fn a_missing_table_or_bucket_is_a_permanent_error() {
    let aws = TestAws::new().await;
    let store = DynamoStore::new(
        aws.clients.dynamo.clone(),
        aws.clients.s3.clone(),
        "no-such-table",
        "b",
    );
    let err = store.load(&RequestId::generate()).await.unwrap_err();
    assert!(
        matches!(&err, PortError::Permanent(m) if m.contains("ResourceNotFoundException")),
        "{err:?}"
    );
    let err = S3Archive::new(aws.clients.s3.clone(), "no-such-bucket")
        .get("k")
        .await
        .unwrap_err();
    assert!(matches!(err, PortError::Permanent(_)), "{err:?}");
}
