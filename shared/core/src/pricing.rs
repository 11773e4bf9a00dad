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
    /// Reading from the prompt cache (0.1 × input for most models).
    pub cache_read: MicroUsd,
    /// A call whose prompt (input, cache writes and reads) is longer than this many tokens
    /// pays every kind `long_prompt_factor` times over (Haiku 5.5: above 100k, 5×); 0: never.
    #[serde(default)]
    pub long_prompt_above: u64,
    #[serde(default = "one")]
    pub long_prompt_factor: i64,
}

fn one() -> i64 {
    1
}

impl ModelPrice {
    pub const FREE: ModelPrice = ModelPrice::usd_cents(0, 0, 0, 0);

    /// Builds a price from cents per million tokens, e.g. `usd_cents(300, 1500, 375, 30)`
    /// for $3 / $15 / $3.75 / $0.30. Only for constant tables; configuration goes through
    /// [`PriceTable::merge_json`].
    const fn usd_cents(input: i64, output: i64, write: i64, read: i64) -> ModelPrice {
        ModelPrice::micros(
            input * 10_000,
            output * 10_000,
            write * 10_000,
            read * 10_000,
        )
    }

    /// Builds a price from micro-dollars per million tokens.
    const fn micros(input: i64, output: i64, write: i64, read: i64) -> ModelPrice {
        ModelPrice {
            input: MicroUsd(input),
            output: MicroUsd(output),
            cache_write: MicroUsd(write),
            cache_read: MicroUsd(read),
            long_prompt_above: 0,
            long_prompt_factor: 1,
        }
    }

    /// The same prices times `factor` for prompts longer than `above` tokens.
    const fn above(self, above: u64, factor: i64) -> ModelPrice {
        ModelPrice {
            long_prompt_above: above,
            long_prompt_factor: factor,
            ..self
        }
    }

