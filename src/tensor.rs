//! Dense tensors shared by every layer: a shape and one typed buffer.
//!
//! Allocation of tensors whose size comes from the model or the inputs goes through
//! [`alloc_vec`] / [`numel`], which check the size against a per-thread memory budget
//! before allocating, so a hostile model gets an error instead of an abort.

use crate::error::{Error, Result};
use half::{bf16, f16};
use std::cell::Cell;
use std::fmt;

/// Element types we can hold. ONNX codes are in [`DType::from_onnx`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    F16,
    BF16,
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    Bool,
    Str,
}

impl DType {
    /// Map `TensorProto.DataType` to a dtype; exotic types give a typed error.
    pub fn from_onnx(code: i32) -> Result<DType> {
        Ok(match code {
            1 => DType::F32,
            2 => DType::U8,
            3 => DType::I8,
            4 => DType::U16,
            5 => DType::I16,
            6 => DType::I32,
            7 => DType::I64,
            8 => DType::Str,
            9 => DType::Bool,
            10 => DType::F16,
            11 => DType::F64,
            12 => DType::U32,
            13 => DType::U64,
            16 => DType::BF16,
            14 | 15 => {
                return Err(Error::unsupported_dtype(
                    "complex tensors are not supported",
                ))
            }
            17..=20 | 23 => {
                return Err(Error::unsupported_dtype(format!(
                    "float8 tensors (ONNX data type {code}) are not supported"
                )))
            }
            21 | 22 | 25 | 26 => {
                return Err(Error::unsupported_dtype(format!(
                    "4-bit/2-bit tensors (ONNX data type {code}) are not supported"
                )))
            }
            0 => return Err(Error::invalid_model("tensor data type is UNDEFINED")),
            _ => {
                return Err(Error::unsupported_dtype(format!(
                    "unknown ONNX data type {code}"
                )))
            }
        })
    }

    pub fn to_onnx(self) -> i32 {
        match self {
            DType::F32 => 1,
            DType::U8 => 2,
            DType::I8 => 3,
            DType::U16 => 4,
            DType::I16 => 5,
            DType::I32 => 6,
            DType::I64 => 7,
            DType::Str => 8,
            DType::Bool => 9,
            DType::F16 => 10,
            DType::F64 => 11,
            DType::U32 => 12,
            DType::U64 => 13,
            DType::BF16 => 16,
        }
    }

    /// Bytes per element (strings count as a pointer-sized handle).
    pub fn size(self) -> usize {
        match self {
            DType::I8 | DType::U8 | DType::Bool => 1,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 2,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F64 | DType::I64 | DType::U64 => 8,
            DType::Str => 24,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::I16 => "int16",
            DType::U16 => "uint16",
            DType::I32 => "int32",
            DType::U32 => "uint32",
            DType::I64 => "int64",
            DType::U64 => "uint64",
            DType::Bool => "bool",
            DType::Str => "string",
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64 | DType::F16 | DType::BF16)
    }
    pub fn is_int(self) -> bool {
        matches!(
            self,
            DType::I8
                | DType::U8
                | DType::I16
                | DType::U16
                | DType::I32
                | DType::U32
                | DType::I64
                | DType::U64
        )
    }
    pub fn is_signed_int(self) -> bool {
        matches!(self, DType::I8 | DType::I16 | DType::I32 | DType::I64)
    }
    pub fn is_numeric(self) -> bool {
        self.is_float() || self.is_int()
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The typed buffer of a tensor, row-major.
#[derive(Clone, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    F64(Vec<f64>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    I16(Vec<i16>),
    U16(Vec<u16>),
    I32(Vec<i32>),
    U32(Vec<u32>),
    I64(Vec<i64>),
    U64(Vec<u64>),
    Bool(Vec<bool>),
    Str(Vec<String>),
}

/// Applies `$body` to the inner Vec of a [`Data`] whatever its type.
macro_rules! data_map {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            Data::F32($v) => $body,
            Data::F64($v) => $body,
            Data::F16($v) => $body,
            Data::BF16($v) => $body,
            Data::I8($v) => $body,
            Data::U8($v) => $body,
            Data::I16($v) => $body,
            Data::U16($v) => $body,
            Data::I32($v) => $body,
            Data::U32($v) => $body,
            Data::I64($v) => $body,
            Data::U64($v) => $body,
            Data::Bool($v) => $body,
            Data::Str($v) => $body,
        }
    };
}

