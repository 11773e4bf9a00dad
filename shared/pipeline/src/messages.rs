//! Queue message bodies. Their JSON Schemas are in `docs/messages/`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tb_core::domain::{ProjectId, RequestId};
use tb_core::ports::PortError;

/// Our own messages on the work queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum WorkMessage {
    /// Run the next slice of a request, if its sequence is still `seq`.
    Continue { request_id: RequestId, seq: u64 },
}

/// A message on the finalize queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FinalizeMessage {
    Finalize {
        request_id: RequestId,
    },
    /// Carry out the deletion recorded on the project ([`crate::project_ops`]).
    DeleteProject {
        project_id: ProjectId,
    },
    /// Carry out the rollback recorded on the project ([`crate::project_ops`]).
    RollbackProject {
        project_id: ProjectId,
    },
}

/// The JSON body a queue carries `message` as.
pub fn to_body(message: &impl Serialize) -> Result<String, PortError> {
    serde_json::to_string(message)
        .map_err(|e| PortError::Permanent(format!("serialising a queue message: {e}")))
}

/// What the work dead-letter queue holds for a parked message (see
/// [`crate::Queue::dead_letter`]): `{"reason": …, "body": <the original body>}`.
pub fn dead_letter_body(body: &str, reason: &str) -> String {
    serde_json::json!({ "reason": reason, "body": body }).to_string()
}

/// A job in the original system's shape, published onto the work queue by another backend:
/// `{"id": "job-1", "data": {"mcp_key_id", "tool_name", "request_params", "user_id",
/// "project_id"}}`, or the same fields flat with `job_id` (or `id`).
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    pub job_id: String,
    pub mcp_key_id: Option<String>,
    pub tool_name: String,
    pub request_params: Value,
    pub user_id: String,
    pub project_id: Option<String>,
}

/// Anything that can arrive on the work queue.
#[derive(Clone, Debug, PartialEq)]
pub enum Incoming {
    Work(WorkMessage),
    Job(Job),
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("malformed work message: {0}")]
pub struct MalformedMessage(pub String);

impl Incoming {
    pub fn parse(body: &str) -> Result<Incoming, MalformedMessage> {
        let value: Value =
            serde_json::from_str(body).map_err(|e| MalformedMessage(format!("not JSON: {e}")))?;
        if value.get("kind").is_some() {
            return serde_json::from_value(value).map(Incoming::Work).map_err(|e| {
                MalformedMessage(format!(
                    "expected {{\"kind\": \"continue\", \"request_id\": <id>, \"seq\": <integer>}}: {e}"
                ))
            });
        }
        let (id, data) = match value.get("data") {
            Some(data) if data.is_object() => {
                (value.get("id").or_else(|| value.get("job_id")), data)
            }
            _ => (value.get("job_id").or_else(|| value.get("id")), &value),
        };
        let text = |v: Option<&Value>| match v {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let job_id =
            text(id).ok_or_else(|| MalformedMessage("a job needs an `id` (or `job_id`)".into()))?;
        let tool_name = text(data.get("tool_name"))
            .ok_or_else(|| MalformedMessage(format!("job {job_id} has no `tool_name`")))?;
        let user_id = text(data.get("user_id"))
            .ok_or_else(|| MalformedMessage(format!("job {job_id} has no `user_id`")))?;
        Ok(Incoming::Job(Job {
            job_id,
            mcp_key_id: text(data.get("mcp_key_id")),
            tool_name,
            request_params: data.get("request_params").cloned().unwrap_or(Value::Null),
            user_id,
            project_id: text(data.get("project_id")),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_messages_round_trip() {
        let m = WorkMessage::Continue {
            request_id: RequestId::parse("req_1").unwrap(),
            seq: 3,
        };
        let body = serde_json::to_string(&m).unwrap();
        assert_eq!(body, r#"{"kind":"continue","request_id":"req_1","seq":3}"#);
        assert_eq!(Incoming::parse(&body).unwrap(), Incoming::Work(m));
    }

    #[test]
    fn original_jobs_parse_nested_and_flat() {
        let nested = r#"{"id":"test-job-123","data":{"mcp_key_id":"key_123","tool_name":"execute_request",
            "request_params":{"description":"Create a simple API with a users endpoint"},"user_id":"user_456","project_id":"proj_789"}}"#;
        let Incoming::Job(job) = Incoming::parse(nested).unwrap() else {
            panic!()
        };
        assert_eq!(
            (
                job.job_id.as_str(),
                job.tool_name.as_str(),
                job.user_id.as_str()
            ),
            ("test-job-123", "execute_request", "user_456")
        );
        assert_eq!(
            job.request_params["description"],
            "Create a simple API with a users endpoint"
        );
        let flat =
            r#"{"job_id":"j2","tool_name":"execute_request","user_id":"u","request_params":{}}"#;
        assert!(
            matches!(Incoming::parse(flat).unwrap(), Incoming::Job(j) if j.job_id == "j2" && j.project_id.is_none())
        );
    }

    #[test]
    fn malformed_bodies_say_what_is_wrong() {
        assert!(
            Incoming::parse("not json")
                .unwrap_err()
                .0
                .contains("not JSON")
        );
        assert!(Incoming::parse(r#"{"kind":"continue","request_id":"req_1"}"#).is_err());
        assert!(Incoming::parse(r#"{"kind":"continue","request_id":"../x","seq":1}"#).is_err());
        assert!(
            Incoming::parse(r#"{"id":"j","data":{"user_id":"u"}}"#)
                .unwrap_err()
                .0
                .contains("tool_name")
        );
        assert!(
            Incoming::parse(r#"{"tool_name":"execute_request","user_id":"u"}"#)
                .unwrap_err()
                .0
                .contains("id")
        );
    }
}

#[cfg(test)]
mod schema_examples {
    use super::*;

    fn examples(file: &str) -> Vec<Value> {
        let path = format!("{}/../../docs/messages/{file}", env!("CARGO_MANIFEST_DIR"));
        let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        schema["examples"].as_array().unwrap().clone()
    }

    #[test]
    fn the_documented_examples_are_what_the_code_reads() {
        for e in examples("work-continue.schema.json") {
            assert!(
                matches!(Incoming::parse(&e.to_string()), Ok(Incoming::Work(_))),
                "{e}"
            );
        }
        for e in examples("work-job.schema.json") {
            assert!(
                matches!(Incoming::parse(&e.to_string()), Ok(Incoming::Job(_))),
                "{e}"
            );
        }
        for e in examples("finalize.schema.json") {
            serde_json::from_value::<FinalizeMessage>(e).unwrap();
        }
    }
}
