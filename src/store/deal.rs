//! Spreading a day's rows over aggregating threads, for the sources that hand rows
//! over one at a time (SQLite's scan, PostgreSQL's `COPY`).
//!
//! The reading thread copies rows into batches (one buffer per few thousand rows)
//! and deals them to aggregating threads, one on each other core (up to four). When
//! an aggregator falls behind and its queue is full, the reader aggregates that
//! batch itself instead of waiting, so it never sits idle while there is work. Each
//! thread fills a part of the sink, and the parts are merged at the end; no value
//! is copied or freed one by one across threads.

use std::hash::BuildHasher as _;
use std::ops::Range;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use super::rows::{lenient_utf8, user_id_text};
use crate::model::{CountedEvents, EventSink, MergeableSink, SourceEvent};

/// Rows per batch: large enough that handing a batch over costs nothing per row.
pub(super) const BATCH_ROWS: usize = 4096;
/// Text per batch at most, bar its last row: rows with huge values go out one or a
/// few at a time, so that what a day's read holds stays near its largest row.
pub(super) const BATCH_BYTES: usize = 1024 * 1024;
/// Batches in flight per aggregating thread: bounds the memory of a day being read.
const BATCHES_IN_FLIGHT: usize = 4;
/// Most threads that aggregate one window beside the reader.
const MAX_AGGREGATORS: usize = 4;

/// The three source columns of a batch of rows, as ranges into one text buffer.
/// The reader checks (and if need be repairs) the UTF-8 as it copies, so that the
/// aggregator, the busier side, does not have to.
#[derive(Debug, Default)]
pub(super) struct RowBatch {
    text: String,
    pub(super) rows: Vec<(Fields, Option<u8>)>,
}

/// A row's name, user and metadata, as ranges of a batch's text.
type Fields = [Option<Range<u32>>; 3];

impl RowBatch {
    fn push_row(&mut self, fields: [Option<&[u8]>; 3], hour: Option<u8>) {
        let [event, user_id, meta] = fields;
        let ranges = [
            event.map(|bytes| self.push_text(&lenient_utf8(bytes))),
            user_id.map(|bytes| self.push_text(&user_id_text(bytes))),
            meta.map(|bytes| self.push_text(&lenient_utf8(bytes))),
        ];
        self.rows.push((ranges, hour));
    }

    fn push_text(&mut self, text: &str) -> Range<u32> {
        let start = self.text.len() as u32;
        self.text.push_str(text);
        start..self.text.len() as u32
    }

    /// Pushes every row of the batch into `sink`.
    pub(super) fn drain_into(&self, sink: &mut (dyn EventSink + Send)) {
        // Ranges were taken at string lengths after whole pushes: on char boundaries.
        let text = |range: &Option<Range<u32>>| {
            range
                .as_ref()
                .and_then(|r| self.text.get(r.start as usize..r.end as usize))
        };
        for ([event, user_id, meta], hour) in &self.rows {
            sink.push(SourceEvent {
                event: text(event),
                user_id: text(user_id),
                meta: text(meta),
                hour: *hour,
            });
        }
    }
}

/// When a dealer starts dealing rows out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Spread {
    /// From the first row: the source hands rows over faster than one thread
    /// aggregates them (SQLite's scan).
    Always,
    /// Once its own part has spilled: until then one thread keeps up with the
    /// source (PostgreSQL's `COPY`, paced by the server), and a second part would
    /// hold a second copy of the day's users.
    OnceSpilled,
}

/// Deals rows out in batches to aggregating threads, and aggregates into a part of
/// its own the batches they have no room for.
#[derive(Debug)]
pub(super) struct Dealer<K> {
    own: K,
    /// Whether rows go out yet, or all stay here.
    dealing: bool,
    batches: Vec<RowBatch>,
    senders: Vec<mpsc::Sender<RowBatch>>,
    users: foldhash::fast::FixedState,
    anonymous: usize,
    /// Rows kept here before dealing started.
    kept: usize,
    /// The aggregators have gone (their tasks were cancelled): everything is
    /// aggregated here from then on.
    alone: bool,
}

impl<K: MergeableSink> Dealer<K> {
    /// A dealer over parts of `sink`, one on each core, and the aggregating tasks
    /// (on the blocking threads), each giving its part once the dealer is finished
    /// or dropped.
    pub(super) fn start(sink: &K, spread: Spread) -> (Self, Vec<tokio::task::JoinHandle<K>>) {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let aggregators = (cores - 1).min(MAX_AGGREGATORS);
        let (senders, parts): (Vec<_>, Vec<_>) = (0..aggregators)
            .map(|_| {
                let (tx, mut rx) = mpsc::channel::<RowBatch>(BATCHES_IN_FLIGHT);
                let mut part = sink.part(aggregators + 1);
                let part = tokio::task::spawn_blocking(move || {
                    while let Some(batch) = rx.blocking_recv() {
                        batch.drain_into(&mut part);
                    }
                    part
                });
                (tx, part)
            })
            .unzip();
        // Until it deals, the dealer's own part is the only one filling: it has the
        // whole share, and gives all but its part of it up when dealing starts.
        let own = match spread {
            Spread::Always => sink.part(aggregators + 1),
            Spread::OnceSpilled => sink.part(1),
        };
        (Self::new(own, senders, spread), parts)
    }

