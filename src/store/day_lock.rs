//! Holding days for one run.
//!
//! On PostgreSQL a run holds session advisory locks on a connection of its own; on
//! SQLite it holds byte-range locks on a lock file beside the database (beside the
//! file itself, symbolic links resolved), one byte per day. Both vanish with the
//! process, so a crashed run never leaves a day stuck.
//!
//! A run checks its locks before each day's write ([`Held::verify`]): the session
//! holding PostgreSQL's locks can be closed under it (an idle timeout, a pooler,
//! `pg_terminate_backend`), and the SQLite lock file can be moved or replaced; either
//! way another run could take the days, so the run stops writing.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sqlx::Connection as _;
use sqlx::postgres::PgConnection;

use super::StoreError;
use jiff::civil::Date;

use crate::model::day_number;

/// What a run holds until it lets go.
#[derive(Debug)]
pub(super) enum Held {
    /// A connection holding one advisory lock per day.
    Postgres { conn: PgConnection, days: usize },
    /// An open lock file holding one byte-range lock per day, and where it lies.
    File { file: File, path: PathBuf },
}

impl Held {
    pub(super) async fn release(self) {
        match self {
            // Closing the session releases its advisory locks.
            Held::Postgres { conn, .. } => {
                let _ = conn.close().await;
            }
            Held::File { file, .. } => drop(file),
        }
    }

    /// Whether the days are still held.
    pub(super) async fn verify(&mut self) -> Result<(), StoreError> {
        match self {
            Held::Postgres { conn, days } => {
                let held: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_locks \
                     WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted",
                )
                .fetch_one(&mut *conn)
                .await
                .map_err(|error| {
                    StoreError::LockLost(format!(
                        "the connection holding the day locks was lost ({error})"
                    ))
                })?;
                if usize::try_from(held) != Ok(*days) {
                    return Err(StoreError::LockLost(format!(
                        "the session holds {held} of its {days} day locks"
                    )));
                }
                Ok(())
            }
            Held::File { file, path } => {
                if same_file(file, path) {
                    Ok(())
                } else {
                    Err(StoreError::LockLost(
                        "the lock file beside the database was moved or replaced".into(),
                    ))
                }
            }
        }
    }
}

/// Whether `path` still names the open `file`.
fn same_file(file: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        match (file.metadata(), std::fs::metadata(path)) {
            (Ok(held), Ok(now)) => held.dev() == now.dev() && held.ino() == now.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        path.exists()
    }
}

/// How long to sleep between attempts while waiting for a day.
const POLL: Duration = Duration::from_millis(25);

/// Takes one byte per day of `days` in the lock file at `path`, waiting up to `wait`.
pub(super) async fn lock_file_days(
    path: &std::path::Path,
    days: &[Date],
    wait: Duration,
) -> Result<Held, StoreError> {
    let lock_error = lock_file_error(path);
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        // Readable by its owner only: anyone who can open it can lock bytes of it.
        options.mode(0o600);
        let file = options.open(path).map_err(lock_error)?;
        // A file made by an earlier version with the umask's mode is narrowed too.
        if let Ok(metadata) = file.metadata()
            && metadata.permissions().mode() & 0o077 != 0
        {
            let _ = file.set_permissions(std::fs::Permissions::from_mode(0o600));
        }
        return lock_in(file, path, days, wait).await;
    }
    #[cfg(not(unix))]
    {
        let file = options.open(path).map_err(lock_error)?;
        lock_in(file, path, days, wait).await
    }
}

/// The error of the lock file at `path` failing.
fn lock_file_error(path: &Path) -> impl Fn(std::io::Error) -> StoreError + Copy + '_ {
    move |source| StoreError::LockFile {
        path: path.display().to_string(),
        source,
    }
}

