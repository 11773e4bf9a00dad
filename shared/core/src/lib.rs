//! The core of turbobackend: the domain, the ports and the agent engine.
//!
//! Nothing here knows about AWS, Daytona, GitHub, Fly.io or any model provider's wire
//! format. Adapters live in sibling crates and implement the traits defined here:
//!
//! - [`model::Model`]: one chat-model call with tools.
//! - [`sandbox::Sandbox`] and [`sandbox::SandboxProvider`]: where the agent's commands run.
//! - [`ports`]: the dev database the agent may query, the archive, and the other outside
//!   services.
//!
//! The agent loop is [`agent::Agent`]; it runs in slices over a serialisable
//! [`agent::AgentState`], so a worker can stop after any iteration and another can resume.

pub mod agent;
pub mod api_key;
pub mod backoff;
pub mod checks;
pub mod clock;
pub mod conversation;
pub mod domain;
pub mod encoding;
pub mod ids;
pub mod model;
pub mod money;
pub mod net;
pub mod ports;
pub mod pricing;
pub mod sandbox;
pub mod secret;
pub mod settings;
pub mod usage;

pub use conversation::{Block, Message, Role};
pub use money::MicroUsd;
pub use usage::{ModelCall, TokenUsage};
