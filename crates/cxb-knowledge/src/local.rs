//! The local knowledge index of the embedded default: one folder per knowledge base under a root
//! directory (`CXBCORE_KNOWLEDGE_DIR`, default [`DEFAULT_KNOWLEDGE_DIR`]), BM25 search with tantivy.
//!
//! ```text
//! assets/knowledge/
//!   demo/                 <- kb id "demo" (letters, digits, '-', '_', '.'; not starting with '.')
//!     orders.md
//!     billing/faq.txt     <- subfolders are read too (up to 8 levels)
//! ```
//!
//! * **Files**: `.md`, `.markdown` and `.txt`, UTF-8 (invalid bytes become U+FFFD). Hidden files
//!   (editor swap files) are skipped. PDFs are not read: the Rust PDF text extractors panic on
//!   malformed files by design (pdf-extract issue #129: "tending toward panic instead of returning
//!   an error"), and a knowledge folder is input the worker does not control. Convert PDFs to text
//!   first, or use CXB API's ingestion.
//! * **Chunks**: [`crate::chunk`] (~1,200 characters, ~200 overlap, paragraph/sentence
//!   boundaries). Title: the document's first Markdown heading, else the file name without its
//!   extension. Ids: document `"{kb}/{path inside the kb}"`, chunk `"{document}#{n}"`.
//! * **Index**: in memory (tantivy's RAM directory). The corpus is small by nature (the embedded
//!   default serves development, demos and single-tenant installs), indexing takes about 0.12 s
//!   per thousand chunks (`benches/search.rs`), and an index rebuilt at start has no on-disk state
//!   to migrate, lock or corrupt.
//! * **Changes**: [`LocalKnowledge::refresh`] compares each knowledge base's file list, sizes
//!   and modification times with the last indexed ones and re-indexes only a knowledge base that
//!   changed (or drops one that disappeared). [`LocalKnowledge::spawn_refresher`] runs it every few
//!   seconds. A periodic scan instead of a file-system watcher: it works on every file system
//!   (inotify sees nothing on network mounts and some container bind mounts, and has per-user
//!   watch limits), needs no event debouncing (an editor's save is several events), and costs one
//!   `stat` per file per interval.
//!
//! # Scores
//!
//! BM25 scores have no fixed scale, so `score_threshold` could mean nothing. A hit's score is
//! its BM25 score divided by the sum of the query terms' IDFs, capped at 1:
//!
//! `score = min(1, bm25(chunk, query) / Σ idf(t) for each distinct term t of the query)`
//!
//! In tantivy's BM25 (k1 = 1.2, b = 0.75) a term found once in a chunk of average length
//! contributes exactly its IDF, so **1.0 means every query term occurs in the chunk** (at least
//! once, in a chunk of average length; more often or in a shorter chunk saturates at 1), and a
//! score of 0.5 means the matched terms carry half of the query's IDF weight. Rare words weigh
//! more than common ones, and query words absent from every knowledge base still count in the
//! denominator: "what is the warranty on cars" scores low against a knowledge base that never
//! mentions cars. Useful thresholds are around 0.2–0.4. Statistics (IDF, average length) are
//! those of the whole index, all knowledge bases together.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::BoxFuture;
use tantivy::collector::TopDocs;
use tantivy::query::{Bm25StatisticsProvider, BooleanQuery, ConstScoreQuery, Occur, Query, TermQuery};
use tantivy::schema::{Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, Value as _, STORED, STRING};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, TantivyDocument, Term};
use tracing::{info, warn};

use crate::chunk::{chunk_text, ChunkOptions};
use crate::query::finish_hits;
use crate::tokenizer::{analyze, MultilingualTokenizer, TOKENIZER_NAME};
use crate::{Hit, KnowledgeError, KnowledgeQuery, KnowledgeSource};

/// Where the embedded default looks for knowledge bases.
pub const DEFAULT_KNOWLEDGE_DIR: &str = "assets/knowledge";
/// How often [`LocalKnowledge::spawn_refresher`] looks for changes by default.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// Most distinct query terms searched (the rest of a very long query is ignored).
pub const MAX_QUERY_TERMS: usize = 64;

