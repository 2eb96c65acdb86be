//! Encoded images kept by the model thread, so that asking several questions about one image
//! (the same bytes sent again) encodes it once.
//!
//! Entries are keyed by a 128-bit keyed hash of the image file's bytes (two SipHash keys drawn
//! when the server starts, so clients cannot aim for a collision) and evicted least recently
//! used first. Only captioning checkpoints use it; each entry holds one image's Q-Former output
//! and projection (BLIP-2) or its vision encoder states (InstructBLIP).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

/// What an image's encoding is cached under: a keyed hash of its file's bytes.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct ImageKey(u64, u64);

/// Makes [`ImageKey`]s with this server's random keys.
pub struct ImageKeys(RandomState, RandomState);

impl ImageKeys {
    /// Fresh random keys.
    pub fn new() -> Self {
        ImageKeys(RandomState::new(), RandomState::new())
    }

    /// The key of an image file's `bytes`.
    pub fn key(&self, bytes: &[u8]) -> ImageKey {
        ImageKey(self.0.hash_one(bytes), self.1.hash_one(bytes))
    }
}

/// At most `capacity` encoded images (`V`: [`blip2::ImageEmbeddings`] of one image), least
/// recently used evicted first.
pub struct ImageCache<V> {
    capacity: usize,
    entries: HashMap<ImageKey, (V, u64)>,
    clock: u64,
}

impl<V: Clone> ImageCache<V> {
    /// An empty cache for `capacity` images (0 keeps none).
    pub fn new(capacity: usize) -> Self {
        ImageCache {
            capacity,
            entries: HashMap::with_capacity(capacity),
            clock: 0,
        }
    }

    /// The encoding kept under `key`, now the most recently used.
    pub fn get(&mut self, key: &ImageKey) -> Option<V> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(key).map(|(embeddings, used)| {
            *used = clock;
            embeddings.clone()
        })
    }

    /// Keeps `embeddings` (one image's) under `key`, evicting the least recently used entry
    /// when full.
    pub fn insert(&mut self, key: ImageKey, embeddings: V) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            // A linear scan: the capacity is tens of entries, each worth a whole image encode.
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        self.clock += 1;
        self.entries.insert(key, (embeddings, self.clock));
    }

    /// How many images are kept.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_tell_bytes_apart_and_agree_on_equal_bytes() {
        let keys = ImageKeys::new();
        assert_eq!(keys.key(b"abc"), keys.key(b"abc"));
        assert_ne!(keys.key(b"abc"), keys.key(b"abd"));
        assert_ne!(keys.key(b""), keys.key(b"\0"));
    }

    #[test]
    fn the_least_recently_used_image_goes_first() {
        let keys = ImageKeys::new();
        let [a, b, c] = [b"a", b"b", b"c"].map(|x| keys.key(x));
        let mut cache = ImageCache::new(2);
        cache.insert(a, 1);
        cache.insert(b, 2);
        assert_eq!(cache.get(&a), Some(1)); // a is now newer than b
        cache.insert(c, 3);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&b), None);
        assert_eq!((cache.get(&a), cache.get(&c)), (Some(1), Some(3)));
        cache.insert(a, 4); // replacing evicts nothing
        assert_eq!((cache.get(&a), cache.get(&c)), (Some(4), Some(3)));
    }

    #[test]
    fn a_cache_of_zero_keeps_nothing() {
        let key = ImageKeys::new().key(b"a");
        let mut cache = ImageCache::new(0);
        cache.insert(key, 1);
        assert_eq!((cache.len(), cache.get(&key)), (0, None));
    }
}
