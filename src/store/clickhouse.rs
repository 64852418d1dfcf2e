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

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue, USER_AGENT};
use hyper::{Request, Response, StatusCode};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jiff::Timestamp;
use url::Url;

use super::row_binary::{Columns, Malformed, RowBuffer};
use super::rows::lenient_utf8;
use super::{EventSource, StoreError, TableName};
use crate::model::hll::{EXPLICIT_MAX, LOG2M, Sketch, register_value};
use crate::model::{CountedEvents, DayWindow, MAX_EVENT_NAME_BYTES, MergeableSink};

/// How long to wait for the server to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Names put in one query's `IN` list: well under the server's default
/// `max_query_size` of 256 KiB.
const NAMES_PER_QUERY_BYTES: usize = 64 * 1024;

/// A flat JSON object that splitting at `,` and then at the first `:` cuts into
/// its keys and values exactly: string keys and values of printable ASCII without
/// `"`, `\`, `,` or `:`; `true`, `false`, `null`; numbers of at most 18 digits
/// before and 17 after the point. Anything else (escapes, spaces, nesting,
/// exponents, other bytes) goes the general way, as a whole text.
const FLAT: &str = concat!(
    r#"^\{(?:"[ !#-+\x2D-9;-\[\]-~]*":(?:"[ !#-+\x2D-9;-\[\]-~]*"|true|false|null|-?(?:0|[1-9][0-9]{0,17})(?:\.[0-9]{1,17})?)"#,
    r#"(?:,"[ !#-+\x2D-9;-\[\]-~]*":(?:"[ !#-+\x2D-9;-\[\]-~]*"|true|false|null|-?(?:0|[1-9][0-9]{0,17})(?:\.[0-9]{1,17})?))*)?\}$"#
);

/// Names coded in one byte each: codes 2 to 255; 1 is a name that was not among the
/// day's names (`transform`'s default), and 0 cannot be a byte of a string
/// (`reinterpretAsString` drops it).
const MAX_CODED_NAMES: usize = 254;

/// The code of a name that was not among the day's names.
const UNKNOWN_NAME: u8 = 1;

/// A user id's 64-bit hash, as `hll_hash_text` computes it.
const HASH: &str = "reinterpretAsUInt64(murmurHash3_128(ifNull(user_id, '')))";

/// The registers of a sketch; step 1's rows of anonymous events have this index.
const REGISTERS: u64 = 1 << LOG2M;

/// What step 3 puts before a whole metadata text, which a pair (`"key":value`)
/// never starts with.
const WHOLE_TEXT: u8 = b'*';

/// The `User-Agent` of every request.
const USER_AGENT_VALUE: &str = concat!("veris-jobs/", env!("CARGO_PKG_VERSION"));

