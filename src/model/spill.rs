//! What an aggregate does when its tables outgrow its memory limit: it writes them
//! out as records, split by a hash into partitions, and at the end reads one
//! partition at a time, as databases do for large GROUP BYs.
//!
//! Three kinds of record go out: a user seen in a group (`UserRecord`), a metadata
//! key's counts in a group (`KeyRecord`), and a value's count under a key
//! (`ValueRecord`). Every record of one user, one key or one value lands in the same
//! partition, so each partition can be counted on its own and the counts added up:
//! distinct users per group are the sum over partitions, and a value among the top
//! K of its key is among the top K of its own partition. A partition still too big
//! for the limit is split again with another hash.
//!
//! The files come from a [`SpillSpace`]; this module only reads and writes through
//! `std::io`. Where the space puts them (scratch files, unlinked when created) is
//! up to it.

use std::fmt;
use std::hash::BuildHasher as _;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use super::CompactString;
use super::memory::{entries_bytes, heap_bytes};
use super::summary::{ExactSum, KeyStats, NumberStats};

/// Where an aggregate puts what does not fit in its memory.
pub trait SpillSpace: fmt::Debug + Send + Sync {
    /// A new, empty scratch file that no one else can see, removed when dropped.
    ///
    /// # Errors
    ///
    /// The I/O error that prevented it.
    fn scratch(&self) -> io::Result<Box<dyn Scratch>>;

    /// Where the files go, for messages.
    fn describe(&self) -> String;
}

/// A scratch file: written, then read back from the start.
pub trait Scratch: Read + Write + Seek + Send {}

impl<T: Read + Write + Seek + Send> Scratch for T {}

/// How much memory an aggregate may hold, and where it spills the rest.
#[derive(Debug, Clone)]
pub struct MemoryLimit {
    /// The limit in bytes, for the whole of a day's aggregation.
    pub bytes: usize,
    /// Where state past the limit goes.
    pub space: Arc<dyn SpillSpace>,
}

/// A spill that failed (a full disk, say): the day cannot be finished.
#[derive(Debug, thiserror::Error)]
#[error("spilling the aggregation to {place} failed: {source}")]
pub struct SpillError {
    pub place: String,
    #[source]
    pub source: io::Error,
}

/// Pushes a table must have taken since the last spill before it is judged.
const PASS_MIN_PUSHES: u64 = 1024;
/// A table that did not pay passes on at least this many times the entries it
/// took, before it is tried again.
const PASS_SPANS: u64 = 8;

/// Whether a table of an aggregate that has spilled takes its entries, or passes
/// them straight on to the spill files.
///
/// Once a day spills, everything a table holds is written out and counted again
/// from the files: a table pays only for the entries it folds together. One that
/// folded fewer than a tenth of those it took since the last spill (trace ids,
/// device ids) passes the next ones on, as databases skip a partial aggregation
/// that does not reduce. It is tried again after a span of at least eight times
/// what it took, twice the last span when that did not pay either, so that a
/// day that changes is noticed and one that does not soon runs without the table.
/// The rows are the same either way: the partitions count what they read,
/// however often it was written.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct PassOn {
    /// Entries still to pass on.
    left: u64,
    /// The length of the last span passed on; 0 once the table paid.
    span: u64,
}

impl PassOn {
    /// Whether the next entry goes straight to the files (and counts it).
    pub(super) fn take(&mut self) -> bool {
        let passes = self.left > 0;
        self.left -= u64::from(passes);
        passes
    }

    pub(super) fn is_passing(self) -> bool {
        self.left > 0
    }

    /// Judges, at a spill, a table that took `pushes` entries since the last one
    /// and holds `distinct` of them.
    pub(super) fn judge(&mut self, pushes: u64, distinct: u64) {
        if self.is_passing() {
            // It took nothing since the last spill: nothing to judge by.
            return;
        }
        if pushes >= PASS_MIN_PUSHES && distinct.saturating_mul(10) >= pushes.saturating_mul(9) {
            self.span = pushes
                .saturating_mul(PASS_SPANS)
                .max(self.span.saturating_mul(2));
            self.left = self.span;
        } else {
            self.span = 0;
        }
    }
}

