//! An event's `meta` JSON, read into its top-level entries: the usual flat object by
//! the fast scan (`flat_json.rs`), anything else by serde_json. The summary itself is
//! in `summary.rs`; the canonical form of JSON it writes is the model's (`json.rs`).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::flat_json::parse_flat_object;
pub use super::meta_value::MetaValue;
use crate::model::canonical_value;

/// What an event's `meta` text turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum ParsedMeta<'a> {
    /// SQL NULL or JSON `null`: no metadata.
    Absent,
    /// A JSON object: its entries, duplicate keys resolved to the last one.
    Object(Vec<(Cow<'a, str>, MetaValue<'a>)>),
    /// Valid JSON, but not an object.
    NonObject,
    /// Not valid JSON.
    Invalid,
}

/// Parses an event's `meta` text.
pub fn parse_meta(text: Option<&str>) -> ParsedMeta<'_> {
    let Some(text) = text else {
        return ParsedMeta::Absent;
    };
    let top = match parse_flat_object(text) {
        Some(entries) => Ok(TopLevel::Object(entries)),
        None => deserialize(text),
    };
    match top {
        Ok(TopLevel::Null) => ParsedMeta::Absent,
        Ok(TopLevel::NonObject) => ParsedMeta::NonObject,
        Ok(TopLevel::Object(mut entries)) => {
            if has_duplicate_keys(&entries) {
                // Like PostgreSQL's jsonb, the last of duplicate keys wins.
                entries.reverse();
                entries.sort_by(|a, b| a.0.cmp(&b.0)); // stable: last-in-text comes first
                entries.dedup_by(|later, first| later.0 == first.0);
            }
            ParsedMeta::Object(entries)
        }
        Err(_) => ParsedMeta::Invalid,
    }
}

/// Deepest nesting of arrays and objects accepted in `meta`, the outermost counting
/// as 1; anything deeper is `invalid_meta`, whatever the outermost value is.
pub const MAX_DEPTH: usize = 128;

/// `text` parsed by serde_json alone: the definition the fast path is held to.
/// Numbers are read correctly rounded (serde_json's `float_roundtrip`), as
/// `str::parse::<f64>` reads them, so that `1.2345e29` and PostgreSQL's normalised
/// `123450000000000000000000000000` give the same double.
fn deserialize(text: &str) -> Result<TopLevel<'_>, Unreadable> {
    if nesting_depth(text) > MAX_DEPTH {
        return Err(Unreadable);
    }
    let mut de = serde_json::Deserializer::from_str(text);
    // The depth was checked above, so the recursion is bounded by it; serde_json's own
    // limit (128 recursions, i.e. 127 levels) would refuse the 128th.
    de.disable_recursion_limit();
    TopLevel::deserialize(&mut de)
        .and_then(|top| de.end().map(|()| top))
        .map_err(|_| Unreadable)
}

/// Why `meta` was not read: not JSON, or nested too deep (both are `invalid_meta`).
#[derive(Debug)]
struct Unreadable;

/// The deepest nesting of `[` and `{` in `text`, outside strings. Malformed text
/// gets some number; serde_json then refuses it anyway.
fn nesting_depth(text: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &byte in text.as_bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// An object's entries in text order as serde_json alone reads them, `None` if
/// `text` is not an object.
#[cfg(test)]
pub(super) fn parse_with_serde(text: &str) -> Option<Vec<(Cow<'_, str>, MetaValue<'_>)>> {
    match deserialize(text) {
        Ok(TopLevel::Object(entries)) => Some(entries),
        _ => None,
    }
}

/// Whether two entries share a key. Objects are small, so pairwise comparison beats
/// sorting in the usual case; large ones are checked by sorting their keys.
fn has_duplicate_keys(entries: &[(Cow<'_, str>, MetaValue<'_>)]) -> bool {
    if entries.len() <= 16 {
        return entries
            .iter()
            .enumerate()
            .any(|(i, (key, _))| entries[i + 1..].iter().any(|(other, _)| other == key));
    }
    let mut keys: Vec<&str> = entries.iter().map(|(k, _)| &**k).collect();
    keys.sort_unstable();
    keys.windows(2).any(|pair| pair[0] == pair[1])
}

enum TopLevel<'a> {
    Null,
    NonObject,
    Object(Vec<(Cow<'a, str>, MetaValue<'a>)>),
}

impl<'de> Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TopLevelVisitor)
    }
}

struct TopLevelVisitor;

impl<'de> Visitor<'de> for TopLevelVisitor {
    type Value = TopLevel<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(TopLevel::Null)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(TopLevel::NonObject)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(TopLevel::NonObject)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(TopLevel::NonObject)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(TopLevel::NonObject)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(TopLevel::NonObject)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(TopLevel::NonObject)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(4).min(64));
        while let Some(key) = map.next_key_seed(BorrowedText)? {
            let value = map.next_value::<MetaValue<'de>>()?;
            entries.push((key, value));
        }
        Ok(TopLevel::Object(entries))
    }
}