async fn lock_in(
    file: File,
    path: &Path,
    days: &[Date],
    wait: Duration,
) -> Result<Held, StoreError> {
    let lock_error = lock_file_error(path);
    let started = Instant::now();
    for &date in days {
        loop {
            if byte_lock::try_lock(&file, day_offset(date)).map_err(lock_error)? {
                break;
            }
            if started.elapsed() >= wait {
                // Dropping `file` lets go of the days already taken.
                return Err(StoreError::DayBusy { date, waited: wait });
            }
            tokio::time::sleep(POLL.min(wait.saturating_sub(started.elapsed()))).await;
        }
    }
    Ok(Held::File {
        file,
        path: path.to_owned(),
    })
}

/// Days before 1970 have negative numbers; the offset keeps every date's byte positive.
/// The few dates the offset cannot lift (before the year -8981) take bytes above every
/// other date's, so each date keeps a byte of its own.
fn day_offset(date: Date) -> i64 {
    let offset = day_number(date) + 4_000_000;
    if offset >= 0 {
        offset
    } else {
        8_000_000 + offset
    }
}

#[cfg(target_os = "linux")]
mod byte_lock {
    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;

    /// Tries to take an exclusive lock on one byte. Open-file-description locks
    /// (`F_OFD_SETLK`) belong to this open file, so two runs in one process exclude
    /// each other just as two processes do.
    pub(super) fn try_lock(file: &File, offset: i64) -> io::Result<bool> {
        // SAFETY: `flock` is a plain C struct for which all-zero bytes are valid.
        let mut lock: libc::flock = unsafe { std::mem::zeroed() };
        lock.l_type = libc::F_WRLCK as libc::c_short;
        lock.l_whence = libc::SEEK_SET as libc::c_short;
        lock.l_start = offset;
        lock.l_len = 1;
        // SAFETY: the descriptor is open for the duration of the call and `lock`
        // is a valid `flock` that the kernel only reads.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) };
        if rc == 0 {
            return Ok(true);
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EACCES) => {}
            _ => return Err(error),
        }
        // Runs take only exclusive locks: a shared one is some other program's, and
        // waiting for it would not end. Say so rather than call the day busy.
        // SAFETY: as above; `F_OFD_GETLK` writes the conflicting lock into `lock`.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut lock) };
        if rc == 0 && lock.l_type == libc::F_RDLCK as libc::c_short {
            return Err(io::Error::other(
                "another program holds a shared lock on it (veris-jobs runs take only \
                 exclusive locks); cannot lock",
            ));
        }
        Ok(false)
    }
}

#[cfg(not(target_os = "linux"))]
mod byte_lock {
    use std::fs::File;
    use std::io;

    /// Elsewhere the whole file stands for every day: runs exclude each other
    /// entirely, which is coarser but just as safe.
    pub(super) fn try_lock(file: &File, _offset: i64) -> io::Result<bool> {
        match file.try_lock() {
            Ok(()) => Ok(true),
            Err(std::fs::TryLockError::WouldBlock) => Ok(false),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

/// Takes one advisory lock per day of `days` on `conn`, waiting up to `wait`.
pub(super) async fn lock_pg_days(
    mut conn: PgConnection,
    days: &[Date],
    wait: Duration,
) -> Result<Held, StoreError> {
    /// The first key of the two-key advisory lock: ASCII "veri".
    const NAMESPACE: i32 = 0x7665_7269;
    let started = Instant::now();
    for &date in days {
        let day = i32::try_from(day_number(date)).unwrap_or(i32::MAX);
        loop {
            let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                .bind(NAMESPACE)
                .bind(day)
                .fetch_one(&mut conn)
                .await
                .map_err(super::error::query_error(&format!("locking day {date}")))?;
            if taken {
                break;
            }
            if started.elapsed() >= wait {
                let _ = conn.close().await;
                return Err(StoreError::DayBusy { date, waited: wait });
            }
            tokio::time::sleep(POLL.min(wait.saturating_sub(started.elapsed()))).await;
        }
    }
    Ok(Held::Postgres {
        conn,
        days: days.len(),
    })
}