/// Partitions each spill splits records into.
const FANOUT: usize = 32;

/// Times a partition too big for memory is split again before it is read anyway
/// (its records then share a few keys, which collapse when read).
const MAX_SPLITS: u32 = 3;

/// What is done with the records of one partition.
pub(super) type EachPartition<'a, R> =
    dyn FnMut(&mut dyn Iterator<Item = io::Result<R>>) -> io::Result<()> + 'a;

/// What is made of the records of one partition, on any thread.
pub(super) type MapPartition<'a, R, T> =
    dyn Fn(&mut dyn Iterator<Item = io::Result<R>>) -> io::Result<T> + Sync + 'a;

/// A partition's file opened for reading, with the group numbers it needs mapped.
type OpenFile = (BufReader<Box<dyn Scratch>>, Option<Arc<Vec<u32>>>);

/// A record an aggregate writes to disk.
pub(super) trait Record: Sized {
    /// Bytes a table entry of this record takes when read back, beyond its strings.
    const ENTRY_BYTES: usize;
    /// Group numbers are rewritten when files move between aggregates.
    fn group_mut(&mut self) -> &mut u32;
    /// The hash that picks the partition: the same for records that must meet.
    fn hash(&self, seed: u64) -> u64;
    /// Bytes its strings take on the heap when read back.
    fn heap(&self) -> usize;
    fn write(&self, out: &mut impl Write) -> io::Result<()>;
    fn read(input: &mut impl BufRead) -> io::Result<Option<Self>>;
}

/// One of a group's users.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct UserRecord {
    pub(super) group: u32,
    pub(super) user: CompactString,
}

/// A metadata key's counts (all but its values) in a group.
#[derive(Debug, Clone)]
pub(super) struct KeyRecord {
    pub(super) group: u32,
    pub(super) key: CompactString,
    pub(super) stats: KeyStats,
}

/// How often a value occurred under a key in a group.
#[derive(Debug, Clone)]
pub(super) struct ValueRecord {
    pub(super) group: u32,
    pub(super) key: CompactString,
    pub(super) value: CompactString,
    pub(super) count: u64,
}

fn hasher(seed: u64) -> foldhash::fast::FixedState {
    foldhash::fast::FixedState::with_seed(seed)
}

impl Record for UserRecord {
    const ENTRY_BYTES: usize = std::mem::size_of::<(u32, CompactString)>();
    fn group_mut(&mut self) -> &mut u32 {
        &mut self.group
    }
    // By user alone: each user's groups are counted in one partition.
    fn hash(&self, seed: u64) -> u64 {
        hasher(seed).hash_one(self.user.as_bytes())
    }
    fn heap(&self) -> usize {
        heap_bytes(&self.user)
    }
    fn write(&self, out: &mut impl Write) -> io::Result<()> {
        write_u32(out, self.group)?;
        write_text(out, &self.user)
    }
    fn read(input: &mut impl BufRead) -> io::Result<Option<Self>> {
        let Some(group) = read_u32_or_end(input)? else {
            return Ok(None);
        };
        Ok(Some(Self {
            group,
            user: read_text(input)?,
        }))
    }
}

