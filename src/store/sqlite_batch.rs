//! Rollup rows written to SQLite a batch per statement: their plain fields as one
//! JSON array that `json_each` unpacks, their blobs (the users' sketches) side by
//! side in one blob parameter that each row cuts its own from with `substr`, which
//! counts a blob's bytes from 1. Sketches written as hexadecimal inside the JSON
//! were formatted, escaped, parsed and decoded again: about a quarter of a second
//! for a 2M-event day's 1,200 hour rows.

use serde_json::Value;

/// Bytes of blobs and JSON a statement takes at most, far below SQLite's limit on
/// one value (1,000,000,000 bytes), so that a day of any size is written.
const BATCH_BYTES: usize = 64 << 20;

/// One statement's rows: `rows` a JSON array, `blobs` their sketches side by side.
#[derive(Debug, Default)]
pub(super) struct Batch {
    pub(super) rows: String,
    pub(super) blobs: Vec<u8>,
}

/// `rows` in batches of at most about [`BATCH_BYTES`]. `row` makes a row's JSON from
/// the row and where its blob (`blob`'s) lies among the batch's blobs: the 1-based
/// start and the length that `substr(blobs, start, length)` takes, both `null` for
/// a row without one (so that `substr` gives NULL).
pub(super) fn batches<'r, T: 'r>(
    rows: impl Iterator<Item = &'r T>,
    blob: impl Fn(&T) -> Option<&[u8]>,
    row: impl Fn(&T, Value, Value) -> Value,
) -> Vec<Batch> {
    let mut done = Vec::new();
    let mut open = Batch::default();
    for item in rows {
        let (start, length) = match blob(item) {
            Some(bytes) => {
                let start = open.blobs.len() + 1;
                open.blobs.extend_from_slice(bytes);
                (Value::from(start), Value::from(bytes.len()))
            }
            None => (Value::Null, Value::Null),
        };
        open.rows.push(if open.rows.is_empty() { '[' } else { ',' });
        open.rows.push_str(&row(item, start, length).to_string());
        if open.rows.len() + open.blobs.len() >= BATCH_BYTES {
            open.rows.push(']');
            done.push(std::mem::take(&mut open));
        }
    }
    if !open.rows.is_empty() {
        open.rows.push(']');
        done.push(open);
    }
    done
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Each row's first field and its blob, as SQLite itself cuts it from the
    /// batch's blobs by the start and length the row carries (fields 1 and 2).
    fn cut(batch: &Batch) -> Vec<(Value, Option<Vec<u8>>)> {
        let dir = tempfile::tempdir().unwrap();
        let db = rusqlite::Connection::open(dir.path().join("cut.db")).unwrap();
        let mut cut = db
            .prepare("SELECT value -> 0, substr(?2, value ->> 1, value ->> 2) FROM json_each(?1)")
            .unwrap();
        cut.query_map((&batch.rows, &batch.blobs), |row| {
            let first: String = row.get(0)?;
            Ok((serde_json::from_str(&first).unwrap(), row.get(1)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    #[test]
    fn each_row_finds_its_own_blob_and_a_row_without_one_finds_none() {
        let rows: Vec<(&str, Option<Vec<u8>>)> = vec![
            ("a", Some(vec![1, 2, 3])),
            ("b", None),
            ("c", Some(vec![])),
            ("d", Some(vec![9; 5])),
        ];
        let batches = batches(
            rows.iter(),
            |(_, blob)| blob.as_deref(),
            |(name, _), start, length| json!([name, start, length]),
        );
        assert_eq!(batches.len(), 1);
        assert_eq!(
            cut(&batches[0]),
            vec![
                (json!("a"), Some(vec![1, 2, 3])),
                (json!("b"), None),
                (json!("c"), Some(vec![])),
                (json!("d"), Some(vec![9; 5])),
            ]
        );
    }

    #[test]
    fn rows_beyond_a_statements_bytes_go_to_the_next_batch_in_order() {
        let big = vec![7u8; BATCH_BYTES / 3];
        let rows: Vec<(usize, Vec<u8>)> = (0..7).map(|i| (i, big.clone())).collect();
        let batches = batches(
            rows.iter(),
            |(_, blob)| Some(blob.as_slice()),
            |(i, _), start, length| json!([i, start, length]),
        );
        assert_eq!(batches.len(), 3);
        let names: Vec<Value> = batches.iter().flat_map(cut).map(|(name, _)| name).collect();
        assert_eq!(names, (0..7).map(Value::from).collect::<Vec<_>>());
        for batch in &batches {
            assert!(batch.blobs.len() <= BATCH_BYTES + big.len());
            assert!(
                cut(batch)
                    .iter()
                    .all(|(_, blob)| blob.as_ref() == Some(&big))
            );
        }
    }

    #[test]
    fn no_rows_make_no_batch() {
        let rows: Vec<Vec<u8>> = Vec::new();
        let batches = batches(rows.iter(), |b| Some(b.as_slice()), |_, s, l| json!([s, l]));
        assert!(batches.is_empty());
    }
}
