//! Tensors that live on the GPU, how each ONNX dtype is stored there, and the buffer
//! pool that reuses storage by size once a value dies.

use crate::error::{Error, Result};
use crate::tensor::{DType, Data, Tensor};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How a dtype is held in a storage buffer: WGSL has 32-bit scalars only (f16 is
/// optional and not used for storage yet). Narrower types are widened: float16 and
/// bfloat16 to f32 (kernels round their outputs back to the narrow type), int8/int16 to
/// sign-extended i32 and uint16/uint32 to u32 (kernels wrap their outputs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Storage {
    F32,
    /// int32, int64 narrowed to 32 bits (checked on upload; results wrap at 32 bits), and
    /// int8 sign-extended to one i32 per element.
    I32,
    /// bool and uint8 widened to one u32 per element.
    U32,
}

impl Storage {
    /// The storage of `dt`, or None for dtypes that stay on the CPU.
    pub fn of(dt: DType) -> Option<Storage> {
        match dt {
            DType::F32 | DType::F16 | DType::BF16 => Some(Storage::F32),
            DType::I8 | DType::I16 | DType::I32 | DType::I64 => Some(Storage::I32),
            DType::Bool | DType::U8 | DType::U16 | DType::U32 => Some(Storage::U32),
            _ => None,
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
        _ => {
            return Err(Error::unsupported_dtype(format!(
                "{} tensors are not stored on the GPU",
                t.dtype()
            )))
        }
    })
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
        other => {
            return Err(Error::unsupported_dtype(format!(
                "{other} tensors are not stored on the GPU"
            )))
        }
    };
    Tensor::new(shape, data)
}