impl Record for KeyRecord {
    const ENTRY_BYTES: usize = std::mem::size_of::<((u32, CompactString), KeyStats)>();
    fn group_mut(&mut self) -> &mut u32 {
        &mut self.group
    }
    // By key alone, not group: group numbers change when files move between
    // aggregates, and all records of one (group, key) must meet in one partition.
    fn hash(&self, seed: u64) -> u64 {
        hasher(seed).hash_one(self.key.as_bytes())
    }
    fn heap(&self) -> usize {
        heap_bytes(&self.key)
            + self.stats.numbers.as_ref().map_or(0, |n| {
                let (large, small) = n.sum.parts();
                (large.len() + small.len()) * 8
            })
    }
    fn write(&self, out: &mut impl Write) -> io::Result<()> {
        write_u32(out, self.group)?;
        write_text(out, &self.key)?;
        write_u64(out, self.stats.n)?;
        write_u64(out, self.stats.value_total)?;
        match &self.stats.numbers {
            None => out.write_all(&[0]),
            Some(numbers) => {
                let (large, small) = numbers.sum.parts();
                out.write_all(&[1])?;
                write_f64(out, numbers.min)?;
                write_f64(out, numbers.max)?;
                for partials in [large, small] {
                    write_u32(out, len_u32(partials.len())?)?;
                    partials.iter().try_for_each(|p| write_f64(out, *p))?;
                }
                Ok(())
            }
        }
    }
    fn read(input: &mut impl BufRead) -> io::Result<Option<Self>> {
        let Some(group) = read_u32_or_end(input)? else {
            return Ok(None);
        };
        let key = read_text(input)?;
        let mut stats = KeyStats {
            n: read_u64(input)?,
            value_total: read_u64(input)?,
            ..KeyStats::default()
        };
        let mut flag = [0u8];
        input.read_exact(&mut flag)?;
        if flag[0] > 0 {
            let (min, max) = (read_f64(input)?, read_f64(input)?);
            let mut read_partials = || {
                let count = read_u32(input)? as usize;
                (0..count)
                    .map(|_| read_f64(input))
                    .collect::<io::Result<Vec<_>>>()
            };
            let large = read_partials()?;
            let small = read_partials()?;
            stats.numbers = Some(NumberStats {
                sum: ExactSum::from_parts(large, small),
                min,
                max,
            });
        }
        Ok(Some(Self { group, key, stats }))
    }
}

impl Record for ValueRecord {
    const ENTRY_BYTES: usize = std::mem::size_of::<((u32, CompactString), u64)>();
    fn group_mut(&mut self) -> &mut u32 {
        &mut self.group
    }
    // By key and value, not group (see `KeyRecord::hash`).
    fn hash(&self, seed: u64) -> u64 {
        hasher(seed).hash_one((self.key.as_bytes(), self.value.as_bytes()))
    }
    fn heap(&self) -> usize {
        heap_bytes(&self.value)
    }
    fn write(&self, out: &mut impl Write) -> io::Result<()> {
        write_u32(out, self.group)?;
        write_text(out, &self.key)?;
        write_text(out, &self.value)?;
        write_u64(out, self.count)
    }
    fn read(input: &mut impl BufRead) -> io::Result<Option<Self>> {
        let Some(group) = read_u32_or_end(input)? else {
            return Ok(None);
        };
        Ok(Some(Self {
            group,
            key: read_text(input)?,
            value: read_text(input)?,
            count: read_u64(input)?,
        }))
    }
}

/// One scratch file of a partition, with what reading it back will cost.
struct PartFile {
    file: BufWriter<Box<dyn Scratch>>,
    records: u64,
    heap: u64,
    /// The group numbers of the aggregate that owns the file now, indexed by those of
    /// the aggregate that wrote it; `None` when they are the same.
    groups: Option<Arc<Vec<u32>>>,
}

