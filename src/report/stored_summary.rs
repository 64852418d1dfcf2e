//! A row's stored metadata summary (`meta`) read back for merging, its strings
//! borrowed from the text where they hold no escapes. The job writes the summary
//! compactly, and a year's report reads tens of thousands: that form is read by one
//! scan here, serde_json reading only its strings with escapes; anything else
//! (whitespace, fields of other types, a field twice) goes to serde_json whole, which
//! stays the definition this is held to (a property test compares the two).

use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;

use super::compact_json::{Scan, Text};
use crate::model::DROPPED_KEYS;

/// The summary `text` holds, `None` when it is not one (the row then adds nothing).
pub(super) fn read_summary(text: &str) -> Option<StoredSummary<'_>> {
    match compact_summary(text) {
        Some(summary) => Some(summary),
        None => serde_json::from_str(text).ok(),
    }
}

/// A stored metadata summary, read with its strings borrowed from the text where
/// they hold no escapes: a year's report reads tens of thousands.
#[derive(Debug, PartialEq)]
pub(super) struct StoredSummary<'a>(pub(super) Vec<StoredEntry<'a>>);

#[derive(Debug, PartialEq)]
pub(super) enum StoredEntry<'a> {
    Key(Text<'a>, StoredKey<'a>),
    /// `$dropped_keys`.
    Dropped(u64),
}

/// One key of a stored summary.
#[derive(Debug, Default, Deserialize, PartialEq)]
pub(super) struct StoredKey<'a> {
    #[serde(default)]
    pub(super) n: u64,
    #[serde(default, borrow, deserialize_with = "entries")]
    pub(super) values: Option<Vec<(Text<'a>, u64)>>,
    #[serde(default)]
    pub(super) other: u64,
    /// Absent, or `null` when the day's sum overflowed.
    #[serde(default, deserialize_with = "present")]
    pub(super) sum: Option<Option<f64>>,
    pub(super) min: Option<f64>,
    pub(super) max: Option<f64>,
}

impl<'de> Deserialize<'de> for StoredSummary<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = StoredSummary<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a metadata summary")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut keys = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(key) = map.next_key::<Text<'de>>()? {
                    keys.push(if key.0 == DROPPED_KEYS {
                        // An event's own key of that name, stored when nothing was
                        // dropped, counts nothing.
                        let dropped: Value = map.next_value()?;
                        StoredEntry::Dropped(dropped.as_u64().unwrap_or(0))
                    } else {
                        StoredEntry::Key(key, map.next_value()?)
                    });
                }
                Ok(StoredSummary(keys))
            }
        }
        deserializer.deserialize_map(Keys)
    }
}

/// A JSON object's entries in their order, without building a map.
fn entries<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<(Text<'de>, u64)>>, D::Error> {
    struct Entries;
    impl<'de> Visitor<'de> for Entries {
        type Value = Vec<(Text<'de>, u64)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("values and their counts")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
            while let Some(entry) = map.next_entry()? {
                entries.push(entry);
            }
            Ok(entries)
        }
    }
    deserializer.deserialize_map(Entries).map(Some)
}

/// A field that is present, `null` or not: `Some(None)` for `null`.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Option<f64>>, D::Error> {
    Option::deserialize(deserializer).map(Some)
}

/// The summary in the form the job writes it, `None` for anything else.
fn compact_summary(text: &str) -> Option<StoredSummary<'_>> {
    let mut scan = Scan::new(text);
    let mut entries = Vec::new();
    scan.object(|scan, key| {
        entries.push(if key == DROPPED_KEYS {
            StoredEntry::Dropped(scan.count()?)
        } else {
            StoredEntry::Key(Text(key), key_stats(scan)?)
        });
        Some(())
    })?;
    scan.at_end().then_some(StoredSummary(entries))
}

