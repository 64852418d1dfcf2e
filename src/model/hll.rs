//! Multi-day unique users: a HyperLogLog sketch of a row's distinct user ids, in the
//! binary storage format of the PostgreSQL `hll` extension (postgresql-hll's "storage
//! specification v1.0.0", shared with java-hll and js-hll).
//!
//! A user id is hashed as the extension's `hll_hash_text` hashes it: MurmurHash3 x64
//! 128 with seed 0, the first 64 bits as a signed integer. Every sketch has the same
//! parameters ([`LOG2M`], [`REGWIDTH`], automatic explicit threshold, sparse on), so a
//! row's [`Sketch::to_bytes`] equals
//! `hll_add_agg(hll_hash_text(user_id), 15, 5, -1, 1)` over the same users, its
//! [`Sketch::cardinality`] equals `hll_cardinality`, and [`Sketch::union`] follows
//! `hll_union`: the application's own SQL can merge the stored sketches.
//!
//! A sketch is *explicit* (the sorted hashes themselves, so exact) until it holds more
//! hashes than its registers would take bytes, then a set of registers. Registers are
//! written *sparse* (only the filled ones) while that is smaller, else *full*. The
//! result depends only on the set of hashes added, never on their order.

/// log2 of the number of registers: 2^15 = 32,768 registers, a standard error of
/// 1.04/√32768 ≈ 0.57%, so that unions over weeks and months stay within 2% (at 2^14,
/// 0.81%, one union in fifty of the benchmark's passed it).
pub const LOG2M: u32 = 15;

/// Bits per register: 5, enough for any count of users a day can hold (registers up
/// to 31). Wider registers would make the extension's `hll_cardinality` return NaN
/// (an integer shift past 63 bits in its large-range correction).
pub const REGWIDTH: u32 = 5;

const REGISTERS: usize = 1 << LOG2M;

/// Hashes kept explicitly before switching to registers: the extension's automatic
/// threshold (`expthresh` -1), as many 8-byte hashes as the full registers take bytes.
pub const EXPLICIT_MAX: usize = (REGWIDTH as usize * REGISTERS).div_ceil(8) / 8;

/// The storage format's version nibble.
const SCHEMA_VERSION: u8 = 1;
const EMPTY: u8 = 1;
const EXPLICIT: u8 = 2;
const SPARSE: u8 = 3;
const FULL: u8 = 4;

/// `expthresh` -1 (automatic) is written as 63; `sparseon` is bit 6.
const CUTOFF_BYTE: u8 = (1 << 6) | 63;

/// The user id's 64-bit hash, as `hll_hash_text(user_id)` gives it.
pub fn hash_user(user: &str) -> i64 {
    // The extension takes the first 64-bit word of MurmurHash3 x64 128 (h1), which is
    // the low half of the crate's `u128`.
    fastmurmur3::murmur3_x64_128(user.as_bytes(), 0) as u64 as i64
}

/// A sketch of distinct users.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sketch {
    repr: Repr,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
enum Repr {
    #[default]
    Empty,
    /// Distinct hashes, ascending as signed integers (the Java library's order).
    Explicit(Vec<i64>),
    /// One byte per register.
    Registers(Box<[u8]>),
}

/// Why bytes are not a sketch of this crate's parameters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a users_hll sketch: {0}")]
pub struct SketchError(String);

impl Sketch {
    /// An empty sketch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a user id.
    pub fn add_user(&mut self, user: &str) {
        self.add_hash(hash_user(user));
    }

    /// Adds a hash as [`hash_user`] gives it.
    pub fn add_hash(&mut self, hash: i64) {
        match &mut self.repr {
            Repr::Empty => self.repr = Repr::Explicit(vec![hash]),
            Repr::Explicit(hashes) => match hashes.binary_search(&hash) {
                Ok(_) => {}
                Err(_) if hashes.len() == EXPLICIT_MAX => {
                    let mut registers = registers_of(hashes);
                    set_register(&mut registers, hash);
                    self.repr = Repr::Registers(registers);
                }
                Err(at) => hashes.insert(at, hash),
            },
            Repr::Registers(registers) => set_register(registers, hash),
        }
    }

