//! Percentiles of a key's numbers: a DDSketch (Masson, Rim and Lee, VLDB 2019) with
//! the logarithmic index mapping of relative accuracy 0.01, stored in the protobuf
//! encoding of Datadog's DDSketch libraries (`ddsketch.proto`).
//!
//! A number x > 0 goes to the bin of key ceil(log_gamma(x)), which holds
//! (gamma^(k-1), gamma^k]; the bin's value gamma^k * 2 / (1 + gamma) is within 1% of
//! everything in it. Negative numbers go to a second store by their magnitude, and
//! magnitudes too small for the mapping (below [`MIN_INDEXABLE`]) to the zero count.
//! The keys are those of Datadog's Python library (`ddsketch`), which reads these
//! sketches back exactly; its Go and Java libraries number the same bins one lower.
//!
//! Bins are counted, so a sketch does not depend on the order its numbers came in, and
//! two sketches merged equal the sketch of all their numbers. Each store keeps at
//! most [`MAX_BINS`] bins: past that, the lowest bins collapse into the lowest one kept
//! (Datadog's "collapsing lowest" store), so only percentiles that fall among numbers
//! more than gamma^2048 (about 6e17) times smaller than the largest lose their 1%.

use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::Simd;
use base64::engine::general_purpose::PAD;
use prost::Message as _;

/// The sketch's relative accuracy: every percentile it gives is within 1%.
pub const RELATIVE_ACCURACY: f64 = 0.01;

/// Standard base64 with padding, with the vector instructions the CPU has: a year's
/// report decodes about 60 MB of sketches, which the scalar engine spent 6% of the
/// report's time on.
static BASE64: LazyLock<Simd> = LazyLock::new(|| Simd::standard(PAD));

/// The most bins a store (positive or negative numbers) keeps.
pub const MAX_BINS: usize = 2048;

/// gamma = (1 + 0.01) / (1 - 0.01), computed as Datadog's Python library does
/// (`1 + 2a / (1 - a)`), which gives the same bits: that library merges only
/// sketches whose gamma is bit for bit its own.
pub const GAMMA: f64 = 1.0 + 2.0 * RELATIVE_ACCURACY / (1.0 - RELATIVE_ACCURACY);

/// The smallest magnitude the mapping indexes; smaller ones count as zero.
pub const MIN_INDEXABLE: f64 = f64::MIN_POSITIVE * GAMMA;

/// The percentiles a summary gives, as the fractions (numerator, denominator) of q.
pub const PERCENTILES: [(&str, u64, u64); 3] = [("p50", 1, 2), ("p90", 9, 10), ("p99", 99, 100)];

/// log2(x) times this is log_gamma(x).
fn multiplier() -> f64 {
    std::f64::consts::LN_2 / (2.0 * RELATIVE_ACCURACY / (1.0 - RELATIVE_ACCURACY)).ln_1p()
}

/// The key of the bin that holds `magnitude` (at least [`MIN_INDEXABLE`]).
fn key(magnitude: f64) -> i32 {
    // |log_gamma| of any finite f64 is under 36,000: the cast cannot saturate.
    (magnitude.log2() * multiplier()).ceil() as i32
}

/// The value that stands for the bin `key`: within 1% of everything in it.
fn bin_value(key: i32) -> f64 {
    (f64::from(key) / multiplier()).exp2() * (2.0 / (1.0 + GAMMA))
}

/// Counts of consecutive keys, the first and the last not zero.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Bins {
    /// The key of `counts[0]`.
    offset: i32,
    counts: Vec<u64>,
}

impl Bins {
    fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn last_key(&self) -> i32 {
        self.offset + self.counts.len() as i32 - 1
    }

    /// Counts `key` `times` times; returns the bytes the bins grew by.
    fn add(&mut self, key: i32, times: u64) -> usize {
        let before = self.counts.capacity();
        if self.counts.is_empty() {
            self.offset = key;
            self.counts.push(times);
        } else if key < self.offset {
            // Below the window of the highest MAX_BINS keys: into its lowest bin.
            let lowest = self.last_key() - (MAX_BINS as i32 - 1);
            let key = key.max(lowest);
            let grow = (self.offset - key) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.offset = key;
            self.counts[0] += times;
        } else {
            let at = (key - self.offset) as usize;
            if at >= self.counts.len() {
                self.counts.resize(at + 1, 0);
            }
            self.counts[at] += times;
            self.collapse();
        }
        (self.counts.capacity() - before) * 8
    }

