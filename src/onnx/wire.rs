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
}
