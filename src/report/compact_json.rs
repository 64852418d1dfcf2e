//! A forward scan over the compact JSON the job writes (no whitespace), shared by the
//! report's readers of stored summaries and sketches. Whatever it does not read
//! gives `None`, and the caller hands the text to serde_json, which stays the
//! definition.

use std::borrow::Cow;

/// A string of a stored row, borrowed from the text unless it holds escapes.
#[derive(Debug, serde::Deserialize, PartialEq, Eq, Hash)]
pub(super) struct Text<'a>(#[serde(borrow)] pub(super) Cow<'a, str>);

/// A forward scan over compact JSON (no whitespace).
pub(super) struct Scan<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scan<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        Self { text, at: 0 }
    }

    /// Whether the whole text was read.
    pub(super) fn at_end(&self) -> bool {
        self.at == self.text.len()
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// An object, each of its entries read by `entry` (given the key, positioned
    /// at the value).
    pub(super) fn object(
        &mut self,
        mut entry: impl FnMut(&mut Self, Cow<'a, str>) -> Option<()>,
    ) -> Option<()> {
        self.expect(b'{')?;
        if self.expect(b'}').is_some() {
            return Some(());
        }
        loop {
            let key = self.string()?;
            self.expect(b':')?;
            entry(self, key)?;
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A string, borrowed unless it holds escapes, which serde_json reads (a value
    /// that is itself JSON text, `{\"a\":1}`, holds some). The quotes and
    /// backslashes are found with `memchr`: a year's sketches are 60 MB of base64.
    pub(super) fn string(&mut self) -> Option<Cow<'a, str>> {
        self.expect(b'"')?;
        let start = self.at;
        let bytes = self.text.as_bytes();
        let mut escaped = false;
        loop {
            self.at += memchr::memchr2(b'"', b'\\', bytes.get(self.at..)?)?;
            if bytes[self.at] == b'"' {
                break;
            }
            escaped = true;
            self.at += 2;
        }
        // Without an early exit, so that it compiles to vector instructions.
        let control = bytes[start..self.at]
            .iter()
            .fold(false, |found, &b| found | (b < 0x20));
        if control {
            return None;
        }
        self.at += 1;
        // Both ends are next to an ASCII quote, so they are char boundaries.
        if escaped {
            serde_json::from_str(self.text.get(start - 1..self.at)?).ok()
        } else {
            self.text.get(start..self.at - 1).map(Cow::Borrowed)
        }
    }

    /// A count: digits only, as serde_json reads a u64 (no sign, fraction, exponent
    /// or leading zero, and within range).
    pub(super) fn count(&mut self) -> Option<u64> {
        let start = self.at;
        let mut count = 0u64;
        while let Some(digit @ b'0'..=b'9') = self.peek() {
            count = count
                .checked_mul(10)?
                .checked_add(u64::from(digit - b'0'))?;
            self.at += 1;
        }
        let len = self.at - start;
        let leading_zero = len > 1 && self.text.as_bytes()[start] == b'0';
        (len > 0 && !leading_zero).then_some(count)
    }

    fn digits(&mut self) -> &'a str {
        let start = self.at;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
        &self.text[start..self.at]
    }

    /// A number or `null` (`None`).
    pub(super) fn number_or_null(&mut self) -> Option<Option<f64>> {
        if self.text.as_bytes()[self.at..].starts_with(b"null") {
            self.at += 4;
            return Some(None);
        }
        self.number().map(Some)
    }

    /// A JSON number, read correctly rounded as serde_json (`float_roundtrip`) and
    /// `str::parse` both read it; `None` for one out of range, which serde_json
    /// refuses.
    fn number(&mut self) -> Option<f64> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        let whole = self.digits();
        if whole.is_empty() || (whole.len() > 1 && whole.starts_with('0')) {
            return None;
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if self.digits().is_empty() {
                return None;
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if self.digits().is_empty() {
                return None;
            }
        }
        let number: f64 = self.text[start..self.at].parse().ok()?;
        number.is_finite().then_some(number)
    }

    /// `true`, `false`, a number or `null`, skipped; `None` for anything else.
    pub(super) fn skip_scalar(&mut self) -> Option<()> {
        let rest = &self.text.as_bytes()[self.at..];
        if rest.starts_with(b"true") {
            self.at += 4;
        } else if rest.starts_with(b"false") {
            self.at += 5;
        } else {
            self.number_or_null()?;
        }
        Some(())
    }
}
