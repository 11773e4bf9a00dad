//! Endpoint checks: what `finish` declares the API does, in a form that can be run.
//!
//! A check is one HTTP call and what its answer must be:
//!
//! ```json
//! {"method": "POST", "path": "/api/todos", "body": {"title": "milk", "tags": ["shop"]},
//!  "status": 201, "expect": {"title": "milk", "tags.0": "shop"}}
//! ```
//!
//! - `method`: GET, POST, PUT, PATCH or DELETE; `path` starts with `/`.
//! - `body` (optional): the JSON request body.
//! - `status`: the status the answer must have.
//! - `expect` (optional): JSON fields the answer must hold, by dotted path (`tags.0` is the
//!   first element of `tags`), each equal to the given value.
//!
//! **References.** A later check may use a field of an earlier check's answer:
//! `{{N.field}}`, where `N` is the earlier check's number (1 for the first) and `field` a
//! dotted path in its JSON answer (`{{1.id}}`, `{{2.items.0.id}}`). In `path`, and inside a
//! longer string, the value is put in as text; a string that is exactly one reference is
//! replaced by the value itself (so a number stays a number). References work in `path`,
//! `body` and `expect`.
//!
//! `GET /api/health` answering 200 is always checked first, whatever is declared.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ports::PortError;

/// Checks a `finish` may declare.
pub const MAX_CHECKS: usize = 40;
/// How much of an answer's body a recorded call keeps.
pub const EXCERPT_CHARS: usize = 300;
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// One declared check (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointCheck {
    pub method: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Map<String, Value>>,
}

impl EndpointCheck {
    /// The health check every run starts with.
    pub fn health() -> Self {
        EndpointCheck {
            method: "GET".into(),
            path: "/api/health".into(),
            body: None,
            status: 200,
            expect: None,
        }
    }
}

/// Reads the `checks` argument of `finish`: `None` when absent (only `/api/health` is then
/// checked), else every check, or every problem found, one per line, for the model to fix.
pub fn parse_checks(value: Option<&Value>) -> Result<Option<Vec<EndpointCheck>>, String> {
    let items = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err("`checks` must be an array of checks, e.g. [{\"method\": \"GET\", \"path\": \"/api/todos\", \"status\": 200}].".into());
        }
    };
    if items.len() > MAX_CHECKS {
        return Err(format!(
            "`checks` has {} entries; at most {MAX_CHECKS} are allowed.",
            items.len()
        ));
    }
    let mut checks = Vec::new();
    let mut problems = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let n = i + 1;
        let check: EndpointCheck = match serde_json::from_value(item.clone()) {
            Ok(c) => c,
            Err(e) => {
                problems.push(format!("check {n}: {e} (each check is an object with `method`, `path`, `status`, and optionally `body` and `expect`)"));
                continue;
            }
        };
        if !METHODS.contains(&check.method.as_str()) {
            problems.push(format!(
                "check {n}: method `{}` is not one of {}",
                check.method,
                METHODS.join(", ")
            ));
        }
        if !check.path.starts_with('/') || check.path.chars().any(char::is_whitespace) {
            problems.push(format!(
                "check {n}: path `{}` must start with `/` and contain no spaces",
                check.path
            ));
        }
        if !(100..=599).contains(&check.status) {
            problems.push(format!(
                "check {n}: status {} is not an HTTP status",
                check.status
            ));
        }
        let mut texts = vec![check.path.clone()];
        collect_strings(check.body.as_ref(), &mut texts);
        if let Some(e) = &check.expect {
            texts.extend(e.keys().cloned());
            for v in e.values() {
                collect_strings(Some(v), &mut texts);
            }
        }
        for t in &texts {
            for r in references(t) {
                match r {
                    Ok((k, _)) if k >= 1 && k < n => {}
                    Ok((k, _)) => problems.push(format!(
                        "check {n}: `{{{{{k}.…}}}}` refers to check {k}; a check may refer only to an earlier one (1 to {})",
                        n - 1
                    )),
                    Err(bad) => problems.push(format!(
                        "check {n}: `{bad}` is not a reference; write `{{{{N.field}}}}` with N the number of an earlier check, e.g. `{{{{1.id}}}}`"
                    )),
                }
            }
        }
        checks.push(check);
    }
    if problems.is_empty() {
        Ok(Some(checks))
    } else {
        Err(format!(
            "The `checks` list is malformed; nothing was finished. Fix these and call `finish` again:\n{}",
            problems.join("\n")
        ))
    }
}