    /// A dealer that sends batches to `senders` and aggregates the rest into `own`.
    pub(super) fn new(own: K, senders: Vec<mpsc::Sender<RowBatch>>, spread: Spread) -> Self {
        Self {
            own,
            dealing: spread == Spread::Always,
            batches: (0..senders.len().max(1))
                .map(|_| RowBatch::default())
                .collect(),
            senders,
            // Rows are dealt out by user, so that each aggregator sees only its own
            // users and keeps a table of them a fraction of the size: fewer cache
            // misses per row.
            users: foldhash::fast::FixedState::with_seed(0),
            anonymous: 0,
            kept: 0,
            alone: false,
        }
    }

    /// Deals one row of (event, user id, meta) bytes, repaired to UTF-8 if need be.
    /// Returns whether a batch went out or was aggregated (a moment to check
    /// whether to go on).
    pub(super) fn deal_bytes(&mut self, fields: [Option<&[u8]>; 3], hour: Option<u8>) -> bool {
        if !self.dealing {
            let [event, user_id, meta] = fields;
            let (event, meta) = (event.map(lenient_utf8), meta.map(lenient_utf8));
            let user_id = user_id.map(user_id_text);
            return self.keep(SourceEvent {
                event: event.as_deref(),
                user_id: user_id.as_deref(),
                meta: meta.as_deref(),
                hour,
            });
        }
        let shard = self.shard(fields[1]);
        self.batches[shard].push_row(fields, hour);
        self.hand_over(shard)
    }

    /// Deals one row already in UTF-8.
    fn deal_text(&mut self, event: SourceEvent<'_>) -> bool {
        if !self.dealing {
            return self.keep(event);
        }
        let shard = self.shard(event.user_id.map(str::as_bytes));
        let batch = &mut self.batches[shard];
        let ranges = [event.event, event.user_id, event.meta]
            .map(|field| field.map(|text| batch.push_text(text)));
        batch.rows.push((ranges, event.hour));
        self.hand_over(shard)
    }

    /// Aggregates a row here, before dealing has started; every [`BATCH_ROWS`]
    /// rows, starts dealing if the part here has spilled. Returns true then, as
    /// [`Dealer::hand_over`] does for a batch.
    fn keep(&mut self, event: SourceEvent<'_>) -> bool {
        self.own.push(event);
        self.kept = self.kept.wrapping_add(1);
        if !self.kept.is_multiple_of(BATCH_ROWS) {
            return false;
        }
        if self.own.spilled() && !self.senders.is_empty() {
            self.dealing = true;
            self.own.share_with(self.senders.len() + 1);
        }
        true
    }

    fn shard(&mut self, user: Option<&[u8]>) -> usize {
        match user {
            _ if self.batches.len() == 1 => 0,
            Some(user) if !user.is_empty() => {
                self.users.hash_one(user) as usize % self.batches.len()
            }
            _ => {
                self.anonymous = self.anonymous.wrapping_add(1);
                self.anonymous % self.batches.len()
            }
        }
    }

    /// Sends the shard's batch on once it is full; aggregates it here if its
    /// aggregator's queue is full too.
    fn hand_over(&mut self, shard: usize) -> bool {
        let batch = &mut self.batches[shard];
        if batch.rows.len() < BATCH_ROWS && batch.text.len() < BATCH_BYTES {
            return false;
        }
        let next = RowBatch {
            // A batch that held a huge row does not pass its size on.
            text: String::with_capacity(batch.text.capacity().min(BATCH_BYTES)),
            rows: Vec::with_capacity(BATCH_ROWS),
        };
        let full = std::mem::replace(batch, next);
        match self.senders.get(shard) {
            Some(tx) if !self.alone => match tx.try_send(full) {
                Ok(()) => {}
                Err(TrySendError::Full(full)) => full.drain_into(&mut self.own),
                Err(TrySendError::Closed(full)) => {
                    self.alone = true;
                    full.drain_into(&mut self.own);
                }
            },
            // A single core, or no aggregators left: the reader does it all.
            _ => full.drain_into(&mut self.own),
        }
        true
    }

    /// Counts a row whose `created_at` is no instant, in the dealer's own part.
    pub(super) fn skip_invalid_created_at(&mut self) {
        self.own.push_invalid_created_at(1);
    }

    /// Whether the aggregators have gone: the run was cancelled.
    pub(super) fn deserted(&self) -> bool {
        self.alone
    }

    /// Aggregates the rows not yet handed over (few, and the reader has nothing
    /// else to do), hangs up on the aggregators, and gives the dealer's own part.
    pub(super) fn finish(mut self) -> K {
        for batch in std::mem::take(&mut self.batches) {
            batch.drain_into(&mut self.own);
        }
        self.own
    }
}

/// Events a source pushes go out in batches; counted events and their metadata
/// (which come a few per name) are taken here.
impl<K: MergeableSink> EventSink for Dealer<K> {
    fn push(&mut self, event: SourceEvent<'_>) {
        self.deal_text(event);
    }

    fn push_counted(&mut self, counted: CountedEvents<'_>) {
        self.own.push_counted(counted);
    }

    fn push_meta(&mut self, event: &str, meta: Option<&str>, times: u64) {
        self.own.push_meta(event, meta, times);
    }

    fn push_invalid_created_at(&mut self, times: u64) {
        self.own.push_invalid_created_at(times);
    }
}
