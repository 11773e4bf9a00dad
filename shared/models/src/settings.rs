//! Which model to use, read once from the environment.
//!
//! - `ANTHROPIC_API_KEY` set → the Anthropic Messages API (`ANTHROPIC_BASE_URL` overrides the
//!   endpoint).
//! - else `OPENAI_BASE_URL` set → an OpenAI-compatible server (`OPENAI_API_KEY` optional).
//! - else the built-in scripted model, which says so.
//!
//! `TB_MODEL` names the model (default `claude-sonnet-4-6`; required for OpenAI-compatible
//! servers, whose model names vary). `TB_MODEL_CONTEXT_WINDOW` overrides its window.

use std::fmt;
use std::sync::Arc;

use tb_core::model::Model;

use crate::scripted::{Script, ScriptedModel};
use crate::{AnthropicClient, AnthropicConfig, OpenAiClient, OpenAiConfig};

/// The built-in script: a Nitro.js users API (see `scripts/users-api.json`).
pub const USERS_API_SCRIPT: &str = include_str!("../scripts/users-api.json");
/// A todo API with tags on PostgreSQL (two migrations, the dev database tool, declared
/// checks that chain), for tests that play it through the scripted model's server.
pub const TODO_TAGS_SCRIPT: &str = include_str!("../scripts/todo-tags.json");

pub const DEFAULT_MODEL: &str = "claude-sonnet-4-6";

/// The model choice. `Debug` never shows keys.
#[derive(Clone)]
pub enum ModelSettings {
    Anthropic(AnthropicConfig),
    OpenAi(OpenAiConfig),
    /// No model configured: replay a script.
    Scripted(Script),
}

#[derive(Debug, thiserror::Error)]
#[error("model configuration: {0}")]
pub struct SettingsError(String);

impl ModelSettings {
    /// Reads the variables above through `var` (pass `|k| std::env::var(k).ok()`).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let non_empty = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let context_window = match non_empty("TB_MODEL_CONTEXT_WINDOW") {
            Some(v) => Some(v.trim().parse().map_err(|_| {
                SettingsError(format!(
                    "TB_MODEL_CONTEXT_WINDOW={v} is not a number of tokens"
                ))
            })?),
            None => None,
        };
        if let Some(api_key) = non_empty("ANTHROPIC_API_KEY") {
            let model = non_empty("TB_MODEL").unwrap_or_else(|| DEFAULT_MODEL.into());
            let mut config = AnthropicConfig::new(api_key, model);
            if let Some(base_url) = non_empty("ANTHROPIC_BASE_URL") {
                config.base_url = base_url;
            }
            if let Some(window) = context_window {
                config.context_window = window;
            }
            return Ok(ModelSettings::Anthropic(config));
        }
        if let Some(base_url) = non_empty("OPENAI_BASE_URL") {
            let model = non_empty("TB_MODEL").ok_or_else(|| SettingsError("OPENAI_BASE_URL is set but TB_MODEL is not: name the model the server should run".into()))?;
            let mut config = OpenAiConfig::new(base_url, model);
            config.api_key = non_empty("OPENAI_API_KEY");
            if let Some(window) = context_window {
                config.context_window = window;
            }
            return Ok(ModelSettings::OpenAi(config));
        }
        let script =
            Script::from_json(USERS_API_SCRIPT).map_err(|e| SettingsError(e.to_string()))?;
        Ok(ModelSettings::Scripted(script))
    }

    /// The id of the model requests are made with (and priced by).
    pub fn model_id(&self) -> &str {
        match self {
            ModelSettings::Anthropic(config) => &config.model,
            ModelSettings::OpenAi(config) => &config.model,
            ModelSettings::Scripted(script) => &script.model,
        }
    }

    pub fn is_scripted(&self) -> bool {
        matches!(self, ModelSettings::Scripted(_))
    }

    /// Builds the client (once, at start-up).
    pub fn build(&self) -> Result<Arc<dyn Model>, SettingsError> {
        let err = |e: crate::ConfigError| SettingsError(e.to_string());
        Ok(match self {
            ModelSettings::Anthropic(config) => {
                Arc::new(AnthropicClient::new(config.clone()).map_err(err)?)
            }
            ModelSettings::OpenAi(config) => {
                Arc::new(OpenAiClient::new(config.clone()).map_err(err)?)
            }
            ModelSettings::Scripted(script) => Arc::new(ScriptedModel::new(script.clone())),
        })
    }

    /// One line for people: which model, and whether it is real.
    pub fn describe(&self) -> String {
        match self {
            ModelSettings::Anthropic(config) => format!("{} (Anthropic Messages API)", config.model),
            ModelSettings::OpenAi(config) => format!("{} (OpenAI-compatible server at {})", config.model, config.base_url),
            ModelSettings::Scripted(_) => "scripted: no model key is set (ANTHROPIC_API_KEY or OPENAI_BASE_URL), so a built-in script plays the model; no model was called".into(),
        }
    }
}

impl fmt::Debug for ModelSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn an_anthropic_key_selects_anthropic_and_is_never_shown() {
        let s = ModelSettings::from_env(env(&[("ANTHROPIC_API_KEY", "sk-secret-value")])).unwrap();
        assert!(matches!(&s, ModelSettings::Anthropic(config) if config.model == DEFAULT_MODEL));
        assert!(!format!("{s:?}").contains("sk-secret-value"));
    }

    #[test]
    fn an_openai_server_needs_a_model_name() {
        let e = ModelSettings::from_env(env(&[("OPENAI_BASE_URL", "http://localhost:11434/v1")]))
            .unwrap_err();
        assert!(e.to_string().contains("TB_MODEL"));
        let s = ModelSettings::from_env(env(&[
            ("OPENAI_BASE_URL", "http://x/v1"),
            ("TB_MODEL", "qwen3"),
        ]))
        .unwrap();
        assert!(matches!(s, ModelSettings::OpenAi(_)));
    }

    #[test]
    fn nothing_set_means_the_scripted_model_and_says_so() {
        let s = ModelSettings::from_env(env(&[("ANTHROPIC_API_KEY", "  ")])).unwrap();
        assert!(s.is_scripted());
        assert!(s.describe().contains("no model was called"));
        assert!(ModelSettings::from_env(env(&[("TB_MODEL_CONTEXT_WINDOW", "lots")])).is_err());
    }
}