impl Data {
    pub fn dtype(&self) -> DType {
        match self {
            Data::F32(_) => DType::F32,
            Data::F64(_) => DType::F64,
            Data::F16(_) => DType::F16,
            Data::BF16(_) => DType::BF16,
            Data::I8(_) => DType::I8,
            Data::U8(_) => DType::U8,
            Data::I16(_) => DType::I16,
            Data::U16(_) => DType::U16,
            Data::I32(_) => DType::I32,
            Data::U32(_) => DType::U32,
            Data::I64(_) => DType::I64,
            Data::U64(_) => DType::U64,
            Data::Bool(_) => DType::Bool,
            Data::Str(_) => DType::Str,
        }
    }
    pub fn len(&self) -> usize {
        data_map!(self, v => v.len())
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A Rust type that can be a tensor element.
pub trait Elem: Clone + Default + PartialEq + fmt::Debug + Send + Sync + 'static {
    const DTYPE: DType;
    fn slice(d: &Data) -> Option<&[Self]>;
    fn slice_mut(d: &mut Data) -> Option<&mut [Self]>;
    fn into_vec(d: Data) -> std::result::Result<Vec<Self>, Data>;
    fn wrap(v: Vec<Self>) -> Data;
}

macro_rules! impl_elem {
    ($($t:ty => $var:ident),*) => {$(
        impl Elem for $t {
            const DTYPE: DType = DType::$var;
            fn slice(d: &Data) -> Option<&[Self]> {
                if let Data::$var(v) = d { Some(v) } else { None }
            }
            fn slice_mut(d: &mut Data) -> Option<&mut [Self]> {
                if let Data::$var(v) = d { Some(v) } else { None }
            }
            fn into_vec(d: Data) -> std::result::Result<Vec<Self>, Data> {
                if let Data::$var(v) = d { Ok(v) } else { Err(d) }
            }
            fn wrap(v: Vec<Self>) -> Data {
                Data::$var(v)
            }
        }
    )*};
}
impl_elem!(f32 => F32, f64 => F64, f16 => F16, bf16 => BF16, i8 => I8, u8 => U8, i16 => I16,
    u16 => U16, i32 => I32, u32 => U32, i64 => I64, u64 => U64, bool => Bool, String => Str);

/// Numeric element: arithmetic with ONNX/numpy semantics (integers wrap, integer
/// division by zero gives 0 instead of a panic).
pub trait Num: Elem + Copy + PartialOrd {
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
    fn from_i64(v: i64) -> Self;
    fn to_i64(self) -> i64;
    fn to_i128(self) -> i128;
    fn from_i128(v: i128) -> Self;
    fn zero() -> Self;
    fn one() -> Self;
    fn min_value() -> Self;
    fn max_value() -> Self;
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    fn div(self, o: Self) -> Self;
    /// Remainder with the sign of the divisor (numpy `mod`, ONNX `Mod` fmod=0).
    fn rem_floor(self, o: Self) -> Self;
    /// Remainder with the sign of the dividend (C `fmod`, ONNX `Mod` fmod=1).
    fn rem_trunc(self, o: Self) -> Self;
    fn neg(self) -> Self;
    fn abs(self) -> Self;
    fn is_nan(self) -> bool;
}

macro_rules! impl_num_int {
    ($($t:ty),*) => {$(
        impl Num for $t {
            fn from_f64(v: f64) -> Self { v as $t }
            fn to_f64(self) -> f64 { self as f64 }
            fn from_f32(v: f32) -> Self { v as $t }
            fn to_f32(self) -> f32 { self as f32 }
            fn from_i64(v: i64) -> Self { v as $t }
            fn to_i64(self) -> i64 { self as i64 }
            fn to_i128(self) -> i128 { self as i128 }
            fn from_i128(v: i128) -> Self { v as $t }
            fn zero() -> Self { 0 }
            fn one() -> Self { 1 }
            fn min_value() -> Self { <$t>::MIN }
            fn max_value() -> Self { <$t>::MAX }
            fn add(self, o: Self) -> Self { self.wrapping_add(o) }
            fn sub(self, o: Self) -> Self { self.wrapping_sub(o) }
            fn mul(self, o: Self) -> Self { self.wrapping_mul(o) }
            fn div(self, o: Self) -> Self {
                if o == 0 { 0 } else {
                    // Floor division like numpy `//`, which ONNX Div on ints follows in
                    // onnxruntime only for non-negative values; truncate (C semantics) like ORT.
                    self.wrapping_div(o)
                }
            }
            fn rem_floor(self, o: Self) -> Self {
                if o == 0 { return 0; }
                let r = self.wrapping_rem(o);
                #[allow(unused_comparisons)]
                if r != 0 && ((r < 0) != (o < 0)) { r.wrapping_add(o) } else { r }
            }
            fn rem_trunc(self, o: Self) -> Self {
                if o == 0 { 0 } else { self.wrapping_rem(o) }
            }
            #[allow(clippy::cast_possible_wrap)]
            fn neg(self) -> Self { (0 as $t).wrapping_sub(self) }
            #[allow(unused_comparisons)]
            fn abs(self) -> Self { if self < 0 { self.neg() } else { self } }
            fn is_nan(self) -> bool { false }
        }
    )*};
}
impl_num_int!(i8, u8, i16, u16, i32, u32, i64, u64);

macro_rules! impl_num_float {
    ($($t:ty),*) => {$(
        impl Num for $t {
            fn from_f64(v: f64) -> Self { v as $t }
            fn to_f64(self) -> f64 { self as f64 }
            fn from_f32(v: f32) -> Self { v as $t }
            fn to_f32(self) -> f32 { self as f32 }
            fn from_i64(v: i64) -> Self { v as $t }
            fn to_i64(self) -> i64 { self as i64 }
            fn to_i128(self) -> i128 { self as i128 }
            fn from_i128(v: i128) -> Self { v as $t }
            fn zero() -> Self { 0.0 }
            fn one() -> Self { 1.0 }
            fn min_value() -> Self { <$t>::NEG_INFINITY }
            fn max_value() -> Self { <$t>::INFINITY }
            fn add(self, o: Self) -> Self { self + o }
            fn sub(self, o: Self) -> Self { self - o }
            fn mul(self, o: Self) -> Self { self * o }
            fn div(self, o: Self) -> Self { self / o }
            fn rem_floor(self, o: Self) -> Self {
                let r = self % o;
                if r != 0.0 && ((r < 0.0) != (o < 0.0)) { r + o } else { r }
            }
            fn rem_trunc(self, o: Self) -> Self { self % o }
            fn neg(self) -> Self { -self }
            fn abs(self) -> Self { self.abs() }
            fn is_nan(self) -> bool { self.is_nan() }
        }
    )*};
}
impl_num_float!(f32, f64);

macro_rules! impl_num_half {
    ($($t:ty),*) => {$(
        impl Num for $t {
            fn from_f64(v: f64) -> Self { <$t>::from_f64(v) }
            fn to_f64(self) -> f64 { <$t>::to_f64(self) }
            fn from_f32(v: f32) -> Self { <$t>::from_f32(v) }
            fn to_f32(self) -> f32 { <$t>::to_f32(self) }
            fn from_i64(v: i64) -> Self { <$t>::from_f64(v as f64) }
            fn to_i64(self) -> i64 { <$t>::to_f64(self) as i64 }
            fn to_i128(self) -> i128 { <$t>::to_f64(self) as i128 }
            fn from_i128(v: i128) -> Self { <$t>::from_f64(v as f64) }
            fn zero() -> Self { <$t>::ZERO }
            fn one() -> Self { <$t>::ONE }
            fn min_value() -> Self { <$t>::NEG_INFINITY }
            fn max_value() -> Self { <$t>::INFINITY }
            fn add(self, o: Self) -> Self { Self::from_f32(self.to_f32() + o.to_f32()) }
            fn sub(self, o: Self) -> Self { Self::from_f32(self.to_f32() - o.to_f32()) }
            fn mul(self, o: Self) -> Self { Self::from_f32(self.to_f32() * o.to_f32()) }
            fn div(self, o: Self) -> Self { Self::from_f32(self.to_f32() / o.to_f32()) }
            fn rem_floor(self, o: Self) -> Self { Self::from_f32(self.to_f32().rem_floor(o.to_f32())) }
            fn rem_trunc(self, o: Self) -> Self { Self::from_f32(self.to_f32() % o.to_f32()) }
            fn neg(self) -> Self { -self }
            fn abs(self) -> Self { Self::from_f32(self.to_f32().abs()) }
            fn is_nan(self) -> bool { <$t>::is_nan(self) }
        }
    )*};
}
impl_num_half!(f16, bf16);

/// Float element: transcendental functions computed in f32/f64.
pub trait Float: Num {
    fn map_f64(self, f: impl Fn(f64) -> f64) -> Self {
        Self::from_f64(f(self.to_f64()))
    }
}
impl Float for f32 {
    fn map_f64(self, f: impl Fn(f64) -> f64) -> Self {
        f(self as f64) as f32
    }
}
impl Float for f64 {}
impl Float for f16 {}
impl Float for bf16 {}

/// Dispatches on a dtype, binding `$T` to the matching Rust type in `$body`.
/// Variants: `float` (f32 f64 f16 bf16), `num` (floats and all ints), `int`, `all`
/// (num, bool, string). The fallback arm returns an UnsupportedDType error naming `$what`.
#[macro_export]
macro_rules! dispatch {
    (@arms $dt:expr, $what:expr, $T:ident, $body:block, $($var:ident => $ty:ty),*) => {
        match $dt {
            $( $crate::tensor::DType::$var => { #[allow(dead_code)] type $T = $ty; $body } )*
            #[allow(unreachable_patterns)]
            other => Err($crate::error::Error::unsupported_dtype(format!("{} does not support {}", $what, other))),
        }
    };
    (float $dt:expr, $what:expr, $T:ident => $body:block) => {
        $crate::dispatch!(@arms $dt, $what, $T, $body, F32 => f32, F64 => f64, F16 => half::f16, BF16 => half::bf16)
    };
    (int $dt:expr, $what:expr, $T:ident => $body:block) => {
        $crate::dispatch!(@arms $dt, $what, $T, $body, I8 => i8, U8 => u8, I16 => i16, U16 => u16,
            I32 => i32, U32 => u32, I64 => i64, U64 => u64)
    };
    (num $dt:expr, $what:expr, $T:ident => $body:block) => {
        $crate::dispatch!(@arms $dt, $what, $T, $body, F32 => f32, F64 => f64, F16 => half::f16,
            BF16 => half::bf16, I8 => i8, U8 => u8, I16 => i16, U16 => u16, I32 => i32, U32 => u32,
            I64 => i64, U64 => u64)
    };
    (all $dt:expr, $what:expr, $T:ident => $body:block) => {
        $crate::dispatch!(@arms $dt, $what, $T, $body, F32 => f32, F64 => f64, F16 => half::f16,
            BF16 => half::bf16, I8 => i8, U8 => u8, I16 => i16, U16 => u16, I32 => i32, U32 => u32,
            I64 => i64, U64 => u64, Bool => bool, Str => String)
    };
}

thread_local! {
    static BUDGET: Cell<usize> = const { Cell::new(DEFAULT_BUDGET) };
}

/// Default largest single tensor, in bytes.
pub const DEFAULT_BUDGET: usize = if cfg!(target_arch = "wasm32") {
    1 << 30
} else {
    4 << 30
};

/// Sets the largest tensor (in bytes) this thread may allocate; returns the old value.
pub fn set_memory_budget(bytes: usize) -> usize {
    BUDGET.with(|b| b.replace(bytes))
}
pub fn memory_budget() -> usize {
    BUDGET.with(|b| b.get())
}

/// Element count of `shape`, checked for overflow (no budget check).
pub fn numel_unchecked(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::memory(format!("tensor shape {shape:?} overflows")))
}

/// Element count of `shape`, checked against the budget for elements of `dtype`.
pub fn numel(shape: &[usize], dtype: DType) -> Result<usize> {
    let n = numel_unchecked(shape)?;
    check_bytes(n, dtype, shape)?;
    Ok(n)
}

fn check_bytes(n: usize, dtype: DType, shape: &[usize]) -> Result<()> {
    let bytes = n.checked_mul(dtype.size());
    let budget = memory_budget();
    match bytes {
        Some(b) if b <= budget => Ok(()),
        _ => Err(Error::memory(format!(
            "a {dtype} tensor of shape {shape:?} needs {} bytes, over the budget of {budget}",
            bytes.map_or("too many".to_string(), |b| b.to_string())
        ))),
    }
}

/// Allocates `n` default elements after checking the budget.
pub fn alloc_vec<T: Elem>(n: usize) -> Result<Vec<T>> {
    check_bytes(n, T::DTYPE, &[n])?;
    Ok(vec![T::default(); n])
}

/// Allocates `n` copies of `v` after checking the budget.
pub fn alloc_filled<T: Elem>(n: usize, v: T) -> Result<Vec<T>> {
    check_bytes(n, T::DTYPE, &[n])?;
    Ok(vec![v; n])
}

/// A dense row-major tensor.
#[derive(Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Data,
}

impl Tensor {
    /// Builds a tensor, checking that the data length matches the shape.
    pub fn new(shape: Vec<usize>, data: Data) -> Result<Tensor> {
        let n = numel_unchecked(&shape)?;
        if n != data.len() {
            return Err(Error::shape(format!(
                "shape {shape:?} needs {n} elements, data has {}",
                data.len()
            )));
        }
        Ok(Tensor { shape, data })
    }
    pub fn from_vec<T: Elem>(shape: Vec<usize>, v: Vec<T>) -> Result<Tensor> {
        Tensor::new(shape, T::wrap(v))
    }
    pub fn scalar<T: Elem>(v: T) -> Tensor {
        Tensor {
            shape: vec![],
            data: T::wrap(vec![v]),
        }
    }
    /// 1-D tensor.
    pub fn vector<T: Elem>(v: Vec<T>) -> Tensor {
        Tensor {
            shape: vec![v.len()],
            data: T::wrap(v),
        }
    }
    /// A tensor of zeros (false, "") of the given dtype, budget-checked.
    pub fn zeros(dtype: DType, shape: Vec<usize>) -> Result<Tensor> {
        let n = numel(&shape, dtype)?;
        let data = match dtype {
            DType::F32 => Data::F32(vec![0.0; n]),
            DType::F64 => Data::F64(vec![0.0; n]),
            DType::F16 => Data::F16(vec![f16::ZERO; n]),
            DType::BF16 => Data::BF16(vec![bf16::ZERO; n]),
            DType::I8 => Data::I8(vec![0; n]),
            DType::U8 => Data::U8(vec![0; n]),
            DType::I16 => Data::I16(vec![0; n]),
            DType::U16 => Data::U16(vec![0; n]),
            DType::I32 => Data::I32(vec![0; n]),
            DType::U32 => Data::U32(vec![0; n]),
            DType::I64 => Data::I64(vec![0; n]),
            DType::U64 => Data::U64(vec![0; n]),
            DType::Bool => Data::Bool(vec![false; n]),
            DType::Str => Data::Str(vec![String::new(); n]),
        };
        Ok(Tensor { shape, data })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn len(&self) -> usize {
        self.data.len()
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }
    pub fn data(&self) -> &Data {
        &self.data
    }
    pub fn data_mut(&mut self) -> &mut Data {
        &mut self.data
    }
    pub fn into_data(self) -> Data {
        self.data
    }
    pub fn into_parts(self) -> (Vec<usize>, Data) {
        (self.shape, self.data)
    }
    /// Approximate bytes held.
    pub fn nbytes(&self) -> usize {
        self.len() * self.dtype().size()
    }

    /// Typed view; errors when the dtype differs.
    pub fn as_slice<T: Elem>(&self) -> Result<&[T]> {
        T::slice(&self.data).ok_or_else(|| {
            Error::dtype(format!(
                "expected a {} tensor, got {}",
                T::DTYPE,
                self.dtype()
            ))
        })
    }
    pub fn as_mut_slice<T: Elem>(&mut self) -> Result<&mut [T]> {
        let dt = self.dtype();
        T::slice_mut(&mut self.data)
            .ok_or_else(|| Error::dtype(format!("expected a {} tensor, got {dt}", T::DTYPE)))
    }
    pub fn into_vec<T: Elem>(self) -> Result<Vec<T>> {
        T::into_vec(self.data)
            .map_err(|d| Error::dtype(format!("expected a {} tensor, got {}", T::DTYPE, d.dtype())))
    }

    /// Same data, new shape (element count must match).
    pub fn reshape(self, shape: Vec<usize>) -> Result<Tensor> {
        Tensor::new(shape, self.data)
    }

    /// Values as i64 (for shapes, axes, indices); accepts any integer dtype.
    pub fn to_i64_vec(&self) -> Result<Vec<i64>> {
        Ok(match &self.data {
            Data::I64(v) => v.clone(),
            Data::I32(v) => v.iter().map(|&x| x as i64).collect(),
            Data::I16(v) => v.iter().map(|&x| x as i64).collect(),
            Data::I8(v) => v.iter().map(|&x| x as i64).collect(),
            Data::U8(v) => v.iter().map(|&x| x as i64).collect(),
            Data::U16(v) => v.iter().map(|&x| x as i64).collect(),
            Data::U32(v) => v.iter().map(|&x| x as i64).collect(),
            Data::U64(v) => v.iter().map(|&x| x as i64).collect(),
            Data::Bool(v) => v.iter().map(|&x| x as i64).collect(),
            _ => {
                return Err(Error::dtype(format!(
                    "expected an integer tensor, got {}",
                    self.dtype()
                )))
            }
        })
    }

    /// Values converted to f32 (any numeric or bool dtype).
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        self.cast(DType::F32)?.into_vec::<f32>()
    }