    /// Adds many hashes at once, as `add_hash` of each would: sorted and merged into
    /// the explicit list in one pass, where adding them one by one to a list of up to
    /// 2,560 hashes moves half of it each time.
    pub fn add_hashes(&mut self, mut hashes: Vec<i64>) {
        if let Repr::Registers(registers) = &mut self.repr {
            hashes
                .iter()
                .for_each(|&hash| set_register(registers, hash));
            return;
        }
        hashes.sort_unstable();
        hashes.dedup();
        let theirs = if hashes.len() > EXPLICIT_MAX {
            Repr::Registers(registers_of(&hashes))
        } else {
            Repr::Explicit(hashes)
        };
        match self.repr {
            Repr::Empty => self.repr = theirs,
            _ => self.union(&Sketch { repr: theirs }),
        }
    }

    /// Folds in the sketch `bytes` hold, as `union(&Sketch::from_bytes(bytes)?)`
    /// does, but merges it as it reads it, without building it: a year's report
    /// reads thousands.
    ///
    /// # Errors
    ///
    /// [`SketchError`] as [`Sketch::from_bytes`]; the sketch is then unchanged.
    pub fn union_bytes(&mut self, bytes: &[u8]) -> Result<(), SketchError> {
        match header(bytes)? {
            (FULL, data) if data.len() == FULL_BYTES => max_full_into(data, self.registers()),
            (SPARSE, data) => max_sparse_into(data, self.registers()),
            (EXPLICIT, data) => {
                let theirs = explicit_hashes(data)?;
                match &mut self.repr {
                    Repr::Registers(registers) => theirs.for_each(|h| set_register(registers, h)),
                    Repr::Explicit(mine) => self.repr = explicit_union(mine, theirs),
                    Repr::Empty => self.repr = Repr::Explicit(theirs.collect()),
                }
            }
            _ => self.union(&Self::from_bytes(bytes)?),
        }
        Ok(())
    }

    /// The sketch's registers, which it becomes if it was not yet: what a union with
    /// registers makes of it.
    fn registers(&mut self) -> &mut [u8] {
        if !matches!(self.repr, Repr::Registers(_)) {
            let registers = match &self.repr {
                Repr::Explicit(hashes) => registers_of(hashes),
                _ => vec![0u8; REGISTERS].into_boxed_slice(),
            };
            self.repr = Repr::Registers(registers);
        }
        match &mut self.repr {
            Repr::Registers(registers) => registers,
            // Made registers just above.
            _ => unreachable!(),
        }
    }

    /// Folds in `other`, as `hll_union` does: the sketch of both sets of users.
    pub fn union(&mut self, other: &Sketch) {
        match (&mut self.repr, &other.repr) {
            (_, Repr::Empty) => {}
            (Repr::Empty, _) => self.repr = other.repr.clone(),
            (Repr::Registers(mine), Repr::Registers(theirs)) => {
                for (m, t) in mine.iter_mut().zip(theirs.iter()) {
                    *m = (*m).max(*t);
                }
            }
            (Repr::Registers(mine), Repr::Explicit(theirs)) => {
                for &hash in theirs {
                    set_register(mine, hash);
                }
            }
            (Repr::Explicit(_), Repr::Registers(theirs)) => {
                let mut registers = theirs.clone();
                if let Repr::Explicit(mine) = &self.repr {
                    for &hash in mine {
                        set_register(&mut registers, hash);
                    }
                }
                self.repr = Repr::Registers(registers);
            }
            (Repr::Explicit(mine), Repr::Explicit(theirs)) => {
                self.repr = explicit_union(mine, theirs.iter().copied());
            }
        }
    }

