//! A row's `meta_sketches` text read into its entries, each number key with the
//! base64 of its sketch. The job writes the object compactly, its keys and base64
//! without escapes, and a year's report reads about 60 MB of it: that form is read
//! here, the closing quotes found with `memchr`; anything else (escapes, whitespace,
//! values that are not strings) goes to serde_json, the definition this is held to.

use std::borrow::Cow;

use crate::model::FastMap;

/// The entries of a row's sketches, `None` when the text is not a JSON object of
/// strings (the row then lacks its sketches). Duplicate keys, which the job never
/// writes, are resolved as serde_json resolves them: the last one stands.
pub(super) fn sketch_entries(text: &str) -> Option<Vec<(Cow<'_, str>, Cow<'_, str>)>> {
    if let Some(entries) = plain_entries(text) {
        return Some(
            entries
                .into_iter()
                .map(|(key, value)| (Cow::Borrowed(key), Cow::Borrowed(value)))
                .collect(),
        );
    }
    let map: FastMap<BorrowedText<'_>, BorrowedText<'_>> = serde_json::from_str(text).ok()?;
    Some(
        map.into_iter()
            .map(|(key, value)| (key.0, value.0))
            .collect(),
    )
}

/// A string borrowed from the text unless it holds escapes.
#[derive(serde::Deserialize, PartialEq, Eq, Hash)]
struct BorrowedText<'a>(#[serde(borrow)] Cow<'a, str>);

/// `{"key":"value",…}` with no whitespace and no escapes or control characters in
/// its strings, in text order; `None` for anything else.
fn plain_entries(text: &str) -> Option<Vec<(&str, &str)>> {
    let bytes = text.as_bytes();
    if bytes.first() != Some(&b'{') {
        return None;
    }
    let mut entries = Vec::new();
    if bytes.get(1) == Some(&b'}') {
        return (bytes.len() == 2).then_some(entries);
    }
    let mut at = 1;
    loop {
        let key = plain_string(text, &mut at)?;
        if bytes.get(at) != Some(&b':') {
            return None;
        }
        at += 1;
        let value = plain_string(text, &mut at)?;
        entries.push((key, value));
        match bytes.get(at) {
            Some(b',') => at += 1,
            Some(b'}') => return (at + 1 == bytes.len()).then_some(entries),
            _ => return None,
        }
    }
}

/// The string whose opening quote is at `*at`, if it holds no escape or control
/// character; `*at` then moves past its closing quote.
fn plain_string<'a>(text: &'a str, at: &mut usize) -> Option<&'a str> {
    let bytes = text.as_bytes();
    if bytes.get(*at) != Some(&b'"') {
        return None;
    }
    let start = *at + 1;
    let len = memchr::memchr(b'"', bytes.get(start..)?)?;
    let inner = bytes.get(start..start + len)?;
    // Without an early exit, so that it compiles to vector instructions.
    let escaped = inner
        .iter()
        .fold(false, |found, &b| found | (b < 0x20) | (b == b'\\'));
    if escaped {
        return None;
    }
    *at = start + len + 1;
    // Both ends are next to an ASCII quote, so they are char boundaries.
    text.get(start..start + len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// serde_json's reading: the definition.
    fn by_serde(text: &str) -> Option<FastMap<String, String>> {
        serde_json::from_str(text).ok()
    }

    fn as_map(entries: Vec<(Cow<'_, str>, Cow<'_, str>)>) -> FastMap<String, String> {
        entries
            .into_iter()
            .map(|(key, value)| (key.into_owned(), value.into_owned()))
            .collect()
    }

    #[test]
    fn the_written_form_is_read_without_serde_and_anything_else_with_it() {
        let written = r#"{"duration_ms":"AAAB/+w=","size":"CQ=="}"#;
        assert_eq!(
            plain_entries(written),
            Some(vec![("duration_ms", "AAAB/+w="), ("size", "CQ==")])
        );
        assert_eq!(plain_entries("{}"), Some(vec![]));
        for other in [
            r#"{"a\"b":"x"}"#,
            r#"{ "a":"x"}"#,
            r#"{"a":1}"#,
            r#"{"a":"x"} "#,
            r#"{"a":"x",}"#,
            "[]",
            "",
        ] {
            assert_eq!(plain_entries(other), None, "{other}");
        }
        // Escaped keys come through serde_json; not an object of strings is nothing.
        assert_eq!(
            sketch_entries(r#"{"a\"b": "x"}"#).map(as_map),
            by_serde(r#"{"a\"b":"x"}"#)
        );
        assert_eq!(sketch_entries(r#"{"a":1}"#), None);
        assert_eq!(sketch_entries(r#"["x"]"#), None);
        // The last of duplicate keys stands, either way.
        let twice = r#"{"a":"x","a":"y"}"#;
        assert_eq!(sketch_entries(twice).map(as_map), by_serde(twice));
        assert_eq!(
            sketch_entries(r#"{"a" :"x","a":"y"}"#).map(as_map),
            by_serde(twice)
        );
    }

    /// Strings from an alphabet rich in what JSON treats specially.
    fn string() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop::sample::select(vec![
                'a', 'Z', '0', '+', '/', '=', '"', '\\', '\n', '\u{1}', 'é', '€', ' ',
            ]),
            0..12,
        )
        .prop_map(|chars| chars.into_iter().collect())
    }

    proptest! {
        #[test]
        fn entries_are_what_serde_json_reads(
            entries in prop::collection::vec((string(), string()), 0..5),
            spaced in any::<bool>(),
        ) {
            let text = {
                let object: Vec<String> = entries
                    .iter()
                    .map(|(k, v)| format!("{}:{}", serde_json::json!(k), serde_json::json!(v)))
                    .collect();
                let separator = if spaced { ", " } else { "," };
                format!("{{{}}}", object.join(separator))
            };
            prop_assert_eq!(sketch_entries(&text).map(as_map), by_serde(&text));
            // Cut anywhere, it is what serde_json makes of it too.
            for cut in (0..text.len()).filter(|&i| text.is_char_boundary(i)) {
                let part = &text[..cut];
                prop_assert_eq!(sketch_entries(part).map(as_map), by_serde(part));
            }
        }
    }
}