    /// Values converted to f64 (any numeric or bool dtype).
    pub fn to_f64_vec(&self) -> Result<Vec<f64>> {
        self.cast(DType::F64)?.into_vec::<f64>()
    }

    /// First element as f64; for scalar-like inputs (alpha, limits…).
    pub fn scalar_f64(&self) -> Result<f64> {
        let v = self.to_f64_vec()?;
        v.first()
            .copied()
            .ok_or_else(|| Error::shape("expected a scalar, got an empty tensor"))
    }

    /// First element as i64.
    pub fn scalar_i64(&self) -> Result<i64> {
        let v = self.to_i64_vec()?;
        v.first()
            .copied()
            .ok_or_else(|| Error::shape("expected a scalar, got an empty tensor"))
    }

    /// Converts to another dtype with ONNX Cast semantics (floats to ints truncate
    /// toward zero and saturate, NaN to int gives 0, anything nonzero to bool is true,
    /// strings parse as numbers and numbers format like numpy).
    pub fn cast(&self, to: DType) -> Result<Tensor> {
        if self.dtype() == to {
            return Ok(self.clone());
        }
        let data = crate::tensor::cast::cast_data(&self.data, to)?;
        Ok(Tensor {
            shape: self.shape.clone(),
            data,
        })
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor<{}>{:?}", self.dtype(), self.shape)?;
        data_map!(&self.data, v => {
            let n = v.len().min(8);
            write!(f, " {:?}{}", &v[..n], if v.len() > n { "…" } else { "" })
        })
    }
}

pub mod cast {
    //! Element conversion between dtypes (ONNX Cast semantics).
    use super::*;