/// The records of one kind an aggregate has spilled, by partition.
pub(super) struct Partitions<R> {
    seed: u64,
    /// For each partition, the files holding its records: one per aggregate that
    /// wrote some, until merged.
    files: Vec<Vec<PartFile>>,
    /// Bytes written, for the report.
    pub(super) written: u64,
    record: std::marker::PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for Partitions<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Partitions")
            .field("seed", &self.seed)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl<R: Record> Partitions<R> {
    pub(super) fn new(seed: u64) -> Self {
        Self {
            seed,
            files: (0..FANOUT).map(|_| Vec::new()).collect(),
            written: 0,
            record: std::marker::PhantomData,
        }
    }

    /// Appends `record` to its partition, opening the partition's file if need be.
    pub(super) fn write(&mut self, space: &dyn SpillSpace, record: &R) -> io::Result<()> {
        let files = &mut self.files[(record.hash(self.seed) % FANOUT as u64) as usize];
        // Only the last file of a partition is this aggregate's own, still written to.
        if files.last().is_none_or(|f| f.groups.is_some()) {
            files.push(PartFile {
                file: BufWriter::with_capacity(16 * 1024, space.scratch()?),
                records: 0,
                heap: 0,
                groups: None,
            });
        }
        let part = files
            .last_mut()
            .expect("a file was just pushed if there was none");
        let mut counter = Counting {
            inner: &mut part.file,
            bytes: 0,
        };
        record.write(&mut counter)?;
        self.written += counter.bytes;
        part.records += 1;
        part.heap += record.heap() as u64;
        Ok(())
    }

    /// Takes in `other`'s files, whose group numbers `groups` maps to this
    /// aggregate's.
    pub(super) fn absorb(&mut self, other: Partitions<R>, groups: &Arc<Vec<u32>>) {
        self.written += other.written;
        for (mine, theirs) in self.files.iter_mut().zip(other.files) {
            for mut file in theirs {
                file.groups = Some(match &file.groups {
                    None => Arc::clone(groups),
                    Some(earlier) => {
                        Arc::new(earlier.iter().map(|&g| groups[g as usize]).collect())
                    }
                });
                // Kept before this aggregate's own file, which stays last.
                let at = mine
                    .len()
                    .saturating_sub(usize::from(mine.last().is_some_and(|f| f.groups.is_none())));
                mine.insert(at, file);
            }
        }
    }

    /// Reads back the partitions on up to `threads` threads at once, each with
    /// `budget / threads` bytes of tables, mapping each partition's records with
    /// `map` there; `reduce` takes the results on the calling thread, in no
    /// particular order. A partition whose records would take more than its thread's
    /// share is split again first.
    pub(super) fn map_partitions<T: Send>(
        self,
        budget: usize,
        space: &dyn SpillSpace,
        threads: usize,
        map: &MapPartition<'_, R, T>,
        reduce: &mut dyn FnMut(T),
    ) -> io::Result<()>
    where
        R: Send,
    {
        let threads = threads.clamp(1, FANOUT);
        let share = (budget / threads).max(1);
        let seed = self.seed;
        let work = std::sync::Mutex::new(self.files);
        let failed = std::sync::atomic::AtomicBool::new(false);
        let next = || {
            if failed.load(std::sync::atomic::Ordering::Relaxed) {
                return None;
            }
            // A worker that panicked poisons the lock; the scope re-raises its panic.
            let mut work = work.lock().ok()?;
            std::iter::from_fn(|| work.pop()).find(|files| !files.is_empty())
        };
        let (sent, results) = std::sync::mpsc::channel::<io::Result<T>>();
        let mut first_error = None;
        std::thread::scope(|scope| {
            for _ in 0..threads {
                let sent = sent.clone();
                let next = &next;
                scope.spawn(move || {
                    while let Some(files) = next() {
                        let one = Partitions::<R> {
                            seed,
                            files: vec![files],
                            written: 0,
                            record: std::marker::PhantomData,
                        };
                        let mut each = |records: &mut dyn Iterator<Item = io::Result<R>>| {
                            // The calling thread receives until every worker has
                            // finished: a send cannot fail.
                            let _ = sent.send(map(records));
                            Ok(())
                        };
                        if let Err(error) = one.for_each_at_depth(share, space, &mut each, 0) {
                            let _ = sent.send(Err(error));
                        }
                        release_freed_memory();
                    }
                });
            }
            drop(sent);
            for result in results {
                match result {
                    Ok(value) => reduce(value),
                    Err(error) => {
                        failed.store(true, std::sync::atomic::Ordering::Relaxed);
                        first_error.get_or_insert(error);
                    }
                }
            }
        });
        first_error.map_or(Ok(()), Err)
    }

    /// Reads back each partition in turn, calling `each` with an iterator over its
    /// records. A partition whose records would take more than `budget` bytes of
    /// tables is split again first.
    fn for_each_at_depth(
        self,
        budget: usize,
        space: &dyn SpillSpace,
        each: &mut EachPartition<'_, R>,
        depth: u32,
    ) -> io::Result<()> {
        let seed = self.seed;
        for files in self.files {
            if files.is_empty() {
                continue;
            }
            let records: u64 = files.iter().map(|f| f.records).sum();
            let heap: u64 = files.iter().map(|f| f.heap).sum();
            let needs = entries_bytes(records as usize, R::ENTRY_BYTES) + heap as usize;
            let mut reader = PartitionReader::open(files)?;
            if needs > budget && depth < MAX_SPLITS {
                let mut split = Partitions::new(
                    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(depth + 1),
                );
                for record in &mut reader {
                    split.write(space, &record?)?;
                }
                split.for_each_at_depth(budget, space, each, depth + 1)?;
            } else {
                each(&mut reader)?;
            }
        }
        Ok(())
    }
}

/// The records of one partition's files, read from the start, group numbers mapped.
struct PartitionReader<R> {
    files: std::vec::IntoIter<OpenFile>,
    current: Option<OpenFile>,
    /// Records not read yet, as the files were written: a size for the tables.
    left: u64,
    record: std::marker::PhantomData<fn() -> R>,
}

impl<R: Record> PartitionReader<R> {
    fn open(files: Vec<PartFile>) -> io::Result<Self> {
        let left = files.iter().map(|f| f.records).sum();
        let files = files
            .into_iter()
            .map(|part| {
                let mut file = part
                    .file
                    .into_inner()
                    .map_err(io::IntoInnerError::into_error)?;
                file.seek(SeekFrom::Start(0))?;
                Ok((BufReader::with_capacity(64 * 1024, file), part.groups))
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self {
            files: files.into_iter(),
            current: None,
            left,
            record: std::marker::PhantomData,
        })
    }
}

impl<R: Record> Iterator for PartitionReader<R> {
    type Item = io::Result<R>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.current.is_none() {
                self.current = Some(self.files.next()?);
            }
            let (file, groups) = self.current.as_mut()?;
            match R::read(file) {
                Ok(Some(mut record)) => {
                    if let Some(groups) = groups {
                        let group = record.group_mut();
                        *group = groups[*group as usize];
                    }
                    self.left = self.left.saturating_sub(1);
                    return Some(Ok(record));
                }
                Ok(None) => self.current = None,
                Err(error) => return Some(Err(error)),
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::try_from(self.left).unwrap_or(usize::MAX), None)
    }
}

/// A writer that counts the bytes through it.
struct Counting<'a, W> {
    inner: &'a mut W,
    bytes: u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn len_u32(len: usize) -> io::Result<u32> {
    u32::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a record field over 4 GiB"))
}

/// Integers go out as LEB128, seven bits a byte, low bits first: group numbers,
/// lengths and counts are mostly small, and a byte not written is a byte not read.
fn write_varint(out: &mut impl Write, mut n: u64) -> io::Result<()> {
    let mut bytes = [0u8; 10];
    let mut len = 0;
    while n >= 0x80 {
        bytes[len] = (n as u8) | 0x80;
        n >>= 7;
        len += 1;
    }
    bytes[len] = n as u8;
    out.write_all(&bytes[..=len])
}

fn write_u32(out: &mut impl Write, n: u32) -> io::Result<()> {
    write_varint(out, u64::from(n))
}

fn write_u64(out: &mut impl Write, n: u64) -> io::Result<()> {
    write_varint(out, n)
}

fn write_f64(out: &mut impl Write, x: f64) -> io::Result<()> {
    out.write_all(&x.to_bits().to_le_bytes())
}

fn write_text(out: &mut impl Write, text: &str) -> io::Result<()> {
    write_u32(out, len_u32(text.len())?)?;
    out.write_all(text.as_bytes())
}

/// An integer, or `None` at a clean end of the file (between records).
fn read_varint_or_end(input: &mut impl BufRead) -> io::Result<Option<u64>> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let Some(&byte) = input.fill_buf()?.first() else {
            return match shift {
                0 => Ok(None),
                _ => Err(io::ErrorKind::UnexpectedEof.into()),
            };
        };
        input.consume(1);
        n |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(Some(n));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "an integer of over 64 bits",
    ))
}

