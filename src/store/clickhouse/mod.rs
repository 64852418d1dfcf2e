//! Raw events from ClickHouse, over its HTTP interface.
//!
//! A day is read as aggregates, computed where the events are (on every shard of a
//! `Distributed` table, merged by the server the job talks to), in at most four
//! queries:
//!
//! 0. the day's event names. Up to [`MAX_CODED_NAMES`] of them, each is given a
//!    one-byte code (`transform`) that the next steps group by in its place:
//!    ClickHouse 18.16 groups by a single number or string faster than by a name
//!    and a second key (steps 1 and 3 together took a fifth less time, on a table
//!    sorted by time). With more names, the steps group by the names, as they do
//!    again when step 1 meets a name step 0 did not list (events still arriving,
//!    or a server that answered short).
//! 1. per event name and HyperLogLog register (the low bits of the user id's
//!    `murmurHash3_128`, the hash `hll_hash_text` uses): the events, the exact
//!    distinct users (`uniqExact`) and the register's value. A user falls in one
//!    register only, so a name's distinct users are the sum over its registers.
//! 2. for the names with at most [`EXPLICIT_MAX`] users, whose sketch is the hashes
//!    themselves: those hashes (`groupUniqArray`).
//! 3. the metadata, counted per (name, item): an item is a `"key":value` pair of a
//!    flat object (strings without `"`, `\`, `,` or `:`, booleans, null, plain
//!    numbers; no spaces), cut by `splitByChar`, or else the whole text.
//!
//! Step 3 runs while steps 1 and 2 do; the server holds its answer until the job,
//! having counted the names, reads it.
//!
//! The job reads the pairs and texts with its own JSON reader, each once however
//! many events share it, so the rows are byte for byte those the PostgreSQL path
//! writes. ClickHouse 18.16 (Debian's) has no function that splits JSON into keys
//! and values (`JSONExtractKeysAndValuesRaw` came in 19.x): step 3 uses a regular
//! expression that accepts only the flat objects whose pairs a split cuts exactly.
//!
//! Answers are `RowBinary` (nothing escaped) and asked for with
//! `wait_end_of_query=1`, so that an error half way shows as an HTTP error rather
//! than as rows cut short.
//!
//! The URL is read in `config.rs`, requests go through `transport.rs`, the SQL is
//! built in `queries.rs`, and answers are decoded by `row_binary.rs`; this module
//! runs the plan.

mod config;
mod queries;
mod row_binary;
mod transport;

use std::collections::HashMap;

use hyper::Response;
use hyper::body::Incoming;
use jiff::Timestamp;

use self::config::Endpoint;
use self::queries::{
    Coding, HASH, MAX_CODED_NAMES, REGISTERS, WHOLE_TEXT, cut_name, in_lists, metadata_sql,
    window as window_filter,
};
use self::row_binary::Malformed;
use self::transport::Transport;
use super::rows::lenient_utf8;
use super::{StoreError, TableName};
use crate::model::hll::{EXPLICIT_MAX, LOG2M, Sketch, register_value};
use crate::model::{CountedEvents, DayWindow, EventSink, MAX_EVENT_NAME_BYTES, MergeableSink};

/// Raw events in a ClickHouse table, read over HTTP.
#[derive(Debug, Clone)]
pub struct ClickHouseSource {
    transport: Transport,
    table: TableName,
}

impl ClickHouseSource {
    /// The source `url` names (`clickhouse://[user[:password]@]host[:port]/database`,
    /// `clickhouses://` for HTTPS; query parameters are passed on as settings),
    /// reading `table`. Nothing is sent until the first read.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidSourceUrl`] naming what is wrong with the URL.
    pub fn new(url: &str, table: &TableName) -> Result<Self, StoreError> {
        Ok(Self {
            transport: Transport::new(Endpoint::parse(url)?)?,
            table: table.clone(),
        })
    }

