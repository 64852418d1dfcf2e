//! The SQL of a ClickHouse day: its filter, the coding of names in a byte, the lists
//! of names, the metadata query (step 3), and literals that hold any bytes.

use std::fmt::Write as _;

use super::super::TableName;
use crate::model::hll::LOG2M;
use crate::model::{DayWindow, MAX_EVENT_NAME_BYTES};

/// Names put in one query's `IN` list: well under the server's default
/// `max_query_size` of 256 KiB.
pub(super) const NAMES_PER_QUERY_BYTES: usize = 64 * 1024;

/// A flat JSON object that splitting at `,` and then at the first `:` cuts into
/// its keys and values exactly: string keys and values of printable ASCII without
/// `"`, `\`, `,` or `:`; `true`, `false`, `null`; numbers of at most 18 digits
/// before and 17 after the point. Anything else (escapes, spaces, nesting,
/// exponents, other bytes) goes the general way, as a whole text.
pub(super) const FLAT: &str = concat!(
    r#"^\{(?:"[ !#-+\x2D-9;-\[\]-~]*":(?:"[ !#-+\x2D-9;-\[\]-~]*"|true|false|null|-?(?:0|[1-9][0-9]{0,17})(?:\.[0-9]{1,17})?)"#,
    r#"(?:,"[ !#-+\x2D-9;-\[\]-~]*":(?:"[ !#-+\x2D-9;-\[\]-~]*"|true|false|null|-?(?:0|[1-9][0-9]{0,17})(?:\.[0-9]{1,17})?))*)?\}$"#
);

/// Names coded in one byte each: codes 2 to 255; 1 is a name that was not among the
/// day's names (`transform`'s default), and 0 cannot be a byte of a string
/// (`reinterpretAsString` drops it).
pub(super) const MAX_CODED_NAMES: usize = 254;

/// The code of a name that was not among the day's names.
pub(super) const UNKNOWN_NAME: u8 = 1;

/// A user id's 64-bit hash, as `hll_hash_text` computes it.
pub(super) const HASH: &str = "reinterpretAsUInt64(murmurHash3_128(ifNull(user_id, '')))";

/// The registers of a sketch; step 1's rows of anonymous events have this index.
pub(super) const REGISTERS: u64 = 1 << LOG2M;

/// What step 3 puts before a whole metadata text, which a pair (`"key":value`)
/// never starts with.
pub(super) const WHOLE_TEXT: u8 = b'*';

/// The filter of a day's events.
pub(super) fn window(window: &DayWindow) -> String {
    // Day boundaries fall on whole seconds (zone offsets are whole seconds);
    // `toDateTime` compares with `DateTime` and `DateTime64` columns alike.
    format!(
        "created_at >= toDateTime({}) AND created_at < toDateTime({})",
        window.start.as_second(),
        window.end.as_second()
    )
}

/// A name as step 1 keys it: cut one byte past the limit when too long.
pub(super) fn cut_name() -> String {
    format!(
        "if(length(event) > {max}, substring(event, 1, {cut}), event)",
        max = MAX_EVENT_NAME_BYTES,
        cut = MAX_EVENT_NAME_BYTES + 1,
    )
}

/// The day's names with a one-byte code each, which steps 1 and 3 group by.
pub(super) struct Coding {
    /// The name of code `c` at `c - 2`.
    names: Vec<Vec<u8>>,
    /// `transform`'s arrays: the names, then their codes.
    arrays: String,
}

impl Coding {
    /// The coding of `names`, unless there are too many for a byte or for a query,
    /// or none (`transform` takes no empty arrays).
    pub(super) fn new(names: Vec<Vec<u8>>) -> Option<Self> {
        if names.is_empty() || names.len() > MAX_CODED_NAMES {
            return None;
        }
        let literals: Vec<String> = names
            .iter()
            .map(|name| format!("'{}'", sql_string(name)))
            .collect();
        let codes: Vec<String> = (0..names.len()).map(|i| (i + 2).to_string()).collect();
        let arrays = format!("[{}], [{}]", literals.join(", "), codes.join(", "));
        (arrays.len() <= NAMES_PER_QUERY_BYTES).then_some(Self { names, arrays })
    }

    /// SQL for the code of the name `expression` gives.
    pub(super) fn code(&self, expression: &str) -> String {
        format!(
            "toUInt8(transform({expression}, {}, {UNKNOWN_NAME}))",
            self.arrays
        )
    }