/// File extensions read (lowercase).
const EXTENSIONS: [&str; 3] = ["md", "markdown", "txt"];
/// The index writer's memory budget (tantivy's minimum is 15 MB per thread).
const WRITER_MEMORY_BYTES: usize = 32_000_000;

/// Bounds on what a knowledge folder may make the worker read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalLimits {
    /// Larger files are skipped (with a warning).
    pub max_file_bytes: u64,
    /// Files past this many in one knowledge base are ignored.
    pub max_files_per_kb: usize,
    /// Files are read until a knowledge base holds this many bytes; the rest are ignored.
    pub max_kb_bytes: u64,
    /// Subfolder depth read inside a knowledge base folder.
    pub max_depth: usize,
    /// Chunk sizes.
    pub chunk: ChunkOptions,
}

impl Default for LocalLimits {
    fn default() -> Self {
        LocalLimits {
            max_file_bytes: 4 * 1024 * 1024,
            max_files_per_kb: 10_000,
            max_kb_bytes: 128 * 1024 * 1024,
            max_depth: 8,
            chunk: ChunkOptions::default(),
        }
    }
}

/// What a [`LocalKnowledge::refresh`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefreshReport {
    /// Knowledge bases (re-)indexed, new or changed.
    pub reindexed: Vec<String>,
    /// Knowledge bases dropped because their folder is gone.
    pub removed: Vec<String>,
    /// Knowledge bases left as they were.
    pub unchanged: usize,
}

impl RefreshReport {
    /// True when the index changed.
    pub fn changed(&self) -> bool {
        !self.reindexed.is_empty() || !self.removed.is_empty()
    }
}

/// One knowledge base's indexed state.
#[derive(Debug, Clone, Default)]
struct KbState {
    stamps: Vec<FileStamp>,
    documents: usize,
    chunks: usize,
}

/// What identifies a version of a file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    /// Path inside the knowledge base folder.
    relative: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
}

#[derive(Debug, Clone, Copy)]
struct Fields {
    kb_id: Field,
    document_id: Field,
    chunk_id: Field,
    title: Field,
    text: Field,
    /// Title and chunk text, analysed; not stored.
    content: Field,
}

struct Inner {
    root: PathBuf,
    limits: LocalLimits,
    fields: Fields,
    reader: IndexReader,
    writer: Mutex<IndexWriter>,
    kbs: Mutex<BTreeMap<String, KbState>>,
}

