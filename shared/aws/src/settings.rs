//! Which table, queues and bucket to use, read once from environment-style variables, and
//! the SDK clients built from the standard AWS configuration chain.
//!
//! | variable | what |
//! |---|---|
//! | `TB_TABLE` | the DynamoDB table of request state |
//! | `TB_WORK_QUEUE_URL` | the SQS work queue |
//! | `TB_FINALIZE_QUEUE_URL` | the SQS finalize queue |
//! | `S3_PROJECTS_BUCKET` | the S3 bucket for archives and spilled payloads |
//! | `TB_WORK_DLQ_URL` | optional: the work dead-letter queue (default: the work queue URL + `-dlq`) |
//!
//! Credentials, region and endpoint come from the SDK's own chain (`AWS_REGION`,
//! `AWS_ACCESS_KEY_ID`, the Lambda role, ...). `AWS_ENDPOINT_URL` points every client at
//! one endpoint, e.g. a moto server; S3 then uses path-style addressing, because
//! `<bucket>.127.0.0.1` does not resolve.

use aws_config::{BehaviorVersion, SdkConfig};

use crate::archive::S3Archive;
use crate::queue::SqsQueue;
use crate::store::DynamoStore;

pub const TABLE_VAR: &str = "TB_TABLE";
pub const WORK_QUEUE_VAR: &str = "TB_WORK_QUEUE_URL";
pub const FINALIZE_QUEUE_VAR: &str = "TB_FINALIZE_QUEUE_URL";
pub const BUCKET_VAR: &str = "S3_PROJECTS_BUCKET";
pub const WORK_DLQ_VAR: &str = "TB_WORK_DLQ_URL";

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("{name} is not set: {purpose}")]
pub struct SettingsError {
    pub name: &'static str,
    pub purpose: &'static str,
}

/// The AWS resources the functions use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsSettings {
    pub table: String,
    pub work_queue_url: String,
    pub finalize_queue_url: String,
    pub work_dlq_url: String,
    pub bucket: String,
}

impl AwsSettings {
    /// Reads the variables above through `var` (pass `|k| std::env::var(k).ok()`).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let get = |name: &'static str| {
            var(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let required = |name: &'static str, purpose: &'static str| {
            get(name).ok_or(SettingsError { name, purpose })
        };
        let table = required(
            TABLE_VAR,
            "name the DynamoDB table that holds request state",
        )?;
        let work_queue_url = required(WORK_QUEUE_VAR, "give the URL of the SQS work queue")?;
        let finalize_queue_url =
            required(FINALIZE_QUEUE_VAR, "give the URL of the SQS finalize queue")?;
        let bucket = required(
            BUCKET_VAR,
            "name the S3 bucket for archives and spilled payloads",
        )?;
        let work_dlq_url = get(WORK_DLQ_VAR).unwrap_or_else(|| format!("{work_queue_url}-dlq"));
        Ok(AwsSettings {
            table,
            work_queue_url,
            finalize_queue_url,
            work_dlq_url,
            bucket,
        })
    }

    /// Loads the AWS configuration (credentials, region, endpoint) and builds the clients.
    /// Call it once at start-up and share the result.
    pub async fn clients(&self) -> AwsClients {
        AwsClients::load().await
    }

    pub fn store(&self, clients: &AwsClients) -> DynamoStore {
        DynamoStore::new(
            clients.dynamo.clone(),
            clients.s3.clone(),
            &self.table,
            &self.bucket,
        )
    }

    pub fn queue(&self, clients: &AwsClients) -> SqsQueue {
        SqsQueue::new(
            clients.sqs.clone(),
            &self.work_queue_url,
            &self.finalize_queue_url,
            &self.work_dlq_url,
        )
    }

    pub fn archive(&self, clients: &AwsClients) -> S3Archive {
        S3Archive::new(clients.s3.clone(), &self.bucket)
    }
}

/// One client per service, sharing one loaded configuration. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AwsClients {
    pub dynamo: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub s3: aws_sdk_s3::Client,
}

impl AwsClients {
    /// `aws_config::defaults(BehaviorVersion::latest())`: the environment, the shared config
    /// files, then the container/instance role.
    pub async fn load() -> Self {
        let conf = aws_config::defaults(BehaviorVersion::latest()).load().await;
        Self::from_config(&conf)
    }

    /// Clients for `conf`. When it overrides the endpoint (`AWS_ENDPOINT_URL`, or
    /// `AWS_ENDPOINT_URL_S3` for S3 alone), S3 uses path-style addressing.
    pub fn from_config(conf: &SdkConfig) -> Self {
        let endpoint_override = conf.endpoint_url().is_some()
            || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some_and(|v| !v.is_empty());
        let s3_conf = aws_sdk_s3::config::Builder::from(conf)
            .force_path_style(endpoint_override)
            .build();
        AwsClients {
            dynamo: aws_sdk_dynamodb::Client::new(conf),
            sqs: aws_sdk_sqs::Client::new(conf),
            s3: aws_sdk_s3::Client::from_conf(s3_conf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const ALL: [(&str, &str); 4] = [
        (TABLE_VAR, "t"),
        (WORK_QUEUE_VAR, "http://q/1/work"),
        (FINALIZE_QUEUE_VAR, "http://q/1/finalize"),
        (BUCKET_VAR, "b"),
    ];

    #[test]
    fn all_four_variables_are_read_and_the_dead_letter_queue_defaults_to_the_work_queue_plus_dlq() {
        let s = AwsSettings::from_env(env(&ALL)).unwrap();
        assert_eq!(s.table, "t");
        assert_eq!(s.finalize_queue_url, "http://q/1/finalize");
        assert_eq!(s.bucket, "b");
        assert_eq!(s.work_dlq_url, "http://q/1/work-dlq");
        let mut with_dlq = ALL.to_vec();
        with_dlq.push((WORK_DLQ_VAR, "http://q/1/elsewhere"));
        assert_eq!(
            AwsSettings::from_env(env(&with_dlq)).unwrap().work_dlq_url,
            "http://q/1/elsewhere"
        );
    }

    #[test]
    fn a_missing_or_blank_variable_is_named_in_the_error() {
        for missing in ALL.map(|(k, _)| k) {
            let mut pairs: Vec<_> = ALL.iter().filter(|(k, _)| *k != missing).copied().collect();
            let e = AwsSettings::from_env(env(&pairs)).unwrap_err();
            assert_eq!(e.name, missing);
            assert!(
                e.to_string().starts_with(&format!("{missing} is not set")),
                "{e}"
            );
            pairs.push((missing, "  "));
            assert_eq!(
                AwsSettings::from_env(env(&pairs)).unwrap_err().name,
                missing
            );
        }
    }
}
