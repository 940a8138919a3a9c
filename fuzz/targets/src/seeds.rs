//! Seed corpora, built from what real peers send: the telephony wire fixtures
//! (`tests/fixtures/wire/`, from the providers' docs and integrations) and the hand-written
//! vendor messages under `fuzz/seeds/<target>/` (shapes from `shared/spec/wire-protocols*.md` and
//! the providers' SDKs, cited in `fuzz/seeds/README.md`). `fuzz/seed.sh` writes them to
//! `fuzz/corpus/<target>/` for the campaigns; the smoke test replays them directly.
//!
//! Files under `fuzz/seeds/<target>/`: `*.jsonl` is a stream (one message per line, each a `T`
//! record; for Cartesia the contexts `turn-1` and `turn-2` are opened first), `*.sse` a response
//! body (whole, and cut into small pieces), anything else one input as it is.

use std::path::{Path, PathBuf};

use crate::records::join;

/// The repository root (the seeds are read from the source tree).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The seed inputs of `target`, named (file-name-safe names, unique per target).
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = match target.strip_prefix("transport_") {
        Some(proto) => transport_seeds(proto),
        None => Vec::new(),
    };
    if target == "recording_range" {
        out.extend(range_seeds());
    }
    if target == "bot_config" {
        out.extend(files(&repo_root().join("assets/bots")).into_iter().map(|(n, b)| (format!("asset-{n}"), b)));
    }
    for (name, bytes) in files(&repo_root().join("fuzz/seeds").join(target)) {
        out.extend(seed_file(target, &name, &bytes));
    }
    out
}

/// The regular files of `dir`, sorted by name (none when the directory does not exist).
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(read) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<(String, Vec<u8>)> = read
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| Some((e.file_name().into_string().ok()?, std::fs::read(e.path()).ok()?)))
        .collect();
    out.sort();
    out
}

fn seed_file(target: &str, name: &str, bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
    if name.ends_with(".jsonl") {
        let mut recs: Vec<(u8, &[u8])> = Vec::new();
        if target == "tts_cartesia" {
            recs.extend([(b'o', &b"turn-1"[..]), (b'o', &b"turn-2"[..])]);
        }
        recs.extend(bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| (b'T', l)));
        return vec![(stem.to_string(), join(recs))];
    }
    if name.ends_with(".sse") {
        let pieces = bytes.chunks(7).map(|c| (b'T', c));
        return vec![(stem.to_string(), join([(b'T', bytes)])), (format!("{stem}-split"), join(pieces))];
    }
    vec![(stem.to_string(), bytes.to_vec())]
}

fn transport_seeds(proto: &str) -> Vec<(String, Vec<u8>)> {
    let dir = repo_root().join("tests/fixtures/wire").join(proto);
    let fixtures: Vec<(String, Vec<u8>)> = files(&dir).into_iter().filter(|(n, _)| n.starts_with("in-")).collect();
    let text = |n: &str| fixtures.iter().find(|(f, _)| f == n).map(|(_, b)| b.as_slice());
    let mut out = Vec::new();
    for (name, bytes) in &fixtures {
        let stem = name.trim_end_matches(".json").trim_end_matches(".hex");
        if let Some(hex) = name.strip_suffix(".hex").map(|_| bytes) {
            // A binary frame written as hex.
            let raw = decode_hex(hex);
            out.push((
                format!("{stem}-call"),
                join([(b'S', &b""[..]), (b'B', &raw), (b'A', b"\x10"), (b'U', b""), (b'C', b"")]),
            ));
            continue;
        }
        // As a handshake frame, and as an in-call frame of an answered call.
        out.push((stem.to_string(), join([(b'T', bytes.as_slice())])));
        out.push((
            format!("{stem}-call"),
            join([
                (b'S', &b""[..]),
                (b'T', bytes),
                (b'A', b"\x7f"),
                (b'U', b""),
                (b'T', bytes),
                (b'C', b""),
                (b'H', b""),
            ]),
        ));
    }
    // Whole handshakes with every start variant, then media and the bot's side.
    let media = text("in-media.json").unwrap_or_default();
    for (name, start) in fixtures.iter().filter(|(n, _)| n.starts_with("in-start") || n.starts_with("in-connected-")) {
        let mut recs: Vec<(u8, &[u8])> = Vec::new();
        if let Some(connected) = text("in-connected.json").filter(|_| name.starts_with("in-start")) {
            recs.push((b'T', connected));
        }
        recs.push((b'T', start));
        recs.extend(text("in-answer.json").map(|a| (b'T', a)));
        recs.extend([(b'T', media), (b'A', b"\x01\x02"), (b'U', b""), (b'X', b"+15550001111"), (b'H', b"")]);
        out.push((format!("handshake-{}", name.trim_end_matches(".json")), join(recs)));
    }
    let config = std::fs::read(repo_root().join("fuzz/seeds/bot_config/telephony.json")).unwrap_or_default();
    out.push(("config".into(), join([(b'S', &b""[..]), (b'O', &config), (b'T', media), (b'H', b"")])));
    for query in ["sample-rate=16000&from=%2B1555&to=100", "sample-rate=24000&k=v", "sample_rate=8kHz"] {
        let name = format!("query-{}", query.split('&').next().unwrap_or_default().replace('=', "-"));
        out.push((name, join([(b'Q', query.as_bytes()), (b'S', b""), (b'T', media), (b'A', b"\x40"), (b'U', b"")])));
    }
    out.retain(|_| !fixtures.is_empty());
    out
}

fn decode_hex(text: &[u8]) -> Vec<u8> {
    let digits: Vec<u8> = text.iter().copied().filter(u8::is_ascii_hexdigit).collect();
    let nibble = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
    digits.chunks_exact(2).map(|p| nibble(p[0]) << 4 | nibble(p[1])).collect()
}

/// `Range` headers as browsers and the CXB API's proxy send them, against a few file sizes.
fn range_seeds() -> Vec<(String, Vec<u8>)> {
    let headers =
        ["bytes=0-99", "bytes=100-", "bytes=-500", "bytes=0-0", "bytes=0-1,5-6", "bytes= 10 - 20 ", "items=0-1"];
    let mut out = Vec::new();
    for (i, size) in [0u64, 1, 1000, u64::MAX].into_iter().enumerate() {
        for (j, h) in headers.iter().enumerate() {
            let mut input = size.to_le_bytes().to_vec();
            input.extend_from_slice(h.as_bytes());
            out.push((format!("range-{i}-{j}"), input));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_has_seeds() {
        for t in crate::TARGETS {
            assert!(!seeds(t.name).is_empty(), "no seeds for {}", t.name);
        }
    }
}
