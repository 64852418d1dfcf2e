//! A fast path for the usual `meta`: a flat JSON object whose values are strings
//! without escapes, integers, booleans or nulls.
//!
//! serde_json, driven through visitors, spends about 2,000 instructions on a typical
//! 60-byte `meta` (measured with callgrind): more than everything else the aggregator
//! does per event. One forward scan over the bytes costs a fraction of that. Whatever
//! the scan does not handle itself (escapes, fractions, exponents, long or negative-zero
//! integers, nested values, anything malformed) makes it return `None`, and the caller
//! parses with serde_json, which stays the one definition of what is valid and what
//! it means. The property test below checks that whenever the scan returns entries,
//! serde_json returns the same ones.

use std::borrow::Cow;

use super::meta_value::MetaValue;

/// The entries of `text` if it is a flat object this scan handles, in text order
/// (duplicate keys are left to the caller); `None` to defer to serde_json.
pub(super) fn parse_flat_object(text: &str) -> Option<Vec<(Cow<'_, str>, MetaValue<'_>)>> {
    let mut scan = Scanner { text, pos: 0 };
    scan.skip_whitespace();
    scan.expect(b'{')?;
    let mut entries = Vec::with_capacity(5);
    scan.skip_whitespace();
    if scan.expect(b'}').is_none() {
        loop {
            let key = scan.string()?;
            scan.skip_whitespace();
            scan.expect(b':')?;
            scan.skip_whitespace();
            let value = match scan.peek()? {
                b'"' => MetaValue::Text(Cow::Borrowed(scan.string()?)),
                b't' => scan.literal("true", MetaValue::Bool(true))?,
                b'f' => scan.literal("false", MetaValue::Bool(false))?,
                b'n' => scan.literal("null", MetaValue::Null)?,
                b'-' | b'0'..=b'9' => MetaValue::Number(scan.integer()?),
                _ => return None,
            };
            entries.push((Cow::Borrowed(key), value));
            scan.skip_whitespace();
            match scan.bump()? {
                b',' => scan.skip_whitespace(),
                b'}' => break,
                _ => return None,
            }
        }
    }
    scan.skip_whitespace();
    (scan.pos == text.len()).then_some(entries)
}

/// The bytes that end the scan of a string: the closing quote, a backslash (an
/// escape, left to serde_json) and control characters (invalid unescaped). A table
/// makes this one load per byte.
const STRING_STOP: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = true;
        byte += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

