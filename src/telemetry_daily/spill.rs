//! Where a run's aggregation spills when a day outgrows the memory limit: scratch
//! files in a directory, unlinked as they are created, so that they never outlive
//! the process and vanish when the day ends or fails.

use std::io;
use std::path::PathBuf;

use crate::rollup::{Scratch, SpillSpace};

/// Scratch files in a directory (`--spill-dir`, by default the system's temporary
/// directory).
#[derive(Debug, Clone)]
pub(super) struct ScratchDir {
    dir: PathBuf,
}

impl ScratchDir {
    pub(super) fn new(dir: Option<PathBuf>) -> Self {
        Self {
            dir: dir.unwrap_or_else(std::env::temp_dir),
        }
    }
}

impl SpillSpace for ScratchDir {
    fn scratch(&self) -> io::Result<Box<dyn Scratch>> {
        // Linux creates it with O_TMPFILE, elsewhere it is unlinked at once: either
        // way no name is left to clean up.
        Ok(Box::new(tempfile::tempfile_in(&self.dir)?))
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}
