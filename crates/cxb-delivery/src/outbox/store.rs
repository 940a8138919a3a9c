//! Blocking filesystem layer. Everything here runs on `spawn_blocking` threads.
//!
//! Layout under the outbox root:
//! - `LOCK`: flock'd by the owning process.
//! - `pending/<id>.json`: entries waiting for delivery (immutable once renamed in).
//! - `pending/<id>.meta`: attempt bookkeeping (advisory, rewritten atomically).
//! - `dead/<id>.json` + `dead/<id>.meta`: dead letters with reason and last response.
//! - `*.tmp` anywhere: leftovers of a crash mid-write, deleted on open.
//!
//! Crash safety rests on rename(2) being atomic and on fsync of the file
//! before and the directory after the rename: an entry file is either absent
//! or complete.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use tracing::{debug, warn};

use super::entry::{Entry, EntryId, Meta, State};
use super::OutboxError;

pub(crate) const ENTRY_EXT: &str = "json";
pub(crate) const META_EXT: &str = "meta";
pub(crate) const TMP_EXT: &str = "tmp";

pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> OutboxError {
    let path = path.to_path_buf();
    move |source| OutboxError::Io { op, path, source }
}

#[derive(Clone, Debug)]
pub(crate) struct Dirs {
    pub root: PathBuf,
    pub pending: PathBuf,
    pub dead: PathBuf,
}

impl Dirs {
    pub fn new(root: &Path) -> Dirs {
        Dirs { root: root.to_path_buf(), pending: root.join("pending"), dead: root.join("dead") }
    }

    /// Creates the state directories and makes their existence durable.
    pub fn create(&self) -> Result<(), OutboxError> {
        for d in [&self.pending, &self.dead] {
            fs::create_dir_all(d).map_err(io_err("create_dir", d))?;
        }
        fsync_dir(&self.root)
    }

    pub fn dir(&self, s: State) -> &Path {
        match s {
            State::Pending => &self.pending,
            State::Dead => &self.dead,
        }
    }

    pub fn entry_path(&self, s: State, id: &EntryId) -> PathBuf {
        self.dir(s).join(format!("{id}.{ENTRY_EXT}"))
    }

    pub fn meta_path(&self, s: State, id: &EntryId) -> PathBuf {
        self.dir(s).join(format!("{id}.{META_EXT}"))
    }
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<(), OutboxError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("fsync_dir", dir))
}

/// Writes `dir/name` atomically: `name.tmp` → write_all → (fsync) → rename →
/// (fsync dir). On any error the temp file is removed, and if only the final
/// directory fsync failed the renamed file is removed too, so the caller can
/// report a clean failure: the file is either fully there (Ok) or not (Err).
///
/// `durable = false` skips both fsyncs; used for advisory sidecars whose loss
/// in a power cut is harmless (a lost `.meta` just resets the attempt count).
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8], durable: bool) -> Result<u64, OutboxError> {
    let final_path = dir.join(name);
    let tmp_path = dir.join(format!("{name}.{TMP_EXT}"));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp_path)
            .map_err(io_err("create_tmp", &tmp_path))?;
        f.write_all(bytes).map_err(io_err("write", &tmp_path))?;
        if durable {
            f.sync_all().map_err(io_err("fsync", &tmp_path))?;
        }
        drop(f);
        fs::rename(&tmp_path, &final_path).map_err(io_err("rename", &final_path))
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp_path);
        return Err(e);
    }
    if durable {
        if let Err(e) = fsync_dir(dir) {
            // The rename may not survive a crash; undo it so the caller's error
            // is truthful ("not stored") rather than "maybe stored".
            let _ = fs::remove_file(&final_path);
            return Err(e);
        }
    }
    Ok(bytes.len() as u64)
}

/// Removes a file; a missing file is not an error (idempotent cleanup).
pub(crate) fn remove_if_exists(path: &Path) -> Result<(), OutboxError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

/// Reads and parses an entry. Outer error: I/O (incl. NotFound); inner: corrupt.
pub(crate) fn read_entry(path: &Path) -> Result<Result<Entry, String>, OutboxError> {
    let bytes = fs::read(path).map_err(io_err("read", path))?;
    Ok(Entry::from_file_bytes(&bytes).map_err(|e| e.to_string()))
}

pub(crate) fn read_meta(path: &Path) -> Option<(Meta, u64)> {
    let bytes = fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(m) => Some((m, bytes.len() as u64)),
        Err(e) => {
            // Advisory data: a torn sidecar (non-durable write + power cut) is
            // ignored rather than blocking delivery.
            warn!(path = %path.display(), error = %e, "ignoring unreadable outbox sidecar");
            None
        }
    }
}

pub(crate) fn write_meta(
    dirs: &Dirs,
    state: State,
    id: &EntryId,
    meta: &Meta,
    durable: bool,
) -> Result<u64, OutboxError> {
    let bytes = serde_json::to_vec(meta)?;
    write_atomic(dirs.dir(state), &format!("{id}.{META_EXT}"), &bytes, durable)
}