/// One key's statistics; `None` for a field of another type, a field twice, or
/// an unknown field that is not a number, `null` or a boolean.
fn key_stats<'a>(scan: &mut Scan<'a>) -> Option<StoredKey<'a>> {
    let mut stats = StoredKey::default();
    // The fields read so far, a bit each: serde refuses a field given twice.
    let mut seen = 0u8;
    scan.object(|scan, field| {
        let bit = match &*field {
            "n" => {
                stats.n = scan.count()?;
                1
            }
            "other" => {
                stats.other = scan.count()?;
                2
            }
            "values" => {
                // A day's top values: twenty by default.
                let mut entries = Vec::with_capacity(20);
                scan.object(|scan, value| {
                    entries.push((Text(value), scan.count()?));
                    Some(())
                })?;
                stats.values = Some(entries);
                4
            }
            "sum" => {
                stats.sum = Some(scan.number_or_null()?);
                8
            }
            "min" => {
                stats.min = scan.number_or_null()?;
                16
            }
            "max" => {
                stats.max = scan.number_or_null()?;
                32
            }
            // Percentiles and whatever else a later version writes.
            _ => return scan.skip_scalar(),
        };
        (seen & bit == 0).then(|| seen |= bit)
    })?;
    Some(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn by_serde(text: &str) -> Option<StoredSummary<'_>> {
        serde_json::from_str(text).ok()
    }

    #[test]
    fn the_written_form_is_read_by_the_scan_as_serde_json_reads_it() {
        let written = r#"{"$dropped_keys":3,"browser":{"n":1278,"other":0,"values":{"brave":169,"chrome":164}},"duration_ms":{"max":9995,"min":-18.5,"n":1276,"p50":5065.63281611519,"p90":9230.369406737691,"p99":9995,"sum":6.4612e6},"huge":{"n":1,"sum":null}}"#;
        let scanned = compact_summary(written).expect("the job's form");
        assert_eq!(Some(&scanned), by_serde(written).as_ref());
        assert_eq!(scanned.0[0], StoredEntry::Dropped(3));
        let StoredEntry::Key(key, stats) = &scanned.0[2] else {
            panic!("{scanned:?}")
        };
        assert_eq!(key.0, "duration_ms");
        assert_eq!(
            (stats.min, stats.max, stats.sum),
            (Some(-18.5), Some(9995.0), Some(Some(6_461_200.0)))
        );
        // Escaped strings are read by serde_json alone, the rest by the scan.
        let escaped = r#"{"a\"b":{"n":1,"values":{"{\"a\":1}":2,"\u00e9":1}}}"#;
        let scanned = compact_summary(escaped).expect("escapes in the job's form");
        assert_eq!(Some(&scanned), by_serde(escaped).as_ref());
        let StoredEntry::Key(key, stats) = &scanned.0[0] else {
            panic!("{scanned:?}")
        };
        assert_eq!(key.0, "a\"b");
        let values: Vec<(&str, u64)> = stats
            .values
            .iter()
            .flatten()
            .map(|(v, c)| (&*v.0, *c))
            .collect();
        assert_eq!(values, [("{\"a\":1}", 2), ("é", 1)]);
        // Left to serde_json, which reads them or refuses them whole.
        for other in [
            r#"{"a": {"n":1}}"#,
            r#"{"a":{"n":1,"n":2}}"#,
            r#"{"a":{"n":1.0}}"#,
            r#"{"a":{"n":01}}"#,
            r#"{"a":{"sum":1e999}}"#,
            r#"{"a":{"values":null}}"#,
            r#"{"a":{"p50":"x"}}"#,
            r#"{"$dropped_keys":"x"}"#,
        ] {
            assert_eq!(compact_summary(other), None, "{other}");
            assert_eq!(read_summary(other), by_serde(other), "{other}");
        }
    }

    fn json_string() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop::sample::select(vec!['a', 'n', '0', ' ', '"', '\\', '\n', '\u{1}', 'é', '$']),
            0..6,
        )
        .prop_map(|chars| serde_json::json!(chars.into_iter().collect::<String>()).to_string())
    }

    /// A field's value: mostly what the job writes, sometimes what it does not.
    fn field_value() -> impl Strategy<Value = String> {
        let numbers = prop::sample::select(vec![
            "0",
            "7",
            "18446744073709551615",
            "18446744073709551616",
            "-3",
            "01",
            "-0",
            "2.5",
            "-1.25e-7",
            "1E3",
            "1e400",
            "1.",
            ".5",
            "null",
            "true",
            "false",
            "\"x\"",
            "[]",
        ])
        .prop_map(str::to_owned);
        let values = prop::collection::vec((json_string(), 0u64..1000), 0..3).prop_map(|entries| {
            let inner: Vec<String> = entries.iter().map(|(v, c)| format!("{v}:{c}")).collect();
            format!("{{{}}}", inner.join(","))
        });
        prop_oneof![4 => numbers, 1 => values]
    }

    fn key_object() -> impl Strategy<Value = String> {
        let name = prop::sample::select(vec![
            "n",
            "other",
            "values",
            "sum",
            "min",
            "max",
            "p50",
            "valuesExact",
            "x",
        ]);
        prop::collection::vec((name, field_value()), 0..5).prop_map(|fields| {
            let inner: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{{}}}", inner.join(","))
        })
    }

    fn summary() -> impl Strategy<Value = String> {
        let key = prop_oneof![3 => json_string(), 1 => Just("\"$dropped_keys\"".to_owned())];
        let value = prop_oneof![4 => key_object(), 1 => field_value()];
        prop::collection::vec((key, value), 0..4).prop_map(|entries| {
            let inner: Vec<String> = entries.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            format!("{{{}}}", inner.join(","))
        })
    }

    proptest! {
        #[test]
        fn summaries_are_what_serde_json_reads(text in summary(), spaced in any::<bool>()) {
            let text = if spaced { text.replace(',', ", ") } else { text };
            prop_assert_eq!(read_summary(&text), by_serde(&text), "{}", text);
            if let Some(scanned) = compact_summary(&text) {
                prop_assert_eq!(Some(scanned), by_serde(&text), "{}", text);
            }
            for cut in (0..text.len()).filter(|&i| text.is_char_boundary(i)) {
                prop_assert_eq!(read_summary(&text[..cut]), by_serde(&text[..cut]));
            }
        }
    }
}
