//! Test support (feature `testing`): fresh AWS resources per test on a moto server.
//!
//! [`TestAws::new`] connects to the endpoint in `AWS_ENDPOINT_URL` and creates its own
//! uniquely named table (with TTL on `ttl`), work and finalize queues (each with a
//! dead-letter queue, redrive after 3 receives) and bucket, so tests run in parallel against
//! one server without seeing each other's data. Start the server with
//! `infra/moto.sh start && eval "$(infra/moto.sh env)"`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::config::Credentials;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TimeToLiveSpecification,
};
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};

use crate::archive::S3Archive;
use crate::layout::{self, Item};
use crate::queue::SqsQueue;
use crate::settings::{AwsClients, AwsSettings};
use crate::store::DynamoStore;

/// Receives after which a message moves to its dead-letter queue.
pub const MAX_RECEIVE_COUNT: u32 = 3;
/// The test queues' visibility timeout: short, so redelivery can be observed.
pub const VISIBILITY_TIMEOUT_SECS: u32 = 2;

/// A message as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub body: String,
    pub receipt_handle: String,
    pub receive_count: u32,
}

impl Received {
    /// The messages of a ReceiveMessage answer (asked with the `ApproximateReceiveCount`
    /// system attribute).
    pub fn all(out: &aws_sdk_sqs::operation::receive_message::ReceiveMessageOutput) -> Vec<Self> {
        out.messages()
            .iter()
            .map(|m| Received {
                body: m.body().unwrap_or_default().to_string(),
                receipt_handle: m.receipt_handle().unwrap_or_default().to_string(),
                receive_count: m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0),
            })
            .collect()
    }
}

/// The SQS event Lambda's event source mapping hands a function for `batch` (one record a
/// message; `queue_arn` as its `eventSourceARN`).
pub fn sqs_event(batch: &[Received], queue_arn: &str) -> serde_json::Value {
    let records: Vec<serde_json::Value> = batch
        .iter()
        .enumerate()
        .map(|(i, m)| {
            serde_json::json!({
                "messageId": format!("m{i}"),
                "receiptHandle": m.receipt_handle,
                "body": m.body,
                "attributes": {"ApproximateReceiveCount": m.receive_count.to_string()},
                "messageAttributes": {},
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": "us-east-1"
            })
        })
        .collect();
    serde_json::json!({ "Records": records })
}

/// One test's AWS resources on the moto server.
pub struct TestAws {
    pub endpoint: String,
    pub clients: AwsClients,
    /// Names and URLs of this test's resources.
    pub settings: AwsSettings,
    pub finalize_dlq_url: String,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique_name() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("tbtest-{}-{n}-{nanos}", std::process::id())
}

impl TestAws {
    /// Fresh resources on the moto server at `AWS_ENDPOINT_URL`. Panics with directions when
    /// the variable is unset or the server does not answer.
    pub async fn new() -> TestAws {
        let endpoint = std::env::var("AWS_ENDPOINT_URL").ok().filter(|v| !v.is_empty()).unwrap_or_else(|| {
            panic!(
                "AWS_ENDPOINT_URL is not set: these tests need a moto server. From the repository root run \
                 `infra/moto.sh start && eval \"$(infra/moto.sh env)\"`, then run the tests again."
            )
        });
        let region = std::env::var("AWS_REGION")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "us-east-1".into());
        let conf = aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(&endpoint)
            .region(Region::new(region))
            .credentials_provider(Credentials::new("testing", "testing", None, None, "moto"))
            .load()
            .await;
        let clients = AwsClients::from_config(&conf);
        let name = unique_name();
        let unreachable = |e: &dyn std::fmt::Display| -> ! {
            panic!(
                "could not set up test resources on the moto server at {endpoint} ({e}). Is it running? \
                 `infra/moto.sh start && eval \"$(infra/moto.sh env)\"`"
            )
        };