    fn num_to<S: Num, T: Num>(v: &[S]) -> Vec<T> {
        if S::DTYPE.is_int() && T::DTYPE.is_int() {
            // Exact, wrapping like a C cast.
            v.iter().map(|&x| T::from_i128(x.to_i128())).collect()
        } else {
            // `as` from f64 saturates and maps NaN to 0 for integer targets.
            v.iter().map(|&x| T::from_f64(x.to_f64())).collect()
        }
    }

    fn to_bool<S: Num>(v: &[S]) -> Vec<bool> {
        v.iter().map(|&x| x != S::zero()).collect()
    }
    fn from_bool<T: Num>(v: &[bool]) -> Vec<T> {
        v.iter()
            .map(|&b| if b { T::one() } else { T::zero() })
            .collect()
    }

    fn to_string<S: Num>(v: &[S]) -> Vec<String> {
        v.iter()
            .map(|&x| {
                if S::DTYPE.is_int() {
                    x.to_i64().to_string()
                } else {
                    format_float(x.to_f64(), S::DTYPE)
                }
            })
            .collect()
    }

    /// Formats like numpy's `str()` of a float scalar, close enough for Cast tests.
    pub fn format_float(f: f64, dt: DType) -> String {
        if f.is_nan() {
            return "NaN".into();
        }
        if f.is_infinite() {
            return if f > 0.0 { "INF".into() } else { "-INF".into() };
        }
        if dt == DType::F32 {
            let s = format!("{}", f as f32);
            return s;
        }
        format!("{f}")
    }

