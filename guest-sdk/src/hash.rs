//! The SDK's one hash function: 64-bit, fast on short keys, the same in every instance.
//!
//! Guests are wasm32, where `usize` hashers (FxHash, rustc-hash) mix 32 bits at a time
//! and produce 32-bit hashes. Here every write is folded into a 64-bit state (WebAssembly
//! has native 64-bit multiplies), eight bytes at a time for byte strings, and `finish`
//! mixes the state fully (murmur3's finalizer), so that the low bits (bucket index) and
//! the top seven (hashbrown's tag) are both usable. Partitioning, the operators' hash
//! tables and the spill runs' order all use it, so one key hashes the same everywhere.

use std::hash::{BuildHasherDefault, Hasher};

const K: u64 = 0x9E37_79B9_7F4A_7C15;

/// A [`Hasher`] with 64-bit state.
#[derive(Clone, Copy, Default)]
pub(crate) struct Hasher64(u64);

impl Hasher64 {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(26) ^ word).wrapping_mul(K);
    }
}

impl Hasher for Hasher64 {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        let n = rest.len();
        if n > 0 {
            // The last bytes as one word, from fixed-size reads (a copy of variable length
            // is a call into the runtime in WebAssembly); the length tells "a" from "a\0".
            let w = if n >= 4 {
                let lo = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as u64;
                let hi = u32::from_le_bytes(rest[n - 4..].try_into().expect("4 bytes")) as u64;
                lo << 32 | hi
            } else {
                let mut w = rest[0] as u64;
                if n > 1 {
                    w |= (rest[1] as u64) << 8;
                }
                if n > 2 {
                    w |= (rest[2] as u64) << 16;
                }
                w
            };
            self.add(w ^ ((n as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        let mut z = self.0;
        z ^= z >> 33;
        z = z.wrapping_mul(0xff51_afd7_ed55_8ccd);
        z ^= z >> 33;
        z = z.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        z ^ (z >> 33)
    }
}

/// Builds [`Hasher64`]s: the hasher of the operators' maps.
pub(crate) type Build64 = BuildHasherDefault<Hasher64>;

/// A `HashMap` hashed with [`Hasher64`].
pub(crate) type Map<K, V> = std::collections::HashMap<K, V, Build64>;

/// The hash of `k` (the same in every instance).
#[inline]
pub(crate) fn hash_of<K: std::hash::Hash + ?Sized>(k: &K) -> u64 {
    let mut h = Hasher64::default();
    k.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_integer_keys_spread_over_buckets_and_tags() {
        // Consecutive integers must differ in their low bits and in their top seven.
        let hashes: Vec<u64> = (0u64..4096).map(|i| hash_of(&i)).collect();
        let low: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 0xfff).collect();
        let top: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert!(
            low.len() > 2500,
            "{} distinct low 12-bit buckets",
            low.len()
        );
        assert_eq!(top.len(), 128);
    }

    fn hash_bytes(b: &[u8]) -> u64 {
        let mut h = Hasher64::default();
        h.write(b);
        h.finish()
    }

    #[test]
    fn byte_strings_of_different_lengths_differ() {
        assert_ne!(hash_bytes(b"a"), hash_bytes(b"a\0"));
        assert_ne!(hash_bytes(b""), hash_bytes(b"\0"));
        assert_ne!(hash_bytes(b"abcdefgh"), hash_bytes(b"abcdefgh\0"));
        assert_eq!(hash_bytes(b"word"), hash_bytes(b"word"));
        // Every tail length (the last word is read in two halves).
        let all: std::collections::HashSet<u64> = (0..=16)
            .map(|n| hash_bytes(&b"abcdefghijklmnop"[..n]))
            .collect();
        assert_eq!(all.len(), 17);
    }
}