fn read_u32_or_end(input: &mut impl BufRead) -> io::Result<Option<u32>> {
    read_varint_or_end(input)?
        .map(|n| u32::try_from(n).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)))
        .transpose()
}

fn read_u32(input: &mut impl BufRead) -> io::Result<u32> {
    read_u32_or_end(input)?.ok_or_else(|| io::ErrorKind::UnexpectedEof.into())
}

fn read_u64(input: &mut impl BufRead) -> io::Result<u64> {
    read_varint_or_end(input)?.ok_or_else(|| io::ErrorKind::UnexpectedEof.into())
}

fn read_f64(input: &mut impl Read) -> io::Result<f64> {
    let mut bytes = [0u8; 8];
    input.read_exact(&mut bytes)?;
    Ok(f64::from_le_bytes(bytes))
}

fn read_text(input: &mut impl BufRead) -> io::Result<CompactString> {
    let len = read_u32(input)? as usize;
    // Written from a `str` by this module, so it is UTF-8 unless the file was damaged.
    let damaged = |e| io::Error::new(io::ErrorKind::InvalidData, e);
    // Most strings lie whole in the reader's buffer: taken from there, they cost
    // no copy and no allocation beyond the string's own, if it has one.
    if let Some(bytes) = input.fill_buf()?.get(..len) {
        let text = CompactString::from_utf8(bytes).map_err(damaged)?;
        input.consume(len);
        return Ok(text);
    }
    let mut bytes = vec![0u8; len];
    input.read_exact(&mut bytes)?;
    String::from_utf8(bytes)
        .map(CompactString::from)
        .map_err(|e| damaged(e.utf8_error()))
}