    /// The sketch of a set of more than [`EXPLICIT_MAX`] users whose registers a
    /// source computed itself: `(index, value)` pairs, the highest value of an index
    /// kept. (A smaller set is explicit: give its hashes to [`Sketch::add_hash`].)
    ///
    /// # Errors
    ///
    /// [`SketchError`] for an index or value out of range.
    pub fn from_registers(
        values: impl IntoIterator<Item = (u64, u8)>,
    ) -> Result<Self, SketchError> {
        let mut registers = vec![0u8; REGISTERS].into_boxed_slice();
        for (index, value) in values {
            let register = usize::try_from(index)
                .ok()
                .and_then(|index| registers.get_mut(index))
                .ok_or_else(|| SketchError(format!("register {index} of {REGISTERS}")))?;
            if value >= 1 << REGWIDTH {
                return Err(SketchError(format!(
                    "register value {value} wider than {REGWIDTH} bits"
                )));
            }
            *register = (*register).max(value);
        }
        Ok(Self {
            repr: Repr::Registers(registers),
        })
    }

    /// Bytes the sketch holds in memory.
    pub fn bytes(&self) -> usize {
        match &self.repr {
            Repr::Empty => 0,
            Repr::Explicit(hashes) => hashes.capacity() * 8,
            Repr::Registers(_) => REGISTERS,
        }
    }

    /// The estimate of the number of distinct users, as `hll_cardinality` computes
    /// it: exact while explicit, else HyperLogLog with linear counting for small
    /// counts.
    pub fn cardinality(&self) -> f64 {
        match &self.repr {
            Repr::Empty => 0.0,
            Repr::Explicit(hashes) => hashes.len() as f64,
            Repr::Registers(registers) => estimate(registers),
        }
    }

    /// The sketch in the extension's storage format.
    pub fn to_bytes(&self) -> Vec<u8> {
        let header = |kind: u8| {
            vec![
                (SCHEMA_VERSION << 4) | kind,
                (((REGWIDTH - 1) << 5) | LOG2M) as u8,
                CUTOFF_BYTE,
            ]
        };
        match &self.repr {
            Repr::Empty => header(EMPTY),
            Repr::Explicit(hashes) => {
                let mut out = header(EXPLICIT);
                out.reserve(hashes.len() * 8);
                for hash in hashes {
                    out.extend_from_slice(&hash.to_be_bytes());
                }
                out
            }
            Repr::Registers(registers) => {
                let filled = registers.iter().filter(|r| **r != 0).count();
                let word = (LOG2M + REGWIDTH) as usize;
                // Sparse only while strictly smaller in bits than full, as the extension
                // decides it.
                if filled * word < REGISTERS * REGWIDTH as usize {
                    let mut out = header(SPARSE);
                    let mut bits = BitWriter::new(&mut out);
                    for (index, &value) in registers.iter().enumerate() {
                        if value != 0 {
                            bits.write(((index as u64) << REGWIDTH) | u64::from(value), word);
                        }
                    }
                    bits.finish();
                    out
                } else {
                    let mut out = header(FULL);
                    out.reserve(REGISTERS * REGWIDTH as usize / 8);
                    let mut bits = BitWriter::new(&mut out);
                    for &value in registers.iter() {
                        bits.write(u64::from(value), REGWIDTH as usize);
                    }
                    bits.finish();
                    out
                }
            }
        }
    }

    /// Reads a sketch this crate (or the extension, with the same parameters) wrote.
    ///
    /// # Errors
    ///
    /// [`SketchError`] for bytes of another format, version or parameters.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SketchError> {
        let bad = |why: &str| SketchError(why.to_owned());
        let (kind, data) = header(bytes)?;
        let repr = match kind {
            EMPTY if data.is_empty() => Repr::Empty,
            EXPLICIT => Repr::Explicit(explicit_hashes(data)?.collect()),
            SPARSE => {
                let mut registers = vec![0u8; REGISTERS].into_boxed_slice();
                max_sparse_into(data, &mut registers);
                Repr::Registers(registers)
            }
            FULL if data.len() == FULL_BYTES => {
                let mut registers = vec![0u8; REGISTERS].into_boxed_slice();
                max_full_into(data, &mut registers);
                Repr::Registers(registers)
            }
            _ => return Err(bad("an unknown type or a wrong size")),
        };
        Ok(Self { repr })
    }
}

