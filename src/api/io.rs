//! Reading and writing tensors in files: NumPy `.npy` and ONNX `TensorProto` `.pb`.

use crate::error::{Error, Result};
use crate::onnx::{proto, tensor_from_proto};
use crate::tensor::{numel, DType, Data, Tensor};

/// Decodes a serialized `TensorProto` (the conformance suite's `input_N.pb`).
pub fn read_pb(bytes: &[u8]) -> Result<Tensor> {
    tensor_from_proto(&proto::decode_tensor_file(bytes)?)
}

fn npy_descr(dt: DType) -> Result<&'static str> {
    Ok(match dt {
        DType::F32 => "<f4",
        DType::F64 => "<f8",
        DType::F16 => "<f2",
        DType::I8 => "|i1",
        DType::U8 => "|u1",
        DType::I16 => "<i2",
        DType::U16 => "<u2",
        DType::I32 => "<i4",
        DType::U32 => "<u4",
        DType::I64 => "<i8",
        DType::U64 => "<u8",
        DType::Bool => "|b1",
        // bfloat16, strings and the narrow ONNX types (float8, int4…) have no .npy code.
        _ => {
            return Err(Error::unsupported_dtype(format!(
                "{dt} cannot be stored in .npy"
            )))
        }
    })
}

/// Reads a `.npy` file (version 1–3, little-endian, C order).
pub fn read_npy(bytes: &[u8]) -> Result<Tensor> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(Error::io("not a .npy file"));
    }
    let (hlen, start) = match bytes[6] {
        1 => (
            usize::from(u16::from_le_bytes([bytes[8], bytes[9]])),
            10usize,
        ),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(Error::io("truncated .npy header"));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(Error::io(format!("unsupported .npy version {v}"))),
    };
    let end = start
        .checked_add(hlen)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| Error::io("truncated .npy header"))?;
    let header =
        std::str::from_utf8(&bytes[start..end]).map_err(|_| Error::io("bad .npy header"))?;
    let field = |key: &str| -> Result<&str> {
        let i = header
            .find(key)
            .ok_or_else(|| Error::io(format!(".npy header lacks {key}")))?;
        Ok(&header[i + key.len()..])
    };
    let descr_rest = field("'descr':")?.trim_start();
    let descr = descr_rest
        .trim_start_matches('\'')
        .split('\'')
        .next()
        .unwrap_or("");
    if field("'fortran_order':")?.trim_start().starts_with("True") {
        return Err(Error::io("Fortran-order .npy files are not supported"));
    }
    let shape_rest = field("'shape':")?;
    let open = shape_rest
        .find('(')
        .ok_or_else(|| Error::io("bad .npy shape"))?;
    let close = shape_rest
        .find(')')
        .ok_or_else(|| Error::io("bad .npy shape"))?;
    let shape: Vec<usize> = shape_rest[open + 1..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| Error::io("bad .npy dim")))
        .collect::<Result<_>>()?;
    let dt = match descr {
        "<f4" => DType::F32,
        "<f8" => DType::F64,
        "<f2" => DType::F16,
        "|i1" | "<i1" => DType::I8,
        "|u1" | "<u1" => DType::U8,
        "<i2" => DType::I16,
        "<u2" => DType::U16,
        "<i4" => DType::I32,
        "<u4" => DType::U32,
        "<i8" => DType::I64,
        "<u8" => DType::U64,
        "|b1" => DType::Bool,
        d => return Err(Error::io(format!("unsupported .npy dtype {d}"))),
    };
    let n = numel(&shape, dt)?;
    let body = &bytes[end..];
    if body.len() != n * dt.size() {
        return Err(Error::io(format!(
            ".npy body has {} bytes, expected {}",
            body.len(),
            n * dt.size()
        )));
    }
    let raw = proto::TensorProto {
        dims: shape.iter().map(|&d| d as i64).collect(),
        data_type: dt.to_onnx(),
        raw_data: Some(body.to_vec()),
        ..Default::default()
    };
    tensor_from_proto(&raw)
}

