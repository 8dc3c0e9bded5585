//! Protobuf wire-format reader: varints, fixed-width fields and length-delimited slices,
//! every length and offset checked. Knows nothing of ONNX.

use crate::error::{Error, Result};

/// Nesting deeper than this is refused (graphs inside attributes inside graphs…), so a
/// hostile file cannot overflow the stack.
pub const MAX_DEPTH: u32 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireType {
    Varint,
    Fixed64,
    Len,
    Fixed32,
}

/// A field's payload.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Len(&'a [u8]),
}

pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn is_done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub fn varint(&mut self) -> Result<u64> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| Error::decode("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Error::decode("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                Error::decode(format!(
                    "field of {n} bytes runs past the end of its message"
                ))
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// Next (field number, value), or None at the end.
    pub fn field(&mut self) -> Result<Option<(u32, Value<'a>)>> {
        if self.is_done() {
            return Ok(None);
        }
        let key = self.varint()?;
        let num = u32::try_from(key >> 3).map_err(|_| Error::decode("field number too large"))?;
        if num == 0 {
            return Err(Error::decode("field number 0"));
        }
        let v = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                let b = self.take(8)?;
                Value::Fixed64(u64::from_le_bytes(
                    b.try_into().map_err(|_| Error::decode("fixed64"))?,
                ))
            }
            2 => {
                let len = usize::try_from(self.varint()?)
                    .map_err(|_| Error::decode("length too large"))?;
                Value::Len(self.take(len)?)
            }
            5 => {
                let b = self.take(4)?;
                Value::Fixed32(u32::from_le_bytes(
                    b.try_into().map_err(|_| Error::decode("fixed32"))?,
                ))
            }
            w => {
                return Err(Error::decode(format!(
                    "unsupported wire type {w} (field {num})"
                )))
            }
        };
        Ok(Some((num, v)))
    }
}

impl<'a> Value<'a> {
    pub fn wire_type(&self) -> WireType {
        match self {
            Value::Varint(_) => WireType::Varint,
            Value::Fixed64(_) => WireType::Fixed64,
            Value::Fixed32(_) => WireType::Fixed32,
            Value::Len(_) => WireType::Len,
        }
    }

    fn mismatch(&self, what: &str) -> Error {
        Error::decode(format!(
            "expected {what}, found wire type {:?}",
            self.wire_type()
        ))
    }

    pub fn as_u64(&self) -> Result<u64> {
        match self {
            Value::Varint(v) => Ok(*v),
            _ => Err(self.mismatch("a varint")),
        }
    }
    pub fn as_i64(&self) -> Result<i64> {
        self.as_u64().map(|v| v as i64)
    }
    /// int32 fields are sign-extended varints on the wire.
    pub fn as_i32(&self) -> Result<i32> {
        let v = self.as_i64()?;
        i32::try_from(v).map_err(|_| Error::decode(format!("int32 field out of range: {v}")))
    }
    pub fn as_f32(&self) -> Result<f32> {
        match self {
            Value::Fixed32(v) => Ok(f32::from_bits(*v)),
            _ => Err(self.mismatch("a float")),
        }
    }
    pub fn as_bytes(&self) -> Result<&'a [u8]> {
        match self {
            Value::Len(b) => Ok(b),
            _ => Err(self.mismatch("bytes")),
        }
    }
    pub fn as_str(&self) -> Result<String> {
        let b = self.as_bytes()?;
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| Error::decode("string field is not valid UTF-8"))
    }
}

/// Appends a repeated varint field that may be packed or not.
pub fn push_varints(v: &Value, out: &mut Vec<i64>) -> Result<()> {
    match v {
        Value::Varint(x) => out.push(*x as i64),
        Value::Len(b) => {
            let mut r = Reader::new(b);
            while !r.is_done() {
                out.push(r.varint()? as i64);
            }
        }
        _ => return Err(v.mismatch("varints")),
    }
    Ok(())
}

/// Appends a repeated float field, packed or not.
pub fn push_f32s(v: &Value, out: &mut Vec<f32>) -> Result<()> {
    match v {
        Value::Fixed32(x) => out.push(f32::from_bits(*x)),
        Value::Len(b) => {
            if b.len() % 4 != 0 {
                return Err(Error::decode(
                    "packed float field length is not a multiple of 4",
                ));
            }
            out.extend(
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
        }
        _ => return Err(v.mismatch("floats")),
    }
    Ok(())
}

/// Appends a repeated double (or fixed64) field, packed or not.
pub fn push_f64s(v: &Value, out: &mut Vec<f64>) -> Result<()> {
    match v {
        Value::Fixed64(x) => out.push(f64::from_bits(*x)),
        Value::Len(b) => {
            if b.len() % 8 != 0 {
                return Err(Error::decode(
                    "packed double field length is not a multiple of 8",
                ));
            }
            out.extend(
                b.chunks_exact(8)
                    .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])),
            );
        }
        _ => return Err(v.mismatch("doubles")),
    }
    Ok(())
}

/// Appends a repeated uint64 (varint) field.
pub fn push_u64s(v: &Value, out: &mut Vec<u64>) -> Result<()> {
    match v {
        Value::Varint(x) => out.push(*x),
        Value::Len(b) => {
            let mut r = Reader::new(b);
            while !r.is_done() {
                out.push(r.varint()?);
            }
        }
        _ => return Err(v.mismatch("varints")),
    }
    Ok(())
}

/// Protobuf wire-format writer, the inverse of [`Reader`]. It writes what it is told: which
/// fields to leave out at their default is the caller's choice (see `onnx::encode`).
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

