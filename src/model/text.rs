//! Bytes read back as text cheaply in the usual case.

/// `bytes` as text when every byte is ASCII other than NUL, as the usual event name,
/// user id and JSON are; `None` otherwise, for the caller's full check. Eight bytes
/// are tested at once, by their high bits: on the short strings of a day's rows and of the spill files this costs a
/// fraction of `str::from_utf8`, which ran to about 90 instructions a string.
pub(crate) fn plain_ascii(bytes: &[u8]) -> Option<&str> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
    // A high bit set in the word is a byte past ASCII; one set by subtracting 1
    // from every byte is a zero byte (bytes in 1..=0x7F lend nothing to the next).
    let flags = |word: u64| word | word.wrapping_sub(ONES);
    let mut words = bytes.chunks_exact(8);
    let mut seen = 0;
    for word in &mut words {
        seen |= flags(u64::from_le_bytes(word.try_into().expect("eight bytes")));
    }
    // The last few bytes, the rest of the word filled with a plain byte.
    let mut last = [1u8; 8];
    last[..words.remainder().len()].copy_from_slice(words.remainder());
    seen |= flags(u64::from_le_bytes(last));
    // SAFETY: every byte is in 1..=0x7F, so the bytes are ASCII, which is UTF-8.
    (seen & HIGH_BITS == 0).then(|| unsafe { std::str::from_utf8_unchecked(bytes) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ascii_without_nul_is_text_and_any_other_byte_anywhere_is_not() {
        let plain: Vec<u8> = (1..=0x7f).collect();
        assert_eq!(plain_ascii(&plain), std::str::from_utf8(&plain).ok());
        assert_eq!(plain_ascii(b""), Some(""));
        // Each position of a long string, so that whole words and the last few
        // bytes are both tried.
        for bad in [0x00, 0x80, 0xc3, 0xff] {
            for at in 0..70 {
                let mut bytes = vec![b'a'; 70];
                bytes[at] = bad;
                assert_eq!(plain_ascii(&bytes), None, "byte {bad:#x} at {at}");
            }
        }
        assert_eq!(plain_ascii("café".as_bytes()), None, "UTF-8 beyond ASCII");
    }

    proptest! {
        #[test]
        fn text_exactly_when_utf8_ascii_and_without_nul(
            // Mostly plain bytes, so that strings of every length pass as well as fail.
            bytes in prop::collection::vec(prop_oneof![30 => 1u8..0x80, 1 => any::<u8>()], 0..80)
        ) {
            let expected = std::str::from_utf8(&bytes)
                .ok()
                .filter(|text| text.is_ascii() && !text.contains('\0'));
            prop_assert_eq!(plain_ascii(&bytes), expected);
        }
    }
}
