//! The local index over real folders: ranking, kb filtering, languages, scores, limits, refresh.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cxb_knowledge::{Hit, KnowledgeError, KnowledgeQuery, KnowledgeSource, LocalKnowledge, LocalLimits};

fn write(root: &Path, relative: &str, text: impl AsRef<[u8]>) {
    let path = root.join(relative);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

fn query(text: &str, kb_ids: &[&str]) -> KnowledgeQuery {
    let mut q = KnowledgeQuery::new(text, kb_ids.iter().map(|s| s.to_string()).collect());
    q.top_k = 10;
    q
}

fn search(k: &LocalKnowledge, text: &str, kb_ids: &[&str]) -> Vec<Hit> {
    k.search_blocking(&query(text, kb_ids)).expect("search")
}

fn docs(hits: &[Hit]) -> Vec<&str> {
    hits.iter().map(|h| h.document_id.as_str()).collect()
}

/// Two knowledge bases: a shop (`shop`) and a bank (`bank`) that talks about refunds a lot.
fn corpus() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(
        root,
        "shop/returns.md",
        "# Returns\n\nYou can return unused items within 30 days. Refunds reach your card in 5 to 7 days.\n",
    );
    write(
        root,
        "shop/delivery.md",
        "# Delivery\n\nStandard delivery takes 2 to 4 working days. Express delivery is next day.\n",
    );
    write(root, "shop/misc/hours.txt", "Our phone line is open from 9 am to 9 pm, every day.\n");
    write(
        root,
        "shop/hindi.md",
        "# हिंदी\n\nरिफंड पाँच से सात दिन में आपके खाते में आता है।\n\nRefund kitne din mein milega? Paisa 5 se 7 din mein wapas aata hai.\n",
    );
    write(
        root,
        "bank/refunds.md",
        "# Refunds refunds refunds\n\nRefund refund refund: a bank refund, refunds of refunds.\n",
    );
    dir
}

#[test]
fn ranking_and_kb_filtering() {
    let dir = corpus();
    let k = LocalKnowledge::open(dir.path()).expect("open");
    assert_eq!(
        k.knowledge_bases().iter().map(|(id, docs, _)| (id.as_str(), *docs)).collect::<Vec<_>>(),
        [("bank", 1), ("shop", 4)]
    );

    // The bank's page says "refund" far more often, but only the shop was asked for.
    let hits = search(&k, "when does my refund reach my card", &["shop"]);
    assert!(!hits.is_empty());
    assert!(hits.iter().all(|h| h.kb_id == "shop"), "{hits:?}");
    assert_eq!(hits[0].document_id, "shop/returns.md");
    assert_eq!(hits[0].title.as_deref(), Some("Returns"));
    assert_eq!(hits[0].chunk_id, "shop/returns.md#0");
    assert!(hits[0].text.starts_with("# Returns"), "chunk text is verbatim: {:?}", hits[0].text);
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score), "best first");

    // Both knowledge bases: the bank's page wins on term frequency.
    let both = search(&k, "refund", &["shop", "bank"]);
    assert_eq!(both[0].document_id, "bank/refunds.md");
    assert!(both.iter().any(|h| h.kb_id == "shop"));

    // Subfolders, titles from file names, top_k.
    let hours = search(&k, "when is the phone line open", &["shop"]);
    assert_eq!((hours[0].document_id.as_str(), hours[0].title.as_deref()), ("shop/misc/hours.txt", Some("hours")));
    let mut one = query("delivery days", &["shop"]);
    one.top_k = 1;
    assert_eq!(k.search_blocking(&one).expect("search").len(), 1);

    // Unknown and invalid kb ids find nothing; an empty query is an error.
    assert!(search(&k, "refund", &["nope", "../shop"]).is_empty());
    assert!(search(&k, "?!", &["shop"]).is_empty(), "a query without words finds nothing");
    assert!(matches!(k.search_blocking(&query("   ", &["shop"])), Err(KnowledgeError::EmptyQuery)));
}

#[test]
fn no_kb_ids_means_the_bots_own_knowledge_base() {
    let dir = corpus();
    let k = LocalKnowledge::open(dir.path()).expect("open");
    let mut q = query("refund", &[]);
    q.bot_id = "shop".into();
    let hits = k.search_blocking(&q).expect("search");
    assert!(!hits.is_empty() && hits.iter().all(|h| h.kb_id == "shop"), "{hits:?}");
    q.bot_id = String::new();
    assert!(k.search_blocking(&q).expect("search").is_empty());
}

