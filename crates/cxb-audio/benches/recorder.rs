//! Criterion benches for the streaming stereo recorder.
//!
//! - `recorder/call_minute_8k` and `call_minute_16k`: one minute of a call — 3,000 caller
//!   chunks of 20 ms plus bot speech half of the time (released with a 60 ms lead, one barge-in
//!   every 10 s) — written to a WAV file on the checkout's disk, finalized and fsync'd. The time
//!   per iteration is the recorder's CPU (and write) cost per call-minute.
//! - `recorder/cpu_minute_8k` and `cpu_minute_16k`: the same into a null sink — the recorder's
//!   own CPU cost per call-minute, without the file system.
//! - `rss_per_call`: 200 recordings running side by side (one 20 ms tick at a time, 30 s of
//!   call), printing the resident-memory growth per call from /proc/self/statm (Linux).
//!
//! `cargo bench -p cxb-audio --bench recorder`

use std::hint::black_box;
use std::io::{self, Seek, SeekFrom, Write};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use cxb_audio::recorder::{FileRecorder, RecorderConfig, StereoRecorder};

/// Discards writes but keeps a position, so the WAV header can be "patched".
#[derive(Default)]
struct NullSink {
    pos: u64,
    len: u64,
}

impl Write for NullSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pos += buf.len() as u64;
        self.len = self.len.max(self.pos);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for NullSink {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = match to {
            SeekFrom::Start(p) => p,
            SeekFrom::End(d) => self.len.saturating_add_signed(d),
            SeekFrom::Current(d) => self.pos.saturating_add_signed(d),
        };
        Ok(self.pos)
    }
}

/// Feeds ticks `from..to` (20 ms each) of the synthetic call into `rec`.
fn feed<W: Write + Seek>(rec: &mut StereoRecorder<W>, from: u64, to: u64, cust: &[i16], bot: &[i16]) {
    for k in from..to {
        let now = Duration::from_millis(20 * (k + 1));
        rec.customer(cust, now);
        // The bot talks for 5 s out of every 10 s; the engine keeps 3 frames (60 ms) ahead.
        let phase = k % 500;
        if phase < 250 {
            let frames = if phase == 0 { 3 } else { 1 };
            for _ in 0..frames {
                rec.bot(bot, now);
            }
        }
        if phase == 200 {
            rec.bot_cleared(now);
        }
    }
}

fn frames(rate: u32) -> (Vec<i16>, Vec<i16>) {
    let n = (rate / 50) as usize;
    let cust = (0..n).map(|i| ((i * 97) % 4000) as i16 - 2000).collect();
    let bot = (0..n).map(|i| ((i * 53) % 6000) as i16 - 3000).collect();
    (cust, bot)
}

fn bench_call_minute(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let mut g = c.benchmark_group("recorder");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(1));
    for rate in [8000u32, 16000] {
        let (cust, bot) = frames(rate);
        let path = dir.path().join(format!("bench-{rate}.wav"));
        g.bench_function(format!("call_minute_{}k", rate / 1000), |b| {
            b.iter(|| {
                let mut rec = FileRecorder::create(&path, rate, RecorderConfig::default()).expect("create");
                feed(&mut rec, 0, 3000, &cust, &bot);
                black_box(rec.finish(Duration::from_secs(60)).expect("finish"))
            })
        });
        g.bench_function(format!("cpu_minute_{}k", rate / 1000), |b| {
            b.iter(|| {
                let mut rec = StereoRecorder::new(NullSink::default(), rate, RecorderConfig::default()).expect("new");
                feed(&mut rec, 0, 3000, &cust, &bot);
                black_box(rec.finish(Duration::from_secs(60)).expect("finish"))
            })
        });
    }
    g.finish();
}

fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn rss_per_call(_c: &mut Criterion) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    // All recorders stay alive until the end, so one rate cannot reuse the other's freed memory.
    let mut all = Vec::new();
    for rate in [8000u32, 16000] {
        let (cust, bot) = frames(rate);
        let calls = 200;
        let before = rss_bytes();
        let mut recs: Vec<FileRecorder> = (0..calls)
            .map(|i| {
                FileRecorder::create(&dir.path().join(format!("rss-{rate}-{i}.wav")), rate, RecorderConfig::default())
                    .expect("create")
            })
            .collect();
        let mut peak_buffered = 0;
        for k in 0..1500u64 {
            for r in recs.iter_mut() {
                feed(r, k, k + 1, &cust, &bot);
                peak_buffered = peak_buffered.max(r.buffered_samples());
            }
        }
        if let (Some(b), Some(d)) = (before, rss_bytes()) {
            println!(
                "recorder/rss_per_call_{}k: {:.1} KiB per live call ({calls} calls, 30 s each; peak buffered {} samples)",
                rate / 1000,
                d.saturating_sub(b) as f64 / calls as f64 / 1024.0,
                peak_buffered
            );
        }
        all.extend(recs);
    }
    for r in all {
        black_box(r.finish(Duration::from_secs(30)).expect("finish"));
    }
}

criterion_group!(benches, bench_call_minute, rss_per_call);
criterion_main!(benches);