    /// Whether the server answers now.
    pub async fn ping(&self) -> bool {
        self.transport.ping().await
    }
    /// Step 0: the day's names (cut as step 1 keys them) with their codes, or
    /// `None` when there are too many to code.
    async fn coding(&self, window: &DayWindow, action: &str) -> Result<Option<Coding>, StoreError> {
        let sql = format!(
            "SELECT DISTINCT {name} FROM {table} WHERE {window} LIMIT {limit}",
            name = cut_name(),
            table = self.table.quoted(),
            window = window_filter(window),
            limit = MAX_CODED_NAMES + 1,
        );
        let mut names = Vec::new();
        self.transport
            .rows(&sql, action, |c| {
                let Some(name) = c.string()? else {
                    return Ok(None);
                };
                names.push(name.to_vec());
                Ok(Some(()))
            })
            .await?;
        Ok(Coding::new(names))
    }

    /// Step 1: every name of the day with its events, distinct users and, from
    /// the registers, the sketch it has when it has more than [`EXPLICIT_MAX`]
    /// users. Names too long to keep come back cut one byte past the limit, so they
    /// still read as too long without crossing the network whole.
    /// `None` when a coded name is not among the day's names (see
    /// [`ClickHouseSource::names_and_metadata`]).
    async fn names(
        &self,
        window: &DayWindow,
        coding: Option<&Coding>,
        action: &str,
    ) -> Result<Option<Vec<Name>>, StoreError> {
        let user = "ifNull(user_id, '')";
        let index = format!(
            "toUInt64(if({user} != '', bitAnd({HASH} AS h, {registers}), {anonymous}))",
            registers = REGISTERS - 1,
            anonymous = REGISTERS,
        );
        // The code and the register in one number: registers take 16 bits.
        let key = match coding {
            Some(coding) => format!(
                "toUInt64({}) * 65536 + {index} AS key",
                coding.code(&cut_name())
            ),
            None => format!("{} AS name, {index} AS index", cut_name()),
        };
        let sql = format!(
            "SELECT {key}, count(), uniqExactIf({user}, {user} != ''), \
                    toUInt64(max(if({user} != '', bitAnd(bitShiftRight(h, {LOG2M}) AS rest, bitNot(rest) + 1), 0))) \
             FROM {table} WHERE {window} GROUP BY {group}",
            table = self.table.quoted(),
            window = window_filter(window),
            group = if coding.is_some() {
                "key"
            } else {
                "name, index"
            },
        );
        let mut names: HashMap<Vec<u8>, Name> = HashMap::new();
        let mut unknown = false;
        self.transport
            .rows(&sql, action, |c| {
                let (name, index) = match coding {
                    Some(coding) => {
                        let Some(key) = c.u64() else {
                            return Ok(None);
                        };
                        // Below 256 by the key's making.
                        let code = (key >> 16) as u8;
                        (coding.name(code), key & 0xFFFF)
                    }
                    None => {
                        let Some(name) = c.string()? else {
                            return Ok(None);
                        };
                        let Some(index) = c.u64() else {
                            return Ok(None);
                        };
                        (Some(name), index)
                    }
                };
                let (Some(events), Some(users), Some(lowest_bit)) = (c.u64(), c.u64(), c.u64())
                else {
                    return Ok(None);
                };
                let Some(name) = name else {
                    unknown = true;
                    return Ok(Some(()));
                };
                let name = match names.get_mut(name) {
                    Some(known) => known,
                    None => names.entry(name.to_vec()).or_default(),
                };
                name.events += events;
                name.users += users;
                // The hash's low bits pick the register; the lowest set bit of the
                // rest gives the value, and the highest such bit of a register is its
                // value. A rest of 0 (one hash in 2^50) leaves the register as it is.
                if index < REGISTERS && lowest_bit != 0 {
                    name.registers.push((index, register_value(lowest_bit)));
                }
                Ok(Some(()))
            })
            .await?;
        Ok((!unknown).then(|| {
            names
                .into_iter()
                .map(|(bytes, name)| Name { bytes, ..name })
                .collect()
        }))
    }

    /// Steps 1 and 3 at once: the day's names, and step 3's answer, which the
    /// server holds until it is read. `None` when step 1 met a name that step 0 did
    /// not list: events still arriving, or a server that answered step 0 short.
    async fn names_and_metadata(
        &self,
        window: &DayWindow,
        coding: Option<&Coding>,
        action: &str,
    ) -> Result<Option<(Vec<Name>, Response<Incoming>)>, StoreError> {
        let (names, metadata) = tokio::join!(
            self.names(window, coding, action),
            self.transport
                .send(metadata_sql(&self.table, window, coding), action)
        );
        let (names, metadata) = (names?, metadata?);
        Ok(names.map(|names| (names, metadata)))
    }

