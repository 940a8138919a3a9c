//! The fuzz targets on stable Rust, for CI: every target replays its seed corpus, then runs
//! randomly mutated inputs — a few hundred by default, or for `FUZZ_SMOKE_SECS` seconds per target
//! (`fuzz/smoke.sh`). The coverage-guided campaigns are cargo-fuzz's (`fuzz/README.md`); this
//! catches a regression in a parser, or a target that no longer builds, within the CI budget.
//!
//! A failing input is written to `target/fuzz-smoke/<target>-<hash>` (replay it with
//! `cargo +nightly fuzz run <target> <file>` or `FUZZ_SMOKE_REPLAY=<file>`), and the mutation seed is
//! printed so a run can be repeated (`FUZZ_SMOKE_SEED`).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cxb_fuzz_targets::{seeds, Target, SEP, TARGETS};

/// Mutations per target when no time budget is given (plain `cargo test`).
const DEFAULT_MUTATIONS: u64 = 300;
/// Longest mutated input (the campaigns use the same `-max_len`).
const MAX_LEN: usize = 64 * 1024;
/// One input running this long is a hang: the harness reports it and aborts.
const HANG: Duration = Duration::from_secs(60);

/// Bytes that make parsers take other paths: JSON syntax, escapes, huge and odd numbers, UTF-8
/// edge cases, the record separator and record kinds.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"null",
    b"true",
    b"false",
    b"-",
    b"0",
    b"-0",
    b"1e999",
    b"-1",
    b"1.5",
    b"18446744073709551616",
    b"4294967296",
    b"NaN",
    b"\\u0000",
    b"\\ud800",
    b"\\u00e9",
    b"\xff",
    b"\xe0\xa4",
    b"\xf0\x9f\x98\x80",
    b"\r\n",
    b"\n\n",
    b"data: ",
    b"data: [DONE]\n\n",
    b":",
    b"=",
    b"%2e%2e",
    b"..",
    b"/",
    b"bytes=",
    b"\"event\"",
    b"\"media\"",
    b"\"payload\"",
    b"\"start\"",
    b"\"type\"",
    b"\"context_id\"",
    SEP,
    b"T",
    b"B",
    b"S",
    b"A",
    b"U",
    b"C",
    b"H",
    b"X",
    b"O",
    b"Q",
];

/// xorshift64*: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to four random edits of `input`, sometimes spliced with `other`.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(8) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 | 3 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                v.splice(at..at, token.iter().copied());
            }
            4 if !v.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(v.len());
                v.drain(at.min(end)..end);
            }
            5 if !v.is_empty() => {
                let start = rng.below(v.len());
                let end = (start + 1 + rng.below(64)).min(v.len());
                let piece = v[start..end].to_vec();
                v.splice(at..at, piece);
            }
            6 => {
                let start = rng.below(other.len() + 1);
                let end = (start + rng.below(256)).min(other.len());
                v.truncate(at);
                v.extend_from_slice(&other[start..end]);
            }
            _ => v.truncate(at),
        }
    }
    v.truncate(MAX_LEN);
    v
}

/// Progress shared with the hang watchdog.
#[derive(Default)]
struct Progress {
    runs: AtomicU64,
    current: Mutex<(String, Vec<u8>)>,
}

fn crash_dir() -> PathBuf {
    seeds::repo_root().join("target/fuzz-smoke")
}

fn save(target: &str, input: &[u8]) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    input.hash(&mut h);
    let path = crash_dir().join(format!("{target}-{:016x}", h.finish()));
    std::fs::create_dir_all(crash_dir()).and_then(|_| std::fs::write(&path, input)).expect("writing the failing input");
    path
}

/// Runs `input`; a panic fails the test with the input saved.
fn run_one(target: &Target, input: &[u8], progress: &Progress, what: &str) {
    *progress.current.lock().unwrap_or_else(|p| p.into_inner()) = (target.name.to_string(), input.to_vec());
    if catch_unwind(AssertUnwindSafe(|| (target.run)(input))).is_err() {
        let path = save(target.name, input);
        panic!("{} failed on {what}; input saved to {}", target.name, path.display());
    }
    progress.runs.fetch_add(1, Ordering::Relaxed);
}

