//! When a table of a spilled aggregate stops taking entries and passes them on to
//! the spill files instead.

/// Pushes a table must have taken since the last spill before it is judged.
const PASS_MIN_PUSHES: u64 = 1024;

/// A table that did not pay passes on at least this many times the entries it
/// took, before it is tried again.
const PASS_SPANS: u64 = 8;

/// Whether a table of an aggregate that has spilled takes its entries, or passes
/// them straight on to the spill files.
///
/// Once a day spills, everything a table holds is written out and counted again
/// from the files: a table pays only for the entries it folds together. One that
/// folded fewer than a tenth of those it took since the last spill (trace ids,
/// device ids) passes the next ones on, as databases skip a partial aggregation
/// that does not reduce. It is tried again after a span of at least eight times
/// what it took, twice the last span when that did not pay either, so that a
/// day that changes is noticed and one that does not soon runs without the table.
/// The rows are the same either way: the partitions count what they read,
/// however often it was written.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PassOn {
    /// Entries still to pass on.
    left: u64,
    /// The length of the last span passed on; 0 once the table paid.
    span: u64,
}

impl PassOn {
    /// Whether the next entry goes straight to the files (and counts it).
    pub(super) fn take(&mut self) -> bool {
        let passes = self.left > 0;
        self.left -= u64::from(passes);
        passes
    }

    pub(super) fn is_passing(self) -> bool {
        self.left > 0
    }

    /// Judges, at a spill, a table that took `pushes` entries since the last one
    /// and holds `distinct` of them.
    pub(super) fn judge(&mut self, pushes: u64, distinct: u64) {
        if self.is_passing() {
            // It took nothing since the last spill: nothing to judge by.
            return;
        }
        if pushes >= PASS_MIN_PUSHES && distinct.saturating_mul(10) >= pushes.saturating_mul(9) {
            self.span = pushes
                .saturating_mul(PASS_SPANS)
                .max(self.span.saturating_mul(2));
            self.left = self.span;
        } else {
            self.span = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_that_folds_nothing_passes_on_for_longer_each_time_until_it_folds() {
        let mut pass = PassOn::default();
        pass.judge(PASS_MIN_PUSHES - 1, PASS_MIN_PUSHES - 1);
        assert!(!pass.is_passing(), "too few pushes to judge by");
        pass.judge(10_000, 8_999);
        assert!(!pass.is_passing(), "a table that folds a tenth pays");
        pass.judge(10_000, 9_000);
        let passed = std::iter::from_fn(|| pass.take().then_some(())).count();
        assert_eq!(passed, 80_000, "eight times what it took");
        pass.judge(10_000, 10_000);
        let passed = std::iter::from_fn(|| pass.take().then_some(())).count();
        assert_eq!(passed, 160_000, "then twice the last span");
        pass.judge(10_000, 100);
        assert!(!pass.is_passing());
        pass.judge(10_000, 10_000);
        let passed = std::iter::from_fn(|| pass.take().then_some(())).count();
        assert_eq!(passed, 80_000, "a table that paid starts again");
    }
}
