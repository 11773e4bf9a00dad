//! The agent loop: ask the model, run the tools it calls, append both, repeat.
//!
//! Bounded by an iteration cap, a budget (checked before every call; a call's `max_tokens`
//! bounds the overshoot to one call) and a wall-clock limit; cancellable. It runs in
//! *slices*: [`Agent::run`] does at most `slice.max_iterations` iterations or stops at a
//! deadline, leaving an [`AgentState`] that any process can resume. An iteration changes
//! the state all at once, after the model call and its tools have finished, so a crash
//! mid-iteration loses that iteration and nothing else.

mod base;
mod compaction;
mod finish;
mod output;
mod prompt;
mod stuck;
mod tools;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::clock::now_ms;
use crate::conversation::{Block, Message, Role};
use crate::model::{Model, ModelError, ModelRequest, StopReason, ToolSpec};
use crate::money::MicroUsd;
use crate::ports::DevDatabase;
use crate::pricing::{ModelPrice, PriceTable, PricingError};
use crate::sandbox::{Sandbox, SandboxError};
use crate::usage::{ModelCall, TokenUsage};

pub use base::{APPLIED_COPY_DIR, AppliedMigration, ProjectBase};
pub use output::head_tail;
pub use prompt::SYSTEM_PROMPT;
pub use stuck::{StuckState, Verdict};
pub use tools::{EDITOR, OUTPUTS_DIR, tool_specs};

/// Limits and switches of the loop. Read once from configuration.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub max_iterations: u32,
    pub budget: MicroUsd,
    pub wall_clock: Duration,
    /// `max_tokens` of every call: bounds how far one call can overshoot the budget.
    pub max_tokens: u32,
    pub command_timeout: Duration,
    pub max_command_timeout: Duration,
    /// Bounds every tool call; `run_command` gets this on top of its command's timeout.
    pub tool_timeout: Duration,
    pub prompt_caching: bool,
    pub truncate_outputs: bool,
    pub output_head: usize,
    pub output_tail: usize,
    pub compaction: bool,
    /// Compact when a prompt uses this share of the model's window.
    pub compact_at_percent: u8,
    pub keep_recent_messages: usize,
    /// Stuck after this many identical iterations (or identical actions that all failed).
    pub stuck_repeats: usize,
    /// `finish` builds the project, starts it and runs its checks in the sandbox before it
    /// is accepted.
    pub check_on_finish: bool,
    /// The run fails after this many refused `finish` calls (`TB_FINISH_ATTEMPTS`).
    pub finish_attempts: u32,
}

impl AgentConfig {
    /// The production defaults.
    pub fn standard() -> Self {
        AgentConfig {
            max_iterations: 60,
            budget: MicroUsd::from_micros(5_000_000),
            wall_clock: Duration::from_secs(45 * 60),
            // Room for a long file in one reply: the anchors use about 24-32k, and current
            // Claude models allow 64k (Opus 4.1: 32k). OpenAI-compatible servers with a
            // smaller output limit (gpt-4o: 16k) need TB_MAX_TOKENS.
            max_tokens: 32_000,
            // OpenHands' sandbox default; long builds ask for more with `timeout_seconds`.
            command_timeout: Duration::from_secs(120),
            max_command_timeout: Duration::from_secs(900),
            tool_timeout: Duration::from_secs(60),
            prompt_caching: true,
            truncate_outputs: true,
            output_head: 4_000,
            output_tail: 4_000,
            compaction: true,
            compact_at_percent: 70,
            keep_recent_messages: 12,
            stuck_repeats: 3,
            check_on_finish: true,
            finish_attempts: 4,
        }
    }
}

/// Why the agent stopped for good.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    Finished {
        summary: String,
        /// The endpoint checks `finish` declared; `None`: none were, and only `/api/health`
        /// is checked.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        checks: Option<Vec<crate::checks::EndpointCheck>>,
    },
    IterationCap {
        iterations: u32,
    },
    BudgetExhausted {
        spent: MicroUsd,
        budget: MicroUsd,
    },
    TimeLimit {
        elapsed_secs: u64,
    },
    Cancelled,
    Stuck {
        reason: String,
    },
    Refused {
        message: String,
    },
    /// The model provider rejected the request (bad key, unknown model, context too long).
    Failed {
        reason: String,
    },
}