    fn factor(&self, prompt_tokens: u64) -> i128 {
        if self.long_prompt_above > 0 && prompt_tokens > self.long_prompt_above {
            self.long_prompt_factor as i128
        } else {
            1
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
        let nano_sum = nano_sum * self.factor(u.prompt_total());
        let micros = (nano_sum + 999_999) / 1_000_000;
        MicroUsd(micros.min(i64::MAX as i128) as i64)
    }

    /// The most one call may cost: the whole prompt written to cache plus `max_tokens` out.
    pub fn worst_case(&self, prompt_tokens: u64, max_tokens: u32) -> MicroUsd {
        self.cost(&TokenUsage {
            input: if self.input >= self.cache_write {
                prompt_tokens
            } else {
                0
            },
            output: max_tokens as u64,
            cache_write: if self.input >= self.cache_write {
                0
            } else {
                prompt_tokens
            },
            cache_read: 0,
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

/// Model id → price. An entry prices its id and the same id with a date (`-20250929`), an
/// alias suffix (`-0`, `-latest`) or a tag (`:30b`); the longest such entry wins, so
/// `claude-sonnet-4-5` prices `claude-sonnet-4-5-20250929` and `claude-sonnet-4`
/// prices `claude-sonnet-4-20250514`, but no entry prices a model it does not name
/// (`claude-sonnet-4` does not price a `claude-sonnet-4-9`).
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

    /// Every model of Anthropic's published price table
    /// (<https://platform.claude.com/docs/en/about-claude/pricing>, and each model's overview
    /// page under <https://platform.claude.com/docs/en/models/>), in USD per million tokens:
    /// input, output, 5-minute cache write, cache read. Plus `scripted`, the built-in
    /// scripted model, priced like Sonnet 4.6 so that cost code runs. Batch and 1-hour cache
    /// prices are not used by this platform.
    pub fn with_defaults() -> Self {
        let table: [(&[&str], ModelPrice); 15] = [
            // Fable 5.2 and Mythos 5.2: $8 / $40, cache read $0.20.
            (
                &["claude-fable-5-2", "claude-mythos-5-2"],
                ModelPrice::usd_cents(800, 4000, 1000, 20),
            ),
            (
                &["claude-fable-5-1", "claude-mythos-5-1"],
                ModelPrice::usd_cents(1000, 5000, 1250, 25),
            ),
            (
                &["claude-fable-5", "claude-mythos-5"],
                ModelPrice::usd_cents(1000, 5000, 1250, 100),
            ),
            (
                &["claude-opus-5-5"],
                ModelPrice::usd_cents(400, 2000, 500, 20),
            ),
            (
                &[
                    "claude-opus-5",
                    "claude-opus-4-8",
                    "claude-opus-4-7",
                    "claude-opus-4-6",
                    "claude-opus-4-5",
                ],
                ModelPrice::usd_cents(500, 2500, 625, 50),
            ),
            (
                &["claude-opus-4-1", "claude-opus-4"],
                ModelPrice::usd_cents(1500, 7500, 1875, 150),
            ),
            // Sonnet 5.5's cache reads: $0.10 since 2026-10-07 (0.05 × input).
            (
                &["claude-sonnet-5-5"],
                ModelPrice::usd_cents(200, 1000, 250, 10),
            ),
            (
                &["claude-sonnet-5"],
                ModelPrice::usd_cents(200, 1000, 250, 20),
            ),
            (
                &[
                    "claude-sonnet-4-6",
                    "claude-sonnet-4-5",
                    "claude-sonnet-4",
                    "claude-3-7-sonnet",
                ],
                ModelPrice::usd_cents(300, 1500, 375, 30),
            ),
            // Haiku 5.5: from $0.10 / $0.50; a prompt over 100k tokens pays 5× on every token.
            (
                &["claude-haiku-5-5"],
                ModelPrice::micros(100_000, 500_000, 125_000, 10_000).above(100_000, 5),
            ),
            (
                &["claude-haiku-4-5"],
                ModelPrice::usd_cents(100, 500, 125, 10),
            ),
            (
                &["claude-3-5-haiku"],
                ModelPrice::usd_cents(80, 400, 100, 8),
            ),
            (
                &["claude-3-opus"],
                ModelPrice::usd_cents(1500, 7500, 1875, 150),
            ),
            (&["claude-3-haiku"], ModelPrice::usd_cents(25, 125, 30, 3)),
            (&["scripted"], ModelPrice::usd_cents(300, 1500, 375, 30)),
        ];
        let mut t = PriceTable::empty();
        for (ids, price) in table {
            for id in ids {
                t = t.with(id, price);
            }
        }
        t
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
                long_prompt_above: 0,
                long_prompt_factor: 1,
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
            .filter(|(id, _)| names(id, model))
            .max_by_key(|(id, _)| id.len())
            .map(|(_, p)| *p);
        match found {
            Some(p) => Ok(p),
            None if self.allow_unpriced => Ok(ModelPrice::FREE),
            None => Err(PricingError::Unpriced(model.to_string())),
        }
    }
}

/// Whether the entry `id` names `model`: the same id, or with a date, an alias or a tag.
fn names(id: &str, model: &str) -> bool {
    let Some(rest) = model.strip_prefix(id) else {
        return false;
    };
    let date = |d: &str| d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit());
    match rest {
        "" | "-0" | "-latest" => true,
        _ if rest.starts_with(':') => true,
        _ => rest.strip_prefix('-').is_some_and(date),
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
    fn every_model_of_the_published_table_has_its_price() {
        let t = PriceTable::with_defaults();
        // (model id, input, output, 5-minute cache write, cache read) in micro-dollars per
        // million tokens, as the pricing page and the model overview pages list them.
        let published: [(&str, i64, i64, i64, i64); 27] = [
            (
                "claude-fable-5-2",
                8_000_000,
                40_000_000,
                10_000_000,
                200_000,
            ),
            (
                "claude-mythos-5-2",
                8_000_000,
                40_000_000,
                10_000_000,
                200_000,
            ),
            (
                "claude-fable-5-1",
                10_000_000,
                50_000_000,
                12_500_000,
                250_000,
            ),
            (
                "claude-mythos-5-1",
                10_000_000,
                50_000_000,
                12_500_000,
                250_000,
            ),
            (
                "claude-fable-5",
                10_000_000,
                50_000_000,
                12_500_000,
                1_000_000,
            ),
            (
                "claude-mythos-5",
                10_000_000,
                50_000_000,
                12_500_000,
                1_000_000,
            ),
            ("claude-opus-5-5", 4_000_000, 20_000_000, 5_000_000, 200_000),
            ("claude-opus-5", 5_000_000, 25_000_000, 6_250_000, 500_000),
            ("claude-opus-4-8", 5_000_000, 25_000_000, 6_250_000, 500_000),
            ("claude-opus-4-7", 5_000_000, 25_000_000, 6_250_000, 500_000),
            ("claude-opus-4-6", 5_000_000, 25_000_000, 6_250_000, 500_000),
            (
                "claude-opus-4-5-20251101",
                5_000_000,
                25_000_000,
                6_250_000,
                500_000,
            ),
            (
                "claude-opus-4-1-20250805",
                15_000_000,
                75_000_000,
                18_750_000,
                1_500_000,
            ),
            (
                "claude-opus-4-20250514",
                15_000_000,
                75_000_000,
                18_750_000,
                1_500_000,
            ),
            (
                "claude-opus-4-0",
                15_000_000,
                75_000_000,
                18_750_000,
                1_500_000,
            ),
            (
                "claude-sonnet-5-5",
                2_000_000,
                10_000_000,
                2_500_000,
                100_000,
            ),
            ("claude-sonnet-5", 2_000_000, 10_000_000, 2_500_000, 200_000),
            (
                "claude-sonnet-4-6",
                3_000_000,
                15_000_000,
                3_750_000,
                300_000,
            ),
            (
                "claude-sonnet-4-5-20250929",
                3_000_000,
                15_000_000,
                3_750_000,
                300_000,
            ),
            (
                "claude-sonnet-4-20250514",
                3_000_000,
                15_000_000,
                3_750_000,
                300_000,
            ),
            (
                "claude-3-7-sonnet-20250219",
                3_000_000,
                15_000_000,
                3_750_000,
                300_000,
            ),
            ("claude-haiku-5-5", 100_000, 500_000, 125_000, 10_000),
            (
                "claude-haiku-4-5-20251001",
                1_000_000,
                5_000_000,
                1_250_000,
                100_000,
            ),
            (
                "claude-3-5-haiku-20241022",
                800_000,
                4_000_000,
                1_000_000,
                80_000,
            ),
            (
                "claude-3-5-haiku-latest",
                800_000,
                4_000_000,
                1_000_000,
                80_000,
            ),
            (
                "claude-3-opus-20240229",
                15_000_000,
                75_000_000,
                18_750_000,
                1_500_000,
            ),
            (
                "claude-3-haiku-20240307",
                250_000,
                1_250_000,
                300_000,
                30_000,
            ),
        ];
        for (model, input, output, write, read) in published {
            let p = t.price_for(model).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                (p.input.0, p.output.0, p.cache_write.0, p.cache_read.0),
                (input, output, write, read),
                "{model}"
            );
        }
    }

    #[test]
    fn haiku_5_5_prompts_over_100k_tokens_pay_five_times_on_every_token() {
        let p = PriceTable::with_defaults()
            .price_for("claude-haiku-5-5")
            .unwrap();
        // 100k prompt tokens + 1k out: $0.01 + $0.0005.
        assert_eq!(p.cost(&usage(100_000, 1_000, 0, 0)), MicroUsd(10_500));
        // A prompt one token longer, and the whole call pays 5×:
        // (60_001 × 0.10 + 40_000 × 0.01 + 1_000 × 0.50) × 5 = 34_500.5 µ$.
        assert_eq!(p.cost(&usage(60_001, 1_000, 0, 40_000)), MicroUsd(34_501));
        assert_eq!(p.worst_case(100_001, 1_000), MicroUsd(65_001));
    }

    #[test]
    fn an_entry_prices_its_own_model_and_never_a_neighbour() {
        let t = PriceTable::with_defaults();
        for unknown in [
            "claude-sonnet-4-9",
            "claude-opus-4-10",
            "claude-sonnet-5-7",
            "claude-haiku-4",
            "gpt-5",
        ] {
            assert_eq!(
                t.price_for(unknown),
                Err(PricingError::Unpriced(unknown.into())),
                "{unknown}"
            );
        }
        let t = t
            .merge_json(r#"{"qwen3-coder": {"input": "0.20", "output": "0.80"}}"#)
            .unwrap();
        assert!(t.price_for("qwen3-coder:30b").is_ok());
        assert!(t.price_for("qwen3-coder-next").is_err());
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
