//! Conversions between the wire enums and flopmeter-core's domain types.
//!
//! Kept here, not in core, so that core stays free of protocol types.

use flopmeter_core::units::{Method, Precision};

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
}
