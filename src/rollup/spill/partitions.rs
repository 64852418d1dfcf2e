//! Partition files: records split by a hash into files, read back one partition at a
//! time, on as many threads as the machine has, with freed memory handed back to the
//! system between partitions.

use std::fmt;
use std::io::{self, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::sync::Arc;

use super::super::memory::entries_bytes;
use super::codec::Record;
use super::port::{Scratch, SpillSpace};

/// Partitions each spill splits records into.
pub(crate) const FANOUT: usize = 32;

/// Times a partition too big for memory is split again before it is read anyway
/// (its records then share a few keys, which collapse when read).
pub(crate) const MAX_SPLITS: u32 = 3;

/// What is done with the records of one partition.
pub(crate) type EachPartition<'a, R> =
    dyn FnMut(&mut dyn Iterator<Item = io::Result<R>>) -> io::Result<()> + 'a;

/// What is made of the records of one partition, on any thread.
pub(crate) type MapPartition<'a, R, T> =
    dyn Fn(&mut dyn Iterator<Item = io::Result<R>>) -> io::Result<T> + Sync + 'a;

/// A partition's file opened for reading, with the group numbers it needs mapped.
pub(crate) type OpenFile = (BufReader<Box<dyn Scratch>>, Option<Arc<Vec<u32>>>);

/// One scratch file of a partition, with what reading it back will cost.
pub(crate) struct PartFile {
    file: BufWriter<Box<dyn Scratch>>,
    records: u64,
    heap: u64,
    /// The group numbers of the aggregate that owns the file now, indexed by those of
    /// the aggregate that wrote it; `None` when they are the same.
    groups: Option<Arc<Vec<u32>>>,
}

/// The records of one kind an aggregate has spilled, by partition.
pub(crate) struct Partitions<R> {
    seed: u64,
    /// For each partition, the files holding its records: one per aggregate that
    /// wrote some, until merged.
    files: Vec<Vec<PartFile>>,
    /// Bytes written, for the report.
    pub(crate) written: u64,
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
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            seed,
            files: (0..FANOUT).map(|_| Vec::new()).collect(),
            written: 0,
            record: std::marker::PhantomData,
        }
    }

    /// Appends `record` to its partition, opening the partition's file if need be.
    pub(crate) fn write(&mut self, space: &dyn SpillSpace, record: &R) -> io::Result<()> {
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
    pub(crate) fn absorb(&mut self, other: Partitions<R>, groups: &Arc<Vec<u32>>) {
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
    pub(crate) fn map_partitions<T: Send>(
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
pub(crate) struct PartitionReader<R> {
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
pub(crate) struct Counting<'a, W> {
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

/// Gives the memory freed by a partition's tables back to the system: glibc keeps
/// what each thread frees in that thread's own arena, where the next partition,
/// read on another thread, cannot reuse it.
pub(crate) fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Threads that read spilled partitions back at once: the cores, up to four.
pub(crate) fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}
