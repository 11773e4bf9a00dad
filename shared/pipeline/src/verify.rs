//! The finalizer's `verify` step, after `deploy`: `GET /api/health`, then every check the
//! agent's `finish` declared, in order, against the live URL and its real database
//! (`tb_core::checks`). The health check is retried while the app starts (cold start);
//! each call is bounded. Every call (method, path, status, body excerpt, latency) is
//! recorded in the step's result, which is kept whether the checks pass or not.

use tb_core::agent::Outcome;
use tb_core::checks::{CheckCall, Prober, RunPolicy, describe_calls, run_checks};

use crate::record::RequestRecord;
use crate::steps::Verified;

/// Runs the checks against the deployment recorded by `deploy`; the step's result.
pub async fn verify(
    prober: &dyn Prober,
    rec: &RequestRecord,
    policy: &RunPolicy,
) -> Result<Verified, String> {
    let url = rec
        .steps
        .deployment_url()
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
    Ok(Verified {
        url: url.to_string(),
        declared: declared.as_ref().map(Vec::len),
        passed,
        at_ms: tb_core::clock::now_ms(),
        calls,
        note,
    })
}

/// Why a recorded `verify` result failed, naming the calls that did; `None` if it passed.
pub fn failure_of(result: &Verified) -> Option<String> {
    if result.passed {
        return None;
    }
    let failed: Vec<CheckCall> = result.calls.iter().filter(|c| !c.passed).cloned().collect();
    Some(format!(
        "the live app failed its checks:\n{}",
        describe_calls(&failed)
    ))
}