/// Bytes of a full sketch's registers.
const FULL_BYTES: usize = (REGISTERS * REGWIDTH as usize).div_ceil(8);

/// Whether `bytes` is a sketch of this version's parameters, judged by its header
/// alone.
pub fn has_our_parameters(bytes: &[u8]) -> bool {
    header(bytes).is_ok()
}

/// A sketch's type (its low four bits) and data, once its header is checked.
fn header(bytes: &[u8]) -> Result<(u8, &[u8]), SketchError> {
    let bad = |why: &str| SketchError(why.to_owned());
    let [kind, params, cutoff, data @ ..] = bytes else {
        return Err(bad("shorter than its header"));
    };
    if kind >> 4 != SCHEMA_VERSION {
        return Err(bad("an unknown schema version"));
    }
    if u32::from(params & 0x1f) != LOG2M || u32::from(params >> 5) + 1 != REGWIDTH {
        return Err(SketchError(format!(
            "other parameters than log2m {LOG2M}, regwidth {REGWIDTH}"
        )));
    }
    if *cutoff != CUTOFF_BYTE {
        return Err(bad("other parameters than expthresh -1, sparseon 1"));
    }
    Ok((kind & 0x0f, data))
}

/// Raises each of `registers` to the value the full sketch `data` holds for it.
/// Five bits a register: eight registers in every five bytes, the first in the
/// highest bits. The registers are unpacked into a buffer first, so that the
/// maxima run over whole vectors: a year's report merges thousands of sketches.
fn max_full_into(data: &[u8], registers: &mut [u8]) {
    const _: () = assert!(REGWIDTH == 5);
    let mut unpacked = [0u8; REGISTERS];
    for (at, eight) in unpacked.chunks_exact_mut(8).enumerate() {
        let chunk = &data[5 * at..];
        // Eight bytes at once where there are eight, the last five alone.
        let bits = match chunk.first_chunk::<8>() {
            Some(word) => u64::from_be_bytes(*word) >> 24,
            None => chunk[..5]
                .iter()
                .fold(0u64, |acc, &b| acc << 8 | u64::from(b)),
        };
        eight.copy_from_slice(&spread_registers(bits).to_be_bytes());
    }
    for (register, new) in registers.iter_mut().zip(unpacked) {
        *register = (*register).max(new);
    }
}

/// Raises each register that the sparse sketch `data` lists to the value it gives:
/// entries of [`LOG2M`] bits of index then [`REGWIDTH`] bits of value, packed.
fn max_sparse_into(data: &[u8], registers: &mut [u8]) {
    let word = (LOG2M + REGWIDTH) as usize;
    let mut bits = BitReader::new(data);
    for _ in 0..data.len() * 8 / word {
        let entry = bits.read(word);
        // `word` bits hold an index below 2^LOG2M, the length of `registers`.
        let register = &mut registers[(entry >> REGWIDTH) as usize];
        *register = (*register).max((entry & ((1 << REGWIDTH) - 1)) as u8);
    }
}

/// The eight 5-bit registers of the low 40 bits of `bits`, one a byte, in the
/// same order: halves, quarters, then eighths moved apart, a few operations for
/// all eight.
fn spread_registers(bits: u64) -> u64 {
    let halves = (bits & 0xF_FFFF) | ((bits >> 20) << 32);
    let quarters =
        (halves & 0x0000_03FF_0000_03FF) | ((halves >> 10) & 0x0000_03FF_0000_03FF) << 16;
    (quarters & 0x001F_001F_001F_001F) | ((quarters >> 5) & 0x001F_001F_001F_001F) << 8
}