impl Outcome {
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Finished { .. })
    }

    /// One line for status pages and logs.
    pub fn describe(&self) -> String {
        match self {
            Outcome::Finished { .. } => "finished".into(),
            Outcome::IterationCap { iterations } => {
                format!("stopped at the iteration cap ({iterations})")
            }
            Outcome::BudgetExhausted { spent, budget } => {
                format!("budget exhausted: spent {spent} of {budget}")
            }
            Outcome::TimeLimit { elapsed_secs } => {
                format!("wall-clock limit reached after {elapsed_secs}s")
            }
            Outcome::Cancelled => "cancelled".into(),
            Outcome::Stuck { reason } => format!("stopped because the agent was stuck: {reason}"),
            Outcome::Refused { message } => format!("the model refused: {message}"),
            Outcome::Failed { reason } => format!("failed: {reason}"),
        }
    }
}

/// Everything needed to resume a run. Serialisable; the worker persists it between slices.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    pub messages: Vec<Message>,
    /// One record per model call: the usage ledger of the run.
    pub calls: Vec<ModelCall>,
    pub iteration: u32,
    pub usage: TokenUsage,
    pub cost: MicroUsd,
    pub started_at_ms: u64,
    /// Messages before this index are sent compacted.
    pub compacted_upto: usize,
    pub stuck: StuckState,
    pub outcome: Option<Outcome>,
}

impl AgentState {
    pub fn new(task: &str) -> Self {
        AgentState {
            messages: vec![Message::user_text(task)],
            calls: Vec::new(),
            iteration: 0,
            usage: TokenUsage::default(),
            cost: MicroUsd::ZERO,
            started_at_ms: now_ms(),
            compacted_upto: 0,
            stuck: StuckState::default(),
            outcome: None,
        }
    }
}

/// How much one [`Agent::run`] may do before handing back.
#[derive(Clone, Copy, Debug)]
pub struct Slice {
    pub max_iterations: u32,
    /// When the slice's time is up (the caller keeps its own margin after it): no iteration
    /// starts at or after it, and no wait inside an iteration outlasts it. A model call
    /// still running then is abandoned with [`AgentError::OutOfTime`] (nothing of the
    /// iteration is applied, so it is redone and billed once); a command still running is
    /// killed and the model is told it ran out of time.
    pub deadline: Option<Instant>,
}

