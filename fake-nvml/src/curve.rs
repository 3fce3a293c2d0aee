//! Metric curves against scenario seconds, and their exact integrals.
//!
//! Ground truth must not depend on a step size: a test that compares an estimator with a
//! numerically integrated truth would be checking the integrator's error as much as the
//! estimator. Every curve here is piecewise linear (constants and steps are special cases),
//! so on each piece between consecutive breakpoints a curve is a polynomial of degree ≤ 1
//! and the product of two curves is of degree ≤ 2. Simpson's rule is exact for polynomials
//! up to degree 3, so integrating piece by piece with Simpson gives exact results (up to
//! floating-point rounding) for single curves and for products of two curves alike.

use serde::Deserialize;

/// A metric as a function of scenario time (seconds since `nvmlInit`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "CurveDef")]
pub enum Curve {
    /// The same value at all times.
    Constant(f64),
    /// `(t, v)` points: the value is `v_i` from `t_i` until the next point; before the first
    /// point it is the first value.
    Steps(Vec<(f64, f64)>),
    /// `(t, v)` points joined by straight lines; constant before the first and after the
    /// last point.
    Ramp(Vec<(f64, f64)>),
}

impl Default for Curve {
    fn default() -> Self {
        Curve::Constant(0.0)
    }
}

/// The TOML spelling of a curve: a number, `{ steps = [[t, v], ...] }` or
/// `{ ramp = [[t, v], ...] }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum CurveDef {
    Constant(f64),
    Steps { steps: Vec<(f64, f64)> },
    Ramp { ramp: Vec<(f64, f64)> },
}

/// Why a curve definition was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CurveError {
    /// A steps or ramp curve with no points.
    #[error("a steps or ramp curve needs at least one [t, v] point")]
    Empty,
    /// Times must increase strictly, or a value would be ambiguous.
    #[error("curve times must be finite and strictly increasing (at point {0})")]
    Unordered(usize),
    /// A value that is NaN or infinite.
    #[error("curve values must be finite (at point {0})")]
    NotFinite(usize),
}

impl TryFrom<CurveDef> for Curve {
    type Error = CurveError;

    fn try_from(def: CurveDef) -> Result<Self, Self::Error> {
        let curve = match def {
            CurveDef::Constant(v) => Curve::Constant(v),
            CurveDef::Steps { steps } => Curve::Steps(steps),
            CurveDef::Ramp { ramp } => Curve::Ramp(ramp),
        };
        curve.validate()?;
        Ok(curve)
    }
}

impl Curve {
    /// Checks the invariants the integrals rely on.
    pub fn validate(&self) -> Result<(), CurveError> {
        match self {
            Curve::Constant(v) if !v.is_finite() => Err(CurveError::NotFinite(0)),
            Curve::Constant(_) => Ok(()),
            Curve::Steps(p) | Curve::Ramp(p) => {
                if p.is_empty() {
                    return Err(CurveError::Empty);
                }
                for (i, (t, v)) in p.iter().enumerate() {
                    if !t.is_finite() {
                        return Err(CurveError::Unordered(i));
                    }
                    if !v.is_finite() {
                        return Err(CurveError::NotFinite(i));
                    }
                    if i > 0 && *t <= p[i - 1].0 {
                        return Err(CurveError::Unordered(i));
                    }
                }
                Ok(())
            }
        }
    }

    /// The value at `t`. Steps are right-continuous: at a step's time the new value holds.
    pub fn at(&self, t: f64) -> f64 {
        match self {
            Curve::Constant(v) => *v,
            Curve::Steps(p) => {
                let mut value = p[0].1;
                for &(ti, vi) in p {
                    if ti <= t {
                        value = vi;
                    } else {
                        break;
                    }
                }
                value
            }
            Curve::Ramp(p) => {
                if t <= p[0].0 {
                    return p[0].1;
                }
                for w in p.windows(2) {
                    let ((t0, v0), (t1, v1)) = (w[0], w[1]);
                    if t <= t1 {
                        return v0 + (v1 - v0) * (t - t0) / (t1 - t0);
                    }
                }
                p[p.len() - 1].1
            }
        }
    }

    /// Times where the curve changes slope or jumps.
    fn breakpoints(&self) -> &[(f64, f64)] {
        match self {
            Curve::Constant(_) => &[],
            Curve::Steps(p) | Curve::Ramp(p) => p,
        }
    }

    /// Values at `a`, the midpoint and `b` of the linear piece that covers the open interval
    /// `(a, b)`, which must contain no breakpoint. For steps the jump at `a` or `b` belongs
    /// to a neighbouring piece, so the piece's constant (its midpoint value) stands for both
    /// ends.
    fn piece(&self, a: f64, b: f64) -> [f64; 3] {
        let m = 0.5 * (a + b);
        match self {
            Curve::Steps(_) => {
                let v = self.at(m);
                [v, v, v]
            }
            _ => [self.at(a), self.at(m), self.at(b)],
        }
    }