struct Scanner<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.pos += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    /// JSON's whitespace, exactly: space, tab, line feed, carriage return.
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// A string without escapes or control characters, borrowed from the text.
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.pos;
        let len = self.text.as_bytes()[start..]
            .iter()
            .position(|&b| STRING_STOP[usize::from(b)])?;
        let end = start + len;
        (self.text.as_bytes()[end] == b'"').then_some(())?;
        self.pos = end + 1;
        // Both ends sit next to an ASCII quote, so they are char boundaries.
        self.text.get(start..end)
    }

    /// `word` at this position; the caller checks what follows it.
    fn literal(&mut self, word: &str, value: MetaValue<'a>) -> Option<MetaValue<'a>> {
        let rest = &self.text.as_bytes()[self.pos..];
        if !rest.starts_with(word.as_bytes()) {
            return None;
        }
        self.pos += word.len();
        Some(value)
    }

    /// An integer of at most 18 digits, which fits an `i64` exactly; converted to
    /// `f64` as serde_json converts the integer it parses. Leading zeros and `-0` (a
    /// float in serde_json) are left to serde_json; so are fractions and exponents,
    /// as the caller finds no separator after the digits.
    fn integer(&mut self) -> Option<f64> {
        let negative = self.peek()? == b'-';
        let start = self.pos + usize::from(negative);
        let digits = self.text.as_bytes()[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if !(1..=18).contains(&digits) {
            return None;
        }
        let end = start + digits;
        let bytes = self.text.as_bytes();
        if bytes[start] == b'0' && (digits > 1 || negative) {
            return None;
        }
        let magnitude = bytes[start..end]
            .iter()
            .fold(0i64, |n, &b| n * 10 + i64::from(b - b'0'));
        self.pos = end;
        Some(if negative {
            -magnitude as f64
        } else {
            magnitude as f64
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::meta::parse_with_serde;
    use super::*;
    use proptest::prelude::*;

    fn entries(text: &str) -> Option<String> {
        parse_flat_object(text).map(|e| format!("{e:?}"))
    }

    #[test]
    fn the_usual_meta_is_scanned() {
        assert_eq!(
            parse_flat_object(r#" {"plan":"pro", "n" : -42,"ok":true,"x":null,"y":false} "#),
            Some(vec![
                ("plan".into(), MetaValue::Text("pro".into())),
                ("n".into(), MetaValue::Number(-42.0)),
                ("ok".into(), MetaValue::Bool(true)),
                ("x".into(), MetaValue::Null),
                ("y".into(), MetaValue::Bool(false)),
            ])
        );
        assert_eq!(parse_flat_object("{}"), Some(vec![]));
        assert_eq!(
            parse_flat_object("{\"k\":\"é ✓\"}").map(|e| e.len()),
            Some(1)
        );
    }

    #[test]
    fn anything_else_is_left_to_serde_json() {
        for text in [
            "null",
            "[1]",
            r#"{"a":"x\ny"}"#,
            r#"{"a\"":1}"#,
            "{\"a\":\"tab\there\"}",
            r#"{"a":1.5}"#,
            r#"{"a":1e3}"#,
            r#"{"a":1E3}"#,
            r#"{"a":-0}"#,
            r#"{"a":007}"#,
            r#"{"a":1234567890123456789}"#,
            r#"{"a":[1]}"#,
            r#"{"a":{"b":1}}"#,
            r#"{"a":1,}"#,
            r#"{"a":1} x"#,
            r#"{"a" 1}"#,
            r#"{"a":tru}"#,
            r#"{"a":"#,
            "{",
        ] {
            assert_eq!(entries(text), None, "{text}");
        }
    }

    /// JSON-like text: well-formed flat objects most of the time, with tokens
    /// that the scan must leave alone mixed in.
    fn json_like() -> impl Strategy<Value = String> {
        let token = prop_oneof![
            Just("{".to_owned()),
            Just("}".to_owned()),
            Just(":".to_owned()),
            Just(",".to_owned()),
            Just(" ".to_owned()),
            Just("\n".to_owned()),
            Just("[".to_owned()),
            Just("]".to_owned()),
            Just("\\".to_owned()),
            Just("\"".to_owned()),
            "\"[a-c\\\\\"é\t]{0,3}\"",
            "-?[0-9]{1,20}(\\.[0-9]{1,3})?([eE][+-]?[0-9]{1,3})?",
            prop_oneof![Just("true"), Just("false"), Just("null"), Just("nul")]
                .prop_map(str::to_owned),
        ];
        let value = prop_oneof![
            "\"[a-z/é]{0,6}\"",
            "-?[0-9]{1,20}",
            "-?[0-9]{1,3}(\\.[0-9]{1,3})?([eE][+-]?[0-9]{1,3})?",
            prop_oneof![Just("true"), Just("false"), Just("null")].prop_map(str::to_owned),
        ];
        let object = prop::collection::vec(("\"[a-c]{1,2}\"", value), 0..6).prop_map(|kv| {
            let body: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
            format!("{{{}}}", body.join(","))
        });
        prop_oneof![
            2 => object.clone(),
            1 => (object, prop::collection::vec(token.clone(), 1..3), any::<prop::sample::Index>())
                .prop_map(|(text, tokens, at)| {
                    let cut = (0..=text.len()).filter(|i| text.is_char_boundary(*i)).collect::<Vec<_>>();
                    let at = cut[at.index(cut.len())];
                    format!("{}{}{}", &text[..at], tokens.concat(), &text[at..])
                }),
            1 => prop::collection::vec(token, 0..12).prop_map(|t| t.concat()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        #[test]
        fn whatever_the_scan_returns_serde_json_returns_too(text in json_like()) {
            if let Some(scanned) = entries(&text) {
                let parsed = parse_with_serde(&text).map(|e| format!("{e:?}"));
                prop_assert_eq!(Some(scanned), parsed, "{}", text);
            }
        }
    }
}