        let key = |attr: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(attr)
                .key_type(kind)
                .build()
        };
        let def = |attr: &str, kind: ScalarAttributeType| {
            AttributeDefinition::builder()
                .attribute_name(attr)
                .attribute_type(kind)
                .build()
                .unwrap()
        };
        // The table as template.yaml declares it, global secondary indexes included.
        let mut create = clients
            .dynamo
            .create_table()
            .table_name(&name)
            .billing_mode(BillingMode::PayPerRequest)
            .key_schema(key(layout::PK, KeyType::Hash).unwrap())
            .key_schema(key(layout::SK, KeyType::Range).unwrap());
        for (attr, kind) in [
            (layout::PK, ScalarAttributeType::S),
            (layout::SK, ScalarAttributeType::S),
            (layout::OWNER, ScalarAttributeType::S),
            (layout::PROJECT, ScalarAttributeType::S),
            (layout::ACTIVE_OWNER, ScalarAttributeType::S),
            (layout::CREATED_AT_MS, ScalarAttributeType::N),
        ] {
            create = create.attribute_definitions(def(attr, kind));
        }
        for (index, partition) in [
            (layout::OWNER_INDEX, layout::OWNER),
            (layout::PROJECT_INDEX, layout::PROJECT),
            (layout::ACTIVE_INDEX, layout::ACTIVE_OWNER),
        ] {
            create = create.global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .index_name(index)
                    .key_schema(key(partition, KeyType::Hash).unwrap())
                    .key_schema(key(layout::CREATED_AT_MS, KeyType::Range).unwrap())
                    .projection(
                        Projection::builder()
                            .projection_type(ProjectionType::All)
                            .build(),
                    )
                    .build()
                    .unwrap(),
            );
        }
        create
            .send()
            .await
            .unwrap_or_else(|e| unreachable(&aws_sdk_dynamodb::error::DisplayErrorContext(e)));
        clients
            .dynamo
            .update_time_to_live()
            .table_name(&name)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .enabled(true)
                    .attribute_name(layout::TTL)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .expect("enabling TTL");

        clients
            .s3
            .create_bucket()
            .bucket(&name)
            .send()
            .await
            .expect("creating the test bucket");

        let (work_url, work_dlq_url) =
            create_queue_pair(&clients.sqs, &format!("{name}-work")).await;
        let (finalize_url, finalize_dlq_url) =
            create_queue_pair(&clients.sqs, &format!("{name}-finalize")).await;

        TestAws {
            endpoint,
            clients,
            settings: AwsSettings {
                table: name.clone(),
                work_queue_url: work_url,
                finalize_queue_url: finalize_url,
                work_dlq_url,
                bucket: name,
            },
            finalize_dlq_url,
        }
    }

    pub fn store(&self) -> DynamoStore {
        self.settings.store(&self.clients)
    }

    pub fn queue(&self) -> SqsQueue {
        self.settings.queue(&self.clients)
    }

    pub fn archive(&self) -> S3Archive {
        self.settings.archive(&self.clients)
    }

    /// Up to 10 messages from `queue_url`, waiting up to `wait` (whole seconds) for the first.
    /// Received messages stay in flight for the visibility timeout unless deleted.
    pub async fn receive(&self, queue_url: &str, wait: Duration) -> Vec<Received> {
        self.receive_with(queue_url, wait, None).await
    }

    async fn receive_with(
        &self,
        queue_url: &str,
        wait: Duration,
        visibility: Option<i32>,
    ) -> Vec<Received> {
        let out = self
            .clients
            .sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .set_visibility_timeout(visibility)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .expect("receiving messages");
        Received::all(&out)
    }

    pub async fn receive_work(&self, wait: Duration) -> Vec<Received> {
        self.receive(&self.settings.work_queue_url, wait).await
    }

    pub async fn receive_finalize(&self, wait: Duration) -> Vec<Received> {
        self.receive(&self.settings.finalize_queue_url, wait).await
    }

    pub async fn delete(&self, queue_url: &str, message: &Received) {
        self.clients
            .sqs
            .delete_message()
            .queue_url(queue_url)
            .receipt_handle(&message.receipt_handle)
            .send()
            .await
            .expect("deleting a message");
    }

    /// The bodies on the work dead-letter queue, left there (received with visibility 0).
    pub async fn work_dlq_bodies(&self) -> Vec<String> {
        self.peek(&self.settings.work_dlq_url).await
    }

    /// The bodies on the finalize dead-letter queue, left there.
    pub async fn finalize_dlq_bodies(&self) -> Vec<String> {
        self.peek(&self.finalize_dlq_url).await
    }

    async fn peek(&self, queue_url: &str) -> Vec<String> {
        let mut bodies: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        // A receive returns a sample of the messages; a few rounds collect them all.
        for _ in 0..3 {
            for m in self.receive_with(queue_url, Duration::ZERO, Some(0)).await {
                if seen.insert(m.body.clone()) {
                    bodies.push(m.body);
                }
            }
        }
        bodies
    }

    /// The raw item `(REQ#<id>, sk)`, read consistently.
    pub async fn item(&self, id: &tb_core::domain::RequestId, sk: &str) -> Option<Item> {
        self.clients
            .dynamo
            .get_item()
            .table_name(&self.settings.table)
            .consistent_read(true)
            .key(layout::PK, layout::s(layout::request_pk(id)))
            .key(layout::SK, layout::s(sk))
            .send()
            .await
            .expect("reading an item")
            .item
    }

    /// The sort keys of all items of request `id`, in order.
    pub async fn sort_keys(&self, id: &tb_core::domain::RequestId) -> Vec<String> {
        let mut pages = self
            .clients
            .dynamo
            .query()
            .table_name(&self.settings.table)
            .consistent_read(true)
            .key_condition_expression("#pk = :pk")
            .expression_attribute_names("#pk", layout::PK)
            .expression_attribute_values(":pk", layout::s(layout::request_pk(id)))
            .into_paginator()
            .send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            for item in page.expect("querying items").items.unwrap_or_default() {
                keys.push(
                    item.get(layout::SK)
                        .and_then(|v| v.as_s().ok())
                        .cloned()
                        .unwrap_or_default(),
                );
            }
        }
        keys
    }

    /// The keys of the objects in the bucket under `prefix`.
    pub async fn object_keys(&self, prefix: &str) -> Vec<String> {
        let mut pages = self
            .clients
            .s3
            .list_objects_v2()
            .bucket(&self.settings.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            for object in page.expect("listing objects").contents() {
                keys.extend(object.key().map(str::to_string));
            }
        }
        keys
    }
}

/// Creates `<name>-dlq` and `<name>` redriving into it; returns (url, dlq url).
async fn create_queue_pair(sqs: &aws_sdk_sqs::Client, name: &str) -> (String, String) {
    let dlq_url = sqs
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .send()
        .await
        .expect("creating a dead-letter queue")
        .queue_url
        .expect("a queue URL");
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("reading the dead-letter queue's ARN");
    let arn = attributes
        .attributes()
        .and_then(|a: &HashMap<QueueAttributeName, String>| a.get(&QueueAttributeName::QueueArn))
        .expect("a queue ARN")
        .clone();
    let redrive = serde_json::json!({ "deadLetterTargetArn": arn, "maxReceiveCount": MAX_RECEIVE_COUNT.to_string() });
    let url = sqs
        .create_queue()
        .queue_name(name)
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            VISIBILITY_TIMEOUT_SECS.to_string(),
        )
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
        .send()
        .await
        .expect("creating a queue")
        .queue_url
        .expect("a queue URL");
    (url, dlq_url)
}
