//! Tensors that live on the GPU, how each ONNX dtype is stored there, and the buffer
//! pool that reuses storage by size once a value dies.

use crate::error::{Error, Result};
use crate::tensor::small::{CastOptions, RoundMode, SmallElem};
use crate::tensor::{DType, Data, Tensor};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How a dtype is held in a storage buffer: WGSL has 32-bit scalars only (f16 is
/// optional and not used for storage yet). Narrower types are widened: float16,
/// bfloat16, the float8 kinds and float4e2m1 to f32 (kernels round their outputs back to
/// the narrow type), int8/int16/int4/int2 to sign-extended i32 and uint16/uint32/uint4/
/// uint2 to u32 (kernels wrap their outputs). The 64-bit types are narrowed: float64 is
/// held as f32 (results carry f32 precision), int64 and uint64 as 32-bit integers
/// (values must fit; the upload checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Storage {
    F32,
    /// int32, int64 narrowed to 32 bits (checked on upload; results wrap at 32 bits), and
    /// int8 sign-extended to one i32 per element.
    I32,
    /// bool, uint8, uint16, uint4, uint2 widened to one u32 per element, uint32, and
    /// uint64 narrowed to 32 bits (checked on upload).
    U32,
}

impl Storage {
    /// The storage of `dt`, or None for dtypes that stay on the CPU.
    pub fn of(dt: DType) -> Option<Storage> {
        match dt {
            DType::F32
            | DType::F64
            | DType::F16
            | DType::BF16
            | DType::F8E4M3FN
            | DType::F8E4M3FNUZ
            | DType::F8E5M2
            | DType::F8E5M2FNUZ
            | DType::F8E8M0
            | DType::F4E2M1 => Some(Storage::F32),
            DType::I8 | DType::I16 | DType::I32 | DType::I64 | DType::I4 | DType::I2 => {
                Some(Storage::I32)
            }
            DType::Bool
            | DType::U8
            | DType::U16
            | DType::U32
            | DType::U64
            | DType::U4
            | DType::U2 => Some(Storage::U32),
            DType::Str => None,
        }
    }
    /// The WGSL scalar type.
    pub fn wgsl(self) -> &'static str {
        match self {
            Storage::F32 => "f32",
            Storage::I32 => "i32",
            Storage::U32 => "u32",
        }
    }
}

/// Buffers of dead values, by byte size, for the next value of the same size. Shapes
/// repeat from run to run, so exact sizes match well and nothing is over-allocated.
///
/// Each run frees into its own pool and hands it to the context's shared pool only once
/// its work has completed: a buffer freed while the run still has commands recorded
/// against it must not be written by another run (another thread) that submits first.
#[derive(Default)]
pub struct Pool {
    free: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
}

impl Pool {
    /// Drops every pooled buffer (the memory goes back to the driver).
    pub fn clear(&self) {
        if let Ok(mut f) = self.free.lock() {
            f.clear();
        }
    }
    pub(crate) fn take(&self, size: u64) -> Option<wgpu::Buffer> {
        self.free.lock().ok()?.get_mut(&size)?.pop()
    }
    /// Moves every buffer into `to`.
    pub(crate) fn drain_into(&self, to: &Pool) {
        let drained = self
            .free
            .lock()
            .map(|mut f| std::mem::take(&mut *f))
            .unwrap_or_default();
        for (size, bufs) in drained {
            for b in bufs {
                to.give(size, b);
            }
        }
    }
    fn give(&self, size: u64, b: wgpu::Buffer) {
        if let Ok(mut f) = self.free.lock() {
            let v = f.entry(size).or_default();
            // A bound keeps a model with many distinct sizes from hoarding memory.
            if v.len() < 16 {
                v.push(b);
            }
        }
    }
}

/// A storage buffer that goes back to its pool when the last tensor using it dies.
pub struct PooledBuffer {
    pub buf: Option<wgpu::Buffer>,
    pub size: u64,
    pool: std::sync::Weak<Pool>,
}