/// The hashes of an explicit sketch's data, once checked to be whole and ascending.
fn explicit_hashes(
    data: &[u8],
) -> Result<impl ExactSizeIterator<Item = i64> + Clone + '_, SketchError> {
    if !data.len().is_multiple_of(8) {
        return Err(SketchError(
            "an explicit sketch of part of a hash".to_owned(),
        ));
    }
    // `chunks_exact(8)` gives eight bytes.
    let hashes = data
        .chunks_exact(8)
        .map(|c| i64::from_be_bytes(c.try_into().expect("eight bytes")));
    if hashes
        .clone()
        .zip(hashes.clone().skip(1))
        .any(|(a, b)| a >= b)
    {
        return Err(SketchError("explicit hashes out of order".to_owned()));
    }
    Ok(hashes)
}

/// The union of two ascending lists of distinct hashes: explicit while there are at
/// most [`EXPLICIT_MAX`], else the registers of them all (which do not depend on
/// which came first). One pass, since a year's report merges thousands.
fn explicit_union(mine: &[i64], theirs: impl ExactSizeIterator<Item = i64>) -> Repr {
    let mut all = Vec::with_capacity(mine.len() + theirs.len());
    let mut theirs = theirs.peekable();
    let mut i = 0;
    while let (Some(&x), Some(&y)) = (mine.get(i), theirs.peek()) {
        all.push(x.min(y));
        i += usize::from(x <= y);
        if y <= x {
            theirs.next();
        }
    }
    all.extend_from_slice(&mine[i..]);
    all.extend(theirs);
    if all.len() > EXPLICIT_MAX {
        Repr::Registers(registers_of(&all))
    } else {
        Repr::Explicit(all)
    }
}

/// The registers of `hashes`.
fn registers_of(hashes: &[i64]) -> Box<[u8]> {
    let mut registers = vec![0u8; REGISTERS].into_boxed_slice();
    for &hash in hashes {
        set_register(&mut registers, hash);
    }
    registers
}

/// The register a hash selects (its low [`LOG2M`] bits) keeps the highest position of
/// the lowest set bit among the rest, counted from 1 and capped by the width.
fn set_register(registers: &mut [u8], hash: i64) {
    let hash = hash as u64;
    let index = (hash & (REGISTERS as u64 - 1)) as usize;
    let rest = hash >> LOG2M;
    if rest == 0 {
        return;
    }
    let rank = register_value(rest);
    if registers[index] < rank {
        registers[index] = rank;
    }
}

/// The value a hash whose bits above the register index are `rest` (non-zero) gives
/// its register: the position of the lowest set bit, counted from 1, capped by the
/// width. Only that lowest bit matters, so `rest & rest.wrapping_neg()` gives the same.
pub fn register_value(rest: u64) -> u8 {
    (rest.trailing_zeros() + 1).min((1 << REGWIDTH) - 1) as u8
}

