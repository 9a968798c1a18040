//! gzip framing (RFC 1952) around flate2's raw deflate streams.
//!
//! flate2's own gzip reader and writer hash with crc32fast, whose tables are 24 KiB of the
//! device binary; this is the same ten-byte header and eight-byte trailer with crate::crc32.
//! One member, as flate2's `GzDecoder` reads: whatever follows its trailer is not read.

use std::io::{self, BufRead, Read, Write};

use crate::crc32::{Hasher, Reader};

const ID: [u8; 2] = [0x1f, 0x8b];
const DEFLATE: u8 = 8;
const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;
const RESERVED: u8 = 0xe0;
/// No name, no time, default compression, made on Unix.
const HEADER: [u8; 10] = [ID[0], ID[1], DEFLATE, 0, 0, 0, 0, 0, 0, 3];

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("gzip: {what}"))
}

/// Compresses what is written into `W`; `finish` writes the trailer and gives `W` back.
pub struct Encoder<W: Write> {
    z: flate2::write::DeflateEncoder<W>,
    h: Hasher,
    n: u32,
}

impl<W: Write> Encoder<W> {
    pub fn new(mut w: W) -> io::Result<Self> {
        w.write_all(&HEADER)?;
        Ok(Self {
            z: flate2::write::DeflateEncoder::new(w, flate2::Compression::default()),
            h: Hasher::new(),
            n: 0,
        })
    }

    pub fn finish(self) -> io::Result<W> {
        let mut w = self.z.finish()?;
        w.write_all(&self.h.finalize().to_le_bytes())?;
        w.write_all(&self.n.to_le_bytes())?;
        Ok(w)
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.z.write(buf)?;
        self.h.update(buf.get(..n).unwrap_or_default());
        // ISIZE is the length modulo 2^32.
        self.n = self.n.wrapping_add(n as u32);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.z.flush()
    }
}

/// Reads one gzip member from `R`; the trailer's CRC and length are checked at its end, so
/// a damaged or cut stream ends in an error, never in a short clean end.
pub struct Decoder<R: BufRead> {
    z: flate2::bufread::DeflateDecoder<R>,
    h: Hasher,
    n: u32,
    done: bool,
}

impl<R: BufRead> Decoder<R> {
    /// Reads and checks the header.
    pub fn new(mut r: R) -> io::Result<Self> {
        // Hashed as it is read, for FHCRC.
        let mut head = Reader::new(&mut r);
        let mut fixed = [0u8; 10];
        head.read_exact(&mut fixed)
            .map_err(|_| bad("too short for a header"))?;
        if fixed[..2] != ID {
            return Err(bad("not gzip data (no 1f 8b at the start)"));
        }
        if fixed[2] != DEFLATE {
            return Err(bad("compression method is not deflate"));
        }
        let flags = fixed[3];
        if flags & RESERVED != 0 {
            return Err(bad("reserved header flags are set"));
        }
        if flags & FEXTRA != 0 {
            let mut len = [0u8; 2];
            head.read_exact(&mut len)
                .map_err(|_| bad("cut in the extra field"))?;
            let len = u64::from(u16::from_le_bytes(len));
            let skipped = io::copy(&mut (&mut head).take(len), &mut io::sink())?;
            if skipped != len {
                return Err(bad("cut in the extra field"));
            }
        }
        for (flag, what) in [
            (FNAME, "cut in the file name"),
            (FCOMMENT, "cut in the comment"),
        ] {
            if flags & flag != 0 {
                let mut b = [0u8; 1];
                loop {
                    head.read_exact(&mut b).map_err(|_| bad(what))?;
                    if b[0] == 0 {
                        break;
                    }
                }
            }
        }
        if flags & FHCRC != 0 {
            let want = head.h.finalize() as u16;
            let mut crc = [0u8; 2];
            head.inner
                .read_exact(&mut crc)
                .map_err(|_| bad("cut in the header CRC"))?;
            if u16::from_le_bytes(crc) != want {
                return Err(bad("the header CRC does not match"));
            }
        }
        Ok(Self {
            z: flate2::bufread::DeflateDecoder::new(r),
            h: Hasher::new(),
            n: 0,
            done: false,
        })
    }
}