impl PooledBuffer {
    pub(crate) fn new(buf: wgpu::Buffer, size: u64, pool: &Arc<Pool>) -> PooledBuffer {
        PooledBuffer {
            buf: Some(buf),
            size,
            pool: Arc::downgrade(pool),
        }
    }
    pub fn buffer(&self) -> &wgpu::Buffer {
        // Only None inside Drop.
        self.buf.as_ref().expect("buffer present until drop")
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let (Some(b), Some(p)) = (self.buf.take(), self.pool.upgrade()) {
            p.give(self.size, b);
        }
    }
}

/// A tensor on the GPU: a buffer, its logical shape and the ONNX dtype it stands for.
#[derive(Clone)]
pub struct GpuTensor {
    pub buf: Arc<PooledBuffer>,
    pub shape: Vec<usize>,
    pub dtype: DType,
}

impl std::fmt::Debug for GpuTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuTensor({}{:?})", self.dtype, self.shape)
    }
}

impl GpuTensor {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn storage(&self) -> Storage {
        Storage::of(self.dtype).unwrap_or(Storage::U32)
    }
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.buf.buffer()
    }
}

/// Bytes of a buffer holding `n` 32-bit elements: at least 16 (zero-size bindings are
/// invalid) and a multiple of 16.
pub fn buffer_bytes(n: usize) -> u64 {
    ((n.max(1) * 4) as u64).div_ceil(16) * 16
}

/// The 32-bit words that stand for `t` on the GPU.
pub fn to_words(t: &Tensor) -> Result<Vec<u32>> {
    Ok(match t.data() {
        Data::F32(v) => v.iter().map(|x| x.to_bits()).collect(),
        Data::I32(v) => v.iter().map(|&x| x as u32).collect(),
        Data::I64(v) => {
            let mut out = Vec::with_capacity(v.len());
            for &x in v.iter() {
                let n = i32::try_from(x).map_err(|_| {
                    Error::unsupported_dtype(format!(
                        "int64 value {x} does not fit the GPU's 32-bit integers"
                    ))
                })?;
                out.push(n as u32);
            }
            out
        }
        Data::F16(v) => v.iter().map(|x| x.to_f32().to_bits()).collect(),
        Data::BF16(v) => v.iter().map(|x| x.to_f32().to_bits()).collect(),
        Data::I8(v) => v.iter().map(|&x| x as i32 as u32).collect(),
        Data::I16(v) => v.iter().map(|&x| x as i32 as u32).collect(),
        Data::Bool(v) => v.iter().map(|&b| b as u32).collect(),
        Data::U8(v) => v.iter().map(|&b| b as u32).collect(),
        Data::U16(v) => v.iter().map(|&b| b as u32).collect(),
        Data::U32(v) => v.to_vec(),
        // Narrowed to f32: the GPU computes float64 in float32 precision.
        Data::F64(v) => v.iter().map(|&x| (x as f32).to_bits()).collect(),
        Data::U64(v) => {
            let mut out = Vec::with_capacity(v.len());
            for &x in v.iter() {
                let n = u32::try_from(x).map_err(|_| {
                    Error::unsupported_dtype(format!(
                        "uint64 value {x} does not fit the GPU's 32-bit integers"
                    ))
                })?;
                out.push(n);
            }
            out
        }
        Data::F8E4M3FN(v) => small_f32_words(v),
        Data::F8E4M3FNUZ(v) => small_f32_words(v),
        Data::F8E5M2(v) => small_f32_words(v),
        Data::F8E5M2FNUZ(v) => small_f32_words(v),
        Data::F8E8M0(v) => small_f32_words(v),
        Data::F4E2M1(v) => small_f32_words(v),
        Data::I4(v) => v.iter().map(|x| x.get() as i32 as u32).collect(),
        Data::I2(v) => v.iter().map(|x| x.get() as i32 as u32).collect(),
        Data::U4(v) => v.iter().map(|x| x.get() as u8 as u32).collect(),
        Data::U2(v) => v.iter().map(|x| x.get() as u8 as u32).collect(),
        Data::Str(_) => {
            return Err(Error::unsupported_dtype(
                "string tensors are not stored on the GPU",
            ))
        }
    })
}

