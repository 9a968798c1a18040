//! CRC-32 as zlib, gzip, GPT and UBI compute it (reflected polynomial 0xEDB88320), a byte at a
//! time from a 1 KiB table built at compile time.
//!
//! crc32fast brings a 16 KiB slice-by-16 table, 8 KiB of aarch64 shift tables and CPU feature
//! detection: a twentieth of the device binary. What ovl checks (headers, configuration files,
//! one image per upgrade) does not need that speed; the tests compare this with crc32fast.

const TABLE: [u32; 256] = table();

// Indexes below 256 into arrays of 256: evaluated at compile time, where an overrun would not
// build.
#[allow(clippy::indexing_slicing)]
const fn table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

/// A running CRC-32: `new_with_initial(crc)` continues from a finished value, as crc32fast's
/// does, so `!kernel` seeds give the kernel's uninverted `crc32(0, ...)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hasher {
    crc: u32,
}

impl Hasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn new_with_initial(crc: u32) -> Self {
        Self { crc }
    }

    // The index is masked to 0..=255 of a 256-entry table: it cannot be out of range.
    #[allow(clippy::indexing_slicing)]
    pub fn update(&mut self, buf: &[u8]) {
        let mut c = !self.crc;
        for &b in buf {
            c = TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
        }
        self.crc = !c;
    }

    pub fn finalize(self) -> u32 {
        self.crc
    }
}

/// Reads through `inner`, hashing and counting what passes.
pub struct Reader<R> {
    pub inner: R,
    pub h: Hasher,
    pub n: u64,
}

impl<R> Reader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            h: Hasher::new(),
            n: 0,
        }
    }
}

impl<R: std::io::Read> std::io::Read for Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.h.update(buf.get(..n).unwrap_or_default());
        self.n += n as u64;
        Ok(n)
    }
}

pub fn hash(buf: &[u8]) -> u32 {
    let mut h = Hasher::new();
    h.update(buf);
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_crc32fast_whole_and_in_pieces() {
        assert_eq!(hash(b"123456789"), 0xCBF4_3926);
        assert_eq!(hash(b""), 0);
        let mut x = 0x1234_5678u32;
        let data: Vec<u8> = (0..70_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        for len in [0, 1, 7, 255, 4096, 70_000] {
            let d = &data[..len];
            assert_eq!(hash(d), crc32fast::hash(d), "length {len}");
            for seed in [0, !0, 0xDEAD_BEEF] {
                let mut a = Hasher::new_with_initial(seed);
                let mut b = crc32fast::Hasher::new_with_initial(seed);
                for piece in d.chunks(333) {
                    a.update(piece);
                    b.update(piece);
                }
                assert_eq!(a.finalize(), b.finalize(), "length {len} seed {seed:#x}");
            }
        }
    }
}
