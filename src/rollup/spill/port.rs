//! The spill's port: where spilled records go ([`SpillSpace`], the jobs give one) and
//! the limit that sends them there.

use std::fmt;
use std::io::{self, Read, Seek, Write};
use std::sync::Arc;

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