    /// Folds the bins below the highest MAX_BINS into the lowest of those.
    fn collapse(&mut self) {
        let excess = self.counts.len().saturating_sub(MAX_BINS);
        if excess > 0 {
            let folded: u64 = self.counts.drain(..excess).sum();
            self.counts[0] += folded;
            self.offset += excess as i32;
        }
    }

    fn merge(&mut self, other: &Bins) {
        for (at, &count) in other.counts.iter().enumerate() {
            if count > 0 {
                self.add(other.offset + at as i32, count);
            }
        }
    }

    /// Adds a stored store's counts, which [`check_store`] has passed: its
    /// contiguous run widens the bins once when they then span at most `MAX_BINS` (a
    /// report merges thousands of stored sketches), else goes bin by bin, collapsing
    /// as `add` does; then its sparse bins.
    fn add_stored(&mut self, store: &proto::Store) {
        let (offset, counts) = (
            store.contiguous_bin_index_offset,
            &store.contiguous_bin_counts,
        );
        // `check_store` keeps the run's keys within i32.
        let last = offset + counts.len() as i32 - 1;
        let (low, high) = match self.counts.is_empty() {
            true => (offset, last),
            false => (self.offset.min(offset), self.last_key().max(last)),
        };
        if counts.is_empty() || i64::from(high) - i64::from(low) >= MAX_BINS as i64 {
            for (key, &count) in (offset..).zip(counts) {
                if count > 0.0 {
                    self.add(key, count as u64);
                }
            }
        } else {
            if self.counts.is_empty() {
                self.offset = low;
            } else if low < self.offset {
                let grow = (self.offset - low) as usize;
                self.counts.splice(0..0, std::iter::repeat_n(0, grow));
                self.offset = low;
            }
            self.counts.resize((high - low + 1) as usize, 0);
            let start = (offset - self.offset) as usize;
            // Whole and within 2^53 (`check_store`): through i64, which x86-64
            // converts in one instruction, where u64 takes several.
            for (bin, &count) in self.counts[start..].iter_mut().zip(counts) {
                *bin += count as i64 as u64;
            }
            // Stored runs may start or end with empty bins: keep the first and the
            // last bin counted.
            let leading = self.counts.iter().take_while(|&&c| c == 0).count();
            self.counts.drain(..leading);
            self.offset += leading as i32;
            while self.counts.last() == Some(&0) {
                self.counts.pop();
            }
        }
        for (&key, &count) in &store.bin_counts {
            if count > 0.0 {
                self.add(key, count as u64);
            }
        }
    }

    /// The key of the number at 0-based `rank` among the bins' numbers, by key.
    fn key_at(&self, rank: u64) -> i32 {
        let mut seen = 0;
        for (at, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen > rank {
                return self.offset + at as i32;
            }
        }
        self.last_key()
    }

    fn to_proto(&self) -> proto::Store {
        proto::Store {
            contiguous_bin_counts: self.counts.iter().map(|&c| c as f64).collect(),
            contiguous_bin_index_offset: if self.counts.is_empty() {
                0
            } else {
                self.offset
            },
            ..proto::Store::default()
        }
    }
}

/// Whether a stored sketch has this sketch's mapping.
fn check_mapping(mapping: Option<&proto::IndexMapping>) -> Result<(), SketchError> {
    let mapping = mapping.cloned().unwrap_or_default();
    if mapping.gamma.to_bits() != GAMMA.to_bits()
        || mapping.index_offset != 0.0
        || mapping.interpolation != 0
    {
        return Err(SketchError::OtherMapping(mapping.gamma));
    }
    Ok(())
}

/// A count as stored (a double), if it is a whole number a u64 holds exactly.
fn whole_count(count: f64) -> Result<u64, SketchError> {
    if is_whole_count(count) {
        Ok(count as i64 as u64)
    } else {
        Err(NOT_WHOLE)
    }
}

const NOT_WHOLE: SketchError = SketchError::Malformed("a bin's count is not a whole number");

