//! Figures as regulators ask for them.
//!
//! The Commission guidelines want the triggering estimate "in FLOP to 2 significant
//! figures" (e.g. 2.3×10^25); the Model Documentation Form wants energy in MWh to two
//! significant figures and training time in wall-clock days.

/// Two significant figures in scientific notation: `2.3e25`. Zero is `0.0e0`.
pub fn sig2(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.1e}")
    } else {
        value.to_string()
    }
}

/// [`sig2`] for an exact integer total.
pub fn sig2_u128(value: u128) -> String {
    sig2(value as f64)
}

/// A band as `2.3e25 [1.9e25 – 4.6e25]`.
pub fn band(low: u128, central: u128, high: u128) -> String {
    format!(
        "{} [{} – {}]",
        sig2_u128(central),
        sig2_u128(low),
        sig2_u128(high)
    )
}

/// Seconds as days with one decimal, e.g. `90.0 days`.
pub fn days(seconds: f64) -> String {
    format!("{:.1} days", seconds / 86_400.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_significant_figures() {
        assert_eq!(sig2(2.34e25), "2.3e25");
        assert_eq!(sig2(2.35e25 + 1e22), "2.4e25");
        assert_eq!(sig2(9.96e24), "1.0e25");
        assert_eq!(sig2(3.149e24), "3.1e24");
        assert_eq!(sig2(0.0), "0.0e0");
        assert_eq!(sig2_u128(10u128.pow(25)), "1.0e25");
        assert_eq!(band(19, 23, 46), "2.3e1 [1.9e1 – 4.6e1]");
        assert_eq!(days(86_400.0 * 90.0), "90.0 days");
    }
}
