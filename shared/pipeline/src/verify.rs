//! The finalizer's `verify` step, after `deploy`: `GET /api/health`, then every check the
//! agent's `finish` declared, in order, against the live URL and its real database
//! (`tb_core::checks`). The health check is retried while the app starts (cold start);
//! each call is bounded. Every call (method, path, status, body excerpt, latency) is
//! recorded in the step's result, which is kept whether the checks pass or not.

use serde_json::{Value, json};
use tb_core::agent::Outcome;
use tb_core::checks::{CheckCall, Prober, RunPolicy, describe_calls, run_checks};

use crate::record::RequestRecord;

/// Runs the checks against the deployment recorded by `deploy`; the step's result.
pub async fn verify(
    prober: &dyn Prober,
    rec: &RequestRecord,
    policy: &RunPolicy,
) -> Result<Value, String> {
    let url = rec
        .steps
        .get("deploy")
        .and_then(|d| d["url"].as_str())
        .ok_or("no deployment to verify")?;
    let declared = match &rec.agent.outcome {
        Some(Outcome::Finished { checks, .. }) => checks.clone(),
        _ => None,
    };
    let calls = run_checks(prober, url, declared.as_deref().unwrap_or_default(), policy).await;
    let passed = calls.iter().all(|c| c.passed);
    let failed = calls.iter().filter(|c| !c.passed).count();
    let note = match (&declared, passed) {
        (None, true) => {
            "GET /api/health passed; no checks were declared, so nothing else was checked"
                .to_string()
        }
        (Some(d), true) => format!(
            "GET /api/health and the {} declared check(s) passed",
            d.len()
        ),
        (_, false) => format!("{failed} of {} call(s) failed", calls.len()),
    };
    Ok(json!({
        "url": url,
        "declared": declared.as_ref().map(Vec::len),
        "passed": passed,
        "at_ms": tb_core::agent::now_ms(),
        "calls": calls,
        "note": note,
    }))
}

/// Why a recorded `verify` result failed, naming the calls that did; `None` if it passed.
pub fn failure_of(result: &Value) -> Option<String> {
    if result["passed"].as_bool() != Some(false) {
        return None;
    }
    let calls: Vec<CheckCall> = serde_json::from_value(result["calls"].clone()).unwrap_or_default();
    let failed: Vec<CheckCall> = calls.into_iter().filter(|c| !c.passed).collect();
    Some(format!(
        "the live app failed its checks:\n{}",
        describe_calls(&failed)
    ))
}