/// Whether `count` is a whole number from 0 to 2^53, with arithmetic only (no libm
/// `trunc`, which the build's baseline CPU lacks an instruction for, and no branch,
/// so that a run of counts compiles to vector instructions): below 2^52, adding 2^52
/// rounds to a whole number, so the count comes back exactly when it is one; from
/// 2^52 on every double is whole. NaN fails the comparisons.
fn is_whole_count(count: f64) -> bool {
    const TWO_52: f64 = 4_503_599_627_370_496.0;
    (0.0..=2.0 * TWO_52).contains(&count)
        & ((count >= TWO_52) | ((count + TWO_52) - TWO_52 == count))
}

/// Whether a stored store's counts are whole numbers and its contiguous run's keys
/// fit an i32, so that adding it cannot fail half way.
fn check_store(store: &proto::Store) -> Result<(), SketchError> {
    // The contiguous run checked without an early exit, so that it compiles to vector
    // instructions: a year's report checks millions of counts.
    let contiguous_whole = store
        .contiguous_bin_counts
        .iter()
        .fold(true, |whole, &count| whole & is_whole_count(count));
    if !contiguous_whole {
        return Err(NOT_WHOLE);
    }
    for &count in store.bin_counts.values() {
        whole_count(count)?;
    }
    i32::try_from(store.contiguous_bin_counts.len())
        .ok()
        .and_then(|len| store.contiguous_bin_index_offset.checked_add(len))
        .map(|_| ())
        .ok_or(SketchError::Malformed("a bin's key is out of range"))
}

/// A DDSketch of a key's numbers: see the module's documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DdSketch {
    positive: Bins,
    /// By magnitude.
    negative: Bins,
    zero: u64,
}

/// Why stored sketch bytes were not read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SketchError {
    #[error("not base64: {0}")]
    Base64(String),
    #[error("not a DDSketch protobuf message: {0}")]
    Protobuf(String),
    #[error("a DDSketch with another index mapping (gamma {0}): re-run its day")]
    OtherMapping(f64),
    #[error("a malformed DDSketch: {0}")]
    Malformed(&'static str),
}

impl DdSketch {
    /// Adds `x`, seen `times` times; returns the bytes the sketch grew by. `x` is
    /// finite (a JSON number).
    pub fn add(&mut self, x: f64, times: u64) -> usize {
        if x >= MIN_INDEXABLE {
            self.positive.add(key(x), times)
        } else if x <= -MIN_INDEXABLE {
            self.negative.add(key(-x), times)
        } else {
            self.zero += times;
            0
        }
    }

    /// Folds in `other`, a sketch of other numbers.
    pub fn merge(&mut self, other: &DdSketch) {
        self.positive.merge(&other.positive);
        self.negative.merge(&other.negative);
        self.zero += other.zero;
    }

    /// How many numbers it holds.
    pub fn count(&self) -> u64 {
        self.positive.total() + self.negative.total() + self.zero
    }

    /// The bytes its bins hold.
    pub fn bytes(&self) -> usize {
        (self.positive.counts.capacity() + self.negative.counts.capacity()) * 8
    }

    /// The value at 0-based rank floor(q * (n - 1)) of its n numbers sorted, within
    /// 1%, for q = `numerator / denominator`; `None` when it holds no number.
    pub fn percentile(&self, numerator: u64, denominator: u64) -> Option<f64> {
        let n = self.count();
        if n == 0 || denominator == 0 {
            return None;
        }
        // In integers, so that the rank is exactly the contract's.
        let rank = u64::try_from(
            u128::from(n - 1) * u128::from(numerator.min(denominator)) / u128::from(denominator),
        )
        .unwrap_or(n - 1);
        let negatives = self.negative.total();
        Some(if rank < negatives {
            // The negatives sorted up are their magnitudes sorted down.
            -bin_value(self.negative.key_at(negatives - 1 - rank))
        } else if rank < negatives + self.zero {
            0.0
        } else {
            bin_value(self.positive.key_at(rank - negatives - self.zero))
        })
    }