/// Deletes an entry and its sidecar (entry first: an orphan sidecar is
/// harmless and swept on open, an orphan entry would be redelivered).
pub(crate) fn delete_entry(dirs: &Dirs, state: State, id: &EntryId, durable: bool) -> Result<(), OutboxError> {
    remove_if_exists(&dirs.entry_path(state, id))?;
    if durable {
        fsync_dir(dirs.dir(state))?;
    }
    if let Err(e) = remove_if_exists(&dirs.meta_path(state, id)) {
        warn!(error = %e, "could not remove outbox sidecar; will be swept on restart");
    }
    Ok(())
}

/// pending → dead. The dead sidecar (reason, response body) is written durably
/// first so a dead letter never loses its explanation; then the entry is
/// renamed. Returns the new sidecar size.
pub(crate) fn move_to_dead(dirs: &Dirs, id: &EntryId, meta: &Meta) -> Result<u64, OutboxError> {
    let meta_size = write_meta(dirs, State::Dead, id, meta, true)?;
    let from = dirs.entry_path(State::Pending, id);
    let to = dirs.entry_path(State::Dead, id);
    if let Err(e) = fs::rename(&from, &to) {
        let _ = fs::remove_file(dirs.meta_path(State::Dead, id));
        return Err(io_err("rename_to_dead", &to)(e));
    }
    sync_after_move(dirs);
    if let Err(e) = remove_if_exists(&dirs.meta_path(State::Pending, id)) {
        debug!(error = %e, "stale pending sidecar left; swept on restart");
    }
    Ok(meta_size)
}

/// dead → pending with attempts reset (the dead sidecar is dropped).
pub(crate) fn move_to_pending(dirs: &Dirs, id: &EntryId) -> Result<(), OutboxError> {
    let from = dirs.entry_path(State::Dead, id);
    let to = dirs.entry_path(State::Pending, id);
    fs::rename(&from, &to).map_err(io_err("rename_to_pending", &from))?;
    sync_after_move(dirs);
    if let Err(e) = remove_if_exists(&dirs.meta_path(State::Dead, id)) {
        debug!(error = %e, "stale dead sidecar left; swept on restart");
    }
    Ok(())
}

/// After a cross-directory rename both directories must be synced. A failure
/// here is logged, not returned: the rename already happened, and the worst
/// case after a crash is the entry reappearing in its old state, which is
/// safe in both directions (redelivery / still dead).
fn sync_after_move(dirs: &Dirs) {
    for d in [&dirs.pending, &dirs.dead] {
        if let Err(e) = fsync_dir(d) {
            warn!(error = %e, "fsync after outbox move failed");
        }
    }
}

/// One entry found on disk at open.
pub(crate) struct Scanned {
    pub id: EntryId,
    pub size: u64,
    pub entry: Result<Entry, String>,
    pub meta: Option<(Meta, u64)>,
}

/// Lists a state directory: deletes `*.tmp` leftovers and orphan sidecars,
/// parses every entry. Sorted by id (= creation order).
pub(crate) fn scan(dir: &Path) -> Result<Vec<Scanned>, OutboxError> {
    let mut entries: Vec<(EntryId, PathBuf)> = Vec::new();
    let mut metas: HashMap<EntryId, PathBuf> = HashMap::new();
    for item in fs::read_dir(dir).map_err(io_err("read_dir", dir))? {
        let item = item.map_err(io_err("read_dir", dir))?;
        let path = item.path();
        let name = item.file_name();
        let Some(name) = name.to_str() else {
            warn!(path = %path.display(), "ignoring non-UTF-8 file in outbox");
            continue;
        };
        if name.ends_with(&format!(".{TMP_EXT}")) {
            // Crash before rename: never acknowledged to the producer, so
            // dropping it loses nothing that was promised.
            warn!(path = %path.display(), "removing incomplete outbox temp file");
            remove_if_exists(&path)?;
            continue;
        }
        let parsed = name.rsplit_once('.').and_then(|(stem, ext)| EntryId::parse(stem).map(|id| (id, ext)));
        match parsed {
            Some((id, ENTRY_EXT)) => entries.push((id, path)),
            Some((id, META_EXT)) => {
                metas.insert(id, path);
            }
            _ => warn!(path = %path.display(), "ignoring unexpected file in outbox"),
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::with_capacity(entries.len());
    for (id, path) in entries {
        let size = fs::metadata(&path).map_err(io_err("stat", &path))?.len();
        let entry = read_entry(&path)?.and_then(|e| {
            if e.id == id {
                Ok(e)
            } else {
                Err(format!("file name says {id} but content says {}", e.id))
            }
        });
        let meta = metas.remove(&id).and_then(|p| read_meta(&p));
        out.push(Scanned { id, size, entry, meta });
    }
    for (_, orphan) in metas {
        debug!(path = %orphan.display(), "removing orphan outbox sidecar");
        remove_if_exists(&orphan)?;
    }
    Ok(out)
}
