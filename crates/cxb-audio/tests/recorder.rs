//! A simulated 30-minute call through the streaming recorder: tones injected at known instants
//! on both sides must be found at the right sample offsets (within one 20 ms frame), with
//! jittery, bursty and paused caller audio, paced bot playout with a 60 ms lead, barge-ins, and
//! memory that stays bounded throughout. Simulated time: runs in a few seconds.

use std::time::Duration;

use cxb_audio::recorder::{FileRecorder, RecorderConfig, RecordingStats};

const LEAD: Duration = Duration::from_millis(60);

/// Deterministic xorshift PRNG.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A tone sample: never zero (so onsets and ends are exact), alternating sign.
fn tone(i: u64) -> i16 {
    let v = 3000 + ((i * 37) % 2000) as i16;
    if i & 1 == 0 {
        v
    } else {
        -v
    }
}

#[derive(Debug)]
enum BotEv {
    Frame { tone_from: u64 },
    Clear,
}

struct Scenario {
    rate: u32,
    minutes: u64,
    /// Customer tones: (stream sample where it starts, length in samples).
    cust_tones: Vec<(u64, u64)>,
    /// Bot utterances: (start instant, length, cleared after).
    bot_utts: Vec<(Duration, Duration, Option<Duration>)>,
    /// Caller stalls (frames queued then delivered at once): (from, length).
    stalls: Vec<(Duration, Duration)>,
    /// Real sender pauses (frames never sent): (from frame, frames skipped).
    pauses: Vec<(u64, u64)>,
}

fn samples(d: Duration, rate: u32) -> u64 {
    d.as_micros() as u64 * rate as u64 / 1_000_000
}

struct Outcome {
    left: Vec<i16>,
    right: Vec<i16>,
    stats: RecordingStats,
    peak_buffered: usize,
}

fn simulate(sc: &Scenario, dir: &std::path::Path) -> Outcome {
    let rate = sc.rate;
    let f = (rate / 50) as u64;
    let total_frames = sc.minutes * 60 * 50;
    let path = dir.join(format!("call-{rate}.wav"));
    let mut rec = FileRecorder::create(&path, rate, RecorderConfig::default()).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ rate as u64);

    // Bot events: engine-style release of 20 ms frames LEAD ahead of their play time.
    let mut bot: Vec<(Duration, BotEv)> = Vec::new();
    for &(start, len, cleared) in &sc.bot_utts {
        let frames = samples(len, rate) / f;
        for j in 0..frames {
            let play = start + Duration::from_millis(20 * j);
            let release = play.saturating_sub(LEAD).max(start);
            if cleared.is_some_and(|c| release > start + c) {
                break;
            }
            bot.push((release, BotEv::Frame { tone_from: j * f }));
        }
        if let Some(c) = cleared {
            bot.push((start + c, BotEv::Clear));
        }
    }
    bot.sort_by_key(|(t, _)| *t);
    let mut bot = bot.into_iter().peekable();

    let mut frame = vec![0i16; f as usize];
    let mut chunk: Vec<i16> = Vec::with_capacity(4 * f as usize);
    let mut last_delivery = Duration::ZERO;
    let mut peak = 0usize;
    let mut k = 0u64;
    while k < total_frames {
        if let Some(&(from, n)) = sc.pauses.iter().find(|(from, _)| *from == k) {
            k = from + n;
            continue;
        }
        let nominal = Duration::from_millis(20 * (k + 1));
        let jitter = if k == 0 { Duration::ZERO } else { Duration::from_millis(rng.below(80)) };
        let mut at = (nominal + jitter).max(last_delivery);
        if let Some(&(s, l)) = sc.stalls.iter().find(|(s, l)| nominal > *s && nominal <= *s + *l) {
            at = at.max(s + l);
        }
        // Stream content of frame k.
        let (lo, hi) = (k * f, (k + 1) * f);
        match sc.cust_tones.iter().find(|(s, l)| *s < hi && s + l > lo) {
            None => frame.fill(0),
            Some(&(s, l)) => {
                for (i, x) in frame.iter_mut().enumerate() {
                    let pos = lo + i as u64;
                    *x = if pos >= s && pos < s + l { tone(pos - s) } else { 0 };
                }
            }
        }
        // Bursty delivery: frames arriving at the same instant come as one chunk.
        chunk.extend_from_slice(&frame);
        k += 1;
        let next_nominal = Duration::from_millis(20 * (k + 1));
        let next_coalesces = chunk.len() < 3 * f as usize
            && k < total_frames
            && sc.stalls.iter().any(|(s, l)| next_nominal > *s && next_nominal <= *s + *l && at >= *s + *l);
        if next_coalesces {
            last_delivery = at;
            continue;
        }
        while let Some((t, _)) = bot.peek() {
            if *t > at {
                break;
            }
            let (t, ev) = bot.next().unwrap();
            match ev {
                BotEv::Frame { tone_from } => {
                    let out: Vec<i16> = (0..f).map(|i| tone(tone_from + i)).collect();
                    rec.bot(&out, t);
                }
                BotEv::Clear => rec.bot_cleared(t),
            }
        }
        rec.customer(&chunk, at);
        chunk.clear();
        last_delivery = at;
        peak = peak.max(rec.buffered_samples());
    }
    let end = Duration::from_millis(20 * (total_frames + 1));
    let stats = rec.finish(end).unwrap();

    let reader = hound::WavReader::open(&path).unwrap();
    let spec = reader.spec();
    assert_eq!((spec.channels, spec.sample_rate, spec.bits_per_sample), (2, rate, 16));
    let frames = reader.duration() as usize;
    drop(reader);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len() as u64, stats.file_bytes);
    let data = &bytes[bytes.len() - frames * 4..];
    let mut left = Vec::with_capacity(frames);
    let mut right = Vec::with_capacity(frames);
    for c in data.chunks_exact(4) {
        left.push(i16::from_le_bytes([c[0], c[1]]));
        right.push(i16::from_le_bytes([c[2], c[3]]));
    }
    std::fs::remove_file(&path).unwrap();
    Outcome { left, right, stats, peak_buffered: peak }
}