/// The f32 words of a narrow float type (exact: every code is an f32 value).
fn small_f32_words<T: SmallElem>(v: &[T]) -> Vec<u32> {
    v.iter().map(|&x| SmallElem::to_f32(x).to_bits()).collect()
}

/// The narrow float codes of f32 words that kernels already rounded to the type (the
/// conversion is exact then; infinities stay infinities where the type has them).
fn small_from_f32<T: SmallElem>(w: &[u32]) -> Vec<T> {
    let opts = CastOptions {
        saturate: false,
        round_mode: RoundMode::Down,
    };
    w.iter()
        .map(|&x| T::from_f64(f64::from(f32::from_bits(x)), opts))
        .collect()
}

/// The narrow integers of sign-extended (or zero-extended) words, wrapped to the type.
fn small_from_int<T: SmallElem>(w: &[u32]) -> Vec<T> {
    w.iter().map(|&x| T::from_bits(x as u8)).collect()
}

/// The tensor of `dtype` and `shape` from the words read back.
pub fn from_words(dtype: DType, shape: Vec<usize>, words: &[u32]) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let w = words
        .get(..n)
        .ok_or_else(|| Error::runtime("GPU readback shorter than the tensor"))?;
    let data = match dtype {
        DType::F32 => Data::F32(w.iter().map(|&x| f32::from_bits(x)).collect()),
        DType::I32 => Data::I32(w.iter().map(|&x| x as i32).collect()),
        DType::I64 => Data::I64(w.iter().map(|&x| x as i32 as i64).collect()),
        DType::Bool => Data::Bool(w.iter().map(|&x| x != 0).collect()),
        DType::U8 => Data::U8(w.iter().map(|&x| x as u8).collect()),
        DType::U16 => Data::U16(w.iter().map(|&x| x as u16).collect()),
        DType::U32 => Data::U32(w.to_vec()),
        DType::I8 => Data::I8(w.iter().map(|&x| x as i8).collect()),
        DType::I16 => Data::I16(w.iter().map(|&x| x as i16).collect()),
        DType::F16 => Data::F16(
            w.iter()
                .map(|&x| half::f16::from_f32(f32::from_bits(x)))
                .collect(),
        ),
        DType::BF16 => Data::BF16(
            w.iter()
                .map(|&x| half::bf16::from_f32(f32::from_bits(x)))
                .collect(),
        ),
        DType::F64 => Data::F64(w.iter().map(|&x| f64::from(f32::from_bits(x))).collect()),
        DType::U64 => Data::U64(w.iter().map(|&x| u64::from(x)).collect()),
        DType::F8E4M3FN => Data::F8E4M3FN(small_from_f32(w)),
        DType::F8E4M3FNUZ => Data::F8E4M3FNUZ(small_from_f32(w)),
        DType::F8E5M2 => Data::F8E5M2(small_from_f32(w)),
        DType::F8E5M2FNUZ => Data::F8E5M2FNUZ(small_from_f32(w)),
        DType::F8E8M0 => Data::F8E8M0(small_from_f32(w)),
        DType::F4E2M1 => Data::F4E2M1(small_from_f32(w)),
        DType::I4 => Data::I4(small_from_int(w)),
        DType::I2 => Data::I2(small_from_int(w)),
        DType::U4 => Data::U4(small_from_int(w)),
        DType::U2 => Data::U2(small_from_int(w)),
        DType::Str => {
            return Err(Error::unsupported_dtype(
                "string tensors are not stored on the GPU",
            ))
        }
    };
    Tensor::new(shape, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::small::{self, SmallElem};

    /// Uploads and reads back `t` through the word form.
    fn round_trip(t: &Tensor) -> Tensor {
        let w = to_words(t).unwrap();
        assert_eq!(w.len(), t.len());
        from_words(t.dtype(), t.shape().to_vec(), &w).unwrap()
    }

    #[test]
    fn narrow_types_round_trip_every_code() {
        // Every code of every narrow type survives upload and readback bit for bit
        // (NaN codes compare as NaN: their payload is not kept).
        for dt in [
            DType::F8E4M3FN,
            DType::F8E4M3FNUZ,
            DType::F8E5M2,
            DType::F8E5M2FNUZ,
            DType::F8E8M0,
            DType::F4E2M1,
            DType::I4,
            DType::U4,
            DType::I2,
            DType::U2,
        ] {
            let per = 8 / dt.bit_width();
            let n = 1usize << dt.bit_width();
            let bytes: Vec<u8> = if per == 1 {
                (0..=255u8).collect()
            } else {
                // Pack codes 0..n-1, low bits first.
                (0..n)
                    .collect::<Vec<_>>()
                    .chunks(per)
                    .map(|c| {
                        c.iter()
                            .enumerate()
                            .fold(0u8, |a, (k, &v)| a | ((v as u8) << (k * dt.bit_width())))
                    })
                    .collect()
            };
            let data = small::from_packed(dt, &bytes, n).unwrap();
            let t = Tensor::new(vec![n], data).unwrap();
            let back = round_trip(&t);
            let a = t.to_f32_vec().unwrap();
            let b = back.to_f32_vec().unwrap();
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                assert!(
                    x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
                    "{dt} code {i}: {x} came back as {y}"
                );
            }
            if !dt.is_low_float() {
                assert_eq!(t, back, "{dt}");
            }
        }
    }

    #[test]
    fn widened_words_hold_values() {
        let t = Tensor::new(
            vec![4],
            Data::I4(
                [-8i64, -1, 0, 7]
                    .iter()
                    .map(|&v| small::Int4::wrapping(v))
                    .collect(),
            ),
        )
        .unwrap();
        assert_eq!(to_words(&t).unwrap(), vec![-8i32 as u32, u32::MAX, 0, 7]);
        let t = Tensor::new(vec![2], Data::U2(vec![small::UInt2::from_bits(3); 2])).unwrap();
        assert_eq!(to_words(&t).unwrap(), vec![3, 3]);
        let t = Tensor::new(
            vec![2],
            Data::F8E4M3FN(vec![small::Float8E4M3FN::from_bits(0x7E); 2]),
        )
        .unwrap();
        assert_eq!(to_words(&t).unwrap(), vec![448f32.to_bits(); 2]);
    }

    #[test]
    fn wide_types_narrow_and_check() {
        let t = Tensor::new(vec![3], Data::F64(vec![0.1, -2.5, 1e300])).unwrap();
        let w = to_words(&t).unwrap();
        assert_eq!(w[0], 0.1f32.to_bits());
        assert_eq!(f32::from_bits(w[2]), f32::INFINITY);
        let back = round_trip(&t);
        assert_eq!(back.dtype(), DType::F64);
        assert_eq!(back.to_f32_vec().unwrap()[1], -2.5);
        let t = Tensor::new(vec![2], Data::U64(vec![0, u64::from(u32::MAX)])).unwrap();
        assert_eq!(round_trip(&t), t);
        let t = Tensor::new(vec![1], Data::U64(vec![1 << 32])).unwrap();
        assert!(to_words(&t).is_err());
        let t = Tensor::new(vec![1], Data::Str(vec!["a".into()])).unwrap();
        assert!(to_words(&t).is_err());
        assert!(Storage::of(DType::Str).is_none());
    }

    #[test]
    fn readback_of_rounded_floats_keeps_specials() {
        // E5M2 has infinities: a kernel's +inf reads back as the infinity code, not the
        // largest finite one; E8M0's 2^-127 (an f32 subnormal, or 0 if flushed) is code 0.
        let w = [f32::INFINITY.to_bits(), 0x0040_0000, 0];
        let t = from_words(DType::F8E5M2, vec![1], &w[..1]).unwrap();
        assert_eq!(t.to_f32_vec().unwrap()[0], f32::INFINITY);
        let t = from_words(DType::F8E8M0, vec![2], &w[1..]).unwrap();
        match t.data() {
            Data::F8E8M0(v) => assert!(v.iter().all(|c| c.to_bits() == 0)),
            _ => panic!("dtype"),
        }
    }
}