    /// The percentiles [`PERCENTILES`] names, each kept within `min` and `max`, the
    /// numbers' exact extremes, which a bin's value may pass by up to 1%.
    pub fn percentiles_within(
        &self,
        min: f64,
        max: f64,
    ) -> impl Iterator<Item = (&'static str, f64)> + '_ {
        PERCENTILES
            .iter()
            .filter_map(move |&(name, numerator, denominator)| {
                let value = self.percentile(numerator, denominator)?;
                Some((name, value.clamp(min, max)))
            })
    }

    /// The `DDSketch` protobuf message: both stores as contiguous bin counts.
    pub fn to_protobuf(&self) -> Vec<u8> {
        proto::DdSketch {
            mapping: Some(proto::IndexMapping {
                gamma: GAMMA,
                index_offset: 0.0,
                interpolation: 0,
            }),
            positive_values: Some(self.positive.to_proto()),
            negative_values: Some(self.negative.to_proto()),
            zero_count: self.zero as f64,
        }
        .encode_to_vec()
    }

    /// A sketch from its protobuf message, if it has this sketch's mapping.
    ///
    /// # Errors
    ///
    /// When the bytes are no `DDSketch` message, another mapping's, or hold counts
    /// that are not whole numbers.
    pub fn from_protobuf(bytes: &[u8]) -> Result<Self, SketchError> {
        let message =
            proto::DdSketch::decode(bytes).map_err(|e| SketchError::Protobuf(e.to_string()))?;
        let mut sketch = Self::default();
        sketch.merge_message(&message)?;
        Ok(sketch)
    }

    /// Folds in the sketch whose base64 text is `text` (as from [`from_base64`]),
    /// decoding into buffers this thread keeps: the report merges one stored
    /// sketch per row and number key.
    ///
    /// # Errors
    ///
    /// As [`from_base64`](Self::from_base64); nothing is added then.
    pub fn merge_base64(&mut self, text: &str) -> Result<(), SketchError> {
        thread_local! {
            static SCRATCH: std::cell::RefCell<(Vec<u8>, proto::DdSketch)> =
                std::cell::RefCell::default();
        }
        SCRATCH.with_borrow_mut(|(bytes, message)| {
            // Into a buffer only ever grown: `decode_vec` would zero its room each time.
            let room = base64::decoded_len_estimate(text.len());
            if bytes.len() < room {
                bytes.resize(room, 0);
            }
            let len = BASE64
                .decode_slice(text, bytes)
                .map_err(|e| SketchError::Base64(e.to_string()))?;
            clear_keeping_stores(message);
            message
                .merge(&bytes[..len])
                .map_err(|e| SketchError::Protobuf(e.to_string()))?;
            self.merge_message(message)
        })
    }

    /// Folds in a decoded message, every part checked before any is added, so that
    /// a bad one adds nothing.
    fn merge_message(&mut self, message: &proto::DdSketch) -> Result<(), SketchError> {
        check_mapping(message.mapping.as_ref())?;
        let zero = whole_count(message.zero_count)?;
        let stores = [&message.positive_values, &message.negative_values];
        stores.into_iter().flatten().try_for_each(check_store)?;
        for (store, bins) in stores
            .into_iter()
            .zip([&mut self.positive, &mut self.negative])
        {
            if let Some(store) = store {
                bins.add_stored(store);
            }
        }
        self.zero += zero;
        Ok(())
    }

    /// The base64 of its protobuf message, as `meta_sketches` holds it.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.to_protobuf())
    }

    /// A sketch from the base64 of its protobuf message.
    ///
    /// # Errors
    ///
    /// As [`from_protobuf`](Self::from_protobuf), and when the text is not base64.
    pub fn from_base64(text: &str) -> Result<Self, SketchError> {
        let bytes = BASE64
            .decode(text)
            .map_err(|e| SketchError::Base64(e.to_string()))?;
        Self::from_protobuf(&bytes)
    }
}

/// Empties `message` for the next one to be merged into it, keeping its stores'
/// buffers: a store present and empty adds what an absent one adds, nothing.
fn clear_keeping_stores(message: &mut proto::DdSketch) {
    message.mapping = None;
    message.zero_count = 0.0;
    for store in [&mut message.positive_values, &mut message.negative_values]
        .into_iter()
        .flatten()
    {
        store.bin_counts.clear();
        store.contiguous_bin_counts.clear();
        store.contiguous_bin_index_offset = 0;
    }
}