    /// Step 2: the hashes of the users of the kept names with at most
    /// [`EXPLICIT_MAX`] users, as their sketches.
    async fn explicit_sketches(
        &self,
        window: &DayWindow,
        names: &[Name],
        action: &str,
    ) -> Result<HashMap<Vec<u8>, Sketch>, StoreError> {
        let few: Vec<&Name> = names
            .iter()
            .filter(|n| n.is_kept() && n.users > 0 && n.users <= EXPLICIT_MAX as u64)
            .collect();
        let mut sketches: HashMap<Vec<u8>, Sketch> = HashMap::new();
        let few: Vec<&[u8]> = few.iter().map(|name| name.bytes.as_slice()).collect();
        for list in in_lists(&few) {
            let sql = format!(
                "SELECT event, groupUniqArray({HASH}) FROM {} \
                 WHERE {} AND ifNull(user_id, '') != '' AND event IN ({list}) GROUP BY event",
                self.table.quoted(),
                window_filter(window),
            );
            self.transport
                .rows(&sql, action, |c| {
                    let Some(name) = c.string()? else {
                        return Ok(None);
                    };
                    let Some(hashes) = c.u64_array()? else {
                        return Ok(None);
                    };
                    let sketch = sketches.entry(name.to_vec()).or_default();
                    for hash in hashes {
                        sketch.add_hash(hash as i64);
                    }
                    Ok(Some(()))
                })
                .await?;
        }
        Ok(sketches)
    }

    /// Step 3's answer into `sink`, whose names are counted already.
    async fn read_metadata<K: MergeableSink>(
        &self,
        answer: Response<Incoming>,
        coding: Option<&Coding>,
        sink: &mut K,
        action: &str,
    ) -> Result<(), StoreError> {
        let mut object = String::new();
        self.transport
            .read(answer, action, |c| {
                let (name, item) = match coding {
                    Some(coding) => {
                        let Some(coded) = c.string()? else {
                            return Ok(None);
                        };
                        let Some((&code, item)) = coded.split_first() else {
                            return Err(Malformed("an item without its name's code"));
                        };
                        // A name step 1 did not count (an event that came after it
                        // read) has no row to count its metadata in, as uncoded.
                        let Some(name) = coding.name(code) else {
                            return Ok(Some(()));
                        };
                        (name, item)
                    }
                    None => {
                        let Some(name) = c.string()? else {
                            return Ok(None);
                        };
                        let Some(item) = c.string()? else {
                            return Ok(None);
                        };
                        (name, item)
                    }
                };
                let Some(times) = c.u64() else {
                    return Ok(None);
                };
                let name = lenient_utf8(name);
                match item.split_first() {
                    Some((&WHOLE_TEXT, text)) => {
                        sink.push_meta(&name, Some(&lenient_utf8(text)), times);
                    }
                    _ => {
                        object.clear();
                        object.push('{');
                        object.push_str(&lenient_utf8(item));
                        object.push('}');
                        sink.push_meta(&name, Some(&object), times);
                    }
                }
                Ok(Some(()))
            })
            .await
    }
}

/// An event name of the day, as the server counted it.
#[derive(Default)]
struct Name {
    bytes: Vec<u8>,
    events: u64,
    users: u64,
    /// `(register, value)` of the name's users, for a sketch of registers.
    registers: Vec<(u64, u8)>,
}

impl Name {
    /// Whether the job keeps a row for the name (the others are bad events).
    fn is_kept(&self) -> bool {
        !self.bytes.is_empty() && self.bytes.len() <= MAX_EVENT_NAME_BYTES
    }
}

impl ClickHouseSource {
    /// Steps 1 and 2 alone (no codes, no metadata): the names of `window` with their
    /// events, distinct users and sketches, into `sink`. For a day's hours.
    pub(super) async fn scan_counts<K: EventSink>(
        &self,
        window: &DayWindow,
        sink: &mut K,
    ) -> Result<(), StoreError> {
        let action = format!(
            "reading the events of {} from {} to {} from {} in ClickHouse",
            window.date, window.start, window.end, self.table
        );
        let mut names = self.names(window, None, &action).await?.unwrap_or_default();
        self.push_names(window, &mut names, &action, |counted| {
            sink.push_counted(counted);
        })
        .await
    }