    fn parse_str<T: Num>(v: &[String]) -> Result<Vec<T>> {
        v.iter()
            .map(|s| {
                let t = s.trim();
                let f: f64 = match t.to_ascii_lowercase().as_str() {
                    "nan" => f64::NAN,
                    "inf" | "+inf" | "infinity" | "+infinity" => f64::INFINITY,
                    "-inf" | "-infinity" => f64::NEG_INFINITY,
                    _ => {
                        if T::DTYPE.is_int() {
                            if let Ok(i) = t.parse::<i64>() {
                                return Ok(T::from_i64(i));
                            }
                        }
                        t.parse::<f64>().map_err(|_| {
                            Error::runtime(format!("cannot cast string '{s}' to a number"))
                        })?
                    }
                };
                Ok(T::from_f64(f))
            })
            .collect()
    }

    macro_rules! num_source {
        ($v:expr, $to:expr) => {{
            let v = $v;
            match $to {
                DType::F32 => Data::F32(num_to(v)),
                DType::F64 => Data::F64(num_to(v)),
                DType::F16 => Data::F16(num_to(v)),
                DType::BF16 => Data::BF16(num_to(v)),
                DType::I8 => Data::I8(num_to(v)),
                DType::U8 => Data::U8(num_to(v)),
                DType::I16 => Data::I16(num_to(v)),
                DType::U16 => Data::U16(num_to(v)),
                DType::I32 => Data::I32(num_to(v)),
                DType::U32 => Data::U32(num_to(v)),
                DType::I64 => Data::I64(num_to(v)),
                DType::U64 => Data::U64(num_to(v)),
                DType::Bool => Data::Bool(to_bool(v)),
                DType::Str => Data::Str(to_string(v)),
            }
        }};
    }