/// (start, end) of every run of non-zero samples separated by at least `gap` zeros.
fn bursts(ch: &[i16], gap: usize) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut last_nz: Option<usize> = None;
    for (i, &s) in ch.iter().enumerate() {
        if s == 0 {
            continue;
        }
        match last_nz {
            Some(p) if i - p <= gap => {
                out.last_mut().unwrap().1 = i as u64 + 1;
            }
            _ => out.push((i as u64, i as u64 + 1)),
        }
        last_nz = Some(i);
    }
    out
}

fn within(found: u64, want: u64, tol: u64) -> bool {
    found.abs_diff(want) <= tol
}

fn scenario(rate: u32, minutes: u64) -> Scenario {
    let f = (rate / 50) as u64;
    let s = |secs: f64| (secs * rate as f64) as u64;
    let minute = 60 * rate as u64;
    let mut cust_tones = Vec::new();
    let mut bot_utts = Vec::new();
    let mut stalls = Vec::new();
    for m in 0..minutes {
        // Customer speaks at m:07.3xx for 250 ms (mid-frame start), bot at m:31.37 for 2 s.
        cust_tones.push((m * minute + s(7.3) + 37, s(0.25)));
        let start = Duration::from_secs(m * 60 + 31) + Duration::from_millis(370);
        let barge = (m % 3 == 1).then_some(Duration::from_millis(900));
        bot_utts.push((start, Duration::from_secs(2), barge));
        // The network stalls for 1.5 s twice a minute, once across the customer tone.
        stalls.push((Duration::from_secs(m * 60 + 7), Duration::from_millis(1500)));
        stalls.push((Duration::from_secs(m * 60 + 44), Duration::from_millis(1500)));
    }
    // Two real sender pauses (frames never sent): 3 s at 20:00 and 0.5 s at 25:00.
    let pauses = if minutes >= 26 { vec![(20 * 60 * 50, 150), (25 * 60 * 50, 25)] } else { Vec::new() };
    let _ = f;
    Scenario { rate, minutes, cust_tones, bot_utts, stalls, pauses }
}

fn check(sc: &Scenario, out: &Outcome) {
    let rate = sc.rate as u64;
    let f = rate / 50;
    let total = sc.minutes * 60 * rate;
    assert!(within(out.left.len() as u64, total, 2 * f), "length {} vs {total}", out.left.len());
    assert_eq!(out.left.len(), out.right.len());
    // Memory: never more than a few seconds buffered (stalls are 1.5 s).
    assert!(out.peak_buffered as u64 <= 2 * 2 * rate, "peak buffered {} samples", out.peak_buffered);

    // Customer tones: stream position is wall position (pauses are re-filled with silence).
    let found = bursts(&out.left, f as usize);
    assert_eq!(found.len(), sc.cust_tones.len(), "customer bursts {found:?}");
    for (i, ((fs, fe), (ws, wl))) in found.iter().zip(&sc.cust_tones).enumerate() {
        assert!(within(*fs, *ws, f), "customer tone {i}: found at {fs}, expected {ws}");
        assert_eq!(fe - fs, *wl, "customer tone {i} is intact (continuous stream)");
    }

    // Bot tones: at their play instants, cut at the barge-in instant.
    let found = bursts(&out.right, f as usize);
    assert_eq!(found.len(), sc.bot_utts.len(), "bot bursts");
    for (i, ((fs, fe), (start, len, barge))) in found.iter().zip(&sc.bot_utts).enumerate() {
        let ws = samples(*start, sc.rate);
        let we = ws + samples(barge.unwrap_or(*len), sc.rate);
        assert!(within(*fs, ws, f), "bot tone {i}: found at {fs}, expected {ws}");
        assert!(within(*fe, we, f), "bot tone {i}: ends at {fe}, expected {we} (barge-in {barge:?})");
    }
    assert!(out.stats.bot_samples_cleared > 0);
    assert_eq!(out.stats.forced_flushes, 0);
}

#[test]
fn thirty_minute_call_keeps_both_channels_aligned() {
    let dir = tempfile::tempdir().unwrap();
    let t = std::time::Instant::now();
    let sc = scenario(8000, 30);
    let out = simulate(&sc, dir.path());
    check(&sc, &out);
    // The two pauses were re-filled: 3 s + 0.5 s of silence, give or take jitter.
    let filled = out.stats.customer_silence_inserted;
    assert!(within(filled, 3 * 8000 + 4000, 800), "silence inserted {filled}");
    eprintln!("30-minute call simulated in {:?}: {:?}, peak {} samples", t.elapsed(), out.stats, out.peak_buffered);
}

#[test]
fn livekit_rate_call_keeps_both_channels_aligned() {
    let dir = tempfile::tempdir().unwrap();
    let sc = scenario(16000, 4);
    let out = simulate(&sc, dir.path());
    check(&sc, &out);
    assert_eq!(out.stats.customer_silence_inserted, 0);
}
