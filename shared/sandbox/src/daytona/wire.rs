//! Daytona's JSON bodies, as far as this client uses them. Unknown fields are ignored and
//! most fields are optional: servers of several versions answer, and the shapes that
//! changed are read in each of their forms (sources: the daytonaio/daytona repository).
//! An absent `Option` field reads as `None`; `None` is left out of a body sent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `POST /sandbox`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateSandbox {
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub snapshot: Option<String>,
    pub build_info: Option<BuildInfo>,
    pub auto_stop_interval: u32,
    pub auto_delete_interval: i32,
    /// Always empty: the sandbox is where the model's commands run; secrets stay out.
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BuildInfo {
    pub dockerfile_content: String,
}

/// `Sandbox` and `SandboxListItem`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SandboxDto {
    pub id: String,
    pub labels: Option<BTreeMap<String, String>>,
    pub state: Option<String>,
    /// Where the server is taking it (`SandboxDesiredState`: started, stopped, archived,
    /// paused, destroyed, resized).
    pub desired_state: Option<String>,
    pub error_reason: Option<String>,
    pub toolbox_proxy_url: Option<String>,
    pub created_at: Option<String>,
}

impl SandboxDto {
    pub fn state(&self) -> &str {
        self.state.as_deref().unwrap_or("unknown")
    }
}

/// `GET /sandbox`: a page `{items, nextCursor}` (`ListSandboxesResponse`, since
/// daytonaio/daytona commit cfbf686bf), or on older servers every sandbox as a plain array
/// (`SandboxDto[]`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum SandboxList {
    Page(SandboxPage),
    All(Vec<SandboxDto>),
}

impl SandboxList {
    pub fn into_page(self) -> SandboxPage {
        match self {
            SandboxList::Page(page) => page,
            SandboxList::All(items) => SandboxPage {
                items,
                next_cursor: None,
            },
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SandboxPage {
    #[serde(default)]
    pub items: Vec<SandboxDto>,
    pub next_cursor: Option<serde_json::Value>,
}

impl SandboxPage {
    /// The cursor of the next page, if there is one.
    pub fn next_cursor(&self) -> Option<String> {
        match self.next_cursor.as_ref()? {
            serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

/// `POST {toolbox}/process/execute`.
#[derive(Debug, Serialize)]
pub(crate) struct ExecuteRequest<'a> {
    pub command: &'a str,
    pub cwd: &'a str,
    /// Seconds; the daemon kills the process group and answers 408 past it.
    pub timeout: u64,
}

/// Current daemons send `exitCode`; older ones `code` (daytonaio/daytona
/// apps/daemon/pkg/toolbox/process/types.go; the SDKs read either:
/// libs/sdk-typescript/src/Process.ts, libs/sdk-python/src/daytona/_async/process.py).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ExecuteResponse {
    exit_code: Option<i32>,
    code: Option<i32>,
    #[serde(default)]
    pub result: String,
}

impl ExecuteResponse {
    pub fn exit_code(&self) -> Option<i32> {
        self.exit_code.or(self.code)
    }
}

/// An entry of `GET {toolbox}/files`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FileInfo {
    pub name: String,
    #[serde(default)]
    pub is_dir: bool,
    #[serde(default)]
    pub size: u64,
}

/// The error body of both APIs: `{"statusCode":…,"message":…,"error":…}` (NestJS) or
/// `{"error":…}` (the daemon). `message` may be a list of validation messages.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ErrorBody {
    pub message: Option<serde_json::Value>,
    pub error: Option<serde_json::Value>,
}

/// The most useful text of an error body, at most 500 characters.
pub(crate) fn error_message(body: &[u8]) -> String {
    let text = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(parsed) => parsed
            .message
            .or(parsed.error)
            .map(|v| match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Array(items) => items
                    .iter()
                    .map(|i| {
                        i.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| i.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
                other => other.to_string(),
            })
            .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned()),
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    let text = text.trim();
    if text.is_empty() {
        "no details".to_owned()
    } else {
        text.chars().take(500).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_come_from_message_then_error_then_the_raw_body() {
        assert_eq!(error_message(br#"{"statusCode":429,"message":"Rate limit exceeded","error":"Too Many Requests"}"#), "Rate limit exceeded");
        assert_eq!(
            error_message(
                br#"{"statusCode":400,"message":["name must be a string","cpu too big"]}"#
            ),
            "name must be a string; cpu too big"
        );
        assert_eq!(
            error_message(br#"{"error":"path is a directory"}"#),
            "path is a directory"
        );
        assert_eq!(error_message(b"Bad Gateway"), "Bad Gateway");
        assert_eq!(error_message(b""), "no details");
    }

    #[test]
    fn exit_codes_come_from_exit_code_or_code() {
        let parse = |json: &str| serde_json::from_str::<ExecuteResponse>(json).unwrap();
        assert_eq!(parse(r#"{"exitCode":2,"result":""}"#).exit_code(), Some(2));
        assert_eq!(parse(r#"{"code":3,"result":""}"#).exit_code(), Some(3));
        assert_eq!(parse(r#"{"result":""}"#).exit_code(), None);
    }

    #[test]
    fn both_list_shapes_parse() {
        let page: SandboxList =
            serde_json::from_str(r#"{"items":[{"id":"a"}],"nextCursor":"2"}"#).unwrap();
        let page = page.into_page();
        assert_eq!(
            (page.items.len(), page.next_cursor()),
            (1, Some("2".into()))
        );
        let all: SandboxList = serde_json::from_str(r#"[{"id":"a"},{"id":"b"}]"#).unwrap();
        let all = all.into_page();
        assert_eq!((all.items.len(), all.next_cursor()), (2, None));
    }

    #[test]
    fn a_sandbox_with_unknown_fields_and_nulls_parses() {
        let dto: SandboxDto = serde_json::from_str(
            r#"{"id":"abc","labels":null,"state":"pulling_snapshot","errorReason":null,"sandboxClass":"linux-vm","toolboxProxyUrl":"https://proxy.example/toolbox/"}"#,
        )
        .unwrap();
        assert_eq!(dto.state(), "pulling_snapshot");
        assert!(dto.labels.is_none());
    }

    #[test]
    fn the_create_body_omits_what_is_not_set_and_sends_no_env() {
        let body = CreateSandbox {
            name: None,
            labels: BTreeMap::from([("a".into(), "b".into())]),
            snapshot: None,
            build_info: Some(BuildInfo {
                dockerfile_content: "FROM node:22\n".into(),
            }),
            auto_stop_interval: 15,
            auto_delete_interval: 60,
            env: BTreeMap::new(),
        };
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"labels":{"a":"b"},"buildInfo":{"dockerfileContent":"FROM node:22\n"},"autoStopInterval":15,"autoDeleteInterval":60,"env":{}})
        );
    }
}