impl Slice {
    pub fn unbounded() -> Self {
        Slice {
            max_iterations: u32::MAX,
            deadline: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SliceEnd {
    Done(Outcome),
    /// The slice's budget of iterations or time is used; run again to continue.
    Paused,
}

/// Failures of the infrastructure, not of the agent: nothing of the failed iteration was
/// applied to the state, so the caller may retry the slice.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Model(ModelError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Pricing(#[from] PricingError),
    /// The slice's deadline came during the model call: the iteration was abandoned and
    /// nothing of it applied. Not a failure: hand over and redo it with a fresh deadline.
    #[error("the slice's time ran out during the model call; the iteration was not applied")]
    OutOfTime,
}

/// Cooperative cancellation, checked before every model call and tool call.
#[derive(Clone, Debug, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// The loop over its ports.
pub struct Agent<'a> {
    pub model: &'a dyn Model,
    pub sandbox: &'a dyn Sandbox,
    pub db: Option<&'a dyn DevDatabase>,
    pub prices: &'a PriceTable,
    pub config: &'a AgentConfig,
    pub cancel: CancelFlag,
    /// Set for a change to an existing project: what the sandbox was seeded with.
    pub base: Option<&'a ProjectBase>,
}

/// What one iteration adds, applied to the state in one go.
struct Step {
    call: ModelCall,
    assistant: Message,
    reply: Option<Message>,
    stuck: StuckState,
    compacted_upto: usize,
    outcome: Option<Outcome>,
}

impl Agent<'_> {
    /// Runs until the agent is done or the slice is used up.
    pub async fn run(&self, state: &mut AgentState, slice: Slice) -> Result<SliceEnd, AgentError> {
        let price = self.prices.price_for(self.model.id())?;
        let tools = tool_specs(self.config);
        let mut done = 0;
        loop {
            if let Some(outcome) = &state.outcome {
                return Ok(SliceEnd::Done(outcome.clone()));
            }
            if let Some(stop) = self.limit_reached(state) {
                tracing::info!(outcome = %stop.describe(), "agent stopped");
                state.outcome = Some(stop);
                continue;
            }
            if done >= slice.max_iterations || slice.deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(SliceEnd::Paused);
            }
            let step = self.step(state, &price, &tools, slice.deadline).await?;
            apply(state, step);
            done += 1;
        }
    }

    fn limit_reached(&self, state: &AgentState) -> Option<Outcome> {
        let c = self.config;
        let elapsed = now_ms().saturating_sub(state.started_at_ms) / 1000;
        if self.cancel.is_cancelled() {
            Some(Outcome::Cancelled)
        } else if state.iteration >= c.max_iterations {
            Some(Outcome::IterationCap {
                iterations: state.iteration,
            })
        } else if state.cost >= c.budget {
            Some(Outcome::BudgetExhausted {
                spent: state.cost,
                budget: c.budget,
            })
        } else if elapsed >= c.wall_clock.as_secs() {
            Some(Outcome::TimeLimit {
                elapsed_secs: elapsed,
            })
        } else {
            None
        }
    }

    #[tracing::instrument(skip_all, fields(iteration = state.iteration + 1))]
    async fn step(
        &self,
        state: &AgentState,
        price: &ModelPrice,
        tools: &[ToolSpec],
        deadline: Option<Instant>,
    ) -> Result<Step, AgentError> {
        let c = self.config;
        let iteration = state.iteration + 1;
        let began_ms = now_ms();
        let upto = if c.compaction {
            state.compacted_upto
        } else {
            0
        };
        let sent = compaction::view(&state.messages, upto);
        let started = Instant::now();
        // A change request's system prompt adds the project it starts from (the same text
        // every iteration, so it stays a cached prefix).
        let system = match self.base {
            Some(b) => format!("{SYSTEM_PROMPT}\n{}", b.prompt()),
            None => SYSTEM_PROMPT.to_string(),
        };
        let request = ModelRequest {
            system: &system,
            messages: &sent,
            tools,
            max_tokens: c.max_tokens,
            prompt_caching: c.prompt_caching,
        };
        let call = self.model.complete(request);
        let answer = match deadline {
            Some(d) => tokio::time::timeout_at(d.into(), call)
                .await
                .map_err(|_| AgentError::OutOfTime)?,
            None => call.await,
        };
        let response = match answer {
            Ok(r) => r,
            Err(ModelError::Transient { status, message }) => {
                return Err(AgentError::Model(ModelError::Transient { status, message }));
            }
            Err(e) => {
                // Rejected or unreadable: retrying the same request cannot help.
                let call = ModelCall {
                    iteration,
                    model: self.model.id().into(),
                    usage: TokenUsage::default(),
                    cost: MicroUsd::ZERO,
                    latency_ms: started.elapsed().as_millis() as u64,
                    stop_reason: StopReason::Other("error".into()),
                };
                let outcome = Some(Outcome::Failed {
                    reason: e.to_string(),
                });
                return Ok(Step {
                    call,
                    assistant: Message::assistant(vec![]),
                    reply: None,
                    stuck: state.stuck.clone(),
                    compacted_upto: state.compacted_upto,
                    outcome,
                });
            }
        };
        let call = ModelCall {
            iteration,
            model: response.model.clone(),
            usage: response.usage,
            cost: price.cost(&response.usage),
            latency_ms: started.elapsed().as_millis() as u64,
            stop_reason: response.stop_reason.clone(),
        };
        tracing::info!(tokens_in = call.usage.input, tokens_out = call.usage.output, cache_read = call.usage.cache_read, cache_write = call.usage.cache_write, cost_micros = call.cost.micros(), stop = ?call.stop_reason, "model call");
        // The provider would refuse blank text blocks back; they say nothing anyway.
        let mut content = response.content;
        content.retain(|b| !b.is_blank_text());
        let assistant = Message::assistant(content);
        let mut step = Step {
            call,
            assistant,
            reply: None,
            stuck: state.stuck.clone(),
            compacted_upto: state.compacted_upto,
            outcome: None,
        };
        // Stop reasons as Anthropic documents them
        // (https://platform.claude.com/docs/en/build-with-claude/handling-stop-reasons).
        let cut_off = match response.stop_reason {
            StopReason::Refusal => {
                let text = step.assistant.text();
                let message = response
                    .refusal
                    .or_else(|| (!text.trim().is_empty()).then_some(text))
                    .unwrap_or_else(|| "no reason given".into());
                step.outcome = Some(Outcome::Refused { message });
                return Ok(step);
            }
            // A paused turn continues when its content is sent back as it is: the next
            // request ends on it, the one assistant turn a request may end on.
            StopReason::PauseTurn => return Ok(step),
            // The reply is truncated: only its last block can be cut short, so the calls
            // before it run and a call at the very end is refused.
            StopReason::MaxTokens => Some(
                "Your reply hit max_tokens and was cut off inside this call, so it was not run (the calls before it were). Write smaller pieces: create a file in parts and add the rest with `insert`, or change it with `str_replace`.",
            ),
            StopReason::ContextWindowExceeded => Some(
                "Your reply was cut off inside this call because the conversation filled the context window, so it was not run (the calls before it were).",
            ),
            _ => None,
        };
        let cut_id = match (cut_off, step.assistant.content.last()) {
            (Some(_), Some(Block::ToolUse { id, .. })) => Some(id.clone()),
            _ => None,
        };

        let mut blocks = Vec::new();
        let mut action = String::new();
        let mut fingerprint = String::new();
        let mut failed = false;
        let uses: Vec<_> = step
            .assistant
            .tool_uses()
            .map(|(i, n, v)| (i.to_string(), n.to_string(), v.clone()))
            .collect();
        let ctx = tools::ToolContext {
            sandbox: self.sandbox,
            db: self.db,
            config: c,
            deadline,
            base: self.base,
        };
        for (k, (id, name, input)) in uses.iter().enumerate() {
            let reply = if let Some(why) = cut_off.filter(|_| cut_id.as_ref() == Some(id)) {
                tools::ToolReply::Observation {
                    content: why.into(),
                    is_error: true,
                    fingerprint: "cut off".into(),
                }
            } else if self.cancel.is_cancelled() {
                tools::ToolReply::Observation {
                    content: "Cancelled by the user; not run.".into(),
                    is_error: true,
                    fingerprint: "cancelled".into(),
                }
            } else {
                tools::run_tool(&ctx, name, input, &format!("{iteration}-{k}")).await?
            };
            let (content, is_error) = match reply {
                tools::ToolReply::Finish {
                    summary,
                    checks,
                    report,
                } => {
                    let mut said = match &checks {
                        Some(c) => format!("Finished; the platform checks /api/health and the {} declared check(s) after the deployment.", c.len()),
                        None => "Finished; no checks were declared, so the platform checks only /api/health after the deployment.".to_string(),
                    };
                    if let Some(r) = report {
                        said.push_str(&format!(" In the sandbox: {r}."));
                    }
                    step.outcome = Some(Outcome::Finished { summary, checks });
                    (said, false)
                }
                tools::ToolReply::FinishRefused { stage, content } => {
                    let refused = finish_refusals(state) + 1;
                    if refused >= c.finish_attempts {
                        step.outcome = Some(Outcome::Failed {
                            reason: format!(
                                "`finish` was refused {refused} times; the last time at its {stage} stage"
                            ),
                        });
                    }
                    action.push_str(&format!("{name} {input}\n"));
                    fingerprint.push_str(&format!("{name} {input} => {content}\n"));
                    failed = true;
                    (content, true)
                }
                tools::ToolReply::Observation {
                    content,
                    is_error,
                    fingerprint: f,
                } => {
                    action.push_str(&format!("{name} {input}\n"));
                    fingerprint.push_str(&format!("{name} {input} => {f}\n"));
                    failed |= is_error;
                    (content, is_error)
                }
            };
            blocks.push(Block::ToolResult {
                tool_use_id: id.clone(),
                content,
                is_error,
            });
        }
        if uses.is_empty() {
            action = format!("no tool: {}", step.assistant.text());
            fingerprint = action.clone();
            blocks.push(Block::Text { text: "You did not call a tool. Continue the work with the tools, or call `finish` with a summary if the project is done.".into() });
        }
        match step.stuck.observe(&action, &fingerprint, failed, c.stuck_repeats) {
            Verdict::Fine => {}
            Verdict::Nudge(reason) => blocks.push(Block::Text { text: format!("You seem to be stuck: {reason}. Step back, read the last error carefully and try a different approach. If you cannot make progress, call `finish` and explain what blocks you.") }),
            Verdict::Stop(reason) => {
                if step.outcome.is_none() {
                    step.outcome = Some(Outcome::Stuck { reason });
                }
            }
        }
        if step.outcome.is_none()
            && let Some(note) = self.limit_note(state, &step.call, began_ms)
        {
            blocks.push(Block::Text { text: note });
        }
        let full = step.call.stop_reason == StopReason::ContextWindowExceeded;
        if c.compaction {
            let after = state.messages.len() + 2;
            let window = self.model.context_window();
            let prompt = if full {
                window
            } else {
                step.call.usage.prompt_total() + c.max_tokens as u64
            };
            if let Some(b) = compaction::next_boundary(
                state.compacted_upto,
                after,
                prompt,
                window,
                c.compact_at_percent,
                c.keep_recent_messages,
            ) {
                tracing::info!(boundary = b, "compacting the context");
                step.compacted_upto = b;
            }
        }
        // The elided outputs may have held the project's layout: give it back, fresh.
        if step.compacted_upto > state.compacted_upto && step.outcome.is_none() {
            let tree =
                match tools::run_tool(&ctx, "list_files", &serde_json::json!({}), "tree").await? {
                    tools::ToolReply::Observation { content, .. } => content,
                    _ => String::new(),
                };
            // Bounded like a tool call; a source that never answers is simply left out.
            let sources = tokio::time::timeout(c.tool_timeout, tools::small_sources(&ctx))
                .await
                .unwrap_or_else(|_| Ok(String::new()))?;
            let mut text = format!("{COMPACTED} The project's files now:\n{tree}");
            if !sources.is_empty() {
                text.push_str(&format!(
                    "\n\nIts small source files as they are now:\n{sources}"
                ));
            }
            blocks.push(Block::Text { text });
        }
        step.reply = Some(Message {
            role: Role::User,
            content: blocks,
        });
        if full && step.compacted_upto == state.compacted_upto && step.outcome.is_none() {
            step.outcome = Some(Outcome::Failed {
                reason: format!(
                    "the conversation filled the model's context window ({} tokens) and cannot be compacted further",
                    self.model.context_window()
                ),
            });
        }
        Ok(step)
    }
}