#[test]
fn hindi_and_hinglish_queries_find_their_text() {
    let dir = corpus();
    let k = LocalKnowledge::open(dir.path()).expect("open");
    let hits = search(&k, "रिफंड कितने दिन में आता है", &["shop"]);
    assert_eq!(docs(&hits)[0], "shop/hindi.md");
    assert!(hits[0].text.contains("रिफंड पाँच से सात दिन"));
    // A word with a virama (पाँच has a candrabindu, खाते a vowel sign) is one term: partial
    // words do not match.
    assert!(search(&k, "खा", &["shop"]).is_empty());
    assert_eq!(docs(&search(&k, "खाते", &["shop"])), ["shop/hindi.md"]);
    // Hinglish: the romanised words match as written, whatever the case.
    let hits = search(&k, "Paisa WAPAS kitne din", &["shop"]);
    assert_eq!(docs(&hits)[0], "shop/hindi.md");
    // English stemming still works next to it.
    assert_eq!(docs(&search(&k, "returning", &["shop"]))[0], "shop/returns.md");
}

#[test]
fn scores_are_normalised_and_thresholds_mean_something() {
    let dir = corpus();
    let k = LocalKnowledge::open(dir.path()).expect("open");
    // Every query term in the chunk: the top score saturates at 1.
    let full = search(&k, "express delivery", &["shop"]);
    assert_eq!(full[0].document_id, "shop/delivery.md");
    assert!((full[0].score - 1.0).abs() < 1e-9, "{}", full[0].score);
    // Words no knowledge base has still weigh in the denominator: a half-matched question scores low.
    let partial = search(&k, "express delivery to mars by rocket spaceship", &["shop"]);
    assert_eq!(partial[0].document_id, "shop/delivery.md");
    assert!(partial[0].score < 0.5 && partial[0].score > 0.0, "{}", partial[0].score);
    assert!(search(&k, "mars rocket spaceship", &["shop"]).is_empty(), "no term matches: no hit at all");
    // All scores are in 0..=1, and the threshold drops what is under it.
    for h in search(&k, "refund delivery days return", &["shop", "bank"]) {
        assert!((0.0..=1.0).contains(&h.score), "{}", h.score);
    }
    let mut strict = query("express delivery to mars by rocket spaceship", &["shop"]);
    strict.score_threshold = 0.6;
    assert!(k.search_blocking(&strict).expect("search").is_empty());
    strict.score_threshold = partial[0].score;
    assert_eq!(k.search_blocking(&strict).expect("search").len(), 1, "a score equal to the threshold stays");
}

#[test]
fn long_documents_become_overlapping_chunks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut text = String::from("# Policy\n\n");
    for i in 0..60 {
        text.push_str(&format!("Clause {i} says the warranty covers part number {i} for one year. "));
        if i % 6 == 5 {
            text.push_str("\n\n");
        }
    }
    write(dir.path(), "kb/policy.md", &text);
    let k = LocalKnowledge::open(dir.path()).expect("open");
    let (_, documents, chunks) = k.knowledge_bases()[0].clone();
    assert_eq!(documents, 1);
    assert!(chunks >= 4, "{chunks}");
    assert_eq!(k.chunk_count(), chunks as u64);
    let hits = search(&k, "clause 42", &["kb"]);
    assert!(hits[0].text.contains("Clause 42 says"), "{:?}", hits[0].text);
    assert!(hits.iter().all(|h| h.text.chars().count() <= 1200 && h.title.as_deref() == Some("Policy")));
}

#[test]
fn unreadable_and_unwanted_files_are_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(root, "kb/good.md", "Warranty lasts one year.");
    write(root, "kb/.draft.md", "Warranty lasts ninety years.");
    write(root, "kb/manual.pdf", "%PDF-1.7 warranty");
    write(root, "kb/notes.TXT", b"Warranty \xff\xfe card.");
    write(root, "kb/huge.md", format!("warranty {}", "x ".repeat(600)));
    write(root, "kb/bom.md", "\u{feff}# Bom title\r\nWarranty on\r\nlines.");
    write(root, ".hidden-kb/a.md", "warranty");
    write(root, "bad name/a.md", "warranty");
    let limits = LocalLimits { max_file_bytes: 1000, ..LocalLimits::default() };
    let k = LocalKnowledge::open_with(root, limits).expect("open");
    assert_eq!(k.knowledge_bases().iter().map(|(id, ..)| id.as_str()).collect::<Vec<_>>(), ["kb"]);
    let hits = search(&k, "warranty", &["kb", ".hidden-kb", "bad name"]);
    let mut found = docs(&hits);
    found.sort_unstable();
    assert_eq!(found, ["kb/bom.md", "kb/good.md", "kb/notes.TXT"]);
    let notes = hits.iter().find(|h| h.document_id == "kb/notes.TXT").expect("notes");
    assert_eq!(notes.text, "Warranty \u{fffd}\u{fffd} card.");
    let bom = hits.iter().find(|h| h.document_id == "kb/bom.md").expect("bom");
    assert_eq!((bom.title.as_deref(), bom.text.as_str()), (Some("Bom title"), "# Bom title\nWarranty on\nlines."));
}