fn collect_strings(v: Option<&Value>, out: &mut Vec<String>) {
    match v {
        Some(Value::String(s)) => out.push(s.clone()),
        Some(Value::Array(a)) => a.iter().for_each(|x| collect_strings(Some(x), out)),
        Some(Value::Object(o)) => o.iter().for_each(|(k, x)| {
            out.push(k.clone());
            collect_strings(Some(x), out)
        }),
        _ => {}
    }
}

/// The references in `text`: `(check number, field path)`, or the text of a malformed one.
fn references(text: &str) -> Vec<Result<(usize, String), String>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push(Err(rest[start..].to_string()));
            break;
        };
        let inner = after[..end].trim();
        out.push(parse_reference(inner).ok_or_else(|| format!("{{{{{inner}}}}}")));
        rest = &after[end + 2..];
    }
    out
}

fn parse_reference(inner: &str) -> Option<(usize, String)> {
    let (n, field) = inner.split_once('.')?;
    let n: usize = n.parse().ok()?;
    (!field.is_empty() && !field.split('.').any(str::is_empty)).then(|| (n, field.to_string()))
}

/// The value at a dotted `path` of `v` (`items.0.id`).
pub fn field<'v>(v: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(v, |v, key| match v {
        Value::Object(o) => o.get(key),
        Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `text` with its references put in, from `answers` (the JSON answers of the checks so
/// far, in order; `None` where an answer was not JSON).
fn fill_text(text: &str, answers: &[Option<Value>]) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or("an unclosed `{{`")?;
        let (n, path) = parse_reference(after[..end].trim()).ok_or("a malformed reference")?;
        out.push_str(&as_text(lookup(n, &path, answers)?));
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn lookup<'a>(n: usize, path: &str, answers: &'a [Option<Value>]) -> Result<&'a Value, String> {
    let answer = answers
        .get(n.wrapping_sub(1))
        .ok_or_else(|| format!("check {n} has not run"))?
        .as_ref()
        .ok_or_else(|| format!("check {n} did not answer JSON"))?;
    field(answer, path).ok_or_else(|| format!("check {n}'s answer has no field `{path}`"))
}

/// `v` with its references put in (see the module documentation).
fn fill(v: &Value, answers: &[Option<Value>]) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => {
            let whole = s.strip_prefix("{{").and_then(|r| r.strip_suffix("}}"));
            match whole
                .filter(|w| !w.contains("{{"))
                .and_then(|w| parse_reference(w.trim()))
            {
                Some((n, path)) => lookup(n, &path, answers)?.clone(),
                None => Value::String(fill_text(s, answers)?),
            }
        }
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| fill(x, answers))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| Ok((fill_text(k, answers)?, fill(x, answers)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// One HTTP call as sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeRequest {
    pub method: String,
    /// The path with its references put in.
    pub path: String,
    pub body: Option<Value>,
}

/// An answer as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeReply {
    pub status: u16,
    pub body: String,
}

/// Sends one HTTP call to a running app. Adapters apply the platform's outbound policy.
#[async_trait]
pub trait Prober: Send + Sync {
    /// Sends `request` to `base` + its path. `Err(Transient)` when nothing answered
    /// (refused, reset, timed out).
    async fn send(
        &self,
        base: &str,
        request: &ProbeRequest,
        timeout: Duration,
    ) -> Result<ProbeReply, PortError>;
}

/// One check as run: what was sent, what came back, and whether it passed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckCall {
    pub method: String,
    pub path: String,
    /// The status received; `None` when nothing answered.
    pub status: Option<u16>,
    pub expected_status: u16,
    pub passed: bool,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The start of the answer's body.
    pub excerpt: String,
    pub latency_ms: u64,
}

impl CheckCall {
    /// Check `check`, meant for `path`, failed with no reply, and why.
    fn unanswered(check: &EndpointCheck, path: &str, error: String, latency_ms: u64) -> Self {
        CheckCall {
            method: check.method.clone(),
            path: path.to_string(),
            status: None,
            expected_status: check.status,
            passed: false,
            error: Some(error),
            excerpt: String::new(),
            latency_ms,
        }
    }
}