/// `hll_cardinality` of registers, operation for operation, so that the floats match.
fn estimate(registers: &[u8]) -> f64 {
    let m = registers.len() as f64;
    let mut counts = [0u32; 1 << REGWIDTH];
    // Eight registers at a time, so that the empty ones of a small union (most of
    // them) cost one comparison for eight.
    let mut eights = registers.chunks_exact(8);
    for eight in &mut eights {
        if eight.iter().all(|&r| r == 0) {
            counts[0] += 8;
            continue;
        }
        for &r in eight {
            counts[usize::from(r) & ((1 << REGWIDTH) - 1)] += 1;
        }
    }
    for &r in eights.remainder() {
        counts[usize::from(r) & ((1 << REGWIDTH) - 1)] += 1;
    }
    // The sum of 2^-r over the registers, by value. Every partial sum is a multiple
    // of 2^-31 below 2^15, exact in a double, so the order of the terms cannot
    // change it: it is the extension's register-by-register sum to the bit.
    let sum: f64 = counts
        .iter()
        .enumerate()
        .map(|(r, &count)| f64::from(count) / (1u64 << r) as f64)
        .sum();
    let zeros = counts[0] as usize;
    let alpha_m_squared = (0.7213 / (1.0 + 1.079 / m)) * m * m;
    let estimator = alpha_m_squared / sum;
    // 2^(2^regwidth - 2 + log2m): where the extension corrects for hash collisions.
    let two_to_l = (1u64 << ((1u32 << REGWIDTH) - 2 + LOG2M)) as f64;
    if zeros != 0 && estimator < 5.0 * m / 2.0 {
        m * (m / zeros as f64).ln()
    } else if estimator <= two_to_l / 30.0 {
        estimator
    } else {
        -two_to_l * (1.0 - estimator / two_to_l).ln()
    }
}

/// Writes values of a few bits each, most significant first, zero-padding the last
/// byte.
struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    pending: u64,
    bits: usize,
}

impl<'a> BitWriter<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        Self {
            out,
            pending: 0,
            bits: 0,
        }
    }

    fn write(&mut self, value: u64, width: usize) {
        self.pending = (self.pending << width) | (value & ((1 << width) - 1));
        self.bits += width;
        while self.bits >= 8 {
            self.bits -= 8;
            self.out.push((self.pending >> self.bits) as u8);
        }
        self.pending &= (1 << self.bits) - 1;
    }

    fn finish(self) {
        if self.bits > 0 {
            self.out.push((self.pending << (8 - self.bits)) as u8);
        }
    }
}

