//! Small statistics helpers for the dialler summary.

use serde::Serialize;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Dist {
    pub count: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// Nearest-rank percentile of a sorted slice (`p` in 0..=100).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

impl Dist {
    pub fn from(values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        Self {
            count: v.len(),
            p50: round1(percentile(&v, 50.0)),
            p95: round1(percentile(&v, 95.0)),
            p99: round1(percentile(&v, 99.0)),
            max: round1(*v.last().unwrap_or(&0.0)),
            mean: round1(mean),
        }
    }
}

/// A distribution of a per-frame measure (too many samples to keep one by one): counts in 1 ms
/// buckets up to [`MsHistogram::BUCKETS`] − 1 ms, the last bucket holding everything above.
/// Percentiles are bucket upper bounds (at most 1 ms high); `max` and `mean` are exact.
#[derive(Debug, Clone)]
pub struct MsHistogram {
    counts: Vec<u64>,
    max: f64,
    sum: f64,
}

impl Default for MsHistogram {
    fn default() -> Self {
        Self { counts: vec![0; Self::BUCKETS], max: 0.0, sum: 0.0 }
    }
}

impl MsHistogram {
    pub const BUCKETS: usize = 1001;

    pub fn record(&mut self, ms: f64) {
        if !ms.is_finite() {
            return;
        }
        let ms = ms.max(0.0);
        let i = (ms.ceil() as usize).min(Self::BUCKETS - 1);
        self.counts[i] += 1;
        self.max = self.max.max(ms);
        self.sum += ms;
    }

    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    pub fn dist(&self) -> Dist {
        let count: u64 = self.counts.iter().sum();
        if count == 0 {
            return Dist::default();
        }
        let at = |p: f64| {
            let rank = ((p / 100.0) * count as f64).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in self.counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    // The overflow bucket's bound is the exact maximum.
                    return if i == Self::BUCKETS - 1 { self.max } else { (i as f64).min(self.max.ceil()) };
                }
            }
            self.max
        };
        Dist {
            count: count as usize,
            p50: round1(at(50.0)),
            p95: round1(at(95.0)),
            p99: round1(at(99.0)),
            max: round1(self.max),
            mean: round1(self.sum / count as f64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_percentiles_are_bucket_bounds_and_merge() {
        let mut a = MsHistogram::default();
        for ms in 1..=100 {
            a.record(ms as f64 - 0.5);
        }
        let d = a.dist();
        assert_eq!((d.count, d.p50, d.p99, d.max, d.mean), (100, 50.0, 99.0, 99.5, 50.0));
        let mut b = MsHistogram::default();
        b.record(5000.0);
        b.record(f64::NAN);
        a.merge(&b);
        let d = a.dist();
        assert_eq!((d.count, d.max), (101, 5000.0));
        assert_eq!(MsHistogram::default().dist(), Dist::default());
    }

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let d = Dist::from(&v);
        assert_eq!((d.count, d.p50, d.p95, d.p99, d.max, d.mean), (100, 50.0, 95.0, 99.0, 100.0, 50.5));
        assert_eq!(Dist::from(&[]), Dist::default());
        assert_eq!(Dist::from(&[7.0]).p99, 7.0);
    }
}
