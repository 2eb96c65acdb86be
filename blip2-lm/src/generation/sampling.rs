//! What choosing a token needs: softmax, log-softmax, argmax, and the seedable sampler.

/// Probabilities of scores (max-shifted).
pub(super) fn softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = x.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// Log-probabilities of scores, in place.
pub(super) fn log_softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = x.iter().map(|v| (v - max).exp()).sum();
    let log_sum = sum.ln();
    for v in x.iter_mut() {
        *v = *v - max - log_sum;
    }
}

/// Index of the first largest value.
pub(super) fn argmax(x: &[f32]) -> usize {
    // First maximum, as torch.argmax.
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best
}

/// A small, seedable generator (SplitMix64) for sampling.
pub(super) struct Rng(pub u64);

impl Rng {
    /// Uniform in [0, 1), 24 bits.
    fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }

    /// An index drawn with probability proportional to `probs`.
    pub fn sample(&mut self, probs: &[f32]) -> usize {
        let u = self.next_f32() * probs.iter().sum::<f32>();
        let mut acc = 0.0;
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if u < acc && *p > 0.0 {
                return i;
            }
        }
        probs.iter().rposition(|p| *p > 0.0).unwrap_or(0)
    }
}
