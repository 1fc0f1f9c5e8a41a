//! Loose-encoding primitives: a bounds-checked reader and the matching writers.
//!
//! Java's `DataOutput` conventions: big-endian integers, booleans as one byte (any non-zero
//! byte reads as true), strings as `writeUTF` (u16 length + modified UTF-8: NUL as `C0 80`,
//! supplementary characters as two 3-byte surrogates).

use bytes::{BufMut, Bytes, BytesMut};

use super::error::CodecError;

/// How deep objects may nest (nested objects, throwable causes, primitive maps and lists).
///
/// Real traffic nests about 6 deep (a dispatch holding an advisory message holding a
/// ConsumerInfo holding ids); the limit bounds stack use on hostile input (a debug build
/// spends roughly 25 KiB of stack per level).
pub(crate) const MAX_DEPTH: u32 = 16;

/// How many primitive values (map entries, list items, nested ones included) one reader
/// decodes at most. A value takes as little as one byte on the wire and tens of bytes in
/// memory, so a frame within the size limit could otherwise decode into many times its size
/// (a list of a hundred million nulls: gigabytes). Real message properties hold a few dozen.
pub(crate) const MAX_VALUES: u32 = 1 << 20;

/// A cursor over a byte slice whose every read is bounds-checked.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Added to `pos` in error offsets, when `buf` is a slice of a larger frame.
    base: usize,
    depth: u32,
    /// Primitive values decoded so far (see [`MAX_VALUES`]).
    values: u32,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], base: usize) -> Self {
        Reader {
            buf,
            pos: 0,
            base,
            depth: 0,
            values: 0,
        }
    }

    /// The offset of the next byte, for error messages.
    pub(crate) fn offset(&self) -> usize {
        self.base + self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn malformed(
        &self,
        what: &'static str,
        offset: usize,
        reason: &'static str,
    ) -> CodecError {
        CodecError::Malformed {
            what,
            offset,
            reason,
        }
    }

    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CodecError> {
        if self.remaining() < n {
            return Err(CodecError::Truncated {
                what,
                offset: self.offset(),
                need: n,
                have: self.remaining(),
            });
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], CodecError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, CodecError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn bool(&mut self, what: &'static str) -> Result<bool, CodecError> {
        Ok(self.u8(what)? != 0)
    }

    pub(crate) fn i8(&mut self, what: &'static str) -> Result<i8, CodecError> {
        Ok(self.u8(what)? as i8)
    }

    pub(crate) fn i16(&mut self, what: &'static str) -> Result<i16, CodecError> {
        Ok(i16::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, CodecError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn i32(&mut self, what: &'static str) -> Result<i32, CodecError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn i64(&mut self, what: &'static str) -> Result<i64, CodecError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn f32(&mut self, what: &'static str) -> Result<f32, CodecError> {
        Ok(f32::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn f64(&mut self, what: &'static str) -> Result<f64, CodecError> {
        Ok(f64::from_be_bytes(self.array(what)?))
    }

    /// `readUTF`: u16 length, then that many bytes of modified UTF-8.
    pub(crate) fn utf(&mut self, what: &'static str) -> Result<String, CodecError> {
        let at = self.offset();
        let len = self.u16(what)? as usize;
        let bytes = self.take(len, what)?;
        decode_mutf8(bytes).map_err(|reason| self.malformed(what, at, reason))
    }

    /// A loose-encoded nullable string: bool not-null, then `readUTF`.
    pub(crate) fn string(&mut self, what: &'static str) -> Result<Option<String>, CodecError> {
        if self.bool(what)? {
            self.utf(what).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A non-negative int32 length.
    pub(crate) fn length(&mut self, what: &'static str) -> Result<usize, CodecError> {
        let at = self.offset();
        let len = self.i32(what)?;
        usize::try_from(len).map_err(|_| self.malformed(what, at, "negative length"))
    }

    /// A loose-encoded nullable byte sequence (or byte array): bool, int32 length, bytes.
    pub(crate) fn byte_seq(&mut self, what: &'static str) -> Result<Option<Bytes>, CodecError> {
        if !self.bool(what)? {
            return Ok(None);
        }
        let len = self.length(what)?;
        Ok(Some(Bytes::copy_from_slice(self.take(len, what)?)))
    }

    /// Enters one nesting level; pair with [`Reader::leave`].
    pub(crate) fn enter(&mut self, what: &'static str) -> Result<(), CodecError> {
        if self.depth >= MAX_DEPTH {
            return Err(CodecError::TooDeep {
                what,
                offset: self.offset(),
                max: MAX_DEPTH,
            });
        }
        self.depth += 1;
        Ok(())
    }

    /// Counts one more primitive value; fails past [`MAX_VALUES`].
    pub(crate) fn count_value(&mut self, what: &'static str) -> Result<(), CodecError> {
        if self.values >= MAX_VALUES {
            return Err(CodecError::TooManyValues {
                what,
                offset: self.offset(),
                max: MAX_VALUES,
            });
        }
        self.values += 1;
        Ok(())
    }

    pub(crate) fn leave(&mut self) {
        self.depth -= 1;
    }

    /// Fails unless every byte was read.
    pub(crate) fn finish(&self, what: &'static str) -> Result<(), CodecError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(CodecError::TrailingBytes {
                what,
                offset: self.offset(),
                count,
            }),
        }
    }
}

/// Decodes modified UTF-8 (Java's `readUTF` body) into a string.
///
/// Accepts what Java accepts (1-, 2- and 3-byte forms, including a raw NUL and overlong
/// forms). An unpaired surrogate, which a Java string may hold (one cut through an emoji) and
/// `writeUTF` sends, but a Rust string cannot, becomes U+FFFD: refusing it would close the
/// connection, and a failover client would replay the same command on every reconnect.
pub(crate) fn decode_mutf8(bytes: &[u8]) -> Result<String, &'static str> {
    if bytes.is_ascii() {
        return std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| "invalid ASCII");
    }
    let mut units = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let a = bytes[i];
        if a < 0x80 {
            units.push(u16::from(a));
            i += 1;
        } else if a & 0xE0 == 0xC0 {
            let b = *bytes.get(i + 1).ok_or("truncated 2-byte sequence")?;
            if b & 0xC0 != 0x80 {
                return Err("bad continuation byte");
            }
            units.push((u16::from(a & 0x1F) << 6) | u16::from(b & 0x3F));
            i += 2;
        } else if a & 0xF0 == 0xE0 {
            let (Some(&b), Some(&c)) = (bytes.get(i + 1), bytes.get(i + 2)) else {
                return Err("truncated 3-byte sequence");
            };
            if b & 0xC0 != 0x80 || c & 0xC0 != 0x80 {
                return Err("bad continuation byte");
            }
            units.push(
                (u16::from(a & 0x0F) << 12) | (u16::from(b & 0x3F) << 6) | u16::from(c & 0x3F),
            );
            i += 3;
        } else {
            return Err("invalid modified UTF-8 lead byte");
        }
    }
    Ok(String::from_utf16_lossy(&units))
}

fn plain(s: &str) -> bool {
    s.is_ascii() && !s.as_bytes().contains(&0)
}

/// The length of `s` in modified UTF-8.
pub(crate) fn mutf8_len(s: &str) -> usize {
    if plain(s) {
        return s.len();
    }
    s.encode_utf16()
        .map(|u| match u {
            1..=0x7F => 1,
            0 | 0x80..=0x7FF => 2,
            _ => 3,
        })
        .sum()
}

/// Appends `s` in modified UTF-8 (no length).
pub(crate) fn put_mutf8(out: &mut BytesMut, s: &str) {
    if plain(s) {
        out.put_slice(s.as_bytes());
        return;
    }
    for u in s.encode_utf16() {
        match u {
            1..=0x7F => out.put_u8(u as u8),
            0 | 0x80..=0x7FF => {
                out.put_u8(0xC0 | (u >> 6) as u8);
                out.put_u8(0x80 | (u & 0x3F) as u8);
            }
            _ => {
                out.put_u8(0xE0 | (u >> 12) as u8);
                out.put_u8(0x80 | ((u >> 6) & 0x3F) as u8);
                out.put_u8(0x80 | (u & 0x3F) as u8);
            }
        }
    }
}

pub(crate) fn put_bool(out: &mut BytesMut, v: bool) {
    out.put_u8(u8::from(v));
}

/// `writeUTF`: u16 length + modified UTF-8; fails over 65535 bytes as Java does.
pub(crate) fn put_utf(out: &mut BytesMut, s: &str, what: &'static str) -> Result<(), CodecError> {
    let len = u16::try_from(mutf8_len(s)).map_err(|_| CodecError::Unencodable {
        what,
        reason: "string longer than 65535 bytes of modified UTF-8",
    })?;
    out.put_u16(len);
    put_mutf8(out, s);
    Ok(())
}

/// A loose-encoded nullable string.
pub(crate) fn put_string(
    out: &mut BytesMut,
    s: &Option<String>,
    what: &'static str,
) -> Result<(), CodecError> {
    match s {
        None => {
            put_bool(out, false);
            Ok(())
        }
        Some(s) => {
            put_bool(out, true);
            put_utf(out, s, what)
        }
    }
}

/// An int32 length.
pub(crate) fn put_length(
    out: &mut BytesMut,
    len: usize,
    what: &'static str,
) -> Result<(), CodecError> {
    let len = i32::try_from(len).map_err(|_| CodecError::Unencodable {
        what,
        reason: "longer than 2^31-1 bytes",
    })?;
    out.put_i32(len);
    Ok(())
}

/// A loose-encoded nullable byte sequence.
pub(crate) fn put_byte_seq(
    out: &mut BytesMut,
    b: &Option<Bytes>,
    what: &'static str,
) -> Result<(), CodecError> {
    match b {
        None => put_bool(out, false),
        Some(b) => {
            put_bool(out, true);
            put_length(out, b.len(), what)?;
            out.put_slice(b);
        }
    }
    Ok(())
}
