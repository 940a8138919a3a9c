//! Per-call crash journal: what a live call has said and done so far, on disk, so a worker that
//! dies mid-call (SIGKILL, OOM, power) can still deliver the call's result at its next start.
//!
//! A journal is one append-only file of JSON lines: the first line is a header (the call's
//! identity), every later line one record (a transcript line, an event). The types of both are
//! the caller's ([`JournalWriter::create`] and [`read_journal`] are generic); this module only
//! knows lines, durability and damage.
//!
//! Writing is cheap for the call: [`JournalWriter::append`] serialises into an in-memory buffer
//! and never touches the disk; [`JournalWriter::commit`] hands what was appended to one blocking
//! writer per journal, which writes it and `fdatasync`s it off the async threads. Commits that
//! arrive while the writer is busy are batched into its next write, so a busy disk costs fewer
//! syncs, never a stalled call. The header is written and synced (file and directory) by
//! `create`, so a journal that exists always names its call.
//!
//! Reading is forgiving, because a crash can cut the last write anywhere: an incomplete last
//! line is dropped (`torn_tail`), a line that is not a record is skipped with a warning
//! (`skipped_lines`), and only a journal without a readable header is an error. Nothing here
//! panics on what it finds on disk.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::task::JoinHandle;
use tracing::{error, warn};

/// File extension of a journal (`<name>.jsonl`).
pub const JOURNAL_EXT: &str = "jsonl";
/// A journal bigger than this is not read (a call's journal is a few KiB to a few hundred).
pub const MAX_JOURNAL_BYTES: u64 = 32 << 20;
/// Records buffered and not yet written beyond this (the disk stalled for the whole call) turn
/// the journal off for the call, with an error log, rather than growing memory.
const MAX_BUFFERED_BYTES: usize = 4 << 20;
/// Suffix of a journal set aside because it cannot be read (kept for an operator).
const SET_ASIDE_SUFFIX: &str = ".unreadable";

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal I/O ({op} {path}): {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serialise a journal line: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("journal {0} is empty")]
    Empty(PathBuf),
    #[error("journal {path} has no readable header: {reason}")]
    BadHeader { path: PathBuf, reason: String },
    #[error("journal {path} is {size} bytes, more than the {max} a call can write")]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("journal writer task failed: {0}")]
    Task(String),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> JournalError + 'a {
    move |source| JournalError::Io { op, path: path.to_path_buf(), source }
}

