//! The `flopmeter` job labels, whatever carries them: `FLOPMETER_*` environment variables,
//! `flopmeter.io/*` pod labels and annotations, or `flopmeter.<key>=<value>` words in a Slurm
//! job comment. One parser, so the three spellings cannot drift apart.

use flopmeter_core::stage::Stage;
use flopmeter_core::units::{FlopAmount, Precision};

/// The label keys, in their canonical snake_case form (`FLOPMETER_PLANNED_FLOP`,
/// `flopmeter.io/planned-flop` and `flopmeter.planned_flop` all mean `planned_flop`).
pub const KEYS: [&str; 9] = [
    "model",
    "run",
    "stage",
    "precision",
    "planned_flop",
    "params",
    "tokens",
    "base_model",
    "planned_end",
];

/// What a job declared about itself. Every field is optional; values that do not parse are
/// dropped with a warning rather than guessed at (a mistyped plan must not become a number).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Declared {
    /// Model name.
    pub model: Option<String>,
    /// Run id.
    pub run: Option<String>,
    /// Stage, canonicalised (`sft` → `finetune`).
    pub stage: Option<String>,
    /// Declared precision.
    pub precision: Option<Precision>,
    /// Planned total FLOP.
    pub planned_flop: Option<u128>,
    /// Parameters N.
    pub params: Option<u128>,
    /// Tokens D.
    pub tokens: Option<u128>,
    /// Base model this run fine-tunes.
    pub base_model: Option<String>,
    /// Planned end of the run, Unix ms.
    pub planned_end_unix_ms: Option<i64>,
}

impl Declared {
    /// Sets one label; `key` is normalised (case, `-` vs `_`). Unknown keys are ignored.
    pub fn set(&mut self, key: &str, value: &str) {
        let key = key.trim().to_ascii_lowercase().replace('-', "_");
        let value = value.trim();
        if value.is_empty() {
            return;
        }
        match key.as_str() {
            "model" => self.model = Some(value.to_string()),
            "run" => self.run = Some(value.to_string()),
            "stage" => self.stage = Some(Stage::parse(value).as_str().to_string()),
            "precision" => match value.parse::<Precision>() {
                Ok(p) => self.precision = Some(p),
                Err(e) => tracing::warn!(%e, "ignoring declared precision"),
            },
            "planned_flop" => self.planned_flop = parse_count("planned_flop", value),
            "params" => self.params = parse_count("params", value),
            "tokens" => self.tokens = parse_count("tokens", value),
            "base_model" => self.base_model = Some(value.to_string()),
            "planned_end" => self.planned_end_unix_ms = parse_time(value),
            _ => {}
        }
    }

    /// Fills every field this lacks from `other`.
    pub fn fill_from(&mut self, other: &Declared) {
        fn fill<T: Clone>(a: &mut Option<T>, b: &Option<T>) {
            if a.is_none() {
                a.clone_from(b);
            }
        }
        fill(&mut self.model, &other.model);
        fill(&mut self.run, &other.run);
        fill(&mut self.stage, &other.stage);
        fill(&mut self.precision, &other.precision);
        fill(&mut self.planned_flop, &other.planned_flop);
        fill(&mut self.params, &other.params);
        fill(&mut self.tokens, &other.tokens);
        fill(&mut self.base_model, &other.base_model);
        fill(&mut self.planned_end_unix_ms, &other.planned_end_unix_ms);
    }

    /// The declarations proper (everything but model, run and stage), for the record.
    pub fn declaration(&self) -> Declaration {
        Declaration {
            precision: self.precision,
            planned_flop: self.planned_flop,
            params: self.params,
            tokens: self.tokens,
            base_model: self.base_model.clone(),
            planned_end_unix_ms: self.planned_end_unix_ms,
        }
    }
}

/// Optional declarations of a run, as sent in `WorkloadDeclaration`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Declaration {
    /// Declared precision (narrows the estimate's band).
    pub precision: Option<Precision>,
    /// Planned total FLOP.
    pub planned_flop: Option<u128>,
    /// Parameters N.
    pub params: Option<u128>,
    /// Tokens D.
    pub tokens: Option<u128>,
    /// Base model.
    pub base_model: Option<String>,
    /// Planned end, Unix ms.
    pub planned_end_unix_ms: Option<i64>,
}

impl Declaration {
    /// True when nothing was declared (the record then carries no declaration).
    pub fn is_empty(&self) -> bool {
        *self == Declaration::default()
    }
}

/// A count such as `1e25`, `2.5e24`, `70000000000` or `70_000_000_000`, by the one rule of
/// [`FlopAmount`] (exact, whole, bounded work), so a label means what the collector and the
/// CLI would read in it.
fn parse_count(field: &str, s: &str) -> Option<u128> {
    match FlopAmount::parse(s) {
        Ok(v) => Some(v.get()),
        Err(e) => {
            tracing::warn!(field, error = %e, "ignoring declared count");
            None
        }
    }
}

/// Unix milliseconds, or an RFC 3339 timestamp / date (`2026-09-30`, `2026-09-30T12:00:00Z`).
fn parse_time(s: &str) -> Option<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Some(t.as_millisecond());
    }
    if let Ok(d) = s.parse::<jiff::civil::Date>()
        && let Ok(z) = d.to_zoned(jiff::tz::TimeZone::UTC)
    {
        return Some(z.timestamp().as_millisecond());
    }
    tracing::warn!(
        value = s,
        "ignoring planned_end that is not Unix ms or an RFC 3339 time"
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_and_values() {
        let mut d = Declared::default();
        d.set("MODEL", "demo-7b");
        d.set("planned-flop", "1e25");
        d.set("PARAMS", "70_000_000_000");
        d.set("tokens", "15e12");
        d.set("stage", "SFT");
        d.set("precision", "FP8");
        d.set("planned_end", "2026-09-30");
        d.set("base-model", " llama ");
        d.set("unknown", "x");
        d.set("run", "  ");
        assert_eq!(d.model.as_deref(), Some("demo-7b"));
        assert_eq!(d.planned_flop, Some(10u128.pow(25)));
        assert_eq!(d.params, Some(70_000_000_000));
        assert_eq!(d.tokens, Some(15_000_000_000_000));
        assert_eq!(d.stage.as_deref(), Some("finetune"));
        assert_eq!(d.precision, Some(Precision::Fp8));
        assert_eq!(d.planned_end_unix_ms, Some(1_790_726_400_000));
        assert_eq!(d.base_model.as_deref(), Some("llama"));
        d.set("planned_flop", "3.25e24");
        assert_eq!(d.planned_flop, Some(325 * 10u128.pow(22)));
        assert_eq!(d.run, None);
    }

    #[test]
    fn bad_values_are_dropped_not_guessed() {
        let mut d = Declared::default();
        d.set("planned_flop", "lots");
        d.set("params", "1.5e0");
        d.set("tokens", "-5");
        // The collector's rule: bounded exponents, no decimal commas.
        d.set("planned_flop", "0e2147483647");
        d.set("params", "70,000,000,000");
        d.set("precision", "int3");
        d.set("planned_end", "tomorrow");
        assert_eq!(d, Declared::default());
    }
}
