//! What has to change for a day's stored rollup rows to equal a fresh aggregate.

use std::collections::HashMap;

use jiff::Timestamp;

use super::json::canonical_json;
use super::rows::{HourRow, RollupRow};

/// The writes that make one day's stored rows equal to its aggregate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DayChanges {
    /// Rows for events that have no stored row yet.
    pub inserts: Vec<RollupRow>,
    /// Rows whose count, unique users, sketch or metadata differ from the stored row
    /// (a stored row without a sketch is updated).
    pub updates: Vec<RollupRow>,
    /// Events that have a stored row but no source events left.
    pub deletes: Vec<String>,
    /// Stored rows that already equal the aggregate.
    pub unchanged: u64,
    /// The writes that make the day's hours equal to theirs.
    pub hours: HourChanges,
}

impl DayChanges {
    /// Whether nothing needs writing, to the day's rows or to its hours.
    pub fn is_empty(&self) -> bool {
        self.inserts.is_empty()
            && self.updates.is_empty()
            && self.deletes.is_empty()
            && self.hours.is_empty()
    }
}

/// The writes that make one day's stored hour rows equal to its aggregate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HourChanges {
    /// Rows for (hour, event) pairs that have no stored row yet.
    pub inserts: Vec<HourRow>,
    /// Rows whose count, unique users or sketch differ from the stored row.
    pub updates: Vec<HourRow>,
    /// (hour, event) pairs that have a stored row but no source events left.
    pub deletes: Vec<(Timestamp, String)>,
    /// Stored rows that already equal the aggregate.
    pub unchanged: u64,
}

impl HourChanges {
    /// Whether nothing needs writing.
    pub fn is_empty(&self) -> bool {
        self.inserts.is_empty() && self.updates.is_empty() && self.deletes.is_empty()
    }
}

/// Compares the fresh hour rows of a day with its stored hour rows.
pub fn diff_hours(fresh: &[HourRow], stored: &[HourRow]) -> HourChanges {
    let mut by_key: HashMap<(Timestamp, &str), &HourRow> = stored
        .iter()
        .map(|row| ((row.hour, row.event.as_str()), row))
        .collect();
    let mut changes = HourChanges::default();
    for row in fresh {
        match by_key.remove(&(row.hour, row.event.as_str())) {
            None => changes.inserts.push(row.clone()),
            Some(old) if old == row => changes.unchanged += 1,
            Some(_) => changes.updates.push(row.clone()),
        }
    }
    let mut deletes: Vec<(Timestamp, String)> = by_key
        .into_keys()
        .map(|(hour, event)| (hour, event.to_owned()))
        .collect();
    deletes.sort_unstable();
    changes.deletes = deletes;
    changes
}

/// Compares the fresh rows of a day with its stored rows.
///
/// Stored metadata is compared in canonical form, so that PostgreSQL's `jsonb`
/// formatting of the same summary counts as unchanged.
pub fn diff(fresh: &[RollupRow], stored: &[RollupRow]) -> DayChanges {
    let mut by_event: HashMap<&str, &RollupRow> =
        stored.iter().map(|row| (row.event.as_str(), row)).collect();
    let mut changes = DayChanges::default();
    for row in fresh {
        match by_event.remove(row.event.as_str()) {
            None => changes.inserts.push(row.clone()),
            Some(old)
                if old.count == row.count
                    && old.unique_users == row.unique_users
                    && old.users_hll == row.users_hll
                    && old.partial == row.partial
                    && (old.meta == row.meta || canonical_json(&old.meta) == row.meta)
                    && (old.meta_sketches == row.meta_sketches
                        || old.meta_sketches.as_deref().map(canonical_json)
                            == row.meta_sketches) =>
            {
                changes.unchanged += 1;
            }
            Some(_) => changes.updates.push(row.clone()),
        }
    }
    let mut deletes: Vec<String> = by_event.into_keys().map(str::to_owned).collect();
    deletes.sort_unstable();
    changes.deletes = deletes;
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(event: &str, count: i64, meta: &str) -> RollupRow {
        RollupRow {
            event: event.into(),
            count,
            unique_users: 1,
            meta: meta.into(),
            meta_sketches: Some("{}".into()),
            users_hll: Some(vec![0x11, 0x8e, 0x7f]),
            partial: false,
        }
    }

    #[test]
    fn classifies_insert_update_delete_unchanged() {
        let stored = [
            row("a", 1, "{}"),
            row("b", 2, r#"{"k": {"n": 1}}"#),
            row("gone", 1, "{}"),
        ];
        let fresh = [
            row("a", 3, "{}"),
            row("b", 2, r#"{"k":{"n":1}}"#),
            row("new", 1, "{}"),
        ];
        let changes = diff(&fresh, &stored);
        assert_eq!(changes.inserts, vec![row("new", 1, "{}")]);
        assert_eq!(changes.updates, vec![row("a", 3, "{}")]);
        assert_eq!(changes.deletes, vec!["gone".to_owned()]);
        assert_eq!(changes.unchanged, 1);
    }
}