fn watchdog(progress: Arc<Progress>) {
    std::thread::spawn(move || {
        let (mut last, mut since) = (u64::MAX, Instant::now());
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let now = progress.runs.load(Ordering::Relaxed);
            if now != last {
                (last, since) = (now, Instant::now());
            } else if since.elapsed() > HANG {
                let (target, input) = progress.current.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let path = save(&target, &input);
                eprintln!("{target}: one input ran for over {HANG:?}; saved to {}", path.display());
                std::process::abort();
            }
        }
    });
}

#[test]
fn every_target_survives_its_seeds_and_mutations() {
    let budget = std::env::var("FUZZ_SMOKE_SECS").ok().and_then(|s| s.parse::<f64>().ok()).map(Duration::from_secs_f64);
    let seed = std::env::var("FUZZ_SMOKE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        if budget.is_some() {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1
        } else {
            0x5EED
        }
    });
    println!("mutation seed {seed} (FUZZ_SMOKE_SEED={seed} repeats this run)");
    // Parsers log what they drop; a panic's message is what matters here.
    let progress = Arc::new(Progress::default());
    watchdog(Arc::clone(&progress));
    for target in TARGETS {
        let started = Instant::now();
        let corpus: Vec<Vec<u8>> = seeds::seeds(target.name).into_iter().map(|(_, b)| b).collect();
        assert!(!corpus.is_empty(), "{}: no seeds", target.name);
        for input in &corpus {
            run_one(target, input, &progress, "a seed");
        }
        let mut rng = Rng(seed ^ (target.name.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut runs = 0u64;
        while match budget {
            Some(b) => started.elapsed() < b,
            None => runs < DEFAULT_MUTATIONS,
        } {
            let base = &corpus[rng.below(corpus.len())];
            let other = &corpus[rng.below(corpus.len())];
            let input = mutate(&mut rng, base, other);
            run_one(target, &input, &progress, "a mutated input");
            runs += 1;
        }
        println!(
            "{:<20} {:>4} seeds {:>8} mutations {:>6.1} s",
            target.name,
            corpus.len(),
            runs,
            started.elapsed().as_secs_f64()
        );
    }
}

/// `FUZZ_SMOKE_REPLAY=<file> [FUZZ_SMOKE_TARGET=<name>]`: run one saved input (the target is
/// taken from the file name `<target>-<hash>` when not given).
#[test]
fn replay_a_saved_input() {
    let Some(path) = std::env::var_os("FUZZ_SMOKE_REPLAY").map(PathBuf::from) else { return };
    let name = std::env::var("FUZZ_SMOKE_TARGET").unwrap_or_else(|_| {
        let file = path.file_name().and_then(|f| f.to_str()).unwrap_or_default();
        file.rsplit_once('-').map_or(file, |(t, _)| t).to_string()
    });
    let target = cxb_fuzz_targets::target(&name).unwrap_or_else(|| panic!("no target {name:?}"));
    let input = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (target.run)(&input);
}

/// The cargo-fuzz binaries (`fuzz/Cargo.toml`, `fuzz/fuzz_targets/`) are exactly these targets.
#[test]
fn cargo_fuzz_has_a_binary_per_target() {
    let fuzz = seeds::repo_root().join("fuzz");
    let manifest = std::fs::read_to_string(fuzz.join("Cargo.toml")).expect("fuzz/Cargo.toml");
    let mut bins: Vec<String> = manifest
        .lines()
        .filter_map(|l| l.trim().strip_prefix("name = \""))
        .filter_map(|l| l.strip_suffix('"'))
        .filter(|n| *n != "cxb-fuzz")
        .map(str::to_string)
        .collect();
    bins.sort();
    let mut names: Vec<String> = TARGETS.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(bins, names, "fuzz/Cargo.toml [[bin]]s vs cxb_fuzz_targets::TARGETS");
    for t in TARGETS {
        let src = std::fs::read_to_string(fuzz.join(format!("fuzz_targets/{}.rs", t.name)))
            .unwrap_or_else(|e| panic!("fuzz/fuzz_targets/{}.rs: {e}", t.name));
        assert!(src.contains(&format!("run_target(\"{}\"", t.name)), "fuzz_targets/{}.rs runs another target", t.name);
    }
}