/// A decoded string with U+FFFD for each NUL (`\u0000` in the JSON): PostgreSQL's
/// `jsonb` cannot hold one, and the summary must read the same on both databases.
/// Only strings with escapes are decoded into new text, so only they can hold a NUL.
fn without_nul(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    }
}

/// Deserializes a string, borrowing it from the input when it has no escapes.
struct BorrowedText;

impl<'de> DeserializeSeed<'de> for BorrowedText {
    type Value = Cow<'de, str>;
    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for BorrowedText {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(without_nul(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(without_nul(v)))
    }
}

impl<'de> Deserialize<'de> for MetaValue<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(MetaValueVisitor)
    }
}

struct MetaValueVisitor;

impl<'de> Visitor<'de> for MetaValueVisitor {
    type Value = MetaValue<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(MetaValue::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(MetaValue::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(MetaValue::Number(v as f64))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(MetaValue::Number(v as f64))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(MetaValue::Number(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(MetaValue::Text(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(MetaValue::Text(Cow::Owned(without_nul(v.to_owned()))))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(MetaValue::Text(Cow::Owned(without_nul(v))))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let value = Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
        Ok(MetaValue::Nested(canonical_value(value).to_string()))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        // `serde_json::Map` keeps keys sorted, so this text has sorted keys.
        let value = Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(MetaValue::Nested(canonical_value(value).to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_classifies_meta() {
        assert_eq!(parse_meta(None), ParsedMeta::Absent);
        assert_eq!(parse_meta(Some("null")), ParsedMeta::Absent);
        assert_eq!(parse_meta(Some("[1,2]")), ParsedMeta::NonObject);
        assert_eq!(parse_meta(Some("\"x\"")), ParsedMeta::NonObject);
        assert_eq!(parse_meta(Some("{\"a\":")), ParsedMeta::Invalid);
        assert_eq!(parse_meta(Some("{} x")), ParsedMeta::Invalid);
        assert_eq!(parse_meta(Some("NaN")), ParsedMeta::Invalid);
    }

    #[test]
    fn nesting_up_to_128_levels_is_read_and_deeper_is_invalid() {
        let nested = |levels: usize, open: &str, close: &str| {
            format!("{}{}", open.repeat(levels), close.repeat(levels))
        };
        // 128 levels: the outer object and 127 nested ones.
        let ok = format!("{}{{}}{}", "{\"a\":".repeat(127), "}".repeat(127));
        assert!(
            matches!(parse_meta(Some(&ok)), ParsedMeta::Object(_)),
            "128 levels"
        );
        let deep = format!("{}{{}}{}", "{\"a\":".repeat(128), "}".repeat(128));
        assert_eq!(parse_meta(Some(&deep)), ParsedMeta::Invalid, "129 levels");
        assert_eq!(
            parse_meta(Some(&nested(128, "[", "]"))),
            ParsedMeta::NonObject
        );
        assert_eq!(
            parse_meta(Some(&nested(10_000, "[", "]"))),
            ParsedMeta::Invalid
        );
        // Brackets inside strings are text, not nesting.
        let quoted = format!("{{\"a\":\"{}\"}}", "[".repeat(500));
        assert!(matches!(parse_meta(Some(&quoted)), ParsedMeta::Object(_)));
    }

    proptest::proptest! {
        #[test]
        fn numbers_are_read_as_rust_reads_them(
            text in "-?(0|[1-9][0-9]{0,24})(\\.[0-9]{1,25})?([eE][+-]?[0-9]{1,3})?"
        ) {
            let expected: f64 = text.parse().expect("a JSON number is a Rust float");
            let meta = format!("{{\"n\":{text}}}");
            let parsed = parse_meta(Some(&meta));
            if expected.is_finite() {
                let ParsedMeta::Object(entries) = parsed else {
                    return Err(proptest::test_runner::TestCaseError::fail(format!("{text}: {parsed:?}")));
                };
                let MetaValue::Number(x) = entries[0].1 else {
                    return Err(proptest::test_runner::TestCaseError::fail(format!("{text}: {entries:?}")));
                };
                // -0 and 0 are equal, and both written 0.
                proptest::prop_assert!(x == expected, "{}: {} != {}", text, x, expected);
            } else {
                proptest::prop_assert_eq!(parsed, ParsedMeta::Invalid, "{}", text);
            }
        }
    }

    #[test]
    fn duplicate_keys_keep_the_last_value() {
        let ParsedMeta::Object(entries) = parse_meta(Some(r#"{"a":1,"b":2,"a":"x"}"#)) else {
            panic!("not an object");
        };
        assert_eq!(
            entries,
            vec![
                ("a".into(), MetaValue::Text("x".into())),
                ("b".into(), MetaValue::Number(2.0))
            ]
        );
    }
}
