//! Time per call of the turn-taking models.
//!
//! ```sh
//! scripts/fetch-models.sh
//! cargo run -p cxb-turn --release --features onnx --example turn_bench
//! ```
//!
//! Without `--features onnx` (or without the models) only the feature extractor is timed.

use std::time::{Duration, Instant};

use cxb_turn::features::WhisperFeatures;

fn main() {
    // A deterministic voiced-ish signal: a 140 Hz pulse train through a 700 Hz resonance, with
    // a slow amplitude envelope. Inference time does not depend on the content.
    let audio: Vec<f32> = (0..8 * 16_000)
        .map(|n| {
            let t = f64::from(n) / 16_000.0;
            let env = 0.5 + 0.5 * (2.0 * std::f64::consts::PI * 3.0 * t).sin();
            let tone =
                (2.0 * std::f64::consts::PI * 140.0 * t).sin() + 0.5 * (2.0 * std::f64::consts::PI * 700.0 * t).sin();
            (0.2 * env * tone) as f32
        })
        .collect();

    let mut features = WhisperFeatures::new();
    let mut out = Vec::new();
    report("log-mel features (8 s window)", 20, || features.compute_into(&audio, &mut out).map(|_| ()));

    if !cxb_turn::ONNX_ENABLED {
        println!("models: skipped (built without the `onnx` feature)");
        return;
    }

    match cxb_turn::SileroVad::new(cxb_turn::silero_model_path(), 8000) {
        Ok(mut vad) => {
            let chunk = &audio[..256];
            report("Silero VAD, 8 kHz, 256-sample chunk (32 ms)", 2000, || vad.speech_probability(chunk).map(|_| ()));
        }
        Err(e) => println!("Silero VAD 8 kHz: {e}"),
    }
    match cxb_turn::SileroVad::new(cxb_turn::silero_model_path(), 16000) {
        Ok(mut vad) => {
            let chunk = &audio[..512];
            report("Silero VAD, 16 kHz, 512-sample chunk (32 ms)", 2000, || vad.speech_probability(chunk).map(|_| ()));
        }
        Err(e) => println!("Silero VAD 16 kHz: {e}"),
    }
    match cxb_turn::SmartTurn::new(cxb_turn::smart_turn_model_path()) {
        Ok(mut model) => {
            report("Smart Turn v3.2 predict (features + model)", 30, || model.predict(&audio).map(|_| ()));
        }
        Err(e) => println!("Smart Turn: {e}"),
    }
}

/// Warm up, then time `iterations` calls; prints wall-clock mean, p50 and max, and the calling
/// thread's CPU time per call (unaffected by other processes competing for the cores; every
/// session is single-threaded, so it is the whole cost).
fn report(name: &str, iterations: usize, mut f: impl FnMut() -> Result<(), cxb_turn::TurnError>) {
    for _ in 0..iterations.min(5) {
        if let Err(e) = f() {
            println!("{name}: {e}");
            return;
        }
    }
    let mut times: Vec<Duration> = Vec::with_capacity(iterations);
    let cpu_start = thread_cpu_time();
    for _ in 0..iterations {
        let start = Instant::now();
        if let Err(e) = f() {
            println!("{name}: {e}");
            return;
        }
        times.push(start.elapsed());
    }
    let cpu = thread_cpu_time().saturating_sub(cpu_start) / iterations as u32;
    times.sort();
    let mean = times.iter().sum::<Duration>() / iterations as u32;
    println!(
        "{name}: wall mean {:.3} ms, p50 {:.3} ms, max {:.3} ms; CPU {:.3} ms per call ({iterations} calls)",
        ms(mean),
        ms(times[iterations / 2]),
        ms(times[iterations - 1]),
        ms(cpu)
    );
}

fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