/// The local index. Cheap to clone (shared); searches run concurrently with a refresh.
#[derive(Clone)]
pub struct LocalKnowledge {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LocalKnowledge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKnowledge").field("root", &self.inner.root).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A folder name usable as a knowledge base id.
pub fn valid_kb_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl LocalKnowledge {
    /// Indexes every knowledge base under `root` with the default limits. A missing root is an
    /// empty index (knowledge bases appear when it is created and [`refresh`](Self::refresh)
    /// runs); a root that cannot be listed for another reason is an error.
    ///
    /// Blocking (reads files, builds the index): call it from `spawn_blocking` in async code.
    pub fn open(root: impl Into<PathBuf>) -> Result<LocalKnowledge, KnowledgeError> {
        Self::open_with(root, LocalLimits::default())
    }

    /// [`open`](Self::open) with explicit limits.
    pub fn open_with(root: impl Into<PathBuf>, limits: LocalLimits) -> Result<LocalKnowledge, KnowledgeError> {
        let mut schema = Schema::builder();
        let analysed = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default().set_tokenizer(TOKENIZER_NAME).set_index_option(IndexRecordOption::WithFreqs),
        );
        let fields = Fields {
            kb_id: schema.add_text_field("kb_id", STRING | STORED),
            document_id: schema.add_text_field("document_id", STORED),
            chunk_id: schema.add_text_field("chunk_id", STORED),
            title: schema.add_text_field("title", STORED),
            text: schema.add_text_field("text", STORED),
            content: schema.add_text_field("content", analysed),
        };
        let index = Index::create_in_ram(schema.build());
        index.tokenizers().register(TOKENIZER_NAME, MultilingualTokenizer::default());
        let writer = index.writer_with_num_threads(1, WRITER_MEMORY_BYTES)?;
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        let knowledge = LocalKnowledge {
            inner: Arc::new(Inner {
                root: root.into(),
                limits,
                fields,
                reader,
                writer: Mutex::new(writer),
                kbs: Mutex::new(BTreeMap::new()),
            }),
        };
        knowledge.refresh()?;
        Ok(knowledge)
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Indexed knowledge bases with their document and chunk counts.
    pub fn knowledge_bases(&self) -> Vec<(String, usize, usize)> {
        lock(&self.inner.kbs).iter().map(|(id, s)| (id.clone(), s.documents, s.chunks)).collect()
    }

    /// Chunks searchable now.
    pub fn chunk_count(&self) -> u64 {
        self.inner.reader.searcher().num_docs()
    }

    /// Re-indexes knowledge bases whose files changed since the last look, drops those whose
    /// folder is gone, and makes the result searchable. Blocking; one refresh at a time.
    ///
    /// A knowledge base that cannot be listed keeps its previous content (with a warning); an
    /// unreadable or oversized file is skipped (with a warning).
    pub fn refresh(&self) -> Result<RefreshReport, KnowledgeError> {
        let inner = &self.inner;
        let mut writer = lock(&inner.writer);
        let mut kbs = lock(&inner.kbs);
        let found = list_kb_folders(&inner.root)?;
        let mut report = RefreshReport::default();
        for (kb, dir) in &found {
            let stamps = match stamp_kb(dir, &inner.limits) {
                Ok(s) => s,
                Err(e) => {
                    warn!(kb_id = %kb, "knowledge base not refreshed: {e}");
                    report.unchanged += 1;
                    continue;
                }
            };
            if kbs.get(kb).is_some_and(|s| s.stamps == stamps) {
                report.unchanged += 1;
                continue;
            }
            let started = Instant::now();
            writer.delete_term(Term::from_field_text(inner.fields.kb_id, kb));
            let state = index_kb(&writer, inner.fields, kb, dir, stamps, &inner.limits)?;
            info!(
                kb_id = %kb, documents = state.documents, chunks = state.chunks,
                elapsed_ms = started.elapsed().as_millis() as u64, "knowledge base indexed"
            );
            kbs.insert(kb.clone(), state);
            report.reindexed.push(kb.clone());
        }
        let gone: Vec<String> = kbs.keys().filter(|k| !found.contains_key(*k)).cloned().collect();
        for kb in gone {
            writer.delete_term(Term::from_field_text(inner.fields.kb_id, &kb));
            kbs.remove(&kb);
            info!(kb_id = %kb, "knowledge base removed");
            report.removed.push(kb);
        }
        if report.changed() {
            writer.commit()?;
            inner.reader.reload()?;
        }
        Ok(report)
    }

    /// Runs [`refresh`](Self::refresh) every `every` on a blocking thread until the handle is
    /// aborted (or the runtime stops). Needs a tokio runtime.
    pub fn spawn_refresher(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // the first tick is immediate; `open` has just indexed
            loop {
                tick.tick().await;
                let t = this.clone();
                match tokio::task::spawn_blocking(move || t.refresh()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => warn!(root = %this.root().display(), "knowledge refresh failed: {e}"),
                    Err(e) => warn!(root = %this.root().display(), "knowledge refresh did not run: {e}"),
                }
            }
        })
    }

    /// One search (blocking; the [`KnowledgeSource`] implementation runs it on a blocking
    /// thread). Empty `kb_ids` means the knowledge base named like `bot_id`.
    pub fn search_blocking(&self, query: &KnowledgeQuery) -> Result<Vec<Hit>, KnowledgeError> {
        let query = query.bounded();
        if query.query.is_empty() {
            return Err(KnowledgeError::EmptyQuery);
        }
        let kb_ids = if query.kb_ids.is_empty() { vec![query.bot_id.clone()] } else { query.kb_ids.clone() };
        let kb_ids: Vec<&String> = kb_ids.iter().filter(|k| valid_kb_id(k)).collect();
        let mut seen = HashSet::new();
        let terms: Vec<Term> = analyze(&query.query)
            .into_iter()
            .filter(|t| seen.insert(t.clone()))
            .take(MAX_QUERY_TERMS)
            .map(|t| Term::from_field_text(self.inner.fields.content, &t))
            .collect();
        if kb_ids.is_empty() || terms.is_empty() {
            return Ok(Vec::new());
        }
        let f = self.inner.fields;
        let searcher = self.inner.reader.searcher();
        let norm = idf_sum(&searcher, &terms)?;

        let any_term: Vec<Box<dyn Query>> = terms
            .into_iter()
            .map(|t| Box::new(TermQuery::new(t, IndexRecordOption::WithFreqs)) as Box<dyn Query>)
            .collect();
        let in_kbs: Vec<Box<dyn Query>> = kb_ids
            .iter()
            .map(|k| Box::new(TermQuery::new(Term::from_field_text(f.kb_id, k), IndexRecordOption::Basic)) as _)
            .collect();
        // The kb filter must not add to the score: it is a constant 0.
        let query_tree = BooleanQuery::new(vec![
            (Occur::Must, Box::new(BooleanQuery::union(any_term)) as Box<dyn Query>),
            (Occur::Must, Box::new(ConstScoreQuery::new(Box::new(BooleanQuery::union(in_kbs)), 0.0))),
        ]);
        let top = searcher.search(&query_tree, &TopDocs::with_limit(query.top_k as usize))?;
        let mut hits = Vec::with_capacity(top.len());
        for (bm25, address) in top {
            let doc: TantivyDocument = searcher.doc(address)?;
            let text_of = |field: Field| doc.get_first(field).and_then(|v| v.as_str()).unwrap_or_default().to_string();
            let title = text_of(f.title);
            hits.push(Hit {
                chunk_id: text_of(f.chunk_id),
                document_id: text_of(f.document_id),
                kb_id: text_of(f.kb_id),
                text: text_of(f.text),
                score: if norm > 0.0 { (f64::from(bm25) / norm).min(1.0) } else { 0.0 },
                title: (!title.is_empty()).then_some(title),
            });
        }
        Ok(finish_hits(hits, &query))
    }
}

