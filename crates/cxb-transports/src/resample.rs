//! Streaming rational resampler (polyphase FIR, Kaiser-windowed sinc) for the wire rates the
//! engine cannot run at: Exotel's and Vonage's 24 kHz is carried as 16 kHz inside the worker
//! (webrtc-vad supports 8/16 kHz only). It takes any number of samples per call and keeps its
//! state between calls, so 20 ms frames in give exactly 20 ms frames out once it is primed.

/// Filter taps per polyphase branch. 40 taps × (up) at the up-sampled rate give ≈ 70 dB of
/// stop-band rejection with a transition band of ≈ 2 kHz for 16 ↔ 24 kHz.
const TAPS_PER_PHASE: usize = 40;
const KAISER_BETA: f64 = 7.0;

#[derive(Debug, Clone)]
pub struct Resampler {
    up: usize,
    down: usize,
    /// `phases[p * TAPS_PER_PHASE + (TAPS_PER_PHASE - 1 - j)]` = h[p + j·up] (gain `up` folded
    /// in): each branch is stored reversed so the convolution is a forward dot product.
    phases: Vec<f32>,
    /// Input history: the last `TAPS_PER_PHASE - 1` consumed samples, then unconsumed ones.
    hist: Vec<f32>,
    /// Up-sampled index of the next output sample, relative to `hist[0]`.
    pos: usize,
}

/// Dot product with 8 independent accumulators, so it vectorises (strict float ordering would
/// otherwise keep a single-accumulator sum scalar).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Modified Bessel function of the first kind, order 0 (series).
fn bessel_i0(x: f64) -> f64 {
    let mut sum = 1.0;
    let mut term = 1.0;
    let q = x * x / 4.0;
    for k in 1..50 {
        term *= q / (k * k) as f64;
        sum += term;
        if term < sum * 1e-12 {
            break;
        }
    }
    sum
}

impl Resampler {
    /// A resampler from `from` Hz to `to` Hz (both > 0).
    pub fn new(from: u32, to: u32) -> Self {
        assert!(from > 0 && to > 0, "sample rates must be positive");
        let g = gcd(from, to);
        let up = (to / g) as usize;
        let down = (from / g) as usize;
        let n = TAPS_PER_PHASE * up;
        let fs_up = from as f64 * up as f64;
        // Pass band up to 85 % of the lower Nyquist frequency.
        let cutoff = 0.5 * from.min(to) as f64 * 0.85 / fs_up;
        let mid = (n - 1) as f64 / 2.0;
        let i0b = bessel_i0(KAISER_BETA);
        let h: Vec<f64> = (0..n)
            .map(|k| {
                let t = k as f64 - mid;
                let x = 2.0 * cutoff * t;
                let sinc =
                    if x.abs() < 1e-12 { 1.0 } else { (std::f64::consts::PI * x).sin() / (std::f64::consts::PI * x) };
                let r = (2.0 * k as f64 / (n - 1) as f64) - 1.0;
                let w = bessel_i0(KAISER_BETA * (1.0 - r * r).max(0.0).sqrt()) / i0b;
                2.0 * cutoff * sinc * w * up as f64
            })
            .collect();
        let mut phases = vec![0f32; n];
        for p in 0..up {
            for j in 0..TAPS_PER_PHASE {
                phases[p * TAPS_PER_PHASE + (TAPS_PER_PHASE - 1 - j)] = h[p + j * up] as f32;
            }
        }
        let mut r = Self { up, down, phases, hist: Vec::new(), pos: 0 };
        r.reset();
        r
    }

    /// Forget all history (as if newly created).
    pub fn reset(&mut self) {
        self.hist.clear();
        self.hist.resize(TAPS_PER_PHASE - 1, 0.0);
        self.pos = (TAPS_PER_PHASE - 1) * self.up;
    }

