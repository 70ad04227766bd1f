//! Percentiles of measured samples, for the benchmarks.

/// Measurements, sorted once.
#[derive(Debug, Clone)]
pub struct Samples(Vec<f64>);

impl Samples {
    pub fn new(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        Self(values)
    }

    /// The `p` quantile (0.0 to 1.0, nearest rank); NaN when empty.
    pub fn at(&self, p: f64) -> f64 {
        match self.0.len() {
            0 => f64::NAN,
            n => self.0[((n - 1) as f64 * p.clamp(0.0, 1.0)).round() as usize],
        }
    }

    pub fn max(&self) -> f64 {
        self.at(1.0)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let s = Samples::new(vec![5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!((s.at(0.0), s.at(0.5), s.max(), s.len()), (1.0, 3.0, 5.0, 5));
        assert!(Samples::new(vec![]).at(0.5).is_nan());
    }
}