/// Opens the note given after a compaction.
const COMPACTED: &str = "[Context shortened] Older tool outputs and file contents above were elided to save context; view files again when you need them.";
/// Open the notes given at 80% of a limit and before the last turn.
const REMINDER: &str = "[Reminder]";
const LAST_TURN: &str = "[Last turn]";

impl Agent<'_> {
    /// A note for the model when this iteration took the run past 80% of a limit (once per
    /// limit) or left room for one more turn only (once): the wrap-up turn. Stateless, so a
    /// resumed run gives the same notes: what was already said is read from the
    /// conversation.
    fn limit_note(&self, state: &AgentState, call: &ModelCall, began_ms: u64) -> Option<String> {
        let c = self.config;
        let said = |prefix: &str| {
            state
                .messages
                .iter()
                .filter(|m| m.role == Role::User)
                .any(|m| {
                    m.content
                        .iter()
                        .any(|b| matches!(b, Block::Text { text } if text.starts_with(prefix)))
                })
        };
        let spent = (state.cost + call.cost).micros();
        let budget = c.budget.micros();
        let elapsed = now_ms().saturating_sub(state.started_at_ms);
        let wall = c.wall_clock.as_millis() as u64;
        // The next iteration is the last one when it is the last allowed, when one more
        // call like this one spends the budget, or when one more iteration like this one
        // runs out the time.
        let last = if call.iteration + 1 >= c.max_iterations {
            Some("iteration")
        } else if spent + call.cost.micros() >= budget {
            Some("budget")
        } else if elapsed + now_ms().saturating_sub(began_ms) >= wall {
            Some("time")
        } else {
            None
        };
        if let Some(limit) = last {
            let key = format!("{LAST_TURN} {limit}");
            return (!said(&key)).then(|| format!(
                "{key} limit: your next reply is likely your last before the {limit} limit stops the run. Use it to call `finish` with a summary of what works and what does not yet."
            ));
        }
        let limits = [
            (
                "iteration",
                call.iteration as u64 * 5 >= c.max_iterations as u64 * 4,
                format!("{} of {} iterations", call.iteration, c.max_iterations),
            ),
            (
                "budget",
                spent * 5 >= budget * 4,
                format!("{} of {}", state.cost + call.cost, c.budget),
            ),
            (
                "time",
                elapsed * 5 >= wall * 4,
                format!("{} of {} s", elapsed / 1000, wall / 1000),
            ),
        ];
        limits.into_iter().find_map(|(limit, reached, detail)| {
            let key = format!("{REMINDER} {limit}");
            (reached && !said(&key)).then(|| format!(
                "{key} limit: 80% is used ({detail}). Wrap up: get `npm run build` passing, make sure `GET /api/health` answers, and call `finish`; leave anything optional out."
            ))
        })
    }
}