/// Encodes a tensor as `.npy` (version 1).
pub fn write_npy(t: &Tensor) -> Result<Vec<u8>> {
    let descr = npy_descr(t.dtype())?;
    let shape = match t.rank() {
        0 => "()".to_string(),
        1 => format!("({},)", t.shape()[0]),
        _ => format!(
            "({})",
            t.shape()
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + t.nbytes());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    match t.data() {
        Data::F32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Data::F64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Data::F16(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_bits().to_le_bytes())),
        Data::I8(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Data::U8(v) => out.extend_from_slice(v),
        Data::I16(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Data::U16(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Data::I32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Data::U32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Data::I64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Data::U64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Data::Bool(v) => v.iter().for_each(|&x| out.push(u8::from(x))),
        // npy_descr above already refused every other dtype.
        _ => {
            return Err(Error::unsupported_dtype(format!(
                "{} cannot be stored in .npy",
                t.dtype()
            )))
        }
    }
    Ok(out)
}

/// A JSON string literal (quotes, backslashes and control characters escaped): the CLI's
/// and `evaluate`'s hand-written JSON.
pub fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A tensor as JSON: `{"dtype":"float32","shape":[1,10],"data":[…]}`, data flat in C
/// order. Floats print in their shortest round-trip form; NaN and infinities, which JSON
/// lacks, print as null.
pub fn tensor_json(t: &Tensor) -> Result<String> {
    use std::fmt::Write;
    let mut s = format!("{{\"dtype\":{},\"shape\":[", json_str(t.dtype().name()));
    for (i, d) in t.shape().iter().enumerate() {
        let _ = write!(s, "{}{d}", if i > 0 { "," } else { "" });
    }
    s.push_str("],\"data\":[");
    fn floats<T: std::fmt::Debug + Copy>(s: &mut String, v: &[T], finite: impl Fn(T) -> bool) {
        for (i, &x) in v.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            if finite(x) {
                let _ = write!(s, "{x:?}");
            } else {
                s.push_str("null");
            }
        }
    }
    match t.data() {
        Data::F64(v) => floats(&mut s, v, |x: f64| x.is_finite()),
        Data::Str(v) => s.push_str(&v.iter().map(|x| json_str(x)).collect::<Vec<_>>().join(",")),
        Data::Bool(v) => s.push_str(
            &v.iter()
                .map(|x| if *x { "true" } else { "false" })
                .collect::<Vec<_>>()
                .join(","),
        ),
        Data::U64(v) => s.push_str(&v.iter().map(u64::to_string).collect::<Vec<_>>().join(",")),
        _ if t.dtype().is_float() || t.dtype().is_low_float() => {
            floats(&mut s, &t.to_f32_vec()?, |x: f32| x.is_finite())
        }
        _ => s.push_str(
            &t.to_i64_vec()?
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(","),
        ),
    }
    s.push_str("]}");
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_roundtrip() {
        let t = Tensor::from_vec(vec![2, 3], vec![1f32, 2., 3., 4., 5., 6.]).unwrap();
        let b = write_npy(&t).unwrap();
        assert_eq!(read_npy(&b).unwrap(), t);
        let s = Tensor::scalar(7i64);
        assert_eq!(read_npy(&write_npy(&s).unwrap()).unwrap(), s);
        assert!(read_npy(&b[..b.len() - 1]).is_err());
    }

    #[test]
    fn tensors_as_json() {
        let t = Tensor::from_vec(vec![1, 3], vec![0.1f32, f32::NAN, -2.0]).unwrap();
        assert_eq!(
            tensor_json(&t).unwrap(),
            r#"{"dtype":"float32","shape":[1,3],"data":[0.1,null,-2.0]}"#
        );
        let t = Tensor::from_vec(vec![2], vec![i64::MIN, 7]).unwrap();
        assert_eq!(
            tensor_json(&t).unwrap(),
            format!(r#"{{"dtype":"int64","shape":[2],"data":[{},7]}}"#, i64::MIN)
        );
        let t = Tensor::from_vec(vec![], vec!["a\"b".to_string()]).unwrap();
        assert_eq!(
            tensor_json(&t).unwrap(),
            r#"{"dtype":"string","shape":[],"data":["a\"b"]}"#
        );
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
