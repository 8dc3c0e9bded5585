//! ONNX decoding: protobuf bytes → plain structs → our [`Tensor`]s.
//!
//! A small strict decoder of only the fields we use (no generated code, no protoc): it is
//! a few hundred lines, keeps the wasm small, and is fuzzed (`fuzz/`).

pub mod encode;
pub mod proto;
pub mod wire;

use crate::error::{Error, Result};
use crate::tensor::{numel, DType, Data, Tensor};
pub use encode::{encode_model, tensor_to_proto};
use half::{bf16, f16};
pub use proto::{decode_model, ModelProto};
use proto::{SparseTensorProto, TensorProto};

/// Checked conversion of ONNX dims (i64) to a shape.
pub fn dims_to_shape(dims: &[i64]) -> Result<Vec<usize>> {
    dims.iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| Error::invalid_model(format!("negative tensor dim {d}")))
        })
        .collect()
}

fn raw_chunks<const N: usize, T>(raw: &[u8], n: usize, f: impl Fn([u8; N]) -> T) -> Result<Vec<T>> {
    if raw.len()
        != n.checked_mul(N)
            .ok_or_else(|| Error::decode("raw_data size overflows"))?
    {
        return Err(Error::decode(format!(
            "raw_data has {} bytes, the shape needs {} elements of {N} bytes",
            raw.len(),
            n
        )));
    }
    Ok(raw
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            f(a)
        })
        .collect())
}

fn typed_len_check(have: usize, n: usize, field: &str) -> Result<()> {
    if have != n {
        return Err(Error::decode(format!(
            "{field} has {have} values, the shape needs {n}"
        )));
    }
    Ok(())
}

/// Converts a TensorProto to a tensor. External data is refused with the file it names.
pub fn tensor_from_proto(t: &TensorProto) -> Result<Tensor> {
    if t.data_location == 1 || !t.external_data.is_empty() {
        let file = t
            .external_data
            .iter()
            .find(|(k, _)| k == "location")
            .map(|(_, v)| v.as_str())
            .unwrap_or("?");
        return Err(Error::new(
            crate::error::ErrorKind::ExternalData,
            format!(
                "tensor '{}' keeps its data in the external file '{file}'; load a model with the data embedded \
                 (onnx.save_model(m, path, save_as_external_data=False))",
                t.name
            ),
        ));
    }
    if t.has_segment {
        return Err(Error::decode(format!(
            "tensor '{}' is segmented, which is not supported",
            t.name
        )));
    }
    let dtype = DType::from_onnx(t.data_type)?;
    let shape = dims_to_shape(&t.dims)?;
    let n = numel(&shape, dtype)?;
    let raw = t.raw_data.as_deref();
    macro_rules! from_i32_field {
        ($ty:ty) => {{
            typed_len_check(t.int32_data.len(), n, "int32_data")?;
            t.int32_data.iter().map(|&v| v as $ty).collect::<Vec<$ty>>()
        }};
    }
    let data = match dtype {
        DType::F32 => Data::F32(match raw {
            Some(r) => raw_chunks(r, n, f32::from_le_bytes)?,
            None => {
                typed_len_check(t.float_data.len(), n, "float_data")?;
                t.float_data.clone()
            }
        }),
        DType::F64 => Data::F64(match raw {
            Some(r) => raw_chunks(r, n, f64::from_le_bytes)?,
            None => {
                typed_len_check(t.double_data.len(), n, "double_data")?;
                t.double_data.clone()
            }
        }),
        DType::F16 => Data::F16(match raw {
            Some(r) => raw_chunks(r, n, |b| f16::from_bits(u16::from_le_bytes(b)))?,
            None => from_i32_field!(u16)
                .into_iter()
                .map(f16::from_bits)
                .collect(),
        }),
        DType::BF16 => Data::BF16(match raw {
            Some(r) => raw_chunks(r, n, |b| bf16::from_bits(u16::from_le_bytes(b)))?,
            None => from_i32_field!(u16)
                .into_iter()
                .map(bf16::from_bits)
                .collect(),
        }),
        DType::I8 => Data::I8(match raw {
            Some(r) => raw_chunks(r, n, i8::from_le_bytes)?,
            None => from_i32_field!(i8),
        }),
        DType::U8 => Data::U8(match raw {
            Some(r) => raw_chunks(r, n, u8::from_le_bytes)?,
            None => from_i32_field!(u8),
        }),
        DType::I16 => Data::I16(match raw {
            Some(r) => raw_chunks(r, n, i16::from_le_bytes)?,
            None => from_i32_field!(i16),
        }),
        DType::U16 => Data::U16(match raw {
            Some(r) => raw_chunks(r, n, u16::from_le_bytes)?,
            None => from_i32_field!(u16),
        }),
        DType::I32 => Data::I32(match raw {
            Some(r) => raw_chunks(r, n, i32::from_le_bytes)?,
            None => from_i32_field!(i32),
        }),
        DType::Bool => Data::Bool(match raw {
            Some(r) => raw_chunks(r, n, |b: [u8; 1]| b[0] != 0)?,
            None => {
                typed_len_check(t.int32_data.len(), n, "int32_data")?;
                t.int32_data.iter().map(|&v| v != 0).collect()
            }
        }),
        DType::I64 => Data::I64(match raw {
            Some(r) => raw_chunks(r, n, i64::from_le_bytes)?,
            None => {
                typed_len_check(t.int64_data.len(), n, "int64_data")?;
                t.int64_data.clone()
            }
        }),
        DType::U32 => Data::U32(match raw {
            Some(r) => raw_chunks(r, n, u32::from_le_bytes)?,
            None => {
                typed_len_check(t.uint64_data.len(), n, "uint64_data")?;
                t.uint64_data.iter().map(|&v| v as u32).collect()
            }
        }),
        DType::U64 => Data::U64(match raw {
            Some(r) => raw_chunks(r, n, u64::from_le_bytes)?,
            None => {
                typed_len_check(t.uint64_data.len(), n, "uint64_data")?;
                t.uint64_data.clone()
            }
        }),
        small_dt if small_dt.is_small() => {
            // raw_data holds the packed bytes; int32_data one packed byte per value.
            let packed: Vec<u8>;
            let bytes = match raw {
                Some(r) => r,
                None => {
                    let per = 8 / small_dt.bit_width().max(1);
                    typed_len_check(t.int32_data.len(), n.div_ceil(per), "int32_data")?;
                    packed = t.int32_data.iter().map(|&v| v as u8).collect();
                    &packed
                }
            };
            crate::tensor::small::from_packed(small_dt, bytes, n)?
        }
        DType::Str => {
            typed_len_check(t.string_data.len(), n, "string_data")?;
            Data::Str(
                t.string_data
                    .iter()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .collect(),
            )
        }
        other => {
            return Err(Error::unsupported_dtype(format!(
                "cannot decode {other} tensors"
            )))
        }
    };
    Tensor::new(shape, data)
}