/// Prepares check `check` for sending, given the answers so far.
pub fn prepare(check: &EndpointCheck, answers: &[Option<Value>]) -> Result<ProbeRequest, String> {
    Ok(ProbeRequest {
        method: check.method.clone(),
        path: fill_text(&check.path, answers)?,
        body: check.body.as_ref().map(|b| fill(b, answers)).transpose()?,
    })
}

/// Judges an answer: `Ok` with its JSON (if any) when it is what the check expects, else
/// why not.
pub fn judge(
    check: &EndpointCheck,
    reply: &ProbeReply,
    answers: &[Option<Value>],
) -> (Option<Value>, Result<(), String>) {
    let json: Option<Value> = serde_json::from_str(&reply.body).ok();
    if reply.status != check.status {
        return (
            json,
            Err(format!(
                "answered {} instead of {}",
                reply.status, check.status
            )),
        );
    }
    let Some(expect) = &check.expect else {
        return (json, Ok(()));
    };
    let Some(body) = &json else {
        return (json, Err("the answer is not JSON".into()));
    };
    for (path, want) in expect {
        let verdict = (|| {
            let path = fill_text(path, answers)?;
            let want = fill(want, answers)?;
            match field(body, &path) {
                None => Err(format!("the answer has no field `{path}`")),
                Some(got) if *got == want => Ok(()),
                Some(got) => Err(format!("`{path}` is {got} instead of {want}")),
            }
        })();
        if let Err(why) = verdict {
            return (json, Err(why));
        }
    }
    (json, Ok(()))
}

/// The start of `body`, at most [`EXCERPT_CHARS`] characters.
pub fn excerpt(body: &str) -> String {
    let mut e: String = body.chars().take(EXCERPT_CHARS).collect();
    if e.len() < body.len() {
        e.push('…');
    }
    e
}

/// How hard to try: the health check is retried while the app starts (cold start);
/// every other check gets one try, bounded by `timeout`.
#[derive(Clone, Debug)]
pub struct RunPolicy {
    pub timeout: Duration,
    /// How long the health check is retried before the run gives up.
    pub warm_up: Duration,
    pub retry_every: Duration,
}

impl RunPolicy {
    pub fn standard() -> Self {
        RunPolicy {
            timeout: Duration::from_secs(10),
            warm_up: Duration::from_secs(60),
            retry_every: Duration::from_secs(1),
        }
    }
}

/// Runs `GET /api/health`, then every check in order, against the app at `base`. A failed
/// health check stops the run; a failed check does not (later ones that refer to it fail
/// with the reason).
pub async fn run_checks(
    prober: &dyn Prober,
    base: &str,
    checks: &[EndpointCheck],
    policy: &RunPolicy,
) -> Vec<CheckCall> {
    let mut calls = Vec::new();
    let health = EndpointCheck::health();
    let started = Instant::now();
    let request = prepare(&health, &[]).expect("no references");
    loop {
        let t = Instant::now();
        let sent = prober.send(base, &request, policy.timeout).await;
        let ms = t.elapsed().as_millis() as u64;
        let retry = match &sent {
            Err(_) => true,
            Ok(r) => r.status >= 500,
        };
        if retry && started.elapsed() + policy.retry_every < policy.warm_up {
            tokio::time::sleep(policy.retry_every).await;
            continue;
        }
        let call = record(&health, &request.path, sent, ms, &[]).0;
        let ok = call.passed;
        calls.push(call);
        if !ok {
            return calls;
        }
        break;
    }
    let mut answers: Vec<Option<Value>> = Vec::new();
    for check in checks {
        let request = match prepare(check, &answers) {
            Ok(r) => r,
            Err(why) => {
                calls.push(CheckCall::unanswered(
                    check,
                    &check.path,
                    format!("not sent: {why}"),
                    0,
                ));
                answers.push(None);
                continue;
            }
        };
        let t = Instant::now();
        let sent = prober.send(base, &request, policy.timeout).await;
        let ms = t.elapsed().as_millis() as u64;
        let (call, json) = record(check, &request.path, sent, ms, &answers);
        calls.push(call);
        answers.push(json);
    }
    calls
}

