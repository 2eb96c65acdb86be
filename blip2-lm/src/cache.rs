//! A key/value cache written in place: one `[rows, heads, allocated, head_dim]` buffer per layer,
//! so a decoding step costs one slice write per layer instead of a copy of the whole prefix.
//!
//! The buffers grow by doubling (up to the capacity asked for), and a decoding step can attend
//! to a whole buffer, the positions not yet written masked: burn's attention copies any
//! key/value tensor that is not contiguous, and a prefix of a buffer is not (it is strided
//! between heads), so reading whole buffers is what keeps a step free of per-layer copies.

use burn::tensor::{s, DType, Device, Tensor};

/// Positions allocated up front (or the capacity, if smaller).
const INITIAL: usize = 64;

/// Keys and values of every layer for a batch of rows.
#[derive(Debug, Clone)]
pub struct KvCache {
    /// Each layer's keys and values (`None` only while [`KvCache::write`] holds them).
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    len: usize,
    allocated: usize,
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
        let allocated = capacity.min(INITIAL);
        let zeros = || Tensor::<4>::zeros([rows, heads, allocated, head_dim], (device, dtype));
        KvCache {
            layers: (0..layers).map(|_| Some((zeros(), zeros()))).collect(),
            len: 0,
            allocated,
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

    /// Positions the cache may hold in all.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Makes room for `new` more positions (growing every buffer to twice its size, or to what
    /// is needed, at most the capacity) and returns the positions the buffers now hold: what
    /// [`KvCache::write`] can return whole.
    pub fn reserve(&mut self, new: usize) -> usize {
        let needed = self.len + new;
        debug_assert!(
            needed <= self.capacity,
            "cache overflow: {needed} > {}",
            self.capacity
        );
        if needed > self.allocated {
            let allocated = (2 * self.allocated).max(needed).min(self.capacity);
            for (k, v) in self.layers.iter_mut().flatten() {
                *k = grown(k, allocated);
                *v = grown(v, allocated);
            }
            self.allocated = allocated;
        }
        self.allocated
    }

    /// Writes `k`, `v` (`[rows, heads, new, head_dim]`) for `layer` after the filled positions and
    /// returns the keys and values at positions `0..keys`, where `keys` is at least the
    /// positions filled with these and at most [`KvCache::reserve`]'s answer: those past the
    /// filled ones are zeros, for the caller to mask. `keys` equal to that answer returns the
    /// whole buffers (contiguous, no copy). Call [`KvCache::advance`] once all layers are written.
    pub fn write(
        &mut self,
        layer: usize,
        k: Tensor<4>,
        v: Tensor<4>,
        keys: usize,
    ) -> (Tensor<4>, Tensor<4>) {
        let new = k.dims()[2];
        let (start, end) = (self.len, self.len + new);
        self.reserve(new);
        assert!(
            (end..=self.allocated).contains(&keys),
            "{keys} keys asked of a cache filled to {end} in {} positions",
            self.allocated
        );
        // The buffers are moved out while written: a buffer shared with any other handle (the
        // one left in `layers`, or last step's views, dropped by now) is copied whole by
        // `slice_assign` before the write, which would cost the whole cache every step.
        let (ck, cv) = self.layers[layer].take().expect("every layer is present");
        let ck = ck.slice_assign(s![.., .., start..end, ..], k);
        let cv = cv.slice_assign(s![.., .., start..end, ..], v);
        let out = if keys == self.allocated {
            (ck.clone(), cv.clone())
        } else {
            (
                ck.clone().slice(s![.., .., 0..keys, ..]),
                cv.clone().slice(s![.., .., 0..keys, ..]),
            )
        };
        self.layers[layer] = Some((ck, cv));
        out
    }

    /// Marks `new` more positions as filled.
    pub fn advance(&mut self, new: usize) {
        self.len += new;
    }

    /// Keeps rows `rows` (in that order, repeats allowed): beam reordering and expansion.
    pub fn select_rows(&mut self, rows: &[usize]) {
        let Some(Some((k, _))) = self.layers.first() else {
            return;
        };
        let device = k.device();
        let rows: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let index = blip2_core::nn::index_tensor(&rows, &device);
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.clone().select(0, index.clone());
            *v = v.clone().select(0, index.clone());
        }
    }
}

/// `buffer` (`[rows, heads, positions, head_dim]`) in a zeroed buffer of `positions` positions.
fn grown(buffer: &Tensor<4>, positions: usize) -> Tensor<4> {
    let [rows, heads, old, head_dim] = buffer.dims();
    Tensor::<4>::zeros(
        [rows, heads, positions, head_dim],
        (&buffer.device(), buffer.dtype()),
    )
    .slice_assign(s![.., .., 0..old, ..], buffer.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    /// `[rows, heads, new, head_dim]` values that name their row, head, position and lane.
    fn block(rows: usize, start: usize, new: usize, device: &Device) -> Tensor<4> {
        let (heads, dim) = (2, 3);
        let mut v = Vec::new();
        for r in 0..rows {
            for h in 0..heads {
                for p in start..start + new {
                    for d in 0..dim {
                        v.push((r * 100_000 + h * 10_000 + p * 10 + d) as f32);
                    }
                }
            }
        }
        Tensor::from_data(TensorData::new(v, [rows, heads, new, dim]), device)
    }

    /// Growing past the first allocation keeps every written position, whole buffers hold
    /// zeros past the filled ones, prefixes are exactly the filled ones, and rows survive a
    /// reordering.
    #[test]
    fn the_cache_grows_and_keeps_what_was_written() {
        let device = Device::default();
        let (rows, capacity) = (2, 150);
        let mut cache = KvCache::new(1, rows, 2, capacity, 3, (&device, DType::F32));
        let (k, _) = cache.write(
            0,
            block(rows, 0, 40, &device),
            block(rows, 0, 40, &device),
            40,
        );
        assert_eq!(k.to_data(), block(rows, 0, 40, &device).to_data());
        cache.advance(40);
        let mut sizes = vec![];
        for p in 40..capacity {
            let keys = cache.reserve(1);
            sizes.push(keys);
            let (k, v) = cache.write(
                0,
                block(rows, p, 1, &device),
                block(rows, p, 1, &device),
                keys,
            );
            cache.advance(1);
            assert_eq!(k.dims()[2], keys);
            let filled = k.clone().slice(s![.., .., 0..p + 1, ..]);
            assert_eq!(
                filled.to_data(),
                block(rows, 0, p + 1, &device).to_data(),
                "at {p}"
            );
            assert_eq!(
                v.slice(s![.., .., 0..p + 1, ..]).to_data(),
                filled.to_data()
            );
            let rest = k.slice(s![.., .., p + 1..keys, ..]);
            assert!(rest
                .to_data()
                .try_to_vec::<f32>()
                .unwrap()
                .iter()
                .all(|&x| x == 0.0));
        }
        sizes.dedup();
        assert_eq!(sizes, [64, 128, 150], "doubling, then the capacity");
        cache.select_rows(&[1, 1, 0]);
        let (k, _) = cache.write(0, block(3, 150, 0, &device), block(3, 150, 0, &device), 150);
        let k = k.to_data().try_to_vec::<f32>().unwrap();
        let one = block(2, 0, 150, &device)
            .to_data()
            .try_to_vec::<f32>()
            .unwrap();
        let half = one.len() / 2;
        assert_eq!(&k[..half], &one[half..]);
        assert_eq!(&k[half..2 * half], &one[half..]);
        assert_eq!(&k[2 * half..], &one[..half]);
    }
}