/// Densifies a sparse initializer (COO indices, flat [NNZ] or [NNZ, rank]).
pub fn tensor_from_sparse(s: &SparseTensorProto) -> Result<Tensor> {
    let values = tensor_from_proto(
        s.values
            .as_ref()
            .ok_or_else(|| Error::decode("sparse tensor without values"))?,
    )?;
    let indices = tensor_from_proto(
        s.indices
            .as_ref()
            .ok_or_else(|| Error::decode("sparse tensor without indices"))?,
    )?
    .to_i64_vec()?;
    let shape = dims_to_shape(&s.dims)?;
    let n = numel(&shape, values.dtype())?;
    let nnz = values.len();
    let rank = shape.len();
    let flat: Vec<usize> = if indices.len() == nnz {
        indices
            .iter()
            .map(|&i| usize::try_from(i).unwrap_or(usize::MAX))
            .collect()
    } else if indices.len() == nnz * rank {
        indices
            .chunks_exact(rank.max(1))
            .map(|c| {
                c.iter()
                    .zip(&shape)
                    .try_fold(0usize, |acc, (&i, &d)| {
                        let i = usize::try_from(i).ok().filter(|&i| i < d)?;
                        acc.checked_mul(d)?.checked_add(i)
                    })
                    .unwrap_or(usize::MAX)
            })
            .collect()
    } else {
        return Err(Error::decode(
            "sparse tensor indices do not match its values",
        ));
    };
    if flat.iter().any(|&i| i >= n) {
        return Err(Error::decode("sparse tensor index out of range"));
    }
    let mut dense = Tensor::zeros(values.dtype(), shape)?;
    crate::dispatch!(all values.dtype(), "sparse initializer", T => {
        let src = values.as_slice::<T>()?;
        let dst = dense.as_mut_slice::<T>()?;
        for (&i, v) in flat.iter().zip(src) {
            #[allow(clippy::clone_on_copy)]
            let v = v.clone();
            dst[i] = v;
        }
        Ok::<(), Error>(())
    })?;
    Ok(dense)
}
