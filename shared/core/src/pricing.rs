//! Prices per model and the cost of a call from its usage.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::money::{MicroUsd, MoneyParseError};
use crate::usage::TokenUsage;

/// Prices in micro-dollars **per million tokens**, one per billing kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelPrice {
    pub input: MicroUsd,
    pub output: MicroUsd,
    /// Writing a prompt-cache entry (Anthropic 5-minute TTL: 1.25 × input).
    pub cache_write: MicroUsd,
    /// Reading from the prompt cache (0.1 × input).
    pub cache_read: MicroUsd,
}

impl ModelPrice {
    pub const FREE: ModelPrice = ModelPrice {
        input: MicroUsd::ZERO,
        output: MicroUsd::ZERO,
        cache_write: MicroUsd::ZERO,
        cache_read: MicroUsd::ZERO,
    };

    /// Builds a price from dollars per million tokens, e.g. `usd(3.0, 15.0, 3.75, 0.30)`.
    /// Only for constant tables; configuration goes through [`PriceTable::from_json`].
    const fn usd_cents(input: i64, output: i64, write: i64, read: i64) -> ModelPrice {
        ModelPrice {
            input: MicroUsd(input * 10_000),
            output: MicroUsd(output * 10_000),
            cache_write: MicroUsd(write * 10_000),
            cache_read: MicroUsd(read * 10_000),
        }
    }

    /// The cost of one call: each token kind at its own price, summed exactly, rounded up
    /// to the next micro-dollar once per call.
    pub fn cost(&self, u: &TokenUsage) -> MicroUsd {
        let part = |tokens: u64, price: MicroUsd| tokens as i128 * price.0 as i128;
        let nano_sum = part(u.input, self.input)
            + part(u.output, self.output)
            + part(u.cache_write, self.cache_write)
            + part(u.cache_read, self.cache_read);
        let micros = (nano_sum + 999_999) / 1_000_000;
        MicroUsd(micros.min(i64::MAX as i128) as i64)
    }