impl KnowledgeSource for LocalKnowledge {
    fn search<'a>(&'a self, query: &'a KnowledgeQuery) -> BoxFuture<'a, Result<Vec<Hit>, KnowledgeError>> {
        let this = self.clone();
        let query = query.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || this.search_blocking(&query))
                .await
                .map_err(|e| KnowledgeError::Internal(e.to_string()))?
        })
    }

    fn name(&self) -> &'static str {
        "local"
    }
}

/// Σ idf over the query terms, with the statistics BM25 itself uses (tantivy's `idf`:
/// `ln(1 + (N − n + 0.5) / (n + 0.5))`).
fn idf_sum(searcher: &Searcher, terms: &[Term]) -> Result<f64, KnowledgeError> {
    let n_docs = searcher.total_num_docs()? as f64;
    let mut sum = 0.0;
    for t in terms {
        let df = (Bm25StatisticsProvider::doc_freq(searcher, t)? as f64).min(n_docs);
        sum += (1.0 + (n_docs - df + 0.5) / (df + 0.5)).ln();
    }
    Ok(sum)
}

/// Knowledge base folders under `root` by id. A missing root is empty.
fn list_kb_folders(root: &Path) -> Result<BTreeMap<String, PathBuf>, KnowledgeError> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => return Err(KnowledgeError::Io { path: root.to_path_buf(), source }),
    };
    let mut out = BTreeMap::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
        if valid_kb_id(&name) && path.is_dir() {
            out.insert(name, path);
        }
    }
    Ok(out)
}

/// The stamps of a knowledge base's readable files, sorted by path; bounded by the limits.
fn stamp_kb(dir: &Path, limits: &LocalLimits) -> Result<Vec<FileStamp>, KnowledgeError> {
    let mut stamps = Vec::new();
    let mut pending = vec![(dir.to_path_buf(), 0usize)];
    while let Some((folder, depth)) = pending.pop() {
        let entries =
            std::fs::read_dir(&folder).map_err(|source| KnowledgeError::Io { path: folder.clone(), source })?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            let Ok(file_type) = entry.file_type() else { continue };
            if file_type.is_dir() {
                // Symlinked folders are not followed (`file_type` does not follow links): no loops.
                if depth < limits.max_depth {
                    pending.push((path, depth + 1));
                }
                continue;
            }
            let readable = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            if !readable || !meta.is_file() {
                continue;
            }
            let relative = path.strip_prefix(dir).unwrap_or(&path).to_path_buf();
            stamps.push(FileStamp { relative, len: meta.len(), modified: meta.modified().ok() });
        }
    }
    stamps.sort_by(|a, b| a.relative.cmp(&b.relative));
    if stamps.len() > limits.max_files_per_kb {
        warn!(dir = %dir.display(), files = stamps.len(), limit = limits.max_files_per_kb, "too many knowledge files; the rest are ignored");
        stamps.truncate(limits.max_files_per_kb);
    }
    Ok(stamps)
}