#[test]
fn a_missing_root_is_empty_until_it_appears() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("later");
    let k = LocalKnowledge::open(&root).expect("open");
    assert_eq!(k.chunk_count(), 0);
    assert!(search(&k, "anything", &["kb"]).is_empty());
    write(&root, "kb/a.md", "Now there is something.");
    assert_eq!(k.refresh().expect("refresh").reindexed, ["kb"]);
    assert_eq!(docs(&search(&k, "something", &["kb"])), ["kb/a.md"]);
}

#[test]
fn refresh_reindexes_only_what_changed() {
    let dir = corpus();
    let root = dir.path();
    let k = LocalKnowledge::open(root).expect("open");
    let nothing = k.refresh().expect("refresh");
    assert!(!nothing.changed());
    assert_eq!(nothing.unchanged, 2);

    // Change one file of one knowledge base (a different length: mtime granularity is not an issue).
    write(root, "shop/delivery.md", "# Delivery\n\nDrone delivery now reaches every pincode within one hour.\n");
    let report = k.refresh().expect("refresh");
    assert_eq!(
        (report.reindexed.clone(), report.removed.clone(), report.unchanged),
        (vec!["shop".to_string()], vec![], 1)
    );
    assert_eq!(docs(&search(&k, "drone", &["shop"])), ["shop/delivery.md"]);
    assert!(search(&k, "express", &["shop"]).is_empty(), "the old text is gone");
    assert_eq!(search(&k, "refund", &["shop"]).len(), 2, "the rest of the kb is still there, once");

    // A new knowledge base, a deleted file, a removed knowledge base.
    write(root, "faq/a.md", "Gift cards never expire.");
    std::fs::remove_file(root.join("shop/misc/hours.txt")).expect("rm");
    std::fs::remove_dir_all(root.join("bank")).expect("rm");
    let report = k.refresh().expect("refresh");
    let mut reindexed = report.reindexed.clone();
    reindexed.sort();
    assert_eq!(
        (reindexed, report.removed.clone()),
        (vec!["faq".to_string(), "shop".to_string()], vec!["bank".to_string()])
    );
    assert!(search(&k, "refund", &["bank"]).is_empty());
    assert!(search(&k, "phone line", &["shop"]).is_empty());
    assert_eq!(docs(&search(&k, "gift cards", &["faq"])), ["faq/a.md"]);
    assert_eq!(k.knowledge_bases().iter().map(|(id, ..)| id.as_str()).collect::<Vec<_>>(), ["faq", "shop"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresher_picks_up_changes_and_searches_run_through_the_trait() {
    let dir = corpus();
    let root: PathBuf = dir.path().to_path_buf();
    let k = LocalKnowledge::open(&root).expect("open");
    let refresher = k.spawn_refresher(Duration::from_millis(50));
    let source: std::sync::Arc<dyn KnowledgeSource> = std::sync::Arc::new(k.clone());
    assert_eq!(source.name(), "local");
    write(&root, "shop/new.md", "Loyalty points double on Fridays.");
    let q = query("loyalty points", &["shop"]);
    let mut found = Vec::new();
    // Bounded wait: the refresher runs every 50 ms; give it up to 10 s on a loaded machine.
    for _ in 0..200 {
        found = source.search(&q).await.expect("search");
        if !found.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    refresher.abort();
    assert_eq!(docs(&found), ["shop/new.md"]);
}

#[test]
fn the_demo_knowledge_base_answers_the_demo_callers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/knowledge");
    let k = LocalKnowledge::open(&root).expect("open");
    let mut q = query("I want to check my order status", &["demo"]);
    q.top_k = 3;
    let hits = k.search_blocking(&q).expect("search");
    assert_eq!(hits[0].document_id, "demo/orders-and-delivery.md", "{hits:?}");
    assert!(hits[0].text.contains("order status"), "{:?}", hits[0].text);
    let hits = search(&k, "a question about my bill", &["demo"]);
    assert_eq!(hits[0].document_id, "demo/billing.md", "{hits:?}");
    let hits = search(&k, "mera order kab aayega", &["demo"]);
    assert_eq!(hits[0].document_id, "demo/hindi-faq.md", "{hits:?}");
    let hits = search(&k, "रिफंड कब आएगा", &["demo"]);
    assert_eq!(hits[0].document_id, "demo/hindi-faq.md", "{hits:?}");
}