    /// The most one call may cost: the whole prompt written to cache plus `max_tokens` out.
    pub fn worst_case(&self, prompt_tokens: u64, max_tokens: u32) -> MicroUsd {
        let input = self.input.max(self.cache_write);
        self.cost(&TokenUsage {
            input: 0,
            output: max_tokens as u64,
            cache_write: 0,
            cache_read: 0,
        }) + ModelPrice { input, ..*self }.cost(&TokenUsage {
            input: prompt_tokens,
            ..Default::default()
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PricingError {
    #[error(
        "model `{0}` has no known price; add it to the price table (TB_MODEL_PRICES) or set TB_ALLOW_UNPRICED_MODELS=true"
    )]
    Unpriced(String),
    #[error("price table: {0}")]
    Invalid(String),
}

impl From<MoneyParseError> for PricingError {
    fn from(e: MoneyParseError) -> Self {
        PricingError::Invalid(e.to_string())
    }
}

/// Model id (or id prefix) → price. Lookup takes the longest entry that is a prefix of the
/// model id, so `claude-sonnet-4-5` prices `claude-sonnet-4-5-20250929`.
#[derive(Clone, Debug)]
pub struct PriceTable {
    prices: BTreeMap<String, ModelPrice>,
    allow_unpriced: bool,
}

impl PriceTable {
    pub fn empty() -> Self {
        PriceTable {
            prices: BTreeMap::new(),
            allow_unpriced: false,
        }
    }

    /// Anthropic's published prices (USD per million tokens; 5-minute cache writes), plus
    /// `scripted`, the built-in scripted model, priced like Sonnet so that cost code runs.
    pub fn with_defaults() -> Self {
        let opus_new = ModelPrice::usd_cents(500, 2500, 625, 50);
        let opus_old = ModelPrice::usd_cents(1500, 7500, 1875, 150);
        let sonnet = ModelPrice::usd_cents(300, 1500, 375, 30);
        let haiku = ModelPrice::usd_cents(100, 500, 125, 10);
        let mut t = PriceTable::empty();
        for id in [
            "claude-opus-4-5",
            "claude-opus-4-6",
            "claude-opus-4-7",
            "claude-opus-4-8",
        ] {
            t = t.with(id, opus_new);
        }
        for id in ["claude-opus-4-1", "claude-opus-4-0", "claude-opus-4-2025"] {
            t = t.with(id, opus_old);
        }
        for id in [
            "claude-sonnet-4-6",
            "claude-sonnet-4-5",
            "claude-sonnet-4-0",
            "claude-sonnet-4-2025",
        ] {
            t = t.with(id, sonnet);
        }
        t.with("claude-haiku-4-5", haiku).with("scripted", sonnet)
    }

    pub fn with(mut self, model: &str, price: ModelPrice) -> Self {
        self.prices.insert(model.to_string(), price);
        self
    }

    pub fn allow_unpriced(mut self, allow: bool) -> Self {
        self.allow_unpriced = allow;
        self
    }

    /// Adds or overrides entries from JSON: `{"model-id": {"input": "3", "output": "15",
    /// "cache_write": "3.75", "cache_read": "0.30"}}` in dollars per million tokens.
    /// A missing cache price defaults to the input price (no discount assumed).
    pub fn merge_json(mut self, json: &str) -> Result<Self, PricingError> {
        #[derive(Deserialize)]
        struct Entry {
            input: String,
            output: String,
            cache_write: Option<String>,
            cache_read: Option<String>,
        }
        let entries: BTreeMap<String, Entry> =
            serde_json::from_str(json).map_err(|e| PricingError::Invalid(e.to_string()))?;
        for (model, e) in entries {
            let input = MicroUsd::parse_usd(&e.input)?;
            let price = ModelPrice {
                input,
                output: MicroUsd::parse_usd(&e.output)?,
                cache_write: e
                    .cache_write
                    .as_deref()
                    .map(MicroUsd::parse_usd)
                    .transpose()?
                    .unwrap_or(input),
                cache_read: e
                    .cache_read
                    .as_deref()
                    .map(MicroUsd::parse_usd)
                    .transpose()?
                    .unwrap_or(input),
            };
            self.prices.insert(model, price);
        }
        Ok(self)
    }

    /// The price for `model`, or an error if it has none and unpriced models are not allowed
    /// (then it is free, and the operator has said so).
    pub fn price_for(&self, model: &str) -> Result<ModelPrice, PricingError> {
        let found = self
            .prices
            .iter()
            .filter(|(id, _)| model.starts_with(id.as_str()))
            .max_by_key(|(id, _)| id.len())
            .map(|(_, p)| *p);
        match found {
            Some(p) => Ok(p),
            None if self.allow_unpriced => Ok(ModelPrice::FREE),
            None => Err(PricingError::Unpriced(model.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, output: u64, cache_write: u64, cache_read: u64) -> TokenUsage {
        TokenUsage {
            input,
            output,
            cache_write,
            cache_read,
        }
    }

    #[test]
    fn each_token_kind_is_billed_at_its_own_price() {
        let p = PriceTable::with_defaults()
            .price_for("claude-sonnet-4-6")
            .unwrap();
        // 1M of each kind: 3 + 15 + 3.75 + 0.30 dollars.
        let c = p.cost(&usage(1_000_000, 1_000_000, 1_000_000, 1_000_000));
        assert_eq!(c, MicroUsd::parse_usd("22.05").unwrap());
        // Cache reads alone are a tenth of input.
        assert_eq!(p.cost(&usage(0, 0, 0, 1_000_000)), MicroUsd(300_000));
        assert_eq!(p.cost(&usage(0, 0, 1_000_000, 0)), MicroUsd(3_750_000));
    }

    #[test]
    fn a_call_rounds_up_to_one_micro_dollar_once() {
        let p = PriceTable::with_defaults()
            .price_for("claude-haiku-4-5")
            .unwrap();
        // 1 input token at $1/M = 1 micro-dollar exactly; 1 cache-read token = 0.1 µ$ → 1.
        assert_eq!(p.cost(&usage(1, 0, 0, 0)), MicroUsd(1));
        assert_eq!(p.cost(&usage(0, 0, 0, 1)), MicroUsd(1));
        assert_eq!(p.cost(&usage(0, 0, 0, 10)), MicroUsd(1));
        assert_eq!(p.cost(&usage(0, 0, 0, 11)), MicroUsd(2));
    }

    #[test]
    fn dated_model_ids_match_the_longest_prefix() {
        let t = PriceTable::with_defaults();
        assert_eq!(
            t.price_for("claude-sonnet-4-5-20250929").unwrap().input,
            MicroUsd(3_000_000)
        );
        assert_eq!(
            t.price_for("claude-opus-4-6").unwrap().input,
            MicroUsd(5_000_000)
        );
        assert_eq!(
            t.price_for("claude-opus-4-1-20250805").unwrap().input,
            MicroUsd(15_000_000)
        );
    }

    #[test]
    fn unpriced_models_are_refused_unless_allowed() {
        let t = PriceTable::with_defaults();
        assert_eq!(
            t.price_for("llama-3.3-70b"),
            Err(PricingError::Unpriced("llama-3.3-70b".into()))
        );
        let t = t.allow_unpriced(true);
        assert_eq!(t.price_for("llama-3.3-70b"), Ok(ModelPrice::FREE));
    }

    #[test]
    fn configured_prices_override_and_extend_the_defaults() {
        let t = PriceTable::with_defaults()
            .merge_json(r#"{"qwen3-coder": {"input": "0.20", "output": "0.80"},
                            "claude-haiku-4-5": {"input": "2", "output": "10", "cache_read": "0.2"}}"#)
            .unwrap();
        let q = t.price_for("qwen3-coder").unwrap();
        assert_eq!(
            (q.input, q.cache_read),
            (MicroUsd(200_000), MicroUsd(200_000))
        );
        assert_eq!(
            t.price_for("claude-haiku-4-5").unwrap().output,
            MicroUsd(10_000_000)
        );
        assert!(
            PriceTable::empty()
                .merge_json(r#"{"m": {"input": "x", "output": "1"}}"#)
                .is_err()
        );
    }
}