/// Everything an aggregate has spilled, by kind.
#[derive(Debug)]
pub(super) struct Spilled {
    pub(super) users: Partitions<UserRecord>,
    pub(super) keys: Partitions<KeyRecord>,
    pub(super) values: Partitions<ValueRecord>,
}

impl Spilled {
    pub(super) fn new() -> Self {
        Self {
            users: Partitions::new(0x7573_6572),
            keys: Partitions::new(0x6b65_7973),
            values: Partitions::new(0x7661_6c75),
        }
    }

    /// Bytes written to disk so far.
    pub(super) fn written(&self) -> u64 {
        self.users.written + self.keys.written + self.values.written
    }

    /// Takes in `other`'s files, whose group numbers `groups` maps to this
    /// aggregate's.
    pub(super) fn absorb(&mut self, other: Spilled, groups: &Arc<Vec<u32>>) {
        self.users.absorb(other.users, groups);
        self.keys.absorb(other.keys, groups);
        self.values.absorb(other.values, groups);
    }

    /// Reads every partition back and gives, for each of `groups` groups, its
    /// distinct users and its metadata summary, keeping `top_k` values per key. No
    /// table built on the way holds more than `budget` bytes (but for partitions that
    /// cannot be split further).
    pub(super) fn finish(
        self,
        groups: usize,
        top_k: usize,
        budget: usize,
        space: &dyn SpillSpace,
    ) -> io::Result<(Vec<u64>, Vec<String>)> {
        let unique = count_users(self.users, groups, budget, space)?;
        let keys = rank_keys(self.keys, groups, budget, space)?;
        let metas = summarize(keys, self.values, top_k, budget, space)?;
        Ok((unique, metas))
    }
}

/// Bytes of table that stay in one core's cache while a bucket is counted.
const BUCKET_TABLE_BYTES: usize = 1 << 20;

/// A partition's records, split by a hash of their own into buckets whose tables
/// fit in a core's cache: counted in one table, the records of a large partition
/// would each cost a cache miss. Records that must meet land in the same bucket.
fn cache_sized_buckets<R: Record>(
    records: &mut dyn Iterator<Item = io::Result<R>>,
) -> io::Result<Vec<Vec<R>>> {
    const BUCKET_SEED: u64 = 0x6275_636b;
    let expected = records.size_hint().0;
    let buckets = (expected.saturating_mul(R::ENTRY_BYTES) / BUCKET_TABLE_BYTES).max(1);
    if buckets == 1 {
        return Ok(vec![records.collect::<io::Result<_>>()?]);
    }
    let mut split: Vec<Vec<R>> = (0..buckets)
        .map(|_| Vec::with_capacity(expected / buckets + expected / buckets / 8))
        .collect();
    for record in records {
        let record = record?;
        split[(record.hash(BUCKET_SEED) % buckets as u64) as usize].push(record);
    }
    Ok(split)
}

