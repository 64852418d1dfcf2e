//! A row's `meta_sketches` text read into its entries, each number key with the
//! base64 of its sketch. The job writes the object compactly, and a year's report
//! reads about 60 MB of it: that form is read by the compact scan
//! (`compact_json.rs`); anything else (whitespace, values that are not strings) goes
//! to serde_json, the definition this is held to.

use std::borrow::Cow;

use super::compact_json::{Scan, Text};
use crate::model::FastMap;

/// The entries of a row's sketches, `None` when the text is not a JSON object of
/// strings (the row then lacks its sketches). Duplicate keys, which the job never
/// writes, are resolved as serde_json resolves them: the last one stands.
pub(super) fn sketch_entries(text: &str) -> Option<Vec<(Cow<'_, str>, Cow<'_, str>)>> {
    if let Some(entries) = compact_entries(text) {
        return Some(entries);
    }
    let map: FastMap<Text<'_>, Text<'_>> = serde_json::from_str(text).ok()?;
    Some(
        map.into_iter()
            .map(|(key, value)| (key.0, value.0))
            .collect(),
    )
}

/// `{"key":"value",…}` without whitespace, in text order; `None` for anything else.
fn compact_entries(text: &str) -> Option<Vec<(Cow<'_, str>, Cow<'_, str>)>> {
    let mut scan = Scan::new(text);
    let mut entries = Vec::new();
    scan.object(|scan, key| {
        entries.push((key, scan.string()?));
        Some(())
    })?;
    scan.at_end().then_some(entries)
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
    fn the_written_form_is_read_by_the_scan_and_anything_else_by_serde() {
        let written = r#"{"duration_ms":"AAAB/+w=","size":"CQ=="}"#;
        let borrowed = |pairs: &[(&'static str, &'static str)]| {
            pairs
                .iter()
                .map(|&(k, v)| (Cow::Borrowed(k), Cow::Borrowed(v)))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            compact_entries(written),
            Some(borrowed(&[("duration_ms", "AAAB/+w="), ("size", "CQ==")]))
        );
        assert_eq!(compact_entries("{}"), Some(vec![]));
        // An escaped string is read by the scan, through serde_json.
        let escaped = r#"{"a\"b":"x\u00e9"}"#;
        assert_eq!(
            compact_entries(escaped),
            Some(vec![(
                Cow::Owned("a\"b".to_owned()),
                Cow::Owned("xé".to_owned())
            )])
        );
        for other in [
            r#"{ "a":"x"}"#,
            r#"{"a":1}"#,
            r#"{"a":"x"} "#,
            r#"{"a":"x",}"#,
            "{\"a\":\"x\u{1}\"}",
            "[]",
            "",
        ] {
            assert_eq!(compact_entries(other), None, "{other}");
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
