//! The engine's settings, read once at start-up from environment-style variables.
//!
//! Functions take a `var` lookup (`|k| std::env::var(k).ok()` in binaries, a map in tests),
//! and fail with a message naming the variable and what is wrong with it.

use std::time::Duration;

use crate::agent::AgentConfig;
use crate::money::MicroUsd;
use crate::pricing::PriceTable;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{name}: {problem}")]
pub struct SettingError {
    pub name: &'static str,
    pub problem: String,
}

fn parse<T: std::str::FromStr>(
    var: &impl Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<Option<T>, SettingError> {
    match var(name).filter(|v| !v.trim().is_empty()) {
        None => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| SettingError {
            name,
            problem: format!("`{v}` is not a valid value"),
        }),
    }
}

/// The agent's limits: `TB_MAX_ITERATIONS`, `TB_BUDGET_USD` (dollars, e.g. `2.50`),
/// `TB_WALL_CLOCK_SECS`, `TB_MAX_TOKENS`, `TB_COMMAND_TIMEOUT_SECS`, `TB_TOOL_TIMEOUT_SECS`,
/// `TB_PROMPT_CACHING`, `TB_FINISH_ATTEMPTS`; the rest are the standard values.
pub fn agent_config(var: impl Fn(&str) -> Option<String>) -> Result<AgentConfig, SettingError> {
    let mut c = AgentConfig::standard();
    if let Some(n) = parse::<u32>(&var, "TB_MAX_ITERATIONS")? {
        c.max_iterations = n;
    }
    if let Some(v) = var("TB_BUDGET_USD").filter(|v| !v.trim().is_empty()) {
        c.budget = MicroUsd::parse_usd(&v).map_err(|e| SettingError {
            name: "TB_BUDGET_USD",
            problem: e.to_string(),
        })?;
    }
    if let Some(s) = parse::<u64>(&var, "TB_WALL_CLOCK_SECS")? {
        c.wall_clock = Duration::from_secs(s);
    }
    if let Some(n) = parse::<u32>(&var, "TB_MAX_TOKENS")? {
        c.max_tokens = n;
    }
    if let Some(s) = parse::<u64>(&var, "TB_COMMAND_TIMEOUT_SECS")? {
        c.command_timeout = Duration::from_secs(s);
    }
    if let Some(s) = parse::<u64>(&var, "TB_TOOL_TIMEOUT_SECS")? {
        if s == 0 {
            return Err(SettingError {
                name: "TB_TOOL_TIMEOUT_SECS",
                problem: "must be at least 1 second".into(),
            });
        }
        c.tool_timeout = Duration::from_secs(s);
    }
    if let Some(n) = parse::<u32>(&var, "TB_FINISH_ATTEMPTS")? {
        // 0: `finish` is accepted without building and starting the project.
        c.check_on_finish = n > 0;
        c.finish_attempts = n.max(1);
    }
    if let Some(b) = parse::<bool>(&var, "TB_PROMPT_CACHING")? {
        c.prompt_caching = b;
    }
    if c.max_iterations == 0 || c.max_tokens == 0 || c.budget <= MicroUsd::ZERO {
        return Err(SettingError {
            name: "TB_MAX_ITERATIONS/TB_MAX_TOKENS/TB_BUDGET_USD",
            problem: "must be greater than zero".into(),
        });
    }
    Ok(c)
}

/// The price table: the defaults, `TB_MODEL_PRICES` (JSON) merged in, and
/// `TB_ALLOW_UNPRICED_MODELS=true` to run models without a price.
pub fn price_table(var: impl Fn(&str) -> Option<String>) -> Result<PriceTable, SettingError> {
    let mut t = PriceTable::with_defaults();
    if let Some(json) = var("TB_MODEL_PRICES").filter(|v| !v.trim().is_empty()) {
        t = t.merge_json(&json).map_err(|e| SettingError {
            name: "TB_MODEL_PRICES",
            problem: e.to_string(),
        })?;
    }
    let allow = parse::<bool>(&var, "TB_ALLOW_UNPRICED_MODELS")?.unwrap_or(false);
    Ok(t.allow_unpriced(allow))
}

/// [`price_table`], checked to price `model` (the model the process will call): a model
/// with no known price stops start-up with an error naming `TB_MODEL_PRICES`, unless
/// `TB_ALLOW_UNPRICED_MODELS=true`.
pub fn price_table_for(
    var: impl Fn(&str) -> Option<String>,
    model: &str,
) -> Result<PriceTable, SettingError> {
    let table = price_table(var)?;
    table.price_for(model).map_err(|e| SettingError {
        name: "TB_MODEL_PRICES",
        problem: e.to_string(),
    })?;
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn limits_are_read_and_defaulted() {
        let c = agent_config(env(&[
            ("TB_MAX_ITERATIONS", "7"),
            ("TB_BUDGET_USD", "0.25"),
        ]))
        .unwrap();
        assert_eq!(
            (c.max_iterations, c.budget),
            (7, MicroUsd::from_micros(250_000))
        );
        assert_eq!(c.max_tokens, AgentConfig::standard().max_tokens);
    }

    #[test]
    fn bad_values_name_the_variable() {
        assert_eq!(
            agent_config(env(&[("TB_TOOL_TIMEOUT_SECS", "0")]))
                .unwrap_err()
                .name,
            "TB_TOOL_TIMEOUT_SECS"
        );
        assert_eq!(
            agent_config(env(&[("TB_TOOL_TIMEOUT_SECS", "90")]))
                .unwrap()
                .tool_timeout,
            Duration::from_secs(90)
        );
        let e = agent_config(env(&[("TB_MAX_ITERATIONS", "many")])).unwrap_err();
        assert_eq!(e.name, "TB_MAX_ITERATIONS");
        assert!(agent_config(env(&[("TB_BUDGET_USD", "-1")])).is_err());
        assert_eq!(
            price_table(env(&[("TB_ALLOW_UNPRICED_MODELS", "maybe")]))
                .unwrap_err()
                .name,
            "TB_ALLOW_UNPRICED_MODELS"
        );
        assert_eq!(
            price_table(env(&[("TB_MODEL_PRICES", "{")]))
                .unwrap_err()
                .name,
            "TB_MODEL_PRICES"
        );
    }

    #[test]
    fn a_model_without_a_price_stops_start_up_naming_the_setting() {
        let e = price_table_for(env(&[]), "claude-sonnet-4-9").unwrap_err();
        assert_eq!(e.name, "TB_MODEL_PRICES");
        assert!(
            e.to_string()
                .starts_with("TB_MODEL_PRICES: model `claude-sonnet-4-9` has no known price"),
            "{e}"
        );
        assert!(price_table_for(env(&[]), "claude-sonnet-4-6").is_ok());
        assert!(
            price_table_for(
                env(&[(
                    "TB_MODEL_PRICES",
                    r#"{"claude-sonnet-4-9": {"input": "3", "output": "15"}}"#
                )]),
                "claude-sonnet-4-9"
            )
            .is_ok()
        );
        assert!(price_table_for(env(&[("TB_ALLOW_UNPRICED_MODELS", "true")]), "llama3").is_ok());
    }
}