/// Distinct users per group: each partition holds all of its users' records.
fn count_users(
    users: Partitions<UserRecord>,
    groups: usize,
    budget: usize,
    space: &dyn SpillSpace,
) -> io::Result<Vec<u64>> {
    let mut unique = vec![0u64; groups];
    let count = |records: &mut dyn Iterator<Item = io::Result<UserRecord>>| {
        let mut counts = vec![0u64; groups];
        for bucket in cache_sized_buckets(records)? {
            let mut seen = super::FastSet::default();
            seen.reserve(bucket.len());
            seen.extend(bucket);
            for record in &seen {
                counts[record.group as usize] += 1;
            }
        }
        Ok(counts)
    };
    users.map_partitions(budget, space, threads(), &count, &mut |counts| {
        for (total, count) in unique.iter_mut().zip(counts) {
            *total += count;
        }
    })?;
    Ok(unique)
}

/// Gives the memory freed by a partition's tables back to the system: glibc keeps
/// what each thread frees in that thread's own arena, where the next partition,
/// read on another thread, cannot reuse it.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Threads that read spilled partitions back at once: the cores, up to four.
fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// A group's kept keys (at most [`MAX_KEYS`](super::summary::MAX_KEYS), in key
/// order) and how many distinct keys it had.
#[derive(Debug, Default)]
struct GroupKeys {
    distinct: u64,
    kept: Vec<(CompactString, KeyStats)>,
}

/// Each group's most frequent keys: each partition holds all the records of its
/// keys, so a partition's counts are final and its best keys compete with the others'.
fn rank_keys(
    keys: Partitions<KeyRecord>,
    groups: usize,
    budget: usize,
    space: &dyn SpillSpace,
) -> io::Result<Vec<GroupKeys>> {
    use super::summary::{MAX_KEYS, key_order};
    let by_order = |a: &(CompactString, KeyStats), b: &(CompactString, KeyStats)| {
        key_order(&(&a.0, a.1.n), &(&b.0, b.1.n))
    };
    let mut ranked: Vec<GroupKeys> = (0..groups).map(|_| GroupKeys::default()).collect();
    let merge = |records: &mut dyn Iterator<Item = io::Result<KeyRecord>>| {
        let mut merged: super::FastMap<(u32, CompactString), KeyStats> = super::FastMap::default();
        for record in records {
            let record = record?;
            merged
                .entry((record.group, record.key))
                .or_default()
                .merge_counts(&record.stats);
        }
        Ok(merged)
    };
    keys.map_partitions(budget, space, threads(), &merge, &mut |merged| {
        for ((group, key), stats) in merged {
            let entry = &mut ranked[group as usize];
            entry.distinct += 1;
            entry.kept.push((key, stats));
        }
        for entry in &mut ranked {
            if entry.kept.len() > MAX_KEYS {
                entry.kept.sort_unstable_by(by_order);
                entry.kept.truncate(MAX_KEYS);
            }
        }
    })?;
    // Partitions come back in any order: the kept keys are put in one.
    for entry in &mut ranked {
        entry.kept.sort_unstable_by(by_order);
    }
    Ok(ranked)
}

