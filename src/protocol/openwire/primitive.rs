//! ActiveMQ's primitive map (`MarshallingSupport`): the encoding of `WireFormatInfo`
//! properties and of a message's `marshalledProperties`, plus the text-message body.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::CodecError;
use super::wire::{decode_mutf8, mutf8_len, put_bool, put_length, put_mutf8, put_utf, Reader};

const NULL: u8 = 0;
const BOOLEAN: u8 = 1;
const BYTE: u8 = 2;
const CHAR: u8 = 3;
const SHORT: u8 = 4;
const INTEGER: u8 = 5;
const LONG: u8 = 6;
const DOUBLE: u8 = 7;
const FLOAT: u8 = 8;
const STRING: u8 = 9;
const BYTE_ARRAY: u8 = 10;
const MAP: u8 = 11;
const LIST: u8 = 12;
const BIG_STRING: u8 = 13;

/// Java writes strings of fewer UTF-16 units than this as `STRING` (u16 length), longer ones
/// as `BIG_STRING` (int32 length).
const SHORT_STRING_UNITS: usize = (i16::MAX / 4) as usize;

/// A typed value of a primitive map or list.
#[derive(Debug, Clone, PartialEq)]
pub enum PrimitiveValue {
    /// Type 0.
    Null,
    /// Type 1.
    Bool(bool),
    /// Type 2.
    Byte(i8),
    /// Type 3: a Java `char`, one UTF-16 unit.
    Char(u16),
    /// Type 4.
    Short(i16),
    /// Type 5.
    Int(i32),
    /// Type 6.
    Long(i64),
    /// Type 7.
    Double(f64),
    /// Type 8.
    Float(f32),
    /// Type 9 or 13 (chosen on encoding by length, as Java does).
    String(String),
    /// Type 10.
    Bytes(Bytes),
    /// Type 11.
    Map(PrimitiveMap),
    /// Type 12.
    List(Vec<PrimitiveValue>),
}

/// A primitive map, in wire order (Java sends `HashMap` order; keeping the order makes
/// re-encoding byte-exact).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PrimitiveMap {
    /// The entries, in wire order.
    pub entries: Vec<(String, PrimitiveValue)>,
}

impl PrimitiveMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value under `key`, if any.
    pub fn get(&self, key: &str) -> Option<&PrimitiveValue> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Sets `key` to `value`, replacing an existing entry in place.
    pub fn insert(&mut self, key: impl Into<String>, value: PrimitiveValue) {
        let key = key.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => self.entries.push((key, value)),
        }
    }

    /// `Boolean.TRUE == get(key)`, as `WireFormatInfo`'s getters test.
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some(PrimitiveValue::Bool(true)))
    }

    /// An integer property (int or long), `None` when absent or of another type.
    pub fn long(&self, key: &str) -> Option<i64> {
        match self.get(key)? {
            PrimitiveValue::Long(v) => Some(*v),
            PrimitiveValue::Int(v) => Some(i64::from(*v)),
            PrimitiveValue::Short(v) => Some(i64::from(*v)),
            PrimitiveValue::Byte(v) => Some(i64::from(*v)),
            _ => None,
        }
    }

    /// A string property, `None` when absent or of another type.
    pub fn string(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            PrimitiveValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// Decodes a marshalled primitive map (e.g. a message's `marshalledProperties`).
    ///
    /// A negative count (Java's null map) decodes as an empty map. Error offsets are relative
    /// to the start of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(bytes, 0);
        let map = read_map(&mut r, "primitive map")?;
        r.finish("primitive map")?;
        Ok(map)
    }

    /// Appends the marshalled form of the map.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), CodecError> {
        write_map(self, out, 0)
    }
}

pub(crate) fn read_map(r: &mut Reader<'_>, what: &'static str) -> Result<PrimitiveMap, CodecError> {
    let count = r.i32(what)?;
    let count = usize::try_from(count).unwrap_or(0);
    // Grown as entries arrive: an announced count is no promise (see `MAX_VALUES`).
    let mut entries = Vec::with_capacity(count.min(INITIAL_CAPACITY));
    for _ in 0..count {
        let key = r.utf(what)?;
        let value = read_value(r, what)?;
        entries.push((key, value));
    }
    Ok(PrimitiveMap { entries })
}

/// The most entries a map or list reserves room for before any arrives.
const INITIAL_CAPACITY: usize = 64;