impl<R: BufRead> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        let n = self.z.read(buf)?;
        if n > 0 {
            self.h.update(buf.get(..n).unwrap_or_default());
            self.n = self.n.wrapping_add(n as u32);
            return Ok(n);
        }
        // The deflate stream ended: the trailer follows it directly.
        let mut t = [0u8; 8];
        self.z
            .get_mut()
            .read_exact(&mut t)
            .map_err(|_| bad("cut before the end of its trailer"))?;
        let (crc, len) = t.split_at(4);
        if crc != self.h.finalize().to_le_bytes() {
            return Err(bad("the data's CRC does not match (damaged)"));
        }
        if len != self.n.to_le_bytes() {
            return Err(bad("the data's length does not match (damaged)"));
        }
        self.done = true;
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9u32;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                // Half text-like, half noise: both of deflate's block kinds.
                if i % 2048 < 1024 {
                    b'a' + (x % 4) as u8
                } else {
                    x as u8
                }
            })
            .collect()
    }

    fn ours(d: &[u8]) -> Vec<u8> {
        let mut e = Encoder::new(Vec::new()).unwrap();
        for piece in d.chunks(1000) {
            e.write_all(piece).unwrap();
        }
        e.finish().unwrap()
    }

    fn unpack(gz: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        Decoder::new(gz)?.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn flate2_reads_ours_and_we_read_flate2s() {
        for len in [0, 1, 100, 70_000] {
            let d = data(len);
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&ours(&d)[..])
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, d, "length {len}");
            let mut theirs = flate2::GzBuilder::new()
                .filename("etc.tar")
                .comment("a comment")
                .extra(vec![1, 2, 3, 4, 5])
                .mtime(1_700_000_000)
                .write(Vec::new(), flate2::Compression::best());
            theirs.write_all(&d).unwrap();
            let theirs = theirs.finish().unwrap();
            assert_eq!(unpack(&theirs).unwrap(), d, "length {len}");
        }
    }

    #[test]
    fn a_header_crc_is_checked() {
        let body = ours(b"hello");
        let mut gz = body[..10].to_vec();
        gz[3] = FHCRC;
        let crc = (crate::crc32::hash(&gz) as u16).to_le_bytes();
        gz.extend_from_slice(&crc);
        gz.extend_from_slice(&body[10..]);
        assert_eq!(unpack(&gz).unwrap(), b"hello");
        gz[10] ^= 1;
        let e = unpack(&gz).unwrap_err().to_string();
        assert!(e.contains("header CRC"), "{e}");
    }

    #[test]
    fn damage_and_cuts_are_errors_not_short_ends() {
        let d = data(20_000);
        let gz = ours(&d);
        for cut in [0, 5, 10, 11, gz.len() / 2, gz.len() - 8, gz.len() - 1] {
            assert!(unpack(&gz[..cut]).is_err(), "cut at {cut} of {}", gz.len());
        }
        let mut crc = gz.clone();
        let at = crc.len() - 8;
        crc[at] ^= 0x40;
        assert!(unpack(&crc).unwrap_err().to_string().contains("CRC"));
        let mut len = gz.clone();
        let at = len.len() - 1;
        len[at] ^= 1;
        assert!(unpack(&len).unwrap_err().to_string().contains("length"));
        let mut head = gz.clone();
        head[3] = 0x20;
        assert!(unpack(&head).unwrap_err().to_string().contains("reserved"));
        assert!(unpack(b"BZh91AY&SY")
            .unwrap_err()
            .to_string()
            .contains("not gzip"));
        // What follows the member is left alone, as flate2's GzDecoder does.
        let mut more = gz.clone();
        more.extend_from_slice(b"trailing");
        assert_eq!(unpack(&more).unwrap(), d);
    }
}