/// Each group's summary: the kept keys' counts, and their top values, found
/// partition by partition (a value's records all land in one partition, so a value
/// among its key's top `top_k` is among the top `top_k` of its own partition).
fn summarize(
    keys: Vec<GroupKeys>,
    values: Partitions<ValueRecord>,
    top_k: usize,
    budget: usize,
    space: &dyn SpillSpace,
) -> io::Result<Vec<String>> {
    use super::summary::{key_json, summary_json, value_order};
    let by_order = |a: &(CompactString, u64), b: &(CompactString, u64)| {
        value_order(&(&a.0, a.1), &(&b.0, b.1))
    };
    let mut index: super::FastMap<(u32, CompactString), usize> = super::FastMap::default();
    for (group, entry) in keys.iter().enumerate() {
        for (key, _) in &entry.kept {
            index.insert((group as u32, key.clone()), index.len());
        }
    }
    let mut top: Vec<Vec<(CompactString, u64)>> = vec![Vec::new(); index.len()];
    // Each partition's own best `top_k` of each kept key.
    let best = |records: &mut dyn Iterator<Item = io::Result<ValueRecord>>| {
        let mut best: super::FastMap<usize, Vec<(CompactString, u64)>> = super::FastMap::default();
        for bucket in cache_sized_buckets(records)? {
            let mut counts: super::FastMap<(usize, CompactString), u64> = super::FastMap::default();
            counts.reserve(bucket.len());
            for record in bucket {
                // Values of keys that were dropped are not needed.
                if let Some(&at) = index.get(&(record.group, record.key)) {
                    *counts.entry((at, record.value)).or_default() += record.count;
                }
            }
            for ((at, value), count) in counts {
                let candidates = best.entry(at).or_default();
                candidates.push((value, count));
                if candidates.len() > 2 * top_k.max(1) {
                    candidates.sort_unstable_by(by_order);
                    candidates.truncate(top_k);
                }
            }
        }
        Ok(best)
    };
    values.map_partitions(budget, space, threads(), &best, &mut |best| {
        for (at, candidates) in best {
            let mine = &mut top[at];
            mine.extend(candidates);
            if mine.len() > top_k {
                mine.sort_unstable_by(by_order);
                mine.truncate(top_k);
            }
        }
    })?;
    Ok(keys
        .into_iter()
        .enumerate()
        .map(|(group, entry)| {
            let dropped = entry.distinct - entry.kept.len() as u64;
            let parts = entry.kept.iter().map(|(key, stats)| {
                let at = index[&(group as u32, key.clone())];
                let mut best: Vec<(&str, u64)> = top[at].iter().map(|(v, c)| (&**v, *c)).collect();
                best.sort_unstable_by(value_order);
                best.truncate(top_k);
                (key.to_string(), key_json(stats, &best))
            });
            summary_json(parts, dropped)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_read_back_as_written_and_a_cut_one_is_an_error() {
        let numbers = [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX];
        let mut bytes = Vec::new();
        for &n in &numbers {
            write_varint(&mut bytes, n).unwrap();
        }
        assert_eq!(bytes.len(), 1 + 1 + 1 + 2 + 2 + 5 + 10);
        let mut input = &bytes[..];
        for &n in &numbers {
            assert_eq!(read_varint_or_end(&mut input).unwrap(), Some(n));
        }
        assert_eq!(read_varint_or_end(&mut input).unwrap(), None, "a clean end");
        let mut cut = &bytes[bytes.len() - 10..bytes.len() - 7];
        assert_eq!(
            read_varint_or_end(&mut cut).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let mut too_big = &[0xffu8; 11][..];
        assert_eq!(
            read_varint_or_end(&mut too_big).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn a_table_that_folds_nothing_passes_on_for_longer_each_time_until_it_folds() {
        let mut pass = PassOn::default();
        pass.judge(PASS_MIN_PUSHES - 1, PASS_MIN_PUSHES - 1);
        assert!(!pass.is_passing(), "too few pushes to judge by");
        pass.judge(10_000, 8_999);
        assert!(!pass.is_passing(), "a table that folds a tenth pays");
        pass.judge(10_000, 9_000);
        let passed = std::iter::from_fn(|| pass.take().then_some(())).count();
        assert_eq!(passed, 80_000, "eight times what it took");
        pass.judge(10_000, 10_000);
        let passed = std::iter::from_fn(|| pass.take().then_some(())).count();
        assert_eq!(passed, 160_000, "then twice the last span");
        pass.judge(10_000, 100);
        assert!(!pass.is_passing());
        pass.judge(10_000, 10_000);
        let passed = std::iter::from_fn(|| pass.take().then_some(())).count();
        assert_eq!(passed, 80_000, "a table that paid starts again");
    }
}