    pub fn cast_data(d: &Data, to: DType) -> Result<Data> {
        Ok(match d {
            Data::F32(v) => num_source!(v, to),
            Data::F64(v) => num_source!(v, to),
            Data::F16(v) => num_source!(v, to),
            Data::BF16(v) => num_source!(v, to),
            Data::I8(v) => num_source!(v, to),
            Data::U8(v) => num_source!(v, to),
            Data::I16(v) => num_source!(v, to),
            Data::U16(v) => num_source!(v, to),
            Data::I32(v) => num_source!(v, to),
            Data::U32(v) => num_source!(v, to),
            Data::I64(v) => num_source!(v, to),
            Data::U64(v) => num_source!(v, to),
            Data::Bool(v) => match to {
                DType::F32 => Data::F32(from_bool(v)),
                DType::F64 => Data::F64(from_bool(v)),
                DType::F16 => Data::F16(from_bool(v)),
                DType::BF16 => Data::BF16(from_bool(v)),
                DType::I8 => Data::I8(from_bool(v)),
                DType::U8 => Data::U8(from_bool(v)),
                DType::I16 => Data::I16(from_bool(v)),
                DType::U16 => Data::U16(from_bool(v)),
                DType::I32 => Data::I32(from_bool(v)),
                DType::U32 => Data::U32(from_bool(v)),
                DType::I64 => Data::I64(from_bool(v)),
                DType::U64 => Data::U64(from_bool(v)),
                DType::Bool => Data::Bool(v.clone()),
                DType::Str => Data::Str(
                    v.iter()
                        .map(|&b| if b { "True" } else { "False" }.to_string())
                        .collect(),
                ),
            },
            Data::Str(v) => match to {
                DType::F32 => Data::F32(parse_str(v)?),
                DType::F64 => Data::F64(parse_str(v)?),
                DType::F16 => Data::F16(parse_str(v)?),
                DType::BF16 => Data::BF16(parse_str(v)?),
                DType::I8 => Data::I8(parse_str(v)?),
                DType::U8 => Data::U8(parse_str(v)?),
                DType::I16 => Data::I16(parse_str(v)?),
                DType::U16 => Data::U16(parse_str(v)?),
                DType::I32 => Data::I32(parse_str(v)?),
                DType::U32 => Data::U32(parse_str(v)?),
                DType::I64 => Data::I64(parse_str(v)?),
                DType::U64 => Data::U64(parse_str(v)?),
                DType::Bool => Data::Bool(
                    v.iter()
                        .map(|s| !(s.is_empty() || s == "0" || s.eq_ignore_ascii_case("false")))
                        .collect(),
                ),
                DType::Str => Data::Str(v.clone()),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_checks_length() {
        assert!(Tensor::from_vec(vec![2, 3], vec![0f32; 5]).is_err());
        assert_eq!(
            Tensor::from_vec(vec![2, 3], vec![0f32; 6]).unwrap().len(),
            6
        );
    }

    #[test]
    fn budget_refuses_huge_tensor() {
        let old = set_memory_budget(1024);
        let e = Tensor::zeros(DType::F32, vec![1 << 20]).unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::MemoryLimit);
        assert!(Tensor::zeros(DType::F32, vec![usize::MAX, 4]).is_err());
        set_memory_budget(old);
    }

    #[test]
    fn cast_semantics() {
        let t = Tensor::vector(vec![1.7f32, -1.7, f32::NAN, 300.0]);
        assert_eq!(
            t.cast(DType::I32).unwrap().into_vec::<i32>().unwrap(),
            vec![1, -1, 0, 300]
        );
        assert_eq!(
            t.cast(DType::U8).unwrap().into_vec::<u8>().unwrap(),
            vec![1, 0, 0, 255]
        );
        assert_eq!(
            t.cast(DType::Bool).unwrap().into_vec::<bool>().unwrap(),
            vec![true, true, true, true]
        );
        let big = Tensor::vector(vec![u64::MAX]);
        assert_eq!(
            big.cast(DType::I64).unwrap().into_vec::<i64>().unwrap(),
            vec![-1]
        );
        let s = Tensor::vector(vec!["3.5".to_string(), "-inf".to_string()]);
        let f = s.cast(DType::F32).unwrap().into_vec::<f32>().unwrap();
        assert_eq!(f[0], 3.5);
        assert!(f[1].is_infinite());
    }

    #[test]
    fn num_semantics() {
        assert_eq!(Num::div(7i32, 0), 0);
        assert_eq!((-7i32).rem_floor(3), 2);
        assert_eq!((-7i32).rem_trunc(3), -1);
        assert_eq!(Num::add(250u8, 10), 4);
    }
}
