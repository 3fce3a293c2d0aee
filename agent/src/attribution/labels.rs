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

/// What a job declared about itself: who it is (model, run, stage) and its
/// [`Declaration`] (core's type, the one the wire and the ledger carry). Every field is
/// optional; values that do not parse are dropped with a warning rather than guessed at (a
/// mistyped plan must not become a number).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Declared {
    /// Model name.
    pub model: Option<String>,
    /// Run id.
    pub run: Option<String>,
    /// Stage, canonicalised (`sft` → `finetune`).
    pub stage: Option<String>,
    /// Precision, plan, base model and planned end.
    pub declaration: Declaration,
}

impl Declared {
    /// Sets one label; `key` is normalised (case, `-` vs `_`). Unknown keys are ignored.
    pub fn set(&mut self, key: &str, value: &str) {
        let key = key.trim().to_ascii_lowercase().replace('-', "_");
        let value = value.trim();
        if value.is_empty() {
            return;
        }
        let d = &mut self.declaration;
        match key.as_str() {
            "model" => self.model = Some(value.to_string()),
            "run" => self.run = Some(value.to_string()),
            "stage" => self.stage = Some(Stage::parse(value).as_str().to_string()),
            "precision" => match value.parse::<Precision>() {
                Ok(p) => d.precision = Some(p),
                Err(e) => tracing::warn!(%e, "ignoring declared precision"),
            },
            "planned_flop" => d.planned_flop = parse_count("planned_flop", value),
            "params" => d.params = parse_count("params", value),
            "tokens" => d.tokens = parse_count("tokens", value),
            "base_model" => d.base_model = Some(value.to_string()),
            "planned_end" => d.planned_end_unix_ms = parse_time(value),
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
        let (a, b) = (&mut self.declaration, &other.declaration);
        fill(&mut a.precision, &b.precision);
        fill(&mut a.planned_flop, &b.planned_flop);
        fill(&mut a.params, &b.params);
        fill(&mut a.tokens, &b.tokens);
        fill(&mut a.base_model, &b.base_model);
        fill(&mut a.planned_end_unix_ms, &b.planned_end_unix_ms);
    }
}

/// Optional declarations of a run, as sent in `WorkloadDeclaration`: core's type.
pub use flopmeter_core::declaration::Declaration;

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

/// A planned end by the one rule of [`flopmeter_core::utc::parse_utc`] (a date, an RFC 3339
/// time or Unix ms), so a label means what `flopmeter model set --planned-end` would.
fn parse_time(s: &str) -> Option<i64> {
    match flopmeter_core::utc::parse_utc(s) {
        Ok(ms) => Some(ms),
        Err(e) => {
            tracing::warn!(error = %e, "ignoring planned_end");
            None
        }
    }
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
        assert_eq!(d.stage.as_deref(), Some("finetune"));
        assert_eq!(d.run, None);
        let decl = &d.declaration;
        assert_eq!(decl.planned_flop, Some(10u128.pow(25)));
        assert_eq!(decl.params, Some(70_000_000_000));
        assert_eq!(decl.tokens, Some(15_000_000_000_000));
        assert_eq!(decl.precision, Some(Precision::Fp8));
        assert_eq!(decl.planned_end_unix_ms, Some(1_790_726_400_000));
        assert_eq!(decl.base_model.as_deref(), Some("llama"));
        d.set("planned_flop", "3.25e24");
        assert_eq!(d.declaration.planned_flop, Some(325 * 10u128.pow(22)));
        // The same time as a date, a time with its offset and Unix ms.
        for t in ["2026-09-30", "2026-09-30T02:00:00+02:00", "1790726400000"] {
            d.set("planned_end", t);
            assert_eq!(
                d.declaration.planned_end_unix_ms,
                Some(1_790_726_400_000),
                "{t}"
            );
        }
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
        // Unix seconds, not milliseconds: refused rather than read as January 1970.
        d.set("planned_end", "1790726400");
        assert_eq!(d, Declared::default());
    }
}
