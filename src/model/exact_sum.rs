//! An exact sum of `f64`s, so that a summary's `sum` does not depend on the order the
//! numbers came in: the engine sums a day's numbers with it, and the report sums the
//! days' sums.

/// An exact sum of `f64`s (Shewchuk's algorithm, as in Python's `math.fsum`).
///
/// The partials hold the sum without any rounding, so [`ExactSum::total`] is the
/// correctly rounded exact sum whatever order the numbers came in; merging two sums
/// is exact too. Numbers from [`SCALED_FROM`] up are summed scaled down by
/// 2^-[`SCALE_BITS`], so no intermediate overflows whatever the order (`max`, `max`,
/// `-max` sums to `max`); smaller ones are summed as they are, where scaling would
/// lose their low bits. Only a sum whose exact value rounds past `f64::MAX` is
/// infinite, and the summary writes it as `null`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExactSum {
    /// Partials of the numbers from [`SCALED_FROM`] up, each scaled down.
    large: Vec<f64>,
    /// Partials of the smaller numbers, unscaled.
    small: Vec<f64>,
}

/// The power of two large numbers are scaled down by: with at most 2^64 numbers
/// below 2^1024, scaled sums stay under 2^960, far from overflow.
const SCALE_BITS: i32 = 128;

/// Where scaling stops being exact with room to spare: 2^-800 scaled down by
/// 2^-128 is 2^-928, still a normal number, so no bit is lost.
const SCALED_FROM: f64 = pow2(-800);

/// A scaled total at least this large is beyond anything the unscaled small numbers
/// (under 2^-736 in all) could change but a tie, so it is scaled back alone.
const LARGE_TOTAL: f64 = pow2(890);

/// 2^`exp`, exactly, for normal exponents.
const fn pow2(exp: i32) -> f64 {
    f64::from_bits(((exp + 1023) as u64) << 52)
}

impl ExactSum {
    /// Adds `x` exactly.
    pub fn add(&mut self, x: f64) {
        if x.abs() >= SCALED_FROM {
            add_partial(&mut self.large, x * pow2(-SCALE_BITS));
        } else {
            add_partial(&mut self.small, x);
        }
    }

    /// Adds `x`, `times` times, exactly: `x` doubled is exact (and, scaled, cannot
    /// overflow in 64 doublings), so the sum of `x` times each power of two of
    /// `times` is.
    pub fn add_times(&mut self, x: f64, mut times: u64) {
        let (partials, mut x) = if x.abs() >= SCALED_FROM {
            (&mut self.large, x * pow2(-SCALE_BITS))
        } else {
            (&mut self.small, x)
        };
        while times != 0 {
            if times & 1 == 1 {
                add_partial(partials, x);
            }
            times >>= 1;
            x *= 2.0;
        }
    }

    /// Adds every number of `other` exactly.
    pub fn merge(&mut self, other: &ExactSum) {
        for &p in &other.large {
            add_partial(&mut self.large, p);
        }
        for &p in &other.small {
            add_partial(&mut self.small, p);
        }
    }

    /// The partials of the large (scaled) and the small numbers: the whole state,
    /// for writing to disk.
    pub fn parts(&self) -> (&[f64], &[f64]) {
        (&self.large, &self.small)
    }

    /// A sum from [`ExactSum::parts`].
    pub fn from_parts(large: Vec<f64>, small: Vec<f64>) -> Self {
        Self { large, small }
    }

    /// The sum, correctly rounded; infinite only if that rounds past `f64::MAX`.
    pub fn total(&self) -> f64 {
        let large = rounded_total(&self.large);
        // Non-overlapping partials that are not all zero never sum to zero.
        if large == 0.0 {
            return rounded_total(&self.small);
        }
        if large.abs() >= LARGE_TOTAL {
            // Exact power-of-two scaling of a normal number commutes with rounding;
            // past `f64::MAX` it gives the infinity that rounding would.
            return large * pow2(SCALE_BITS);
        }
        // Every large partial scaled back stays under 2^1019: the sum of all
        // partials, unscaled, cannot overflow.
        let mut all = self.small.clone();
        for &p in &self.large {
            add_partial(&mut all, p * pow2(SCALE_BITS));
        }
        rounded_total(&all)
    }
}

/// Adds `x` to non-overlapping `partials` without rounding. The caller keeps every
/// magnitude far enough from `f64::MAX` that no sum here overflows.
fn add_partial(partials: &mut Vec<f64>, mut x: f64) {
    let mut kept = 0;
    for j in 0..partials.len() {
        let mut y = partials[j];
        if x.abs() < y.abs() {
            std::mem::swap(&mut x, &mut y);
        }
        let hi = x + y;
        let lo = y - (hi - x);
        if lo != 0.0 {
            partials[kept] = lo;
            kept += 1;
        }
        x = hi;
    }
    partials.truncate(kept);
    partials.push(x);
}

/// The correctly rounded sum of non-overlapping `partials`.
fn rounded_total(p: &[f64]) -> f64 {
    let Some(mut n) = p.len().checked_sub(1) else {
        return 0.0;
    };
    let mut hi = p[n];
    let mut lo = 0.0;
    while n > 0 {
        let x = hi;
        let y = p[n - 1];
        n -= 1;
        hi = x + y;
        lo = y - (hi - x);
        if lo != 0.0 {
            break;
        }
    }
    // Round half to even across the partial below, as fsum does.
    if n > 0 && ((lo < 0.0 && p[n - 1] < 0.0) || (lo > 0.0 && p[n - 1] > 0.0)) {
        let y = lo * 2.0;
        let x = hi + y;
        if y == x - hi {
            hi = x;
        }
    }
    hi
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_sum_does_not_depend_on_order() {
        let xs = [1e16, 1.0, -1e16, 0.1, 0.2, 3.3e-5, -0.3];
        let forward = xs.iter().fold(ExactSum::default(), |mut s, &x| {
            s.add(x);
            s
        });
        let backward = xs.iter().rev().fold(ExactSum::default(), |mut s, &x| {
            s.add(x);
            s
        });
        assert_eq!(forward.total().to_bits(), backward.total().to_bits());
        assert_eq!(forward.total(), 1.000033);
    }

    fn sum_in_order(xs: &[f64]) -> f64 {
        let mut sum = ExactSum::default();
        xs.iter().for_each(|&x| sum.add(x));
        sum.total()
    }

    #[test]
    fn exact_sum_near_the_largest_number_does_not_depend_on_order() {
        let max = f64::MAX;
        assert_eq!(sum_in_order(&[max, max, -max]), max);
        assert_eq!(sum_in_order(&[max, -max, max]), max);
        assert_eq!(sum_in_order(&[-max, -max, max, 1e-300]), -max);
        assert_eq!(sum_in_order(&[max, max]), f64::INFINITY);
        assert_eq!(sum_in_order(&[-max, -max, 1.0]), f64::NEG_INFINITY);
        // Seen many times: doubling must not overflow either.
        let mut times = ExactSum::default();
        times.add_times(max, 1 << 40);
        times.add_times(-max, (1 << 40) - 1);
        assert_eq!(times.total(), max);
        // Huge and tiny parts meet exactly: 1e300 + 1e-300 - 1e300 is 1e-300.
        assert_eq!(sum_in_order(&[1e300, 1e-300, -1e300]), 1e-300);
        assert_eq!(sum_in_order(&[1e-300, 5e-324, -1e-300]), 5e-324);
    }
}
