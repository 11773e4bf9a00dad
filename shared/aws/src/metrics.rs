//! Metrics as CloudWatch Embedded Metric Format: one JSON line on stdout per event, which
//! CloudWatch Logs turns into metrics without any API call. Locally they are just log lines.

use serde_json::{Map, Value, json};

pub const NAMESPACE: &str = "turbobackend";

#[derive(Clone, Copy, Debug)]
pub enum Unit {
    Count,
    Milliseconds,
    /// Micro-dollars are counted: CloudWatch has no currency unit.
    None,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
            Unit::None => "None",
        }
    }
}

/// The EMF document for one event: `dimensions` name the series, `values` are the metrics.
pub fn document(dimensions: &[(&str, &str)], values: &[(&str, Unit, f64)]) -> Value {
    let mut doc = Map::new();
    doc.insert(
        "_aws".into(),
        json!({
            "Timestamp": tb_core::clock::now_ms(),
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [dimensions.iter().map(|(k, _)| *k).collect::<Vec<_>>()],
                "Metrics": values.iter().map(|(n, u, _)| json!({"Name": n, "Unit": u.name()})).collect::<Vec<_>>(),
            }],
        }),
    );
    for (k, v) in dimensions {
        doc.insert((*k).into(), json!(v));
    }
    for (n, _, v) in values {
        doc.insert((*n).into(), json!(v));
    }
    Value::Object(doc)
}

/// Prints one EMF line to stdout.
pub fn emit(dimensions: &[(&str, &str)], values: &[(&str, Unit, f64)]) {
    println!("{}", document(dimensions, values));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_follow_the_embedded_metric_format() {
        let d = document(
            &[("Function", "worker")],
            &[
                ("Iterations", Unit::Count, 3.0),
                ("CostMicroUsd", Unit::None, 1200.0),
            ],
        );
        let m = &d["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(m["Namespace"], "turbobackend");
        assert_eq!(m["Dimensions"], json!([["Function"]]));
        assert_eq!(
            m["Metrics"][0],
            json!({"Name": "Iterations", "Unit": "Count"})
        );
        assert_eq!(
            (d["Function"].as_str(), d["Iterations"].as_f64()),
            (Some("worker"), Some(3.0))
        );
        assert!(d["_aws"]["Timestamp"].as_u64().unwrap() > 1_600_000_000_000);
    }
}
