//! A preallocated key/value cache: one `[rows, heads, capacity, head_dim]` buffer per layer,
//! written in place, so a decoding step costs one slice write per layer instead of a copy of the
//! whole prefix.

use burn::tensor::{s, DType, Device, Tensor};

/// Keys and values of every layer for a batch of rows.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<(Tensor<4>, Tensor<4>)>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// An empty cache for `layers` layers of `rows` sequences up to `capacity` positions, holding
    /// keys and values of `dtype` (the model's).
    pub fn new(
        layers: usize,
        rows: usize,
        heads: usize,
        capacity: usize,
        head_dim: usize,
        (device, dtype): (&Device, DType),
    ) -> Self {
        let zeros = || Tensor::<4>::zeros([rows, heads, capacity, head_dim], (device, dtype));
        KvCache {
            layers: (0..layers).map(|_| (zeros(), zeros())).collect(),
            len: 0,
            capacity,
        }
    }

    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the buffers hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Writes `k`, `v` (`[rows, heads, new, head_dim]`) for `layer` after the filled positions and
    /// returns every key and value so far. Call [`KvCache::advance`] once all layers are written.
    pub fn write(&mut self, layer: usize, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let new = k.dims()[2];
        let (start, end) = (self.len, self.len + new);
        debug_assert!(
            end <= self.capacity,
            "cache overflow: {end} > {}",
            self.capacity
        );
        let (ck, cv) = &mut self.layers[layer];
        *ck = ck.clone().slice_assign(s![.., .., start..end, ..], k);
        *cv = cv.clone().slice_assign(s![.., .., start..end, ..], v);
        (
            ck.clone().slice(s![.., .., 0..end, ..]),
            cv.clone().slice(s![.., .., 0..end, ..]),
        )
    }

    /// Marks `new` more positions as filled.
    pub fn advance(&mut self, new: usize) {
        self.len += new;
    }

    /// Keeps rows `rows` (in that order, repeats allowed): beam reordering and expansion.
    pub fn select_rows(&mut self, rows: &[usize]) {
        let Some((k, _)) = self.layers.first() else {
            return;
        };
        let device = k.device();
        let rows: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let index = blip2_core::nn::index_tensor(&rows, &device);
        for (k, v) in &mut self.layers {
            *k = k.clone().select(0, index.clone());
            *v = v.clone().select(0, index.clone());
        }
    }
}
