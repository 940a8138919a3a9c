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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let d = Dist::from(&v);
        assert_eq!((d.count, d.p50, d.p95, d.p99, d.max, d.mean), (100, 50.0, 95.0, 99.0, 100.0, 50.5));
        assert_eq!(Dist::from(&[]), Dist::default());
        assert_eq!(Dist::from(&[7.0]).p99, 7.0);
    }
}
