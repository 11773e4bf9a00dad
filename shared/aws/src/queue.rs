//! [`SqsQueue`]: the work and finalize queues on SQS, plus the work dead-letter queue for
//! messages the worker recognises as poison.

use std::time::Duration;

use async_trait::async_trait;
use tb_core::ports::PortError;
use tb_pipeline::messages::{dead_letter_body, to_body};
use tb_pipeline::{FinalizeMessage, Queue, WorkMessage};

use crate::error::classify;

/// SQS's longest per-message delay.
pub const MAX_DELAY_SECS: u64 = 900;

#[derive(Clone, Debug)]
pub struct SqsQueue {
    sqs: aws_sdk_sqs::Client,
    work_url: String,
    finalize_url: String,
    work_dlq_url: String,
}

impl SqsQueue {
    pub fn new(
        sqs: aws_sdk_sqs::Client,
        work_url: impl Into<String>,
        finalize_url: impl Into<String>,
        work_dlq_url: impl Into<String>,
    ) -> Self {
        SqsQueue {
            sqs,
            work_url: work_url.into(),
            finalize_url: finalize_url.into(),
            work_dlq_url: work_dlq_url.into(),
        }
    }

    async fn send(
        &self,
        what: &str,
        url: &str,
        body: String,
        delay_secs: u64,
    ) -> Result<(), PortError> {
        let mut request = self.sqs.send_message().queue_url(url).message_body(body);
        if delay_secs > 0 {
            request = request.delay_seconds(delay_secs.min(MAX_DELAY_SECS) as i32);
        }
        request
            .send()
            .await
            .map_err(|e| classify(&format!("sending {what} to {url}"), &e))?;
        Ok(())
    }
}

#[async_trait]
impl Queue for SqsQueue {
    /// Delays longer than SQS allows (15 minutes) are cut to 15 minutes; sub-second parts are
    /// dropped.
    async fn send_work(&self, message: &WorkMessage, delay: Duration) -> Result<(), PortError> {
        self.send(
            "a work message",
            &self.work_url,
            to_body(message)?,
            delay.as_secs(),
        )
        .await
    }

    async fn send_finalize(&self, message: &FinalizeMessage) -> Result<(), PortError> {
        self.send(
            "a finalize message",
            &self.finalize_url,
            to_body(message)?,
            0,
        )
        .await
    }

    async fn dead_letter(&self, body: &str, reason: &str) -> Result<(), PortError> {
        let parked = dead_letter_body(body, reason);
        self.send("a dead letter", &self.work_dlq_url, parked, 0)
            .await
    }
}