/// The messages of Datadog's `ddsketch.proto`, as its libraries encode them.
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct DdSketch {
        #[prost(message, optional, tag = "1")]
        pub(super) mapping: Option<IndexMapping>,
        #[prost(message, optional, tag = "2")]
        pub(super) positive_values: Option<Store>,
        #[prost(message, optional, tag = "3")]
        pub(super) negative_values: Option<Store>,
        #[prost(double, tag = "4")]
        pub(super) zero_count: f64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct IndexMapping {
        #[prost(double, tag = "1")]
        pub(super) gamma: f64,
        #[prost(double, tag = "2")]
        pub(super) index_offset: f64,
        /// 0: none (the logarithmic mapping itself).
        #[prost(int32, tag = "3")]
        pub(super) interpolation: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Store {
        /// The sparse form, which this crate reads but does not write.
        #[prost(btree_map = "sint32, double", tag = "1")]
        pub(super) bin_counts: std::collections::BTreeMap<i32, f64>,
        #[prost(double, repeated, tag = "2")]
        pub(super) contiguous_bin_counts: Vec<f64>,
        #[prost(sint32, tag = "3")]
        pub(super) contiguous_bin_index_offset: i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The contract's exact percentile: the value at rank floor(q * (n - 1)).
    fn exact(sorted: &[f64], numerator: u64, denominator: u64) -> f64 {
        let n = sorted.len() as u64;
        sorted[((n - 1) * numerator / denominator) as usize]
    }

    fn within_one_percent(estimate: f64, exact: f64) -> bool {
        // The bound itself, and a little for the rounding of logarithms and powers.
        (estimate - exact).abs() <= RELATIVE_ACCURACY * exact.abs() * (1.0 + 1e-9)
    }

    #[test]
    fn gamma_is_the_contract_s_quotient_and_python_s_bits() {
        assert_eq!(GAMMA.to_bits(), ((1.0 + 0.01) / (1.0 - 0.01f64)).to_bits());
        // 0x1.052bf5a814afdp+0, as Python's ddsketch computes it.
        assert_eq!(GAMMA.to_bits(), 0x3FF0_52BF_5A81_4AFD);
    }

    #[test]
    fn every_bin_s_value_is_within_one_percent_of_its_bounds() {
        for key in [-35_000, -1000, -1, 0, 1, 7, 500, 35_000] {
            let upper = GAMMA.powi(key);
            let lower = GAMMA.powi(key - 1);
            if !upper.is_finite() || lower == 0.0 {
                continue;
            }
            let value = bin_value(key);
            assert!(within_one_percent(value, upper), "{key}");
            assert!(within_one_percent(value, lower * (1.0 + 1e-15)), "{key}");
        }
    }

    #[test]
    fn percentiles_of_a_few_numbers() {
        let mut sketch = DdSketch::default();
        for x in [-10.0, 0.0, 0.0, 3.0, 1000.0] {
            sketch.add(x, 1);
        }
        // Ranks 2 (p50), 3 (p90: floor(0.9 * 4)), 3 (p99).
        assert_eq!(sketch.percentile(1, 2), Some(0.0));
        assert!(within_one_percent(sketch.percentile(9, 10).unwrap(), 3.0));
        assert!(within_one_percent(sketch.percentile(0, 1).unwrap(), -10.0));
        assert!(within_one_percent(sketch.percentile(1, 1).unwrap(), 1000.0));
        assert_eq!(DdSketch::default().percentile(1, 2), None);
    }

    #[test]
    fn past_2048_bins_the_lowest_collapse_and_the_highest_stay_exact() {
        let mut sketch = DdSketch::default();
        // 1e-20 and 1e20 are about 4,600 bins apart.
        sketch.add(1e-20, 10);
        sketch.add(1.0, 1);
        sketch.add(1e20, 1);
        assert_eq!(sketch.positive.counts.len(), MAX_BINS);
        assert_eq!(sketch.count(), 12);
        assert!(within_one_percent(sketch.percentile(1, 1).unwrap(), 1e20));
        // The smallest numbers now read as the lowest bin kept, far above them.
        let lowest = sketch.percentile(0, 1).unwrap();
        assert!(lowest > 1e-3, "{lowest}");
    }

    #[test]
    fn numbers_too_small_for_the_mapping_count_as_zero() {
        let mut sketch = DdSketch::default();
        sketch.add(1e-310, 1);
        sketch.add(-0.0, 1);
        sketch.add(1e-300, 1);
        assert_eq!(sketch.zero, 2);
        assert!(within_one_percent(sketch.percentile(1, 1).unwrap(), 1e-300));
    }

    #[test]
    fn the_largest_numbers_keep_a_key() {
        let mut sketch = DdSketch::default();
        sketch.add(f64::MAX, 1);
        sketch.add(-f64::MAX, 1);
        let bytes = sketch.to_protobuf();
        assert_eq!(DdSketch::from_protobuf(&bytes).unwrap(), sketch);
    }

    #[test]
    fn another_mapping_or_bad_counts_are_refused() {
        let mut other = proto::DdSketch::decode(&*DdSketch::default().to_protobuf()).unwrap();
        other.mapping.as_mut().unwrap().gamma = 1.02;
        assert!(matches!(
            DdSketch::from_protobuf(&other.encode_to_vec()),
            Err(SketchError::OtherMapping(_))
        ));
        let mut weighted = proto::DdSketch::decode(&*DdSketch::default().to_protobuf()).unwrap();
        for count in [
            0.5,
            -1.0,
            -0.5,
            f64::NAN,
            f64::INFINITY,
            2f64.powi(53) + 2.0,
        ] {
            weighted.zero_count = count;
            assert!(
                matches!(
                    DdSketch::from_protobuf(&weighted.encode_to_vec()),
                    Err(SketchError::Malformed(_))
                ),
                "a count of {count}"
            );
        }
        weighted.zero_count = 0.0;
        let mut stored = DdSketch::default();
        stored.add(3.0, 1);
        let mut binned = proto::DdSketch::decode(&*stored.to_protobuf()).unwrap();
        for count in [
            0.5,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            2f64.powi(53) + 2.0,
            2f64.powi(52) - 0.5,
            1e-300,
        ] {
            binned
                .positive_values
                .as_mut()
                .unwrap()
                .contiguous_bin_counts = vec![1.0, count, 2.0];
            assert!(
                matches!(
                    DdSketch::from_protobuf(&binned.encode_to_vec()),
                    Err(SketchError::Malformed(_))
                ),
                "a bin's count of {count}"
            );
        }
        binned
            .positive_values
            .as_mut()
            .unwrap()
            .contiguous_bin_counts = vec![
            1.0,
            2f64.powi(52) - 1.0,
            2f64.powi(52) + 2.0,
            2f64.powi(53),
            0.0,
        ];
        assert!(DdSketch::from_protobuf(&binned.encode_to_vec()).is_ok());
        weighted.zero_count = 2f64.powi(53);
        assert_eq!(
            DdSketch::from_protobuf(&weighted.encode_to_vec())
                .unwrap()
                .zero,
            1 << 53
        );
        assert!(matches!(
            DdSketch::from_base64("not base64!"),
            Err(SketchError::Base64(_))
        ));
        // Padding is required, as the sketches are written with it.
        let mut padded = DdSketch::default();
        while !padded.to_base64().ends_with('=') {
            padded.add(7.0, 1);
        }
        let text = padded.to_base64();
        assert_eq!(DdSketch::from_base64(&text).unwrap(), padded);
        assert!(matches!(
            DdSketch::from_base64(text.trim_end_matches('=')),
            Err(SketchError::Base64(_))
        ));
    }

    #[test]
    fn a_stored_sketch_merged_after_another_adds_only_its_own_bins() {
        // The first has numbers of both signs and a zero, the second positives only:
        // the thread's buffers must not carry the first's stores or zero count over.
        let mut both = DdSketch::default();
        for x in [-3.0, -250.0, 0.0, 12.0, 9_000.0] {
            both.add(x, 2);
        }
        let mut positives = DdSketch::default();
        positives.add(1.5, 1);
        let mut first = DdSketch::default();
        first.merge_base64(&both.to_base64()).unwrap();
        assert_eq!(first, both);
        let mut second = DdSketch::default();
        second.merge_base64(&positives.to_base64()).unwrap();
        assert_eq!(second, positives);
        assert_eq!(second.negative.counts, Vec::<u64>::new());
        assert_eq!(second.zero, 0);
    }

    /// Numbers of one magnitude (from 1e-300 to 1e300) within a range of 1e12,
    /// where 2,048 bins keep every percentile: negatives, zeros, repeats.
    fn numbers() -> impl Strategy<Value = Vec<f64>> {
        let scale = (-300i32..=300).prop_map(|e| 10f64.powi(e));
        (
            scale,
            prop::collection::vec((-6.0..6.0f64, 0u8..10), 1..300),
        )
            .prop_map(|(scale, draws)| {
                draws
                    .into_iter()
                    .map(|(exponent, kind)| match kind {
                        0 => 0.0,
                        1 => scale,
                        2..=4 => -scale * 10f64.powf(exponent),
                        _ => scale * 10f64.powf(exponent),
                    })
                    .collect()
            })
    }

    proptest! {
        #[test]
        fn percentiles_are_within_one_percent_and_order_does_not_matter(
            numbers in numbers(), split in 0usize..300, seed in any::<u64>()
        ) {
            let mut sorted = numbers.clone();
            sorted.sort_by(f64::total_cmp);
            let mut whole = DdSketch::default();
            numbers.iter().for_each(|&x| { whole.add(x, 1); });
            for (_, numerator, denominator) in PERCENTILES.iter().copied().chain([("min", 0, 1), ("max", 1, 1)]) {
                let estimate = whole.percentile(numerator, denominator).unwrap();
                let exact = exact(&sorted, numerator, denominator);
                prop_assert!(within_one_percent(estimate, exact), "{estimate} vs {exact} for {numerator}/{denominator}");
            }
            // Shuffled, split in two, merged: the same bins and the same bytes.
            let mut shuffled = numbers.clone();
            let mut state = seed | 1;
            for i in (1..shuffled.len()).rev() {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                shuffled.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let split = split.min(shuffled.len());
            let (mut a, mut b) = (DdSketch::default(), DdSketch::default());
            shuffled[..split].iter().for_each(|&x| { a.add(x, 1); });
            shuffled[split..].iter().for_each(|&x| { b.add(x, 1); });
            let rest = b.clone();
            b.merge(&a);
            prop_assert_eq!(b.to_base64(), whole.to_base64());
            prop_assert_eq!(DdSketch::from_base64(&whole.to_base64()).unwrap(), whole.clone());
            // Merged from their stored texts, as the report does: the same.
            let mut stored = DdSketch::default();
            stored.merge_base64(&a.to_base64()).unwrap();
            stored.merge_base64(&rest.to_base64()).unwrap();
            prop_assert_eq!(stored, whole);
        }

        #[test]
        fn collapsing_does_not_depend_on_order(
            exponents in prop::collection::vec(-250i32..250, 1..60), seed in any::<u64>()
        ) {
            let numbers: Vec<f64> = exponents.iter().map(|&e| 10f64.powi(e)).collect();
            let mut forward = DdSketch::default();
            numbers.iter().for_each(|&x| { forward.add(x, 1); });
            let mut backward = DdSketch::default();
            numbers.iter().rev().for_each(|&x| { backward.add(x, 1); });
            let mut halves = (DdSketch::default(), DdSketch::default());
            for (i, &x) in numbers.iter().enumerate() {
                if (seed >> (i % 64)) & 1 == 1 { halves.0.add(x, 1); } else { halves.1.add(x, 1); }
            }
            let mut stored = halves.1.clone();
            stored.merge_base64(&halves.0.to_base64()).unwrap();
            halves.0.merge(&halves.1);
            prop_assert_eq!(&stored, &halves.0);
            prop_assert_eq!(&forward, &backward);
            prop_assert_eq!(&forward, &halves.0);
            prop_assert!(forward.positive.counts.len() <= MAX_BINS);
            // The largest stays within 1%, however much collapsed.
            let largest = numbers.iter().copied().fold(0.0, f64::max);
            prop_assert!(within_one_percent(forward.percentile(1, 1).unwrap(), largest));
        }
    }
}