    /// Step 2 for `names`, then each name to `take` with its sketch.
    async fn push_names(
        &self,
        window: &DayWindow,
        names: &mut [Name],
        action: &str,
        mut take: impl FnMut(CountedEvents<'_>),
    ) -> Result<(), StoreError> {
        let explicit = self.explicit_sketches(window, names, action).await?;
        let empty = Sketch::new();
        for name in names.iter_mut() {
            let registers;
            let sketch = match explicit.get(&name.bytes) {
                Some(sketch) => sketch,
                None if name.users > EXPLICIT_MAX as u64 && name.is_kept() => {
                    registers = Sketch::from_registers(std::mem::take(&mut name.registers))
                        .map_err(|e| StoreError::Source {
                            action: action.to_owned(),
                            message: e.to_string(),
                        })?;
                    &registers
                }
                None => &empty,
            };
            take(CountedEvents {
                event: Some(&lenient_utf8(&name.bytes)),
                events: name.events,
                unique_users: name.users,
                sketch,
            });
        }
        Ok(())
    }

    pub(super) async fn scan_window<K: MergeableSink>(
        &self,
        window: &DayWindow,
        sink: &mut K,
    ) -> Result<(), StoreError> {
        let action = format!(
            "reading the events of {} from {} in ClickHouse",
            window.date, self.table
        );
        // The steps are separate queries: a day still receiving events could be
        // seen differently by each. Days are rolled up once they are over.
        // The metadata is computed meanwhile; the server holds its answer
        // (`wait_end_of_query`) until the names are counted, which must come first.
        let mut coding = self.coding(window, &action).await?;
        let (mut names, metadata) = loop {
            match self
                .names_and_metadata(window, coding.as_ref(), &action)
                .await?
            {
                Some(read) => break read,
                // Again by the names themselves, which step 1 always counts: the
                // second time round ends the loop.
                None => coding = None,
            }
        };
        let coding = coding.as_ref();
        self.push_names(window, &mut names, &action, |counted| {
            sink.push_counted(counted);
        })
        .await?;
        self.read_metadata(metadata, coding, sink, &action).await
    }

    pub(super) async fn id_watermark(&self) -> Result<Option<i64>, StoreError> {
        let action = super::watermark_action(&self.table);
        let sql = format!(
            "SELECT toUInt64(max(id)), count() FROM {}",
            self.table.quoted()
        );
        let mut answer = None;
        self.transport
            .rows(&sql, &action, |c| {
                let (Some(max), Some(count)) = (c.u64(), c.u64()) else {
                    return Ok(None);
                };
                answer = Some((max, count));
                Ok(Some(()))
            })
            .await?;
        match answer {
            Some((_, 0)) | None => Ok(None),
            Some((max, _)) => i64::try_from(max)
                .map(Some)
                .map_err(|_| StoreError::Source {
                    action,
                    message: format!(
                        "the highest id, {max}, is past the largest id a watermark holds"
                    ),
                }),
        }
    }

    pub(super) async fn hours_with_ids(
        &self,
        after: i64,
        through: i64,
    ) -> Result<Vec<Timestamp>, StoreError> {
        let action = super::hours_action(&self.table);
        let sql = format!(
            "SELECT DISTINCT toUInt64(intDiv(toUnixTimestamp(created_at), 3600) * 3600) AS hour \
             FROM {} WHERE id > {after} AND id <= {through} ORDER BY hour",
            self.table.quoted()
        );
        let mut hours = Vec::new();
        self.transport
            .rows(&sql, &action, |c| {
                let Some(hour) = c.u64() else {
                    return Ok(None);
                };
                hours.push(hour);
                Ok(Some(()))
            })
            .await?;
        hours
            .into_iter()
            .map(|hour| {
                i64::try_from(hour)
                    .ok()
                    .and_then(|s| Timestamp::from_second(s).ok())
                    .ok_or_else(|| StoreError::Source {
                        action: action.clone(),
                        message: format!("an hour out of range: {hour}"),
                    })
            })
            .collect()
    }
}