/// How long a health check waits for the server.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Raw events in a ClickHouse table, read over HTTP.
#[derive(Debug, Clone)]
pub struct ClickHouseSource {
    client: HttpClient,
    /// `http(s)://host:port/?database=…&wait_end_of_query=1` and the URL's own
    /// settings.
    endpoint: Url,
    user: String,
    password: Option<String>,
    table: TableName,
    /// The URL without its password, for messages.
    target: String,
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
        let target = super::redact_url(url);
        let invalid = |why: String| StoreError::InvalidSourceUrl(format!("'{target}': {why}"));
        let parsed = Url::parse(url).map_err(|e| invalid(e.to_string()))?;
        let (scheme, default_port) = match parsed.scheme() {
            "clickhouse" => ("http", 8123),
            "clickhouses" => ("https", 8443),
            other => {
                return Err(invalid(format!(
                    "the scheme is {other}://, not clickhouse:// or clickhouses://"
                )));
            }
        };
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| invalid("it names no host".into()))?;
        let database = parsed.path().trim_start_matches('/');
        if database.is_empty() || database.contains('/') {
            return Err(invalid(
                "it names no database (clickhouse://host:8123/DATABASE)".into(),
            ));
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| invalid("its user or password is not UTF-8 once decoded".into()))
        };
        let user = match parsed.username() {
            "" => "default".to_owned(),
            user => decode(user)?,
        };
        let password = parsed.password().map(decode).transpose()?;
        let database = decode(database)?;
        let port = parsed.port().unwrap_or(default_port);
        let mut endpoint = Url::parse(&format!("{scheme}://{host}:{port}/"))
            .map_err(|e| invalid(e.to_string()))?;
        endpoint
            .query_pairs_mut()
            .extend_pairs(parsed.query_pairs())
            .append_pair("database", &database)
            .append_pair("wait_end_of_query", "1");
        let client = http_client(scheme == "https").map_err(|e| {
            invalid(format!(
                "HTTPS needs the system's trusted certificates, which cannot be read: {e}"
            ))
        })?;
        Ok(Self {
            client,
            endpoint,
            user,
            password,
            table: table.clone(),
            target,
        })
    }

    /// Whether the server answers now.
    pub async fn ping(&self) -> bool {
        let mut url = self.endpoint.clone();
        url.set_path("/ping");
        url.set_query(None);
        let Ok(request) = Request::get(url.as_str()).body(Full::default()) else {
            return false;
        };
        let answer = tokio::time::timeout(PING_TIMEOUT, self.client.request(request)).await;
        matches!(answer, Ok(Ok(response)) if response.status().is_success())
    }

    /// Sends `sql` and returns the response once the server says it succeeded.
    async fn send(&self, sql: String, action: &str) -> Result<Response<Incoming>, StoreError> {
        let header = |value: &str| {
            HeaderValue::from_str(value).map_err(|_| {
                StoreError::InvalidSourceUrl(format!(
                    "'{}': its user or password holds characters an HTTP header cannot carry",
                    self.target
                ))
            })
        };
        let mut request = Request::post(self.endpoint.as_str())
            .header(CONTENT_TYPE, "text/plain; charset=utf-8")
            // Names the job's queries in the server's `system.query_log`.
            .header(USER_AGENT, USER_AGENT_VALUE)
            .header("X-ClickHouse-User", header(&self.user)?);
        if let Some(password) = &self.password {
            request = request.header("X-ClickHouse-Key", header(password)?);
        }
        let request = request
            .body(Full::new(Bytes::from(sql)))
            .map_err(|e| StoreError::InvalidSourceUrl(format!("'{}': {e}", self.target)))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        if status == StatusCode::OK {
            return Ok(response);
        }
        // An error is a line or two of text; more is not worth reading.
        let text = match response.into_body().collect().await {
            Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
            Err(_) => String::new(),
        };
        Err(StoreError::Source {
            action: action.to_owned(),
            message: server_message(status, &text),
        })
    }

    /// Runs `sql` (`FORMAT RowBinary` is added) and hands each row to `row`, as
    /// the answer streams in.
    async fn rows(
        &self,
        sql: &str,
        action: &str,
        row: impl FnMut(&mut Columns<'_>) -> Result<Option<()>, Malformed>,
    ) -> Result<(), StoreError> {
        let response = self.send(format!("{sql} FORMAT RowBinary"), action).await?;
        self.read(response, action, row).await
    }

    /// Hands each row of a `RowBinary` answer to `row`, as it streams in.
    async fn read(
        &self,
        mut response: Response<Incoming>,
        action: &str,
        mut row: impl FnMut(&mut Columns<'_>) -> Result<Option<()>, Malformed>,
    ) -> Result<(), StoreError> {
        let malformed = |e: Malformed| StoreError::Source {
            action: action.to_owned(),
            message: e.to_string(),
        };
        let mut buffer = RowBuffer::default();
        let body = response.body_mut();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.unreachable(&e))?;
            if let Some(chunk) = frame.data_ref() {
                buffer.feed(chunk);
                buffer.rows(&mut row).map_err(malformed)?;
            }
        }
        if buffer.is_drained() {
            Ok(())
        } else {
            Err(malformed(Malformed("the answer ends inside a row")))
        }
    }

    fn unreachable(&self, error: &(dyn std::error::Error + 'static)) -> StoreError {
        StoreError::SourceUnreachable {
            target: self.target.clone(),
            message: describe(error),
        }
    }

    /// The filter of a day's events.
    fn window(window: &DayWindow) -> String {
        // Day boundaries fall on whole seconds (zone offsets are whole seconds);
        // `toDateTime` compares with `DateTime` and `DateTime64` columns alike.
        format!(
            "created_at >= toDateTime({}) AND created_at < toDateTime({})",
            window.start.as_second(),
            window.end.as_second()
        )
    }

    /// Step 0: the day's names (cut as step 1 keys them) with their codes, or
    /// `None` when there are too many to code.
    async fn coding(&self, window: &DayWindow, action: &str) -> Result<Option<Coding>, StoreError> {
        let sql = format!(
            "SELECT DISTINCT {name} FROM {table} WHERE {window} LIMIT {limit}",
            name = cut_name(),
            table = self.table.quoted(),
            window = Self::window(window),
            limit = MAX_CODED_NAMES + 1,
        );
        let mut names = Vec::new();
        self.rows(&sql, action, |c| {
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
            window = Self::window(window),
            group = if coding.is_some() {
                "key"
            } else {
                "name, index"
            },
        );
        let mut names: HashMap<Vec<u8>, Name> = HashMap::new();
        let mut unknown = false;
        self.rows(&sql, action, |c| {
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
            let (Some(events), Some(users), Some(lowest_bit)) = (c.u64(), c.u64(), c.u64()) else {
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
            self.send(self.metadata_sql(window, coding), action)
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
        for list in in_lists(&few) {
            let sql = format!(
                "SELECT event, groupUniqArray({HASH}) FROM {} \
                 WHERE {} AND ifNull(user_id, '') != '' AND event IN ({list}) GROUP BY event",
                self.table.quoted(),
                Self::window(window),
            );
            self.rows(&sql, action, |c| {
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

    /// Step 3: the metadata, as flat objects' pairs and as whole texts.
    fn metadata_sql(&self, window: &DayWindow, coding: Option<&Coding>) -> String {
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
            table = self.table.quoted(),
            window = Self::window(window),
        )
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
        self.read(answer, action, |c| {
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

impl EventSource for ClickHouseSource {
    async fn scan_window<K: MergeableSink>(
        &self,
        window: &DayWindow,
        sink: &mut K,
    ) -> Result<(), StoreError> {
        let action = format!(
            "reading the events of {} from {} at {}",
            window.date, self.table, self.target
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
        let explicit = self.explicit_sketches(window, &names, &action).await?;
        let empty = Sketch::new();
        for name in &mut names {
            let registers;
            let sketch = match explicit.get(&name.bytes) {
                Some(sketch) => sketch,
                None if name.users > EXPLICIT_MAX as u64 && name.is_kept() => {
                    registers = Sketch::from_registers(std::mem::take(&mut name.registers))
                        .map_err(|e| StoreError::Source {
                            action: action.clone(),
                            message: e.to_string(),
                        })?;
                    &registers
                }
                None => &empty,
            };
            sink.push_counted(CountedEvents {
                event: Some(&lenient_utf8(&name.bytes)),
                events: name.events,
                unique_users: name.users,
                sketch,
            });
        }
        self.read_metadata(metadata, coding, sink, &action).await
    }

    async fn id_watermark(&self) -> Result<Option<i64>, StoreError> {
        let action = super::watermark_action(&self.table);
        let sql = format!(
            "SELECT toUInt64(max(id)), count() FROM {}",
            self.table.quoted()
        );
        let mut answer = None;
        self.rows(&sql, &action, |c| {
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

    async fn hours_with_ids(&self, after: i64, through: i64) -> Result<Vec<Timestamp>, StoreError> {
        let action = super::hours_action(&self.table);
        let sql = format!(
            "SELECT DISTINCT toUInt64(intDiv(toUnixTimestamp(created_at), 3600) * 3600) AS hour \
             FROM {} WHERE id > {after} AND id <= {through} ORDER BY hour",
            self.table.quoted()
        );
        let mut hours = Vec::new();
        self.rows(&sql, &action, |c| {
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

/// A name as step 1 keys it: cut one byte past the limit when too long.
fn cut_name() -> String {
    format!(
        "if(length(event) > {max}, substring(event, 1, {cut}), event)",
        max = MAX_EVENT_NAME_BYTES,
        cut = MAX_EVENT_NAME_BYTES + 1,
    )
}

/// The day's names with a one-byte code each, which steps 1 and 3 group by.
struct Coding {
    /// The name of code `c` at `c - 2`.
    names: Vec<Vec<u8>>,
    /// `transform`'s arrays: the names, then their codes.
    arrays: String,
}

impl Coding {
    /// The coding of `names`, unless there are too many for a byte or for a query,
    /// or none (`transform` takes no empty arrays).
    fn new(names: Vec<Vec<u8>>) -> Option<Self> {
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
    fn code(&self, expression: &str) -> String {
        format!(
            "toUInt8(transform({expression}, {}, {UNKNOWN_NAME}))",
            self.arrays
        )
    }

    /// The name of `code`; `None` for a name that was not among the day's names.
    fn name(&self, code: u8) -> Option<&[u8]> {
        usize::from(code)
            .checked_sub(2)
            .and_then(|at| self.names.get(at))
            .map(Vec::as_slice)
    }
}

/// `names` as SQL string lists, each short enough for one query.
fn in_lists(names: &[&Name]) -> Vec<String> {
    let mut lists = Vec::new();
    let mut list = String::new();
    for name in names {
        if !list.is_empty() {
            list.push_str(", ");
        }
        list.push('\'');
        list.push_str(&sql_string(&name.bytes));
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

/// Bytes as the inside of a ClickHouse string literal: printable ASCII as it is
/// (but `'` and `\`), everything else as `\xHH`, so any bytes match exactly.
fn sql_string(bytes: &[u8]) -> String {
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

/// The server's error in a line: ClickHouse answers `Code: N, e.displayText() =
/// DB::Exception: …, e.what() = …`.
fn server_message(status: StatusCode, text: &str) -> String {
    let text = text.trim();
    let text = text
        .split_once(", e.what() = ")
        .map_or(text, |(message, _)| message);
    let text = text.replace("e.displayText() = DB::Exception: ", "");
    if text.is_empty() {
        format!("ClickHouse answered {status}")
    } else {
        format!("ClickHouse answered {status}: {text}")
    }
}

/// The HTTP client: plain HTTP, and HTTPS trusting the system's certificates
/// (which are read only when `https` is asked for, so that plain HTTP works on a
/// system without any).
fn http_client(https: bool) -> std::io::Result<HttpClient> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = if https {
        HttpsConnectorBuilder::new().with_provider_and_native_roots(provider)?
    } else {
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        HttpsConnectorBuilder::new().with_tls_config(config)
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http.set_nodelay(true);
    let connector = tls.https_or_http().enable_http1().wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// A transport error with its causes, which the HTTP client keeps apart.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> TableName {
        TableName::parse("telemetry_events").unwrap()
    }

    #[test]
    fn urls_name_the_server_database_and_user() {
        let source = ClickHouseSource::new(
            "clickhouse://reader:p%40ss@ch.internal/analytics?max_threads=4",
            &table(),
        )
        .unwrap();
        assert_eq!(
            source.endpoint.as_str(),
            "http://ch.internal:8123/?max_threads=4&database=analytics&wait_end_of_query=1"
        );
        assert_eq!(source.user, "reader");
        assert_eq!(source.password.as_deref(), Some("p@ss"));
        assert_eq!(
            source.target,
            "clickhouse://reader:***@ch.internal/analytics?max_threads=4"
        );
        let tls = ClickHouseSource::new("clickhouses://ch:9440/db", &table()).unwrap();
        assert_eq!(
            tls.endpoint.as_str(),
            "https://ch:9440/?database=db&wait_end_of_query=1"
        );
        assert_eq!(tls.user, "default");
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, says) in [
            ("postgres://h/db", "not clickhouse:// or clickhouses://"),
            ("clickhouse://h:8123", "names no database"),
            ("clickhouse://h/a/b", "names no database"),
            ("clickhouse://:pw@/db", "empty host"),
            ("clickhouse://h:99999/db", "invalid port"),
        ] {
            let error = ClickHouseSource::new(url, &table())
                .unwrap_err()
                .to_string();
            assert!(error.contains(says), "{url}: {error}");
            assert!(!error.contains("pw@"), "{error}");
        }
    }

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

    #[test]
    fn server_errors_read_as_one_line() {
        assert_eq!(
            server_message(
                StatusCode::NOT_FOUND,
                "Code: 60, e.displayText() = DB::Exception: Table default.x doesn't exist., e.what() = DB::Exception\n"
            ),
            "ClickHouse answered 404 Not Found: Code: 60, Table default.x doesn't exist."
        );
    }
}
