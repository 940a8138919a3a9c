//! The local index at 10,000 chunks: build time (read + chunk + index) and query latency.
//!
//! `cargo bench -p cxb-knowledge --bench search` prints criterion's estimates, then a latency
//! distribution (p50 / p90 / p99 / max) of single queries over the generated query set.
//!
//! The corpus is generated deterministically (a fixed-seed LCG over a synthetic vocabulary with a
//! Zipf-like word distribution): 10 knowledge bases × 100 documents × 10 paragraphs of ~900
//! characters, which the chunker turns into 10,000 chunks (~8 MB of text).
//!
//! Measured on the 2-core development VM while other builds ran (load average ~7.5): index build
//! 1.22 s (read + chunk + index, 10,000 chunks); one top-3 query over 1 or 3 of the 10 knowledge
//! bases: criterion mean 128 µs, p50 85 µs, p90 106 µs, p99 3.5 ms (the tail is the thread being
//! preempted on the loaded machine, not the search).

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::Criterion;
use cxb_knowledge::{KnowledgeQuery, LocalKnowledge};

const KBS: usize = 10;
const DOCS_PER_KB: usize = 100;
const PARAGRAPHS_PER_DOC: usize = 10;
const PARAGRAPH_CHARS: usize = 850;

/// Deterministic pseudo-random numbers (Knuth's MMIX LCG).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    /// Zipf-like index in 0..n: small indices are much more frequent.
    fn zipf(&mut self, n: usize) -> usize {
        let u = (self.next() % 1_000_000) as f64 / 1_000_000.0;
        ((n as f64).powf(u) as usize).saturating_sub(1).min(n - 1)
    }
}

fn vocabulary() -> Vec<String> {
    let syllables =
        ["ka", "ri", "mo", "te", "sun", "pa", "lo", "ve", "din", "ra", "shi", "no", "tar", "ge", "bu", "lan"];
    let mut words = Vec::new();
    for a in syllables {
        for b in syllables {
            for c in ["", "s", "ing", "ed", "er"] {
                words.push(format!("{a}{b}{c}"));
            }
        }
    }
    words
}

fn paragraph(rng: &mut Lcg, vocab: &[String]) -> String {
    let mut p = String::new();
    while p.len() < PARAGRAPH_CHARS {
        let words = 8 + (rng.next() % 8) as usize;
        let sentence: Vec<&str> = (0..words).map(|_| vocab[rng.zipf(vocab.len())].as_str()).collect();
        let mut s = sentence.join(" ");
        s[..1].make_ascii_uppercase();
        p.push_str(&s);
        p.push_str(". ");
    }
    p.trim_end().to_string()
}

fn write_corpus(root: &Path) {
    let vocab = vocabulary();
    let mut rng = Lcg(42);
    for kb in 0..KBS {
        let dir = root.join(format!("kb{kb}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        for doc in 0..DOCS_PER_KB {
            let mut text = format!("# Document {doc} of knowledge base {kb}\n\n");
            for _ in 0..PARAGRAPHS_PER_DOC {
                text.push_str(&paragraph(&mut rng, &vocab));
                text.push_str("\n\n");
            }
            std::fs::write(dir.join(format!("doc{doc}.md")), text).expect("write");
        }
    }
}

fn queries() -> Vec<KnowledgeQuery> {
    let vocab = vocabulary();
    let mut rng = Lcg(7);
    (0..200)
        .map(|i| {
            let words = 3 + (rng.next() % 5) as usize;
            let text: Vec<&str> = (0..words).map(|_| vocab[rng.zipf(vocab.len())].as_str()).collect();
            // Half the queries search one knowledge base, half search three.
            let kb_ids =
                if i % 2 == 0 { vec![format!("kb{}", i % KBS)] } else { (0..3).map(|k| format!("kb{k}")).collect() };
            let mut q = KnowledgeQuery::new(text.join(" "), kb_ids);
            q.top_k = 3;
            q
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_corpus(dir.path());
    let knowledge = LocalKnowledge::open(dir.path()).expect("open");
    let chunks = knowledge.chunk_count();
    let queries = queries();
    eprintln!("corpus: {KBS} knowledge bases, {} documents, {chunks} chunks", KBS * DOCS_PER_KB);

    let mut c = Criterion::default().configure_from_args().sample_size(10).measurement_time(Duration::from_secs(20));
    c.bench_function("index_build_10k_chunks", |b| {
        b.iter(|| LocalKnowledge::open(dir.path()).expect("open").chunk_count())
    });
    let mut c = c.sample_size(50).measurement_time(Duration::from_secs(5));
    let mut i = 0usize;
    c.bench_function("query_top3_10k_chunks", |b| {
        b.iter(|| {
            i += 1;
            knowledge.search_blocking(&queries[i % queries.len()]).expect("search").len()
        })
    });
    c.final_summary();

    // Criterion reports central estimates; the tail needs the samples themselves. Skipped when
    // the bench binary runs as a test (`cargo test --benches`).
    if std::env::args().any(|a| a == "--bench") {
        let mut samples = Vec::with_capacity(queries.len() * 10);
        for _ in 0..10 {
            for q in &queries {
                let started = Instant::now();
                let hits = knowledge.search_blocking(q).expect("search");
                samples.push(started.elapsed());
                std::hint::black_box(hits);
            }
        }
        samples.sort_unstable();
        println!(
            "query latency over {} searches of {chunks} chunks: p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
            samples.len(),
            percentile(&samples, 0.50),
            percentile(&samples, 0.90),
            percentile(&samples, 0.99),
            samples[samples.len() - 1]
        );
    }
}