/// The writing end of one call's journal. Dropping it leaves the file in place (a crash looks
/// the same); [`JournalWriter::remove`] deletes it once the call's result is persisted.
pub struct JournalWriter {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    /// Used only by the writer task (one at a time), so never contended.
    file: Mutex<File>,
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    /// Serialised lines appended and not yet handed to the writer.
    buf: Vec<u8>,
    /// A writer task is draining `buf`.
    running: bool,
    writer: Option<JoinHandle<()>>,
    /// An I/O error (or a stalled disk) turned the journal off for this call.
    failed: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl JournalWriter {
    /// Creates `dir/name` (which must not exist) with `header` as its first line, synced to
    /// disk with its directory entry before this returns.
    pub async fn create<H: Serialize>(dir: &Path, name: &str, header: &H) -> Result<JournalWriter, JournalError> {
        let mut line = serde_json::to_vec(header)?;
        line.push(b'\n');
        let (dir, path) = (dir.to_path_buf(), dir.join(name));
        let file = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir).map_err(io_err("create_dir", &dir))?;
            let mut f =
                OpenOptions::new().create_new(true).append(true).open(&path).map_err(io_err("create", &path))?;
            f.write_all(&line).and_then(|()| f.sync_data()).map_err(io_err("write", &path))?;
            File::open(&dir).and_then(|d| d.sync_all()).map_err(io_err("fsync_dir", &dir))?;
            Ok::<_, JournalError>((f, path))
        })
        .await
        .map_err(|e| JournalError::Task(e.to_string()))??;
        let (file, path) = file;
        Ok(JournalWriter {
            shared: Arc::new(Shared { path, file: Mutex::new(file), pending: Mutex::new(Pending::default()) }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Buffers one record line. No I/O: it reaches the disk at the next [`Self::commit`].
    pub fn append<R: Serialize>(&self, record: &R) {
        let mut p = lock(&self.shared.pending);
        if p.failed {
            return;
        }
        let before = p.buf.len();
        if let Err(e) = serde_json::to_writer(&mut p.buf, record) {
            p.buf.truncate(before);
            warn!(error = %e, path = %self.shared.path.display(), "journal record does not serialise; skipped");
            return;
        }
        p.buf.push(b'\n');
        if p.buf.len() > MAX_BUFFERED_BYTES {
            p.failed = true;
            p.buf = Vec::new();
            error!(path = %self.shared.path.display(), "journal writes are not keeping up; journaling stopped for this call");
        }
    }

    /// Writes and syncs everything appended so far, off the async threads. Returns at once;
    /// while a write is in progress, later commits (and appends) join the next one.
    pub fn commit(&self) {
        let mut p = lock(&self.shared.pending);
        if p.failed || p.running || p.buf.is_empty() {
            return;
        }
        p.running = true;
        let shared = self.shared.clone();
        p.writer = Some(tokio::task::spawn_blocking(move || shared.drain()));
    }

    /// Waits until everything committed so far is on disk (or the journal failed).
    pub async fn flushed(&self) {
        loop {
            let writer = {
                let mut p = lock(&self.shared.pending);
                if !p.running {
                    return;
                }
                p.writer.take()
            };
            match writer {
                Some(w) => {
                    let _ = w.await;
                }
                // Another waiter holds the task: poll until the writer is idle.
                None => tokio::time::sleep(std::time::Duration::from_millis(1)).await,
            }
        }
    }

    /// The call's result is persisted: finish any write in progress and delete the journal.
    pub async fn remove(self) -> Result<(), JournalError> {
        {
            let mut p = lock(&self.shared.pending);
            p.failed = true; // nothing more is written
            p.buf = Vec::new();
        }
        self.flushed().await;
        remove_journal(&self.shared.path)
    }
}

impl Shared {
    /// The writer task: write and sync what is buffered until nothing is.
    fn drain(&self) {
        loop {
            let batch = {
                let mut p = lock(&self.pending);
                if p.buf.is_empty() || p.failed {
                    p.running = false;
                    return;
                }
                std::mem::take(&mut p.buf)
            };
            let written = {
                let mut f = lock(&self.file);
                f.write_all(&batch).and_then(|()| f.sync_data())
            };
            if let Err(e) = written {
                let mut p = lock(&self.pending);
                p.failed = true;
                p.buf = Vec::new();
                p.running = false;
                error!(error = %e, path = %self.path.display(), "journal write failed; journaling stopped for this call");
                return;
            }
        }
    }
}

/// A journal as read back from disk.
#[derive(Debug)]
pub struct Journal<H, R> {
    pub path: PathBuf,
    pub header: H,
    pub records: Vec<R>,
    /// Complete lines that were not a record (logged).
    pub skipped_lines: usize,
    /// The last line was cut by the crash and dropped.
    pub torn_tail: bool,
}

/// Reads a journal: the header line, then every record line that parses.
pub fn read_journal<H: DeserializeOwned, R: DeserializeOwned>(path: &Path) -> Result<Journal<H, R>, JournalError> {
    let size = std::fs::metadata(path).map_err(io_err("stat", path))?.len();
    if size > MAX_JOURNAL_BYTES {
        return Err(JournalError::TooLarge { path: path.to_path_buf(), size, max: MAX_JOURNAL_BYTES });
    }
    let bytes = std::fs::read(path).map_err(io_err("read", path))?;
    parse_journal(path, &bytes)
}

/// Parses a journal's bytes as [`read_journal`] does after reading the file (`path` names it in
/// errors and logs). Pure, so the reader can be fuzzed on its own.
pub fn parse_journal<H: DeserializeOwned, R: DeserializeOwned>(
    path: &Path,
    bytes: &[u8],
) -> Result<Journal<H, R>, JournalError> {
    let mut lines = bytes.split_inclusive(|b| *b == b'\n').filter(|l| !l.trim_ascii().is_empty()).peekable();
    let Some(first) = lines.next() else { return Err(JournalError::Empty(path.to_path_buf())) };
    let header = serde_json::from_slice(first)
        .map_err(|e| JournalError::BadHeader { path: path.to_path_buf(), reason: e.to_string() })?;
    let mut journal =
        Journal { path: path.to_path_buf(), header, records: Vec::new(), skipped_lines: 0, torn_tail: false };
    while let Some(line) = lines.next() {
        let complete = line.ends_with(b"\n");
        match serde_json::from_slice::<R>(line) {
            Ok(r) => journal.records.push(r),
            // A crash mid-write cuts the last line; what came before it stands.
            Err(_) if !complete && lines.peek().is_none() => journal.torn_tail = true,
            Err(e) => {
                journal.skipped_lines += 1;
                warn!(path = %path.display(), error = %e, "skipping an unreadable journal line");
            }
        }
    }
    Ok(journal)
}

/// Every journal in `dir`, oldest name first. A missing directory has none.
pub fn list_journals(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().and_then(|x| x.to_str()) == Some(JOURNAL_EXT))
        .collect();
    out.sort();
    out
}

/// Deletes a journal; a missing one is not an error.
pub fn remove_journal(path: &Path) -> Result<(), JournalError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

/// Renames a journal that cannot be turned into anything (`….jsonl.unreadable`) so the next
/// start does not read it again; an operator can still look at it.
pub fn set_aside(path: &Path) -> Result<PathBuf, JournalError> {
    let mut to = path.as_os_str().to_owned();
    to.push(SET_ASIDE_SUFFIX);
    let to = PathBuf::from(to);
    std::fs::rename(path, &to).map_err(io_err("rename", path))?;
    Ok(to)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Head {
        session: String,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Rec {
        n: u32,
        text: String,
    }

    fn rec(n: u32) -> Rec {
        Rec { n, text: format!("line {n}") }
    }

    async fn written(dir: &Path, records: u32) -> PathBuf {
        let w = JournalWriter::create(dir, "call.jsonl", &Head { session: "s-1".into() }).await.unwrap();
        for n in 0..records {
            w.append(&rec(n));
            w.commit();
        }
        w.flushed().await;
        w.path().to_path_buf()
    }

    fn append_raw(path: &Path, bytes: &[u8]) {
        let mut f = OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(bytes).unwrap();
    }

    #[tokio::test]
    async fn committed_records_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = written(dir.path(), 50).await;
        let j: Journal<Head, Rec> = read_journal(&path).unwrap();
        assert_eq!(j.header, Head { session: "s-1".into() });
        assert_eq!(j.records, (0..50).map(rec).collect::<Vec<_>>());
        assert_eq!((j.skipped_lines, j.torn_tail), (0, false));
        assert_eq!(list_journals(dir.path()), vec![path]);
    }

    #[tokio::test]
    async fn appended_but_uncommitted_records_are_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let w = JournalWriter::create(dir.path(), "c.jsonl", &Head { session: "s".into() }).await.unwrap();
        w.append(&rec(1));
        w.commit();
        w.flushed().await;
        w.append(&rec(2));
        let j: Journal<Head, Rec> = read_journal(w.path()).unwrap();
        assert_eq!(j.records, vec![rec(1)]);
        w.commit();
        w.flushed().await;
        assert_eq!(read_journal::<Head, Rec>(w.path()).unwrap().records, vec![rec(1), rec(2)]);
    }

    #[tokio::test]
    async fn a_torn_last_line_is_dropped_and_the_rest_stands() {
        let dir = tempfile::tempdir().unwrap();
        let path = written(dir.path(), 3).await;
        append_raw(&path, br#"{"n":3,"text":"li"#);
        let j: Journal<Head, Rec> = read_journal(&path).unwrap();
        assert_eq!(j.records, vec![rec(0), rec(1), rec(2)]);
        assert!(j.torn_tail);
        assert_eq!(j.skipped_lines, 0);
    }

    #[tokio::test]
    async fn a_complete_last_line_without_its_newline_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = written(dir.path(), 1).await;
        append_raw(&path, br#"{"n":7,"text":"line 7"}"#);
        let j: Journal<Head, Rec> = read_journal(&path).unwrap();
        assert_eq!(j.records, vec![rec(0), rec(7)]);
        assert!(!j.torn_tail);
    }

    #[tokio::test]
    async fn garbage_lines_are_skipped_never_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = written(dir.path(), 2).await;
        append_raw(&path, b"not json at all\n\xff\xfe\x00\n{\"n\":\"wrong type\"}\n\n");
        append_raw(&path, br#"{"n":9,"text":"line 9"}"#);
        append_raw(&path, b"\n");
        let j: Journal<Head, Rec> = read_journal(&path).unwrap();
        assert_eq!(j.records, vec![rec(0), rec(1), rec(9)]);
        assert_eq!(j.skipped_lines, 3);
    }

    #[test]
    fn an_empty_or_headless_journal_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.jsonl");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(read_journal::<Head, Rec>(&empty), Err(JournalError::Empty(_))));
        let blank = dir.path().join("blank.jsonl");
        std::fs::write(&blank, b"\n\n").unwrap();
        assert!(matches!(read_journal::<Head, Rec>(&blank), Err(JournalError::Empty(_))));
        let garbage = dir.path().join("garbage.jsonl");
        std::fs::write(&garbage, b"\x00\x01garbage\n{\"n\":1,\"text\":\"x\"}\n").unwrap();
        assert!(matches!(read_journal::<Head, Rec>(&garbage), Err(JournalError::BadHeader { .. })));
        let torn_header = dir.path().join("torn.jsonl");
        std::fs::write(&torn_header, br#"{"sess"#).unwrap();
        assert!(matches!(read_journal::<Head, Rec>(&torn_header), Err(JournalError::BadHeader { .. })));
        assert!(matches!(
            read_journal::<Head, Rec>(&dir.path().join("missing.jsonl")),
            Err(JournalError::Io { op: "stat", .. })
        ));
    }

    #[test]
    fn an_oversized_journal_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.jsonl");
        let f = File::create(&big).unwrap();
        f.set_len(MAX_JOURNAL_BYTES + 1).unwrap();
        assert!(matches!(read_journal::<Head, Rec>(&big), Err(JournalError::TooLarge { .. })));
    }

    #[tokio::test]
    async fn remove_deletes_the_journal_and_set_aside_hides_it_from_the_list() {
        let dir = tempfile::tempdir().unwrap();
        let w = JournalWriter::create(dir.path(), "a.jsonl", &Head { session: "a".into() }).await.unwrap();
        w.append(&rec(1));
        w.commit();
        let path = w.path().to_path_buf();
        w.remove().await.unwrap();
        assert!(!path.exists());
        assert!(list_journals(dir.path()).is_empty());
        remove_journal(&path).unwrap(); // idempotent

        let path = written(dir.path(), 1).await;
        let moved = set_aside(&path).unwrap();
        assert!(moved.exists() && !path.exists());
        assert!(list_journals(dir.path()).is_empty(), "a set-aside journal is not read again");
        assert!(list_journals(&dir.path().join("nowhere")).is_empty());
    }

    #[tokio::test]
    async fn a_journal_name_is_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        written(dir.path(), 0).await;
        let again = JournalWriter::create(dir.path(), "call.jsonl", &Head { session: "other".into() }).await;
        assert!(matches!(again, Err(JournalError::Io { op: "create", .. })));
    }

    #[tokio::test]
    async fn commits_racing_the_writer_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let w = JournalWriter::create(dir.path(), "race.jsonl", &Head { session: "r".into() }).await.unwrap();
        for n in 0..2000 {
            w.append(&rec(n));
            if n % 3 == 0 {
                w.commit();
            }
            if n % 97 == 0 {
                tokio::task::yield_now().await;
            }
        }
        w.commit();
        w.flushed().await;
        let j: Journal<Head, Rec> = read_journal(w.path()).unwrap();
        assert_eq!(j.records.len(), 2000);
        assert!(j.records.iter().enumerate().all(|(i, r)| r.n == i as u32));
    }
}
