//! Conversions between the wire messages and flopmeter-core's domain types.
//!
//! Kept here, not in core, so that core stays free of protocol types.

use flopmeter_core::declaration::Declaration;
use flopmeter_core::units::{FlopAmount, FlopAmountError, Method, Precision};

use crate::v1;

impl From<Method> for v1::Method {
    fn from(m: Method) -> Self {
        match m {
            Method::GpmTensor => v1::Method::GpmTensor,
            Method::UtilMfu => v1::Method::UtilMfu,
            Method::Mfu => v1::Method::Mfu,
            Method::Declared => v1::Method::Declared,
            Method::MigFallback => v1::Method::MigFallback,
            Method::None => v1::Method::None,
        }
    }
}

/// The core method for a wire method; `None` for `METHOD_UNSPECIFIED`.
pub fn method_from_wire(m: v1::Method) -> Option<Method> {
    match m {
        v1::Method::Unspecified => None,
        v1::Method::GpmTensor => Some(Method::GpmTensor),
        v1::Method::UtilMfu => Some(Method::UtilMfu),
        v1::Method::Mfu => Some(Method::Mfu),
        v1::Method::Declared => Some(Method::Declared),
        v1::Method::MigFallback => Some(Method::MigFallback),
        v1::Method::None => Some(Method::None),
    }
}

impl From<Precision> for v1::Precision {
    fn from(p: Precision) -> Self {
        match p {
            Precision::Fp64 => v1::Precision::Fp64,
            Precision::Tf32 => v1::Precision::Tf32,
            Precision::Bf16 => v1::Precision::Bf16,
            Precision::Fp8 => v1::Precision::Fp8,
            Precision::Fp4 => v1::Precision::Fp4,
        }
    }
}

/// The core precision for a wire precision; `None` for `PRECISION_UNSPECIFIED`.
pub fn precision_from_wire(p: v1::Precision) -> Option<Precision> {
    match p {
        v1::Precision::Unspecified => None,
        v1::Precision::Fp64 => Some(Precision::Fp64),
        v1::Precision::Tf32 => Some(Precision::Tf32),
        v1::Precision::Bf16 => Some(Precision::Bf16),
        v1::Precision::Fp8 => Some(Precision::Fp8),
        v1::Precision::Fp4 => Some(Precision::Fp4),
    }
}

/// A declared count that is not a whole number by [`FlopAmount`]'s rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("declaration.{field}: {source}")]
pub struct DeclarationError {
    /// The field (`planned_flop`, `params`, `tokens`).
    pub field: &'static str,
    /// Why its text is not a count.
    #[source]
    pub source: FlopAmountError,
}

/// A declaration as records carry it: counts as exact decimal strings (they exceed 2^64),
/// absent figures as empty strings and zero.
pub fn declaration_to_wire(d: &Declaration) -> v1::WorkloadDeclaration {
    let count = |n: Option<u128>| n.map(|n| n.to_string()).unwrap_or_default();
    v1::WorkloadDeclaration {
        precision: d.precision.map_or(0, |p| v1::Precision::from(p) as i32),
        planned_flop: count(d.planned_flop),
        params: count(d.params),
        tokens: count(d.tokens),
        base_model: d.base_model.clone().unwrap_or_default(),
        planned_end_unix_ms: d.planned_end_unix_ms.unwrap_or(0),
    }
}

/// Reads a record's declaration, parsing its counts by the one exact rule ([`FlopAmount`]:
/// bounded work). The collector calls it at the door (ingest validation), never inside the
/// ledger's transaction; a count that does not parse quarantines its record, since a plan
/// read wrong could start a legal clock.
pub fn declaration_from_wire(d: &v1::WorkloadDeclaration) -> Result<Declaration, DeclarationError> {
    let count = |field: &'static str, s: &str| -> Result<Option<u128>, DeclarationError> {
        if s.trim().is_empty() {
            return Ok(None);
        }
        FlopAmount::parse(s)
            .map(|v| Some(v.get()))
            .map_err(|source| DeclarationError { field, source })
    };
    Ok(Declaration {
        precision: precision_from_wire(d.precision()),
        planned_flop: count("planned_flop", &d.planned_flop)?,
        params: count("params", &d.params)?,
        tokens: count("tokens", &d.tokens)?,
        base_model: (!d.base_model.is_empty()).then(|| d.base_model.clone()),
        planned_end_unix_ms: (d.planned_end_unix_ms > 0).then_some(d.planned_end_unix_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip() {
        for m in [
            Method::GpmTensor,
            Method::UtilMfu,
            Method::Mfu,
            Method::Declared,
            Method::MigFallback,
            Method::None,
        ] {
            assert_eq!(method_from_wire(m.into()), Some(m));
        }
        for p in Precision::ALL {
            assert_eq!(precision_from_wire(p.into()), Some(p));
        }
        assert_eq!(method_from_wire(v1::Method::Unspecified), None);
    }

    #[test]
    fn declarations_round_trip_exactly() {
        let d = Declaration {
            precision: Some(Precision::Fp8),
            planned_flop: Some(u128::MAX),
            params: Some(70_000_000_000),
            tokens: None,
            base_model: Some("llama".into()),
            planned_end_unix_ms: Some(1_790_726_400_000),
        };
        assert_eq!(declaration_from_wire(&declaration_to_wire(&d)), Ok(d));
        let empty = Declaration::default();
        assert_eq!(
            declaration_to_wire(&empty),
            v1::WorkloadDeclaration::default()
        );
        assert_eq!(
            declaration_from_wire(&v1::WorkloadDeclaration::default()),
            Ok(empty)
        );
    }

    #[test]
    fn declared_counts_are_exact_or_refused_with_the_field() {
        let d = declaration_from_wire(&v1::WorkloadDeclaration {
            planned_flop: "3.8e24".into(),
            params: "70000000000".into(),
            tokens: "".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(d.planned_flop, Some(38 * 10u128.pow(23)));
        assert_eq!(d.params, Some(70_000_000_000));
        assert_eq!(d.tokens, None);
        for (field, text) in [
            ("planned_flop", "0e2147483647"),
            ("params", "1.25e1"),
            ("tokens", "-1"),
        ] {
            let mut w = v1::WorkloadDeclaration::default();
            match field {
                "planned_flop" => w.planned_flop = text.into(),
                "params" => w.params = text.into(),
                _ => w.tokens = text.into(),
            }
            let e = declaration_from_wire(&w).unwrap_err();
            assert_eq!(e.field, field);
            assert!(
                e.to_string().starts_with(&format!("declaration.{field}: ")),
                "{e}"
            );
            assert!(std::error::Error::source(&e).is_some());
        }
    }
}