/// Adds every chunk of a knowledge base to the writer (not committed).
fn index_kb(
    writer: &IndexWriter,
    f: Fields,
    kb: &str,
    dir: &Path,
    stamps: Vec<FileStamp>,
    limits: &LocalLimits,
) -> Result<KbState, KnowledgeError> {
    let mut state = KbState { stamps, documents: 0, chunks: 0 };
    let mut bytes_read = 0u64;
    for stamp in &state.stamps {
        let path = dir.join(&stamp.relative);
        if stamp.len > limits.max_file_bytes {
            warn!(path = %path.display(), bytes = stamp.len, limit = limits.max_file_bytes, "knowledge file too large; skipped");
            continue;
        }
        if bytes_read + stamp.len > limits.max_kb_bytes {
            warn!(kb_id = %kb, limit = limits.max_kb_bytes, "knowledge base too large; the remaining files are ignored");
            break;
        }
        let raw = match std::fs::read(&path) {
            Ok(b) if b.len() as u64 <= limits.max_file_bytes => b,
            Ok(_) => continue, // grew past the limit since it was listed; the next refresh sees it
            Err(e) => {
                warn!(path = %path.display(), "knowledge file not readable: {e}");
                continue;
            }
        };
        bytes_read += raw.len() as u64;
        let text = match String::from_utf8(raw) {
            Ok(t) => t,
            Err(e) => {
                warn!(path = %path.display(), "knowledge file is not valid UTF-8; invalid bytes replaced");
                String::from_utf8_lossy(e.as_bytes()).into_owned()
            }
        };
        let text = text.trim_start_matches('\u{feff}').replace("\r\n", "\n");
        let relative =
            stamp.relative.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
        let document_id = format!("{kb}/{relative}");
        let title = document_title(&text, &stamp.relative);
        let mut chunks = 0;
        for (n, chunk) in chunk_text(&text, limits.chunk).into_iter().enumerate() {
            let mut doc = TantivyDocument::new();
            doc.add_text(f.kb_id, kb);
            doc.add_text(f.document_id, &document_id);
            doc.add_text(f.chunk_id, format!("{document_id}#{n}"));
            doc.add_text(f.title, &title);
            doc.add_text(f.text, chunk);
            doc.add_text(f.content, format!("{title}\n{chunk}"));
            writer.add_document(doc)?;
            chunks += 1;
        }
        state.documents += 1;
        state.chunks += chunks;
    }
    Ok(state)
}

/// The first Markdown heading (`# …` to `###### …`), else the file name without extension.
pub fn document_title(text: &str, path: &Path) -> String {
    let heading = text.lines().find_map(|line| {
        let line = line.trim();
        let level = line.chars().take_while(|&c| c == '#').count();
        let rest = &line[level..];
        ((1..=6).contains(&level) && rest.starts_with([' ', '\t']))
            .then(|| rest.trim().trim_end_matches('#').trim().to_string())
            .filter(|t| !t.is_empty())
    });
    heading.unwrap_or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_come_from_the_first_heading_or_the_file_name() {
        let p = Path::new("billing/late-fees.md");
        assert_eq!(document_title("intro\n## Late fees ##\n# Other", p), "Late fees");
        assert_eq!(document_title("#hashtag only\n#### \n", p), "late-fees");
        assert_eq!(document_title("####### seven is no heading", p), "late-fees");
        assert_eq!(document_title("# शुल्क", p), "शुल्क");
    }

    #[test]
    fn kb_ids_are_plain_folder_names() {
        assert!(valid_kb_id("demo") && valid_kb_id("kb_1.v2"));
        for bad in ["", ".git", "a b", "ज्ञान", "../x", &"k".repeat(129)] {
            assert!(!valid_kb_id(bad), "{bad}");
        }
    }
}