/// Check `check`, sent to `path`, as a recorded call: judged on its reply, or failed with
/// why no reply came; with the reply's JSON answer (for later checks' references).
pub fn record(
    check: &EndpointCheck,
    path: &str,
    sent: Result<ProbeReply, impl std::fmt::Display>,
    latency_ms: u64,
    answers: &[Option<Value>],
) -> (CheckCall, Option<Value>) {
    match sent {
        Err(e) => {
            let call = CheckCall::unanswered(check, path, format!("no answer: {e}"), latency_ms);
            (call, None)
        }
        Ok(reply) => {
            let (json, verdict) = judge(check, &reply, answers);
            let call = CheckCall {
                method: check.method.clone(),
                path: path.to_string(),
                status: Some(reply.status),
                expected_status: check.status,
                passed: verdict.is_ok(),
                error: verdict.err(),
                excerpt: excerpt(&reply.body),
                latency_ms,
            };
            (call, json)
        }
    }
}

/// One line per call: `POST /api/todos -> 201 (12 ms)` or with why it failed.
pub fn describe_calls(calls: &[CheckCall]) -> String {
    calls
        .iter()
        .map(|c| {
            let status = c.status.map_or("no answer".to_string(), |s| s.to_string());
            let mut line = format!("{} {} -> {status} ({} ms)", c.method, c.path, c.latency_ms);
            if let Some(e) = &c.error {
                line.push_str(&format!(": FAILED, {e}; body: {}", c.excerpt));
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_well_formed_list_parses_and_references_must_point_back() {
        let ok = json!([
            {"method": "POST", "path": "/api/todos", "body": {"title": "a"}, "status": 201},
            {"method": "GET", "path": "/api/todos/{{1.id}}", "status": 200, "expect": {"id": "{{1.id}}"}}
        ]);
        assert_eq!(parse_checks(Some(&ok)).unwrap().unwrap().len(), 2);
        assert_eq!(parse_checks(None).unwrap(), None);
        let forward = json!([{"method": "GET", "path": "/api/x/{{1.id}}", "status": 200}]);
        let err = parse_checks(Some(&forward)).unwrap_err();
        assert!(err.contains("check 1") && err.contains("earlier"), "{err}");
        let bad = json!([{"method": "FETCH", "path": "api", "status": 999}, {"path": "/x"}, {"method": "GET", "path": "/a/{{x}}", "status": 200}]);
        let err = parse_checks(Some(&bad)).unwrap_err();
        for needle in [
            "method `FETCH`",
            "path `api`",
            "status 999",
            "check 2:",
            "`{{x}}`",
        ] {
            assert!(err.contains(needle), "{needle} in {err}");
        }
        assert!(parse_checks(Some(&json!("GET /"))).is_err());
    }

    #[test]
    fn references_fill_paths_as_text_and_whole_strings_as_values() {
        let answers = vec![Some(json!({"id": 7, "tags": ["a", "b"]}))];
        let check = EndpointCheck {
            method: "POST".into(),
            path: "/api/todos/{{1.id}}/tags".into(),
            body: Some(json!({"todo": "{{1.id}}", "label": "tag {{1.tags.1}}"})),
            status: 200,
            expect: None,
        };
        let r = prepare(&check, &answers).unwrap();
        assert_eq!(r.path, "/api/todos/7/tags");
        assert_eq!(r.body, Some(json!({"todo": 7, "label": "tag b"})));
        let missing = EndpointCheck {
            path: "/{{1.nope}}".into(),
            ..check
        };
        assert!(
            prepare(&missing, &answers)
                .unwrap_err()
                .contains("no field `nope`")
        );
    }

    #[test]
    fn answers_are_judged_by_status_and_fields() {
        let check = EndpointCheck {
            method: "GET".into(),
            path: "/".into(),
            body: None,
            status: 200,
            expect: Some(
                json!({"title": "a", "tags.0": "x"})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
        };
        let reply = |status, body: &str| ProbeReply {
            status,
            body: body.into(),
        };
        assert!(
            judge(&check, &reply(200, r#"{"title":"a","tags":["x"]}"#), &[])
                .1
                .is_ok()
        );
        let (_, e) = judge(&check, &reply(500, "boom"), &[]);
        assert_eq!(e.unwrap_err(), "answered 500 instead of 200");
        let (_, e) = judge(&check, &reply(200, r#"{"title":"b","tags":["x"]}"#), &[]);
        assert!(e.unwrap_err().contains("`title` is \"b\""));
        let (_, e) = judge(&check, &reply(200, "<html>"), &[]);
        assert_eq!(e.unwrap_err(), "the answer is not JSON");
    }
}
