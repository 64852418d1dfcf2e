//! The local hours of the users who do many of a day's events, as bits.
//!
//! An hour's distinct users are kept as a set of user numbers per (event, hour), one
//! hash-table probe an event. A few users do most of a day's events: for each of
//! them, a word per hour whose bits are the day's groups (the first 64, which have
//! bits) the user did events of in that hour answers the same question from a
//! couple of cache lines.

/// Most hours a day has (a 25-hour day).
pub(crate) const MAX_HOURS: usize = 25;

/// One word per local hour, a bit per day group.
type HourWords = [u64; MAX_HOURS];

/// The hour bitmaps of the users given one, in the order they were given it.
#[derive(Debug, Default)]
pub(crate) struct DenseHours {
    /// The user number of each bitmap.
    owners: Vec<u32>,
    words: Vec<HourWords>,
}

impl DenseHours {
    /// Gives user number `id` a bitmap; returns its index and the bytes the tables
    /// grew by.
    pub(crate) fn add(&mut self, id: u32) -> (usize, usize) {
        let before = self.bytes();
        self.owners.push(id);
        self.words.push([0; MAX_HOURS]);
        (self.words.len() - 1, self.bytes() - before)
    }

    /// Sets the bit of day group `bit` in `hour` of bitmap `index`; returns whether
    /// it was clear.
    pub(crate) fn set(&mut self, index: usize, hour: u8, bit: u8) -> bool {
        let word = &mut self.words[index][usize::from(hour)];
        let mask = 1u64 << bit;
        let clear = *word & mask == 0;
        *word |= mask;
        clear
    }

    /// Calls `each(user number, hour, day group bit)` for every bit set.
    pub(crate) fn for_each(&self, mut each: impl FnMut(u32, u8, u8)) {
        for (owner, words) in self.owners.iter().zip(&self.words) {
            for (hour, word) in words.iter().enumerate() {
                let mut bits = *word;
                while bits != 0 {
                    let bit = bits.trailing_zeros() as u8;
                    bits &= bits - 1;
                    each(*owner, hour as u8, bit);
                }
            }
        }
    }

    /// Whether no user has a bitmap.
    pub(crate) fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// The bytes its tables hold.
    pub(crate) fn bytes(&self) -> usize {
        self.owners.capacity() * std::mem::size_of::<u32>()
            + self.words.capacity() * std::mem::size_of::<HourWords>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bit_is_new_once_and_listed_once() {
        let mut dense = DenseHours::default();
        assert!(dense.is_empty());
        let (a, grew) = dense.add(7);
        assert_eq!(grew, dense.bytes(), "the first bitmap's bytes are counted");
        assert!(grew >= std::mem::size_of::<HourWords>());
        let (b, _) = dense.add(9);
        assert!(dense.set(a, 0, 3));
        assert!(!dense.set(a, 0, 3));
        assert!(dense.set(a, 24, 63));
        assert!(dense.set(b, 5, 0));
        let mut seen = Vec::new();
        dense.for_each(|id, hour, bit| seen.push((id, hour, bit)));
        assert_eq!(seen, [(7, 0, 3), (7, 24, 63), (9, 5, 0)]);
    }
}