    /// The name of `code`; `None` for a name that was not among the day's names.
    pub(super) fn name(&self, code: u8) -> Option<&[u8]> {
        usize::from(code)
            .checked_sub(2)
            .and_then(|at| self.names.get(at))
            .map(Vec::as_slice)
    }
}

/// `names` as SQL string lists, each short enough for one query.
pub(super) fn in_lists(names: &[&[u8]]) -> Vec<String> {
    let mut lists = Vec::new();
    let mut list = String::new();
    for name in names {
        if !list.is_empty() {
            list.push_str(", ");
        }
        list.push('\'');
        list.push_str(&sql_string(name));
        list.push('\'');
        if list.len() > NAMES_PER_QUERY_BYTES {
            lists.push(std::mem::take(&mut list));
        }
    }
    if !list.is_empty() {
        lists.push(list);
    }
    lists
}

/// Step 3: the metadata, as flat objects' pairs and as whole texts.
pub(super) fn metadata_sql(
    table: &TableName,
    window: &DayWindow,
    coding: Option<&Coding>,
) -> String {
    let meta = "ifNull(meta, '')";
    let inside = format!("substring({meta}, 2, length({meta}) - 2)");
    let pairs = format!("if({inside} = '', emptyArrayString(), splitByChar(',', {inside}))");
    // Flat, and no key twice (the last of duplicates would win, as in jsonb):
    // a key is what comes before a pair's first `:`, since a key holds none.
    let flat = format!(
        "match({meta}, '{}') AND arrayUniq(arrayMap(p -> splitByChar(':', p)[1], {pairs})) = length({pairs})",
        sql_string(FLAT.as_bytes())
    );
    let item = format!(
        "arrayJoin(if({flat}, {pairs}, [concat('{whole}', {meta})]))",
        whole = WHOLE_TEXT as char,
    );
    // Coded, the name is the item's first byte.
    let (key, group) = match coding {
        Some(coding) => (
            format!(
                "concat(reinterpretAsString({}), {item}) AS item",
                coding.code("event")
            ),
            "item",
        ),
        None => (format!("event, {item} AS item"), "event, item"),
    };
    format!(
        "SELECT {key}, count() \
         FROM {table} WHERE {window} AND event != '' AND length(event) <= {MAX_EVENT_NAME_BYTES} \
         AND {meta} != '' GROUP BY {group} FORMAT RowBinary",
        table = table.quoted(),
        window = self::window(window),
    )
}

/// Bytes as the inside of a ClickHouse string literal: printable ASCII as it is
/// (but `'` and `\`), everything else as `\xHH`, so any bytes match exactly.
pub(super) fn sql_string(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &byte in bytes {
        match byte {
            b'\'' | b'\\' => {
                out.push('\\');
                out.push(byte as char);
            }
            b' '..=b'~' => out.push(byte as char),
            _ => {
                let _ = write!(out, "\\x{byte:02X}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_to_254_names_are_coded_in_a_byte_and_unknown_codes_name_nothing() {
        let names = |n: usize| (0..n).map(|i| format!("n{i}").into_bytes()).collect();
        assert!(
            Coding::new(Vec::new()).is_none(),
            "no names, nothing to code"
        );
        assert!(Coding::new(names(255)).is_none());
        let coding = Coding::new(names(254)).unwrap();
        assert_eq!(coding.name(2).unwrap(), b"n0");
        assert_eq!(coding.name(255).unwrap(), b"n253");
        for code in [0, UNKNOWN_NAME] {
            assert!(coding.name(code).is_none(), "{code}");
        }
        assert!(
            coding
                .code("event")
                .starts_with("toUInt8(transform(event, ['n0', 'n1'")
        );
        assert!(coding.code("event").ends_with("254, 255], 1))"));
        // Names too long for one query's literal go uncoded.
        let long = vec![vec![b'x'; 300]; 254];
        assert!(Coding::new(long).is_none());
    }

    #[test]
    fn any_bytes_become_a_literal_of_themselves() {
        assert_eq!(sql_string(b"it's a\\b"), r"it\'s a\\b");
        assert_eq!(sql_string("é\n".as_bytes()), r"\xC3\xA9\x0A");
    }
}