    /// Resample `input`, appending the output samples that are complete.
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        if self.up == self.down {
            out.extend_from_slice(input);
            return;
        }
        self.hist.extend(input.iter().map(|s| *s as f32));
        out.reserve(input.len() * self.up / self.down + 1);
        loop {
            let i = self.pos / self.up;
            if i >= self.hist.len() {
                break;
            }
            let p = self.pos % self.up;
            let coeffs = &self.phases[p * TAPS_PER_PHASE..(p + 1) * TAPS_PER_PHASE];
            // x[i-T+1] … x[i] against the reversed branch.
            let window = &self.hist[i + 1 - TAPS_PER_PHASE..=i];
            let acc = dot(coeffs, window);
            out.push(acc.round().clamp(i16::MIN as f32, i16::MAX as f32) as i16);
            self.pos += self.down;
        }
        // Keep only the history the next output still needs.
        let consumed = (self.pos / self.up).saturating_sub(TAPS_PER_PHASE - 1).min(self.hist.len());
        if consumed > 0 {
            self.hist.drain(..consumed);
            self.pos -= consumed * self.up;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(rate: u32, freq: f64, n: usize, amp: f64) -> Vec<i16> {
        (0..n).map(|i| (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / rate as f64).sin()) as i16).collect()
    }

    fn rms(s: &[i16]) -> f64 {
        (s.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / s.len().max(1) as f64).sqrt()
    }

    fn zero_crossings(s: &[i16]) -> usize {
        s.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count()
    }

    #[test]
    fn frames_in_give_exact_frames_out() {
        let mut down = Resampler::new(24_000, 16_000);
        let mut up = Resampler::new(16_000, 24_000);
        for _ in 0..20 {
            let mut o = vec![];
            down.process(&[100; 480], &mut o);
            assert_eq!(o.len(), 320);
            let mut o = vec![];
            up.process(&[100; 320], &mut o);
            assert_eq!(o.len(), 480);
        }
        // Odd input sizes still produce the right total.
        let mut r = Resampler::new(24_000, 16_000);
        let mut o = vec![];
        for n in [7usize, 993, 2400, 1, 199] {
            r.process(&vec![0; n], &mut o);
        }
        assert!((o.len() as i64 - 3600 * 2 / 3).abs() <= 1, "{}", o.len());
    }

    #[test]
    fn pass_band_is_kept_and_frequency_preserved() {
        let input = sine(24_000, 1000.0, 24_000, 10_000.0);
        let mut r = Resampler::new(24_000, 16_000);
        let mut out = vec![];
        for c in input.chunks(480) {
            r.process(c, &mut out);
        }
        let steady = &out[1600..];
        let gain_db = 20.0 * (rms(steady) / rms(&input)).log10();
        assert!(gain_db.abs() < 0.5, "gain {gain_db:.2} dB");
        // 1 kHz → 2 zero crossings per ms, whatever the rate.
        let zc = zero_crossings(steady) as f64 / (steady.len() as f64 / 16.0);
        assert!((zc - 2.0).abs() < 0.05, "{zc}");
        let mut back = vec![];
        let mut u = Resampler::new(16_000, 24_000);
        u.process(&out, &mut back);
        let gain_db = 20.0 * (rms(&back[2400..]) / rms(&input)).log10();
        assert!(gain_db.abs() < 0.5, "round trip gain {gain_db:.2} dB");
    }

    #[test]
    fn content_above_the_new_nyquist_is_removed() {
        // 10 kHz fits at 24 kHz but would alias to 6 kHz at 16 kHz.
        let input = sine(24_000, 10_000.0, 24_000, 10_000.0);
        let mut r = Resampler::new(24_000, 16_000);
        let mut out = vec![];
        r.process(&input, &mut out);
        let atten_db = 20.0 * (rms(&out[1600..]) / rms(&input)).log10();
        assert!(atten_db < -50.0, "only {atten_db:.1} dB");
    }

    #[test]
    fn same_rate_is_a_copy_and_extremes_clip() {
        let mut r = Resampler::new(8000, 8000);
        let mut o = vec![];
        r.process(&[1, 2, 3], &mut o);
        assert_eq!(o, vec![1, 2, 3]);
        let loud: Vec<i16> = (0..4800).map(|i| if i % 2 == 0 { i16::MAX } else { i16::MIN }).collect();
        let mut r = Resampler::new(16_000, 24_000);
        let mut o = vec![];
        r.process(&loud, &mut o);
        assert_eq!(o.len(), 7200);
    }
}
