//! The link weights `c_1 < c_2 < …` of the topology's levels, with their prefix sums: the
//! weight of one byte/s of traffic that crosses up to level ℓ. Part of the topology (the
//! operator writes them in the topology file); the cost model above reads them.
//!
//! Pure values: no I/O, and nothing of VMs or traffic.

use scored_proto::Level;

/// Link weights `c_1 < c_2 < …` with their prefix sums precomputed, so the weight of a path at
/// level ℓ, `Σ_{i=1..ℓ} c_i`, is one array read.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkWeights {
    /// `prefix[ℓ] = Σ_{i=1..ℓ} c_i`; `prefix[0] = 0` (same server).
    prefix: Vec<f64>,
}

/// Why a list of link weights was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WeightsError {
    #[error("at least one link weight is needed")]
    Empty,
    #[error("link weight c_{level} = {value} must be a positive finite number")]
    NotPositive { level: usize, value: f64 },
    #[error("link weights must increase up the tree: c_{level} = {value} ≤ c_{prev_level}")]
    NotIncreasing {
        level: usize,
        prev_level: usize,
        value: f64,
    },
    #[error("{0} levels are more than scored supports (254)")]
    TooMany(usize),
}

impl LinkWeights {
    /// `c[i]` is the weight of an (i+1)-level link.
    pub fn new(c: &[f64]) -> Result<Self, WeightsError> {
        if c.is_empty() {
            return Err(WeightsError::Empty);
        }
        if c.len() > 254 {
            return Err(WeightsError::TooMany(c.len()));
        }
        let mut prefix = Vec::with_capacity(c.len() + 1);
        prefix.push(0.0);
        for (i, &w) in c.iter().enumerate() {
            if !w.is_finite() || w <= 0.0 {
                return Err(WeightsError::NotPositive {
                    level: i + 1,
                    value: w,
                });
            }
            if i > 0 && w <= c[i - 1] {
                return Err(WeightsError::NotIncreasing {
                    level: i + 1,
                    prev_level: i,
                    value: w,
                });
            }
            prefix.push(prefix[i] + w);
        }
        Ok(LinkWeights { prefix })
    }

    /// The thesis's weights: `c_i = e^0, e^1, e^3, e^5` (truncated to `levels`).
    pub fn thesis(levels: usize) -> Self {
        let exps = [0.0, 1.0, 3.0, 5.0, 7.0, 9.0];
        let c: Vec<f64> = exps[..levels.min(exps.len())]
            .iter()
            .map(|e: &f64| e.exp())
            .collect();
        Self::new(&c).expect("thesis weights are valid")
    }

    /// Number of levels above "same server".
    pub fn levels(&self) -> Level {
        (self.prefix.len() - 1) as Level
    }

    /// `c_level` (1-based).
    pub fn weight(&self, level: Level) -> f64 {
        let l = level as usize;
        self.prefix[l] - self.prefix[l - 1]
    }

    /// `Σ_{i=1..level} c_i`. Levels above the top are clamped to the top.
    #[inline]
    pub fn path_cost(&self, level: Level) -> f64 {
        let l = (level as usize).min(self.prefix.len() - 1);
        self.prefix[l]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_prefix_sums() {
        let w = LinkWeights::new(&[1.0, 3.0, 10.0]).unwrap();
        assert_eq!(w.levels(), 3);
        assert_eq!(w.path_cost(0), 0.0);
        assert_eq!(w.path_cost(1), 1.0);
        assert_eq!(w.path_cost(2), 4.0);
        assert_eq!(w.path_cost(3), 14.0);
        assert_eq!(w.path_cost(9), 14.0);
        assert_eq!(w.weight(3), 10.0);
        assert!(matches!(LinkWeights::new(&[]), Err(WeightsError::Empty)));
        assert!(matches!(
            LinkWeights::new(&[1.0, 1.0]),
            Err(WeightsError::NotIncreasing { level: 2, .. })
        ));
        assert!(matches!(
            LinkWeights::new(&[1.0, f64::NAN]),
            Err(WeightsError::NotPositive { level: 2, .. })
        ));
        let t = LinkWeights::thesis(4);
        assert!((t.path_cost(4) - (1.0 + 1f64.exp() + 3f64.exp() + 5f64.exp())).abs() < 1e-12);
    }
}