/// Wire type codes, the low 3 bits of a field key.
const WT_VARINT: u64 = 0;
const WT_FIXED64: u64 = 1;
const WT_LEN: u64 = 2;
const WT_FIXED32: u64 = 5;

fn put_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

impl Writer {
    pub fn new() -> Self {
        Writer::default()
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn key(&mut self, num: u32, wire_type: u64) {
        put_varint((u64::from(num) << 3) | wire_type, &mut self.buf);
    }

    /// A varint field; signed values go as their two's complement (int32 and int64 alike
    /// take 10 bytes when negative, as protobuf sign-extends int32).
    pub fn varint_field(&mut self, num: u32, v: u64) {
        self.key(num, WT_VARINT);
        put_varint(v, &mut self.buf);
    }

    pub fn f32_field(&mut self, num: u32, v: f32) {
        self.key(num, WT_FIXED32);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn f64_field(&mut self, num: u32, v: f64) {
        self.key(num, WT_FIXED64);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn bytes_field(&mut self, num: u32, b: &[u8]) {
        self.key(num, WT_LEN);
        put_varint(b.len() as u64, &mut self.buf);
        self.buf.extend_from_slice(b);
    }

    /// A nested message: `body` writes its fields, then the length goes in front. The
    /// body is shifted once per nesting level, which is cheap next to building it.
    pub fn message_field(&mut self, num: u32, body: impl FnOnce(&mut Writer)) {
        self.key(num, WT_LEN);
        let start = self.buf.len();
        body(self);
        let mut len = Vec::with_capacity(10);
        put_varint((self.buf.len() - start) as u64, &mut len);
        self.buf.splice(start..start, len);
    }

    /// A packed repeated varint field; nothing when empty.
    pub fn packed_varints(&mut self, num: u32, vals: impl IntoIterator<Item = u64>) {
        let mut body = Vec::new();
        for v in vals {
            put_varint(v, &mut body);
        }
        if !body.is_empty() {
            self.bytes_field(num, &body);
        }
    }

    /// A packed repeated float field; nothing when empty.
    pub fn packed_f32s(&mut self, num: u32, vals: &[f32]) {
        if !vals.is_empty() {
            let body: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.bytes_field(num, &body);
        }
    }

    /// A packed repeated double field; nothing when empty.
    pub fn packed_f64s(&mut self, num: u32, vals: &[f64]) {
        if !vals.is_empty() {
            let body: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.bytes_field(num, &body);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_and_rejects_truncation() {
        // field 1 varint 150, field 2 bytes "hi"
        let buf = [0x08, 0x96, 0x01, 0x12, 0x02, b'h', b'i'];
        let mut r = Reader::new(&buf);
        let (n, v) = r.field().unwrap().unwrap();
        assert_eq!((n, v.as_u64().unwrap()), (1, 150));
        let (n, v) = r.field().unwrap().unwrap();
        assert_eq!((n, v.as_str().unwrap().as_str()), (2, "hi"));
        assert!(r.field().unwrap().is_none());
        let mut r = Reader::new(&buf[..5]);
        r.field().unwrap();
        assert!(r.field().is_err());
    }

    #[test]
    fn rejects_bad_wire_types_and_huge_lengths() {
        assert!(Reader::new(&[0x0b]).field().is_err());
        assert!(Reader::new(&[0x12, 0xff, 0xff, 0xff, 0xff, 0x0f])
            .field()
            .is_err());
        assert!(Reader::new(&[
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
        ])
        .field()
        .is_err());
    }

    #[test]
    fn writer_output_reads_back() {
        let mut w = Writer::new();
        w.varint_field(1, 150);
        w.bytes_field(2, b"hi");
        w.varint_field(3, -1i64 as u64);
        w.f32_field(4, -0.0);
        w.f64_field(5, 2.5);
        // A body of 200 bytes needs a two-byte length.
        w.message_field(6, |w| w.bytes_field(1, &[7u8; 197]));
        w.packed_varints(7, [0, 300, u64::MAX]);
        w.packed_f32s(8, &[1.5, f32::NAN]);
        w.packed_f64s(9, &[-3.0]);
        w.packed_varints(10, []);
        w.packed_f32s(11, &[]);
        let buf = w.into_bytes();
        assert_eq!(&buf[..3], &[0x08, 0x96, 0x01]);
        let mut r = Reader::new(&buf);
        let mut next = || r.field().unwrap().unwrap();
        assert_eq!(next().1.as_u64().unwrap(), 150);
        assert_eq!(next().1.as_str().unwrap(), "hi");
        assert_eq!(next().1.as_i32().unwrap(), -1);
        assert_eq!(next().1.as_f32().unwrap().to_bits(), (-0.0f32).to_bits());
        let mut d = Vec::new();
        push_f64s(&next().1, &mut d).unwrap();
        assert_eq!(d, [2.5]);
        let (n, v) = next();
        let inner = v.as_bytes().unwrap();
        assert_eq!((n, inner.len()), (6, 200));
        assert_eq!(
            Reader::new(inner)
                .field()
                .unwrap()
                .unwrap()
                .1
                .as_bytes()
                .unwrap(),
            &[7u8; 197]
        );
        let mut u = Vec::new();
        push_u64s(&next().1, &mut u).unwrap();
        assert_eq!(u, [0, 300, u64::MAX]);
        let mut f = Vec::new();
        push_f32s(&next().1, &mut f).unwrap();
        assert_eq!((f[0], f[1].is_nan()), (1.5, true));
        let mut d = Vec::new();
        push_f64s(&next().1, &mut d).unwrap();
        assert_eq!(d, [-3.0]);
        // Empty packed fields are not written at all.
        assert!(r.field().unwrap().is_none());
    }
}