fn apply(state: &mut AgentState, step: Step) {
    state.iteration = step.call.iteration;
    state.usage += step.call.usage;
    state.cost += step.call.cost;
    state.calls.push(step.call);
    if !step.assistant.content.is_empty() {
        state.messages.push(step.assistant);
    }
    state.messages.extend(step.reply);
    state.stuck = step.stuck;
    state.compacted_upto = step.compacted_upto;
    state.outcome = step.outcome;
}

/// How many times `finish` was refused by its checks so far.
fn finish_refusals(state: &AgentState) -> u32 {
    state
        .messages
        .iter()
        .filter(|m| m.role == Role::User)
        .flat_map(|m| &m.content)
        .filter(|b| {
            matches!(b, Block::ToolResult { content, is_error: true, .. } if content.starts_with(finish::REFUSED))
        })
        .count() as u32
}

/// The tool calls of the last assistant message, one short line each (`run_command npm
/// install`), for progress lines and status pages.
pub fn last_actions(state: &AgentState) -> Vec<String> {
    let Some(m) = state
        .messages
        .iter()
        .rev()
        .find(|m| m.role == Role::Assistant)
    else {
        return Vec::new();
    };
    m.tool_uses()
        .map(|(_, name, input)| {
            let arg = input
                .get("command")
                .or_else(|| input.get("path"))
                .and_then(|v| v.as_str())
                .unwrap_or("");
            let arg: String = arg.chars().take(60).collect();
            if arg.is_empty() {
                name.to_string()
            } else {
                format!("{name} {arg}")
            }
        })
        .collect()
}