/// Reads what [`BitWriter`] wrote.
struct BitReader<'a> {
    data: &'a [u8],
    position: usize,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, position: 0 }
    }

    /// The next `width` bits (at most 57), most significant first; zeros past the end.
    fn read(&mut self, width: usize) -> u64 {
        debug_assert!(width <= 57);
        // The 8 bytes from the one holding the next bit cover all `width` bits.
        let byte = self.position / 8;
        let mut window = [0u8; 8];
        let tail = self.data.get(byte..).unwrap_or_default();
        let taken = tail.len().min(8);
        window[..taken].copy_from_slice(&tail[..taken]);
        let shift = 64 - self.position % 8 - width;
        self.position += width;
        (u64::from_be_bytes(window) >> shift) & ((1 << width) - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_hash_as_hll_hash_text_does() {
        // Values from `SELECT hll_hash_text(…)` on postgresql-hll 2.17.
        for (text, hash) in [
            ("a", -8_839_064_797_231_613_815),
            ("", 0),
            ("1", 8_213_365_047_359_667_313),
            ("hello world", 5_998_619_086_395_760_910),
            (
                "The quick brown fox jumps over the lazy dog",
                -2_068_352_364_225_029_268,
            ),
            ("0123456789abcdef0", -1_502_884_478_548_852_619),
        ] {
            assert_eq!(hash_user(text), hash, "{text:?}");
        }
    }

    #[test]
    fn three_users_are_an_explicit_sketch_in_the_extension_s_bytes() {
        // `hll_add_agg(hll_hash_text(x::text), 11, 5, -1, 1)` over 1..3 is
        // \x128b7f fdd790a5b1612198 497692bff289820e 71fbbbfe8a7b7c71 on the extension;
        // with log2m 15 only the parameter byte differs (0x8f).
        let mut sketch = Sketch::new();
        for user in ["1", "2", "3"] {
            sketch.add_user(user);
        }
        let hex: String = sketch
            .to_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "128f7ffdd790a5b1612198497692bff289820e71fbbbfe8a7b7c71"
        );
        assert_eq!(sketch.cardinality(), 3.0);
        assert_eq!(Sketch::from_bytes(&sketch.to_bytes()), Ok(sketch));
    }

    #[test]
    fn eight_registers_spread_one_a_byte_in_order() {
        let registers = [31u64, 0, 1, 30, 16, 15, 2, 29];
        let packed = registers.iter().fold(0u64, |acc, r| acc << 5 | r);
        let spread = spread_registers(packed).to_be_bytes();
        assert_eq!(spread.map(u64::from), registers);
    }

    #[test]
    fn sketches_go_explicit_sparse_full_and_read_back() {
        let mut sketch = Sketch::new();
        let mut kinds = Vec::new();
        for n in 0..40_000u32 {
            sketch.add_user(&format!("user-{n}"));
            let bytes = sketch.to_bytes();
            let kind = bytes[0] & 0x0f;
            if kinds.last() != Some(&kind) {
                kinds.push(kind);
                assert_eq!(Sketch::from_bytes(&bytes).unwrap().to_bytes(), bytes);
            }
        }
        assert_eq!(kinds, [EXPLICIT, SPARSE, FULL]);
        let estimate = sketch.cardinality();
        assert!((estimate - 40_000.0).abs() / 40_000.0 < 0.03, "{estimate}");
    }

    #[test]
    fn registers_computed_elsewhere_give_the_same_sketch() {
        // What a source computes per (index): the highest lowest set bit of the
        // hash bits above the index, as `register_value` reads it.
        let users: Vec<String> = (0..5_000).map(|n| format!("u{n}")).collect();
        let mut added = Sketch::new();
        let mut highest = std::collections::BTreeMap::<u64, u64>::new();
        for user in &users {
            added.add_user(user);
            let hash = hash_user(user) as u64;
            let rest = hash >> LOG2M;
            if rest != 0 {
                let low = rest & rest.wrapping_neg();
                let entry = highest.entry(hash & (REGISTERS as u64 - 1)).or_default();
                *entry = (*entry).max(low);
            }
        }
        let built =
            Sketch::from_registers(highest.into_iter().map(|(i, low)| (i, register_value(low))))
                .unwrap();
        assert_eq!(built.to_bytes(), added.to_bytes());
        assert!(Sketch::from_registers([(REGISTERS as u64, 1)]).is_err());
        assert!(Sketch::from_registers([(0, 32)]).is_err());
    }

    #[test]
    fn order_and_splitting_do_not_change_the_bytes() {
        let users: Vec<String> = (0..5_000).map(|n| format!("u{n}")).collect();
        let mut forward = Sketch::new();
        users.iter().for_each(|u| forward.add_user(u));
        let mut backward = Sketch::new();
        users.iter().rev().for_each(|u| backward.add_user(u));
        assert_eq!(forward.to_bytes(), backward.to_bytes());
        for cut in [0, 1, 100, 1_280, 1_281, 2_500, 5_000] {
            let (mut left, mut right) = (Sketch::new(), Sketch::new());
            users[..cut].iter().for_each(|u| left.add_user(u));
            users[cut..].iter().for_each(|u| right.add_user(u));
            left.union(&right);
            assert_eq!(left.to_bytes(), forward.to_bytes(), "cut at {cut}");
        }
    }

    #[test]
    fn hashes_added_at_once_give_the_bytes_of_hashes_added_one_by_one() {
        let hashes: Vec<i64> = (0..6_000).map(|n| hash_user(&format!("u{n}"))).collect();
        // From every state (empty, a short list, a list near its end, registers),
        // adding lists that stay short, cross the limit, or repeat hashes.
        for before in [0, 10, 2_500, 3_000] {
            for (from, to) in [(0, 5), (100, 2_000), (2_400, 2_700), (0, 6_000), (5, 3)] {
                let (from, to) = (from.min(to), to.max(from));
                let mut one_by_one = Sketch::new();
                let mut at_once = Sketch::new();
                for &hash in &hashes[..before] {
                    one_by_one.add_hash(hash);
                    at_once.add_hash(hash);
                }
                // Repeats: the list twice, in another order.
                let mut added: Vec<i64> = hashes[from..to].to_vec();
                added.extend(hashes[from..to].iter().rev());
                added.iter().for_each(|&hash| one_by_one.add_hash(hash));
                at_once.add_hashes(added);
                assert_eq!(
                    at_once.to_bytes(),
                    one_by_one.to_bytes(),
                    "{before} then {from}..{to}"
                );
            }
        }
    }

    #[test]
    fn a_union_is_the_sketch_of_both_sets_of_users_from_sketches_or_bytes() {
        let sketch = |ranges: &[(u32, u32)]| {
            let mut s = Sketch::new();
            for &(from, to) in ranges {
                for n in from..to {
                    s.add_user(&n.to_string());
                }
            }
            s
        };
        // Full, sparse and explicit, each merged into each; two explicit ones that
        // overlap, and two whose union passes the explicit limit.
        let limit = EXPLICIT_MAX as u32;
        let parts = [
            (0, 30_000),
            (20_000, 26_000),
            (40_000, 40_010),
            (40_005, 40_020),
            (50_000, 50_000 + limit),
            (50_000 + limit / 2, 50_000 + limit * 3 / 2),
            (0, 0),
        ];
        assert!(matches!(sketch(&[parts[4]]).repr, Repr::Explicit(_)));
        assert!(matches!(
            sketch(&[parts[4], parts[5]]).repr,
            Repr::Registers(_)
        ));
        for first in parts {
            for second in parts {
                let both = sketch(&[first, second]).to_bytes();
                let mut by_sketch = sketch(&[first]);
                by_sketch.union(&sketch(&[second]));
                assert_eq!(by_sketch.to_bytes(), both, "{first:?} with {second:?}");
                let mut by_bytes = sketch(&[first]);
                by_bytes.union_bytes(&sketch(&[second]).to_bytes()).unwrap();
                assert_eq!(by_bytes.to_bytes(), both, "{first:?} with {second:?}");
            }
        }
        let mut unchanged = sketch(&[(0, 30_000)]);
        assert!(unchanged.union_bytes(&[0x14, 0x8d]).is_err());
        assert_eq!(unchanged.to_bytes(), sketch(&[(0, 30_000)]).to_bytes());
    }

    #[test]
    fn foreign_bytes_are_refused() {
        for bytes in [
            &[][..],
            &[0x12],
            &[0x11, 0x8b, 0x7f],       // log2m 11
            &[0x12, 0x8e, 0x7f, 0x01], // explicit, not 8 bytes a hash
            &[0x14, 0x8e, 0x7f, 0, 0], // full, wrong size
            &[0x21, 0x8e, 0x7f],       // schema version 2
        ] {
            assert!(Sketch::from_bytes(bytes).is_err(), "{bytes:?}");
        }
        // Our parameters, but not a sketch: refused alike, and a union with them
        // leaves the sketch as it was.
        let explicit = |data: &[u8]| [&[0x12, 0x8f, 0x7f][..], data].concat();
        let mut sketch = Sketch::new();
        ["a", "b", "c"].iter().for_each(|u| sketch.add_user(u));
        let before = sketch.clone();
        for bytes in [
            explicit(&[0; 9]), // part of a hash
            explicit(&[[0, 0, 0, 0, 0, 0, 0, 2], [0, 0, 0, 0, 0, 0, 0, 1]].concat()), // out of order
            explicit(&[[0, 0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 0, 1]].concat()), // twice
        ] {
            assert!(Sketch::from_bytes(&bytes).is_err(), "{bytes:?}");
            assert!(sketch.union_bytes(&bytes).is_err(), "{bytes:?}");
            assert_eq!(sketch, before, "{bytes:?}");
        }
        assert!(Sketch::from_bytes(&explicit(&[0, 0, 0, 0, 0, 0, 0, 1])).is_ok());
    }
}