fn read_value(r: &mut Reader<'_>, what: &'static str) -> Result<PrimitiveValue, CodecError> {
    let at = r.offset();
    r.count_value(what)?;
    let value = match r.u8(what)? {
        NULL => PrimitiveValue::Null,
        BOOLEAN => PrimitiveValue::Bool(r.bool(what)?),
        BYTE => PrimitiveValue::Byte(r.i8(what)?),
        CHAR => PrimitiveValue::Char(r.u16(what)?),
        SHORT => PrimitiveValue::Short(r.i16(what)?),
        INTEGER => PrimitiveValue::Int(r.i32(what)?),
        LONG => PrimitiveValue::Long(r.i64(what)?),
        DOUBLE => PrimitiveValue::Double(r.f64(what)?),
        FLOAT => PrimitiveValue::Float(r.f32(what)?),
        STRING => PrimitiveValue::String(r.utf(what)?),
        BIG_STRING => {
            let len_at = r.offset();
            let len = r.i32(what)?;
            if len == -1 {
                PrimitiveValue::Null
            } else {
                let len = usize::try_from(len)
                    .map_err(|_| r.malformed(what, len_at, "negative string length"))?;
                let bytes = r.take(len, what)?;
                PrimitiveValue::String(
                    decode_mutf8(bytes).map_err(|reason| r.malformed(what, len_at, reason))?,
                )
            }
        }
        BYTE_ARRAY => {
            let len = r.length(what)?;
            PrimitiveValue::Bytes(Bytes::copy_from_slice(r.take(len, what)?))
        }
        MAP => {
            r.enter(what)?;
            let map = read_map(r, what)?;
            r.leave();
            PrimitiveValue::Map(map)
        }
        LIST => {
            r.enter(what)?;
            let count = usize::try_from(r.i32(what)?).unwrap_or(0);
            let mut list = Vec::with_capacity(count.min(INITIAL_CAPACITY));
            for _ in 0..count {
                list.push(read_value(r, what)?);
            }
            r.leave();
            PrimitiveValue::List(list)
        }
        _ => return Err(r.malformed(what, at, "unknown primitive type")),
    };
    Ok(value)
}

fn write_map(map: &PrimitiveMap, out: &mut BytesMut, depth: u32) -> Result<(), CodecError> {
    const WHAT: &str = "primitive map";
    put_length(out, map.entries.len(), WHAT)?;
    for (key, value) in &map.entries {
        put_utf(out, key, WHAT)?;
        write_value(value, out, depth)?;
    }
    Ok(())
}

fn write_value(value: &PrimitiveValue, out: &mut BytesMut, depth: u32) -> Result<(), CodecError> {
    const WHAT: &str = "primitive map";
    if depth > super::wire::MAX_DEPTH {
        return Err(CodecError::Unencodable {
            what: WHAT,
            reason: "maps and lists nested too deep",
        });
    }
    match value {
        PrimitiveValue::Null => out.put_u8(NULL),
        PrimitiveValue::Bool(v) => {
            out.put_u8(BOOLEAN);
            put_bool(out, *v);
        }
        PrimitiveValue::Byte(v) => {
            out.put_u8(BYTE);
            out.put_i8(*v);
        }
        PrimitiveValue::Char(v) => {
            out.put_u8(CHAR);
            out.put_u16(*v);
        }
        PrimitiveValue::Short(v) => {
            out.put_u8(SHORT);
            out.put_i16(*v);
        }
        PrimitiveValue::Int(v) => {
            out.put_u8(INTEGER);
            out.put_i32(*v);
        }
        PrimitiveValue::Long(v) => {
            out.put_u8(LONG);
            out.put_i64(*v);
        }
        PrimitiveValue::Double(v) => {
            out.put_u8(DOUBLE);
            out.put_f64(*v);
        }
        PrimitiveValue::Float(v) => {
            out.put_u8(FLOAT);
            out.put_f32(*v);
        }
        PrimitiveValue::String(s) => {
            if s.encode_utf16().count() < SHORT_STRING_UNITS {
                out.put_u8(STRING);
                put_utf(out, s, WHAT)?;
            } else {
                out.put_u8(BIG_STRING);
                put_length(out, mutf8_len(s), WHAT)?;
                put_mutf8(out, s);
            }
        }
        PrimitiveValue::Bytes(b) => {
            out.put_u8(BYTE_ARRAY);
            put_length(out, b.len(), WHAT)?;
            out.put_slice(b);
        }
        PrimitiveValue::Map(m) => {
            out.put_u8(MAP);
            write_map(m, out, depth + 1)?;
        }
        PrimitiveValue::List(list) => {
            out.put_u8(LIST);
            put_length(out, list.len(), WHAT)?;
            for v in list {
                write_value(v, out, depth + 1)?;
            }
        }
    }
    Ok(())
}

/// Decodes an uncompressed `ActiveMQTextMessage` body (`content`): int32 length (-1 = null
/// text), then modified UTF-8. A compressed body must be inflated first.
pub fn decode_text_body(content: &[u8]) -> Result<Option<String>, CodecError> {
    const WHAT: &str = "text body";
    let mut r = Reader::new(content, 0);
    let len = r.i32(WHAT)?;
    if len == -1 {
        r.finish(WHAT)?;
        return Ok(None);
    }
    let len = usize::try_from(len).map_err(|_| r.malformed(WHAT, 0, "negative length"))?;
    let bytes = r.take(len, WHAT)?;
    let text = decode_mutf8(bytes).map_err(|reason| r.malformed(WHAT, 4, reason))?;
    r.finish(WHAT)?;
    Ok(Some(text))
}

/// Encodes a text body as `ActiveMQTextMessage` stores it in `content` (uncompressed).
pub fn encode_text_body(text: Option<&str>, out: &mut BytesMut) -> Result<(), CodecError> {
    match text {
        None => out.put_i32(-1),
        Some(text) => {
            put_length(out, mutf8_len(text), "text body")?;
            put_mutf8(out, text);
        }
    }
    Ok(())
}