    /// `∫ curve dt` over `[t0, t1]` (negative if `t1 < t0`).
    pub fn integral(&self, t0: f64, t1: f64) -> f64 {
        integrate(&[self], t0, t1)
    }

    /// The time-average over `[t0, t1]`; the value at `t0` when the window is empty.
    pub fn mean(&self, t0: f64, t1: f64) -> f64 {
        if t1 == t0 {
            self.at(t0)
        } else {
            self.integral(t0, t1) / (t1 - t0)
        }
    }
}

/// `∫ a(t)·b(t) dt` over `[t0, t1]`, exact for piecewise-linear curves.
pub fn integral_of_product(a: &Curve, b: &Curve, t0: f64, t1: f64) -> f64 {
    integrate(&[a, b], t0, t1)
}

/// `∫ Π curves dt` for one or two curves (degree ≤ 2 per piece, so Simpson is exact).
fn integrate(curves: &[&Curve], t0: f64, t1: f64) -> f64 {
    if t1 < t0 {
        return -integrate(curves, t1, t0);
    }
    let mut cuts = vec![t0, t1];
    for c in curves {
        cuts.extend(
            c.breakpoints()
                .iter()
                .map(|&(t, _)| t)
                .filter(|&t| t > t0 && t < t1),
        );
    }
    cuts.sort_by(f64::total_cmp);
    cuts.dedup();
    let mut total = 0.0;
    for w in cuts.windows(2) {
        let (a, b) = (w[0], w[1]);
        if b <= a {
            continue;
        }
        let mut f = [1.0; 3];
        for c in curves {
            let p = c.piece(a, b);
            for (fi, pi) in f.iter_mut().zip(p) {
                *fi *= pi;
            }
        }
        total += (b - a) / 6.0 * (f[0] + 4.0 * f[1] + f[2]);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
    }

    #[test]
    fn steps_are_right_continuous_and_integrate_exactly() {
        let s = Curve::Steps(vec![(0.0, 10.0), (2.0, 20.0), (5.0, 0.0)]);
        assert_eq!(s.at(-1.0), 10.0);
        assert_eq!(s.at(2.0), 20.0);
        assert_eq!(s.at(4.999), 20.0);
        assert_eq!(s.at(9.0), 0.0);
        // 10·2 + 20·3 + 0·5 = 80 over [0, 10].
        assert!(close(s.integral(0.0, 10.0), 80.0));
        // [1, 3]: 10·1 + 20·1.
        assert!(close(s.mean(1.0, 3.0), 15.0));
    }

    #[test]
    fn ramps_interpolate_and_integrate_exactly() {
        let r = Curve::Ramp(vec![(0.0, 0.0), (10.0, 100.0)]);
        assert!(close(r.at(2.5), 25.0));
        assert_eq!(r.at(20.0), 100.0);
        // Triangle 0..10 (500) plus 100·5 after the last point.
        assert!(close(r.integral(0.0, 15.0), 1000.0));
        assert!(close(r.mean(4.0, 4.0), 40.0));
    }

    #[test]
    fn products_of_ramps_and_steps_are_exact() {
        // ∫0..10 (t·10)·(t) dt with ramps t→10t and t→t = 10·t³/3 |0..10 = 10000/3.
        let a = Curve::Ramp(vec![(0.0, 0.0), (10.0, 100.0)]);
        let b = Curve::Ramp(vec![(0.0, 0.0), (10.0, 10.0)]);
        assert!(close(integral_of_product(&a, &b, 0.0, 10.0), 10000.0 / 3.0));
        // Step 2 on [0,5), 4 after, times t: 2·12.5 + 4·(50 - 12.5) = 175.
        let s = Curve::Steps(vec![(0.0, 2.0), (5.0, 4.0)]);
        assert!(close(integral_of_product(&s, &b, 0.0, 10.0), 175.0));
        assert!(close(integral_of_product(&s, &b, 10.0, 0.0), -175.0));
    }

    #[test]
    fn invalid_curves_are_rejected() {
        assert_eq!(Curve::Steps(vec![]).validate(), Err(CurveError::Empty));
        assert_eq!(
            Curve::Ramp(vec![(1.0, 0.0), (1.0, 2.0)]).validate(),
            Err(CurveError::Unordered(1))
        );
        assert_eq!(
            Curve::Constant(f64::NAN).validate(),
            Err(CurveError::NotFinite(0))
        );
    }
}
