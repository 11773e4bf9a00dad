//! Model adapters for turbobackend: implementations of [`tb_core::model::Model`].
//!
//! - [`anthropic`]: [`AnthropicClient`], Anthropic's Messages API, with prompt caching.
//! - [`openai`]: [`OpenAiClient`], any OpenAI-compatible chat-completions server (vLLM,
//!   Ollama, OpenRouter).
//! - [`retry`]: [`RetryPolicy`] and the retry rules both clients share; `http` holds the
//!   shared request loop.
//! - [`scripted`]: [`ScriptedModel`], which replays a JSON script of assistant turns
//!   (format in the module docs and `SCRIPT_FORMAT.md`).
//! - [`cache_sim`]: [`PromptCacheSim`], the prompt-cache simulation and token
//!   approximation behind the scripted model's usage numbers.
//! - `server` (feature `server`, for tests and benchmarks only): `ScriptedServer`, a local
//!   HTTP server speaking both wire formats from one script, with fault injection, so tests
//!   can drive the real clients.

pub mod anthropic;
pub mod cache_sim;
mod http;
pub mod openai;
pub mod retry;
pub mod scripted;
#[cfg(feature = "server")]
pub mod server;
pub mod settings;

pub use anthropic::{AnthropicClient, AnthropicConfig};
pub use cache_sim::PromptCacheSim;
pub use http::{ConfigError, DEFAULT_TIMEOUT};
pub use openai::{OpenAiClient, OpenAiConfig};
pub use retry::RetryPolicy;
pub use scripted::{Script, ScriptError, ScriptToolCall, ScriptTurn, ScriptedModel};
#[cfg(feature = "server")]
pub use server::{OpenAiDialect, ScriptedServer, TokenLimitParameter};
pub use settings::{ModelSettings, TODO_TAGS_SCRIPT, USERS_API_SCRIPT};
