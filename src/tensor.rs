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
    /// FLOAT8E4M3FN: 4-bit exponent, 3-bit mantissa, no infinity, NaN = S.1111.111.
    F8E4M3FN,
    /// FLOAT8E4M3FNUZ: like E4M3FN with bias 8, no negative zero, NaN = 0x80.
    F8E4M3FNUZ,
    /// FLOAT8E5M2: IEEE-like 5-bit exponent, 2-bit mantissa, with infinities.
    F8E5M2,
    /// FLOAT8E5M2FNUZ: bias 16, no infinity, no negative zero, NaN = 0x80.
    F8E5M2FNUZ,
    /// FLOAT8E8M0: a power of two 2^(e-127) (MX scales), 0xFF = NaN.
    F8E8M0,
    /// FLOAT4E2M1: 2-bit exponent, 1-bit mantissa, no infinity, no NaN.
    F4E2M1,
    /// UINT4 (0..=15), stored one element per byte.
    U4,
    /// INT4 (-8..=7), stored one element per byte.
    I4,
    /// UINT2 (0..=3), stored one element per byte.
    U2,
    /// INT2 (-2..=1), stored one element per byte.
    I2,
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
            17 => DType::F8E4M3FN,
            18 => DType::F8E4M3FNUZ,
            19 => DType::F8E5M2,
            20 => DType::F8E5M2FNUZ,
            21 => DType::U4,
            22 => DType::I4,
            23 => DType::F4E2M1,
            24 => DType::F8E8M0,
            25 => DType::U2,
            26 => DType::I2,
            14 | 15 => {
                return Err(Error::unsupported_dtype(
                    "complex tensors are not supported",
                ))
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
            DType::F8E4M3FN => 17,
            DType::F8E4M3FNUZ => 18,
            DType::F8E5M2 => 19,
            DType::F8E5M2FNUZ => 20,
            DType::U4 => 21,
            DType::I4 => 22,
            DType::F4E2M1 => 23,
            DType::F8E8M0 => 24,
            DType::U2 => 25,
            DType::I2 => 26,
        }
    }

    /// Bytes per element in memory (strings count as a pointer-sized handle; the
    /// 4-bit and 2-bit types are held one element per byte).
    pub fn size(self) -> usize {
        match self {
            DType::I8 | DType::U8 | DType::Bool => 1,
            DType::F8E4M3FN
            | DType::F8E4M3FNUZ
            | DType::F8E5M2
            | DType::F8E5M2FNUZ
            | DType::F8E8M0
            | DType::F4E2M1
            | DType::U4
            | DType::I4
            | DType::U2
            | DType::I2 => 1,
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
            DType::F8E4M3FN => "float8e4m3fn",
            DType::F8E4M3FNUZ => "float8e4m3fnuz",
            DType::F8E5M2 => "float8e5m2",
            DType::F8E5M2FNUZ => "float8e5m2fnuz",
            DType::F8E8M0 => "float8e8m0",
            DType::F4E2M1 => "float4e2m1",
            DType::U4 => "uint4",
            DType::I4 => "int4",
            DType::U2 => "uint2",
            DType::I2 => "int2",
        }
    }

    /// The dtype named as [`DType::name`] gives it ("float32", "int64"…).
    pub fn from_name(name: &str) -> Option<DType> {
        (0..=32)
            .filter_map(|c| DType::from_onnx(c).ok())
            .find(|d| d.name() == name)
    }

    /// Bits per element in the ONNX serialization (4-bit types pack two per byte, 2-bit
    /// types four per byte); strings give 0.
    pub fn bit_width(self) -> usize {
        match self {
            DType::U4 | DType::I4 | DType::F4E2M1 => 4,
            DType::U2 | DType::I2 => 2,
            DType::Str => 0,
            other => other.size() * 8,
        }
    }

    /// The narrow float types (float8 variants, float8e8m0, float4e2m1). They are not
    /// counted by [`DType::is_float`], which covers the types with Rust arithmetic.
    pub fn is_low_float(self) -> bool {
        matches!(
            self,
            DType::F8E4M3FN
                | DType::F8E4M3FNUZ
                | DType::F8E5M2
                | DType::F8E5M2FNUZ
                | DType::F8E8M0
                | DType::F4E2M1
        )
    }
    /// The 4-bit and 2-bit integer types. They are not counted by [`DType::is_int`].
    pub fn is_low_int(self) -> bool {
        matches!(self, DType::U4 | DType::I4 | DType::U2 | DType::I2)
    }
    /// Any of the narrow ONNX types ([`DType::is_low_float`] or [`DType::is_low_int`]).
    pub fn is_small(self) -> bool {
        self.is_low_float() || self.is_low_int()
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
    F8E4M3FN(Vec<small::Float8E4M3FN>),
    F8E4M3FNUZ(Vec<small::Float8E4M3FNUZ>),
    F8E5M2(Vec<small::Float8E5M2>),
    F8E5M2FNUZ(Vec<small::Float8E5M2FNUZ>),
    F8E8M0(Vec<small::Float8E8M0>),
    F4E2M1(Vec<small::Float4E2M1>),
    U4(Vec<small::UInt4>),
    I4(Vec<small::Int4>),
    U2(Vec<small::UInt2>),
    I2(Vec<small::Int2>),
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
            Data::F8E4M3FN($v) => $body,
            Data::F8E4M3FNUZ($v) => $body,
            Data::F8E5M2($v) => $body,
            Data::F8E5M2FNUZ($v) => $body,
            Data::F8E8M0($v) => $body,
            Data::F4E2M1($v) => $body,
            Data::U4($v) => $body,
            Data::I4($v) => $body,
            Data::U2($v) => $body,
            Data::I2($v) => $body,
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
            Data::F8E4M3FN(_) => DType::F8E4M3FN,
            Data::F8E4M3FNUZ(_) => DType::F8E4M3FNUZ,
            Data::F8E5M2(_) => DType::F8E5M2,
            Data::F8E5M2FNUZ(_) => DType::F8E5M2FNUZ,
            Data::F8E8M0(_) => DType::F8E8M0,
            Data::F4E2M1(_) => DType::F4E2M1,
            Data::U4(_) => DType::U4,
            Data::I4(_) => DType::I4,
            Data::U2(_) => DType::U2,
            Data::I2(_) => DType::I2,
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
impl_elem!(small::Float8E4M3FN => F8E4M3FN, small::Float8E4M3FNUZ => F8E4M3FNUZ,
    small::Float8E5M2 => F8E5M2, small::Float8E5M2FNUZ => F8E5M2FNUZ,
    small::Float8E8M0 => F8E8M0, small::Float4E2M1 => F4E2M1, small::UInt4 => U4,
    small::Int4 => I4, small::UInt2 => U2, small::Int2 => I2);

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
/// (num, bool, string and the narrow types of [`tensor::small`](crate::tensor::small), which
/// only implement [`Elem`]: fine for moving data, not for arithmetic), `small` (only the
/// narrow types). The fallback arm returns an UnsupportedDType error naming `$what`.
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
            I64 => i64, U64 => u64, Bool => bool, Str => String,
            F8E4M3FN => $crate::tensor::small::Float8E4M3FN,
            F8E4M3FNUZ => $crate::tensor::small::Float8E4M3FNUZ,
            F8E5M2 => $crate::tensor::small::Float8E5M2,
            F8E5M2FNUZ => $crate::tensor::small::Float8E5M2FNUZ,
            F8E8M0 => $crate::tensor::small::Float8E8M0,
            F4E2M1 => $crate::tensor::small::Float4E2M1,
            U4 => $crate::tensor::small::UInt4, I4 => $crate::tensor::small::Int4,
            U2 => $crate::tensor::small::UInt2, I2 => $crate::tensor::small::Int2)
    };
    (small $dt:expr, $what:expr, $T:ident => $body:block) => {
        $crate::dispatch!(@arms $dt, $what, $T, $body,
            F8E4M3FN => $crate::tensor::small::Float8E4M3FN,
            F8E4M3FNUZ => $crate::tensor::small::Float8E4M3FNUZ,
            F8E5M2 => $crate::tensor::small::Float8E5M2,
            F8E5M2FNUZ => $crate::tensor::small::Float8E5M2FNUZ,
            F8E8M0 => $crate::tensor::small::Float8E8M0,
            F4E2M1 => $crate::tensor::small::Float4E2M1,
            U4 => $crate::tensor::small::UInt4, I4 => $crate::tensor::small::Int4,
            U2 => $crate::tensor::small::UInt2, I2 => $crate::tensor::small::Int2)
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
            small_dt => small::zeros(small_dt, n)?,
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
            Data::U4(v) => v.iter().map(|&x| i64::from(x.get())).collect(),
            Data::I4(v) => v.iter().map(|&x| i64::from(x.get())).collect(),
            Data::U2(v) => v.iter().map(|&x| i64::from(x.get())).collect(),
            Data::I2(v) => v.iter().map(|&x| i64::from(x.get())).collect(),
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
    ///
    /// Narrow float targets saturate and float8e8m0 rounds up; see [`Tensor::cast_with`].
    pub fn cast(&self, to: DType) -> Result<Tensor> {
        self.cast_with(to, small::CastOptions::default())
    }

    /// [`Tensor::cast`] with Cast's `saturate` and `round_mode` attributes, which only
    /// matter for the narrow float targets.
    pub fn cast_with(&self, to: DType, opts: small::CastOptions) -> Result<Tensor> {
        if self.dtype() == to {
            return Ok(self.clone());
        }
        let data = crate::tensor::cast::cast_data_with(&self.data, to, opts)?;
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

pub mod small {
    //! ONNX's narrow element types: float8 (E4M3FN, E4M3FNUZ, E5M2, E5M2FNUZ),
    //! float8e8m0, float4e2m1, and the 4-bit and 2-bit integers.
    //!
    //! Each element is held in one byte in memory ([`Data`] variants of these newtypes);
    //! the packing of the 4-bit and 2-bit types (two or four per byte, low bits first)
    //! only exists in the ONNX serialization ([`from_packed`], [`to_packed`]).
    //! Conversions follow the ONNX Cast spec: round to nearest even, `saturate` clamps to
    //! the largest finite value, and without it out-of-range values become NaN (or
    //! infinity for E5M2). The FNUZ types have no negative zero and their NaN is 0x80.

    use super::{DType, Data, Elem};
    use crate::error::{Error, Result};
    use std::fmt;

    /// Rounding of a cast to float8e8m0 (Cast's `round_mode`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub enum RoundMode {
        /// Any fraction rounds up to the next power of two (the default).
        #[default]
        Up,
        /// Truncate to the power of two below.
        Down,
        /// Round to the nearest power of two.
        Nearest,
    }

    impl RoundMode {
        /// Parses the attribute value `up`, `down` or `nearest`.
        pub fn parse(s: &str) -> Option<RoundMode> {
            match s {
                "up" => Some(RoundMode::Up),
                "down" => Some(RoundMode::Down),
                "nearest" => Some(RoundMode::Nearest),
                _ => None,
            }
        }
    }

    /// Options of a cast to a narrow float type.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct CastOptions {
        /// Clamp out-of-range values (and infinities) to the largest finite value.
        pub saturate: bool,
        /// Rounding for float8e8m0 targets.
        pub round_mode: RoundMode,
    }

    impl Default for CastOptions {
        fn default() -> Self {
            CastOptions {
                saturate: true,
                round_mode: RoundMode::Up,
            }
        }
    }

    /// A narrow element type: raw bits plus conversions with Cast semantics.
    pub trait SmallElem: Elem + Copy {
        /// Builds an element from its bits (only the low `bit_width` bits are used).
        fn from_bits(b: u8) -> Self;
        /// The element's bits (the low `bit_width` bits).
        fn to_bits(self) -> u8;
        /// The value as f32 (exact for every narrow type).
        fn to_f32(self) -> f32;
        /// The value as i64 (floats truncate toward zero, NaN gives 0).
        fn to_i64(self) -> i64;
        /// From a float: floats round to nearest even with `opts`; integers truncate
        /// toward zero and keep the low bits (like a C cast).
        fn from_f64(v: f64, opts: CastOptions) -> Self;
        /// From an integer: integers keep the low bits; floats convert the value.
        fn from_i64(v: i64, opts: CastOptions) -> Self;
    }

    /// What a float format does with the codes at the top of its range.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Special {
        /// No infinity; NaN is S.1111.111 (E4M3FN).
        Fn,
        /// No infinity, no negative zero; NaN is 0x80.
        Fnuz,
        /// IEEE style: the top exponent holds infinity (mantissa 0) and NaN.
        Ieee,
        /// Every code is a finite number (float4e2m1).
        Finite,
    }

    #[derive(Clone, Copy)]
    struct Format {
        ebits: u32,
        mbits: u32,
        bias: i32,
        /// Code of the largest finite magnitude (without the sign bit).
        max: u8,
        special: Special,
    }

    const E4M3FN: Format = Format {
        ebits: 4,
        mbits: 3,
        bias: 7,
        max: 0x7E,
        special: Special::Fn,
    };
    const E4M3FNUZ: Format = Format {
        ebits: 4,
        mbits: 3,
        bias: 8,
        max: 0x7F,
        special: Special::Fnuz,
    };
    const E5M2: Format = Format {
        ebits: 5,
        mbits: 2,
        bias: 15,
        max: 0x7B,
        special: Special::Ieee,
    };
    const E5M2FNUZ: Format = Format {
        ebits: 5,
        mbits: 2,
        bias: 16,
        max: 0x7F,
        special: Special::Fnuz,
    };
    const E2M1: Format = Format {
        ebits: 2,
        mbits: 1,
        bias: 1,
        max: 0x7,
        special: Special::Finite,
    };

    /// 2^k for k in the normal f64 range (callers stay far inside it).
    fn exp2(k: i32) -> f64 {
        let biased = u64::try_from(k.saturating_add(1023).clamp(1, 2046)).unwrap_or(1023);
        f64::from_bits(biased << 52)
    }

    impl Format {
        fn sign_bit(self) -> u8 {
            1 << (self.ebits + self.mbits)
        }

        fn decode(self, bits: u8) -> f32 {
            let sign_bit = self.sign_bit();
            let neg = bits & sign_bit != 0;
            let mag = bits & (sign_bit - 1);
            let e = i32::from(mag >> self.mbits);
            let m = i32::from(mag & ((1 << self.mbits) - 1));
            let top = (1 << self.ebits) - 1;
            let signed = |v: f32| if neg { -v } else { v };
            match self.special {
                Special::Fn if mag == 0x7F => return signed(f32::NAN),
                Special::Fnuz if bits == 0x80 => return f32::NAN,
                Special::Ieee if e == top => {
                    return signed(if m == 0 { f32::INFINITY } else { f32::NAN })
                }
                _ => {}
            }
            let v = if e == 0 {
                f64::from(m) * exp2(1 - self.bias - self.mbits as i32)
            } else {
                f64::from((1 << self.mbits) | m) * exp2(e - self.bias - self.mbits as i32)
            };
            signed(v as f32)
        }

        /// The code of an overflowing value (|x| rounds above the largest finite one).
        fn overflow(self, sign: u8, saturate: bool) -> u8 {
            if saturate || self.special == Special::Finite {
                return sign | self.max;
            }
            match self.special {
                Special::Fn => sign | 0x7F,
                Special::Fnuz => 0x80,
                // Infinity.
                _ => sign | (self.max + 1),
            }
        }

        fn encode(self, x: f64, saturate: bool) -> u8 {
            let sign = if x.is_sign_negative() {
                self.sign_bit()
            } else {
                0
            };
            if x.is_nan() {
                return match self.special {
                    Special::Fn => sign | 0x7F,
                    Special::Fnuz => 0x80,
                    Special::Ieee => sign | 0x7E,
                    // float4e2m1 has no NaN; ml_dtypes (the suite's source) gives -0.
                    Special::Finite => self.sign_bit(),
                };
            }
            let a = x.abs();
            if a.is_infinite() {
                return self.overflow(sign, saturate);
            }
            let emin = 1 - self.bias;
            // Exponent of a (f64 subnormals are far below every format's range).
            let ea = i32::try_from((a.to_bits() >> 52) & 0x7FF).unwrap_or(0) - 1023;
            let mut e = ea.max(emin);
            let mbits = self.mbits as i32;
            // a / 2^(e - mbits) < 2^(mbits + 1): exact, and fits u32.
            let mut m = (a / exp2(e - mbits)).round_ties_even() as u32;
            if m >= 2 << self.mbits {
                m >>= 1;
                e += 1;
            }
            let code: u32 = if m < 1 << self.mbits {
                m
            } else {
                let biased = u32::try_from(e - emin + 1).unwrap_or(u32::MAX >> 8);
                (biased << self.mbits) | (m - (1 << self.mbits))
            };
            if code > u32::from(self.max) {
                return self.overflow(sign, saturate);
            }
            if code == 0 && self.special == Special::Fnuz {
                return 0;
            }
            sign | code as u8
        }
    }

    /// Converts an f32 to float8e8m0 bits like `onnx.numpy_helper.to_float8e8m0`: the
    /// sign is ignored, NaN and infinities give 0xFF (NaN).
    pub fn e8m0_from_f32(x: f32, saturate: bool, mode: RoundMode) -> u8 {
        let b = x.to_bits();
        let exp = (b >> 23) & 0xFF;
        if exp == 0xFF {
            return 0xFF;
        }
        let mut up = match mode {
            RoundMode::Up => b & 0x7F_FFFF != 0,
            RoundMode::Down => false,
            RoundMode::Nearest => {
                let g = b & 0x40_0000 != 0;
                let r = b & 0x20_0000 != 0;
                let s = b & 0x1F_FFFF != 0;
                g && (r || s || exp > 0)
            }
        };
        if saturate && exp == 0xFE {
            up = false;
        }
        (exp + u32::from(up)) as u8
    }

    macro_rules! small_float {
        ($(#[$doc:meta])* $name:ident, $fmt:expr, $mask:expr) => {
            $(#[$doc])*
            #[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
            pub struct $name(u8);

            impl SmallElem for $name {
                fn from_bits(b: u8) -> Self {
                    $name(b & $mask)
                }
                fn to_bits(self) -> u8 {
                    self.0
                }
                fn to_f32(self) -> f32 {
                    $fmt.decode(self.0)
                }
                fn to_i64(self) -> i64 {
                    self.to_f32() as i64
                }
                fn from_f64(v: f64, opts: CastOptions) -> Self {
                    $name($fmt.encode(v, opts.saturate))
                }
                fn from_i64(v: i64, opts: CastOptions) -> Self {
                    Self::from_f64(v as f64, opts)
                }
            }

            impl fmt::Debug for $name {
                fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    write!(f, "{}", self.to_f32())
                }
            }

            /// Orders by value (NaN is unordered); equality compares bits.
            impl PartialOrd for $name {
                fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
                    self.to_f32().partial_cmp(&o.to_f32())
                }
            }
        };
    }

    small_float!(
        /// FLOAT8E4M3FN element (bits).
        Float8E4M3FN, E4M3FN, 0xFF
    );
    small_float!(
        /// FLOAT8E4M3FNUZ element (bits).
        Float8E4M3FNUZ, E4M3FNUZ, 0xFF
    );
    small_float!(
        /// FLOAT8E5M2 element (bits).
        Float8E5M2, E5M2, 0xFF
    );
    small_float!(
        /// FLOAT8E5M2FNUZ element (bits).
        Float8E5M2FNUZ, E5M2FNUZ, 0xFF
    );
    small_float!(
        /// FLOAT4E2M1 element (bits in the low nibble).
        Float4E2M1, E2M1, 0x0F
    );

    /// FLOAT8E8M0 element (bits): 2^(bits - 127), 0xFF is NaN; there is no zero.
    #[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
    pub struct Float8E8M0(u8);

    impl SmallElem for Float8E8M0 {
        fn from_bits(b: u8) -> Self {
            Float8E8M0(b)
        }
        fn to_bits(self) -> u8 {
            self.0
        }
        fn to_f32(self) -> f32 {
            if self.0 == 0xFF {
                f32::NAN
            } else {
                exp2(i32::from(self.0) - 127) as f32
            }
        }
        fn to_i64(self) -> i64 {
            self.to_f32() as i64
        }
        fn from_f64(v: f64, opts: CastOptions) -> Self {
            Float8E8M0(e8m0_from_f32(v as f32, opts.saturate, opts.round_mode))
        }
        fn from_i64(v: i64, opts: CastOptions) -> Self {
            Self::from_f64(v as f64, opts)
        }
    }

    impl fmt::Debug for Float8E8M0 {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{}", self.to_f32())
        }
    }

    /// Orders by value (NaN is unordered); equality compares bits.
    impl PartialOrd for Float8E8M0 {
        fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
            self.to_f32().partial_cmp(&o.to_f32())
        }
    }

    macro_rules! small_int {
        ($(#[$doc:meta])* $name:ident, $inner:ty, $bits:expr, $signed:expr) => {
            $(#[$doc])*
            #[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
            pub struct $name($inner);

            impl $name {
                /// Smallest value.
                pub const MIN: i8 = if $signed { -(1 << ($bits - 1)) } else { 0 };
                /// Largest value.
                pub const MAX: i8 = if $signed { (1 << ($bits - 1)) - 1 } else { (1 << $bits) - 1 };
                /// Keeps the low bits of `v` (two's complement wrap).
                pub fn wrapping(v: i64) -> Self {
                    Self::from_bits(v as u8)
                }
                /// Clamps `v` into the range.
                pub fn saturate(v: i64) -> Self {
                    Self::wrapping(v.clamp(i64::from(Self::MIN), i64::from(Self::MAX)))
                }
                /// The value.
                pub fn get(self) -> i8 {
                    self.0 as i8
                }
            }

            impl SmallElem for $name {
                fn from_bits(b: u8) -> Self {
                    let low = b & ((1u8 << $bits) - 1);
                    if $signed {
                        // Sign-extend from the top bit of the field.
                        let sh = 8 - $bits;
                        $name((((low << sh) as i8) >> sh) as $inner)
                    } else {
                        $name(low as $inner)
                    }
                }
                fn to_bits(self) -> u8 {
                    (self.0 as u8) & ((1u8 << $bits) - 1)
                }
                fn to_f32(self) -> f32 {
                    f32::from(self.get())
                }
                fn to_i64(self) -> i64 {
                    i64::from(self.get())
                }
                fn from_f64(v: f64, _opts: CastOptions) -> Self {
                    // `as` truncates toward zero, saturates, and maps NaN to 0.
                    Self::wrapping(v as i64)
                }
                fn from_i64(v: i64, _opts: CastOptions) -> Self {
                    Self::wrapping(v)
                }
            }

            impl fmt::Debug for $name {
                fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    write!(f, "{}", self.get())
                }
            }
        };
    }

    small_int!(
        /// UINT4 element (0..=15).
        UInt4, u8, 4, false
    );
    small_int!(
        /// INT4 element (-8..=7).
        Int4, i8, 4, true
    );
    small_int!(
        /// UINT2 element (0..=3).
        UInt2, u8, 2, false
    );
    small_int!(
        /// INT2 element (-2..=1).
        Int2, i8, 2, true
    );

    /// `n` elements of all-zero bits (for float8e8m0, which has no zero: 2^-127).
    pub(super) fn zeros(dt: DType, n: usize) -> Result<Data> {
        crate::dispatch!(small dt, "zeros", T => { Ok(T::wrap(vec![T::from_bits(0); n])) })
    }

    /// Elements of a narrow type from their ONNX serialization: one byte each for the
    /// 8-bit types, two per byte for the 4-bit ones and four per byte for the 2-bit
    /// ones, low bits first. `bytes` must hold exactly the bytes `n` elements need.
    pub fn from_packed(dt: DType, bytes: &[u8], n: usize) -> Result<Data> {
        let bits = dt.bit_width();
        if !dt.is_small() || bits == 0 {
            return Err(Error::dtype(format!("{dt} is not a narrow type")));
        }
        let per = 8 / bits;
        let need = n.div_ceil(per);
        if bytes.len() != need {
            return Err(Error::decode(format!(
                "{dt} data has {} bytes, {n} elements need {need}",
                bytes.len()
            )));
        }
        crate::dispatch!(small dt, "from_packed", T => {
            let v: Vec<T> = if per == 1 {
                bytes.iter().map(|&b| T::from_bits(b)).collect()
            } else {
                bytes
                    .iter()
                    .flat_map(|&b| (0..per).map(move |k| T::from_bits(b >> (k * bits))))
                    .take(n)
                    .collect()
            };
            Ok(T::wrap(v))
        })
    }

    /// The ONNX serialization of narrow-type data (the inverse of [`from_packed`]).
    pub fn to_packed(d: &Data) -> Result<Vec<u8>> {
        let dt = d.dtype();
        let bits = dt.bit_width();
        crate::dispatch!(small dt, "to_packed", T => {
            let v = T::slice(d).ok_or_else(|| Error::dtype("narrow data"))?;
            let per = 8 / bits;
            Ok(v.chunks(per)
                .map(|c| {
                    c.iter()
                        .enumerate()
                        .fold(0u8, |acc, (k, x)| acc | (x.to_bits() << (k * bits)))
                })
                .collect())
        })
    }

    /// A table of the f32 value of each byte code of a narrow float type.
    pub fn f32_table<T: SmallElem>() -> [f32; 256] {
        let mut t = [0f32; 256];
        for (i, v) in t.iter_mut().enumerate() {
            *v = T::from_bits(i as u8).to_f32();
        }
        t
    }
}

pub mod cast {
    //! Element conversion between dtypes (ONNX Cast semantics).
    use super::small::SmallElem;
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
                other => return Err(small_target(other)),
            }
        }};
    }

    fn small_target(to: DType) -> Error {
        Error::runtime(format!("internal: the cast to {to} took the wrong path"))
    }

    /// Converts `d` to `to` with ONNX Cast semantics and the default options (narrow
    /// floats saturate, float8e8m0 rounds up).
    pub fn cast_data(d: &Data, to: DType) -> Result<Data> {
        cast_data_with(d, to, small::CastOptions::default())
    }

    /// Converts `d` to `to`; `opts` (Cast's `saturate`, `round_mode`) only affect
    /// narrow float targets. Narrow types go through f32 (floats) or int8 (4-bit and
    /// 2-bit integers), which hold their values exactly.
    pub fn cast_data_with(d: &Data, to: DType, opts: small::CastOptions) -> Result<Data> {
        let from = d.dtype();
        if from == to {
            return Ok(d.clone());
        }
        if from.is_small() {
            let n = d.len();
            let mid = if from.is_low_int() {
                super::numel(&[n], DType::I8)?;
                Data::I8(crate::dispatch!(small from, "Cast", T => {
                    let v = T::slice(d).ok_or_else(|| small_target(from))?;
                    Ok::<Vec<i8>, Error>(v.iter().map(|&x| x.to_i64() as i8).collect())
                })?)
            } else {
                super::numel(&[n], DType::F32)?;
                Data::F32(crate::dispatch!(small from, "Cast", T => {
                    let v = T::slice(d).ok_or_else(|| small_target(from))?;
                    Ok::<Vec<f32>, Error>(v.iter().map(|&x| x.to_f32()).collect())
                })?)
            };
            if mid.dtype() == to {
                return Ok(mid);
            }
            return cast_data_with(&mid, to, opts);
        }
        if to.is_small() {
            return to_small(d, to, opts);
        }
        cast_std(d, to)
    }

    fn num_to_small<S: Num, T: small::SmallElem>(v: &[S], opts: small::CastOptions) -> Vec<T> {
        if S::DTYPE.is_int() {
            v.iter().map(|&x| T::from_i64(x.to_i64(), opts)).collect()
        } else {
            v.iter().map(|&x| T::from_f64(x.to_f64(), opts)).collect()
        }
    }

    /// A standard dtype to a narrow one.
    fn to_small(d: &Data, to: DType, opts: small::CastOptions) -> Result<Data> {
        crate::dispatch!(small to, "Cast", T => {
            let v: Vec<T> = match d {
                Data::F32(v) => num_to_small(v, opts),
                Data::F64(v) => num_to_small(v, opts),
                Data::F16(v) => num_to_small(v, opts),
                Data::BF16(v) => num_to_small(v, opts),
                Data::I8(v) => num_to_small(v, opts),
                Data::U8(v) => num_to_small(v, opts),
                Data::I16(v) => num_to_small(v, opts),
                Data::U16(v) => num_to_small(v, opts),
                Data::I32(v) => num_to_small(v, opts),
                Data::U32(v) => num_to_small(v, opts),
                Data::I64(v) => num_to_small(v, opts),
                Data::U64(v) => num_to_small(v, opts),
                Data::Bool(v) => v.iter().map(|&b| T::from_i64(i64::from(b), opts)).collect(),
                Data::Str(v) => num_to_small(&parse_str::<f64>(v)?, opts),
                _ => return Err(small_target(to)),
            };
            Ok(T::wrap(v))
        })
    }

    /// Conversions between the standard (non-narrow) dtypes.
    fn cast_std(d: &Data, to: DType) -> Result<Data> {
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
                other => return Err(small_target(other)),
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
                other => return Err(small_target(other)),
            },
            other => return Err(small_target(other.dtype())),
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
    fn float8_tables() {
        use small::*;
        let sat = CastOptions::default();
        let nosat = CastOptions {
            saturate: false,
            ..sat
        };
        let b = |v: f64, o| Float8E4M3FN::from_f64(v, o).to_bits();
        assert_eq!(b(0.5, sat), 0x30);
        assert_eq!(b(448.0, sat), 0x7E);
        assert_eq!(b(464.0, nosat), 0x7E); // tie rounds to even (448)
        assert_eq!(b(1e6, sat), 0x7E);
        assert_eq!(b(1e6, nosat), 0x7F);
        assert_eq!(b(f64::NEG_INFINITY, sat), 0xFE);
        assert_eq!(b(f64::NEG_INFINITY, nosat), 0xFF);
        assert_eq!(b(f64::NAN, sat), 0x7F);
        assert_eq!(b(-0.0, sat), 0x80);
        assert_eq!(b(-1e-7, sat), 0x80);
        assert!(Float8E4M3FN::from_bits(0x7F).to_f32().is_nan());
        assert_eq!(Float8E4M3FN::from_bits(0x01).to_f32(), 2f32.powi(-9));
        assert_eq!(Float8E4M3FN::from_bits(0xB8).to_f32(), -1.0);

        let u = |v: f64, o| Float8E4M3FNUZ::from_f64(v, o).to_bits();
        assert_eq!(u(-0.0, sat), 0x00);
        assert_eq!(u(f64::NAN, sat), 0x80);
        assert_eq!(u(240.0, sat), 0x7F);
        assert_eq!(u(1e6, nosat), 0x80);
        assert!(Float8E4M3FNUZ::from_bits(0x80).to_f32().is_nan());

        let e = |v: f64, o| Float8E5M2::from_f64(v, o).to_bits();
        assert_eq!(e(57344.0, sat), 0x7B);
        assert_eq!(e(1e6, sat), 0x7B);
        assert_eq!(e(1e6, nosat), 0x7C);
        assert_eq!(e(f64::NAN, sat), 0x7E);
        assert_eq!(Float8E5M2::from_bits(0xFC).to_f32(), f32::NEG_INFINITY);
        assert_eq!(Float8E5M2FNUZ::from_f64(f64::INFINITY, sat).to_bits(), 0x7F);
        assert_eq!(
            Float8E5M2FNUZ::from_f64(f64::INFINITY, nosat).to_bits(),
            0x80
        );
        assert_eq!(Float8E5M2FNUZ::from_bits(0x7F).to_f32(), 57344.0);
    }

    #[test]
    fn float4_e8m0_int_tables() {
        use small::*;
        let o = CastOptions::default();
        let f = |v: f64| Float4E2M1::from_f64(v, o).to_bits();
        assert_eq!(f(0.25), 0x0); // tie to even
        assert_eq!(f(0.75), 0x2); // tie to even (1.0)
        assert_eq!(f(9.0), 0x7);
        assert_eq!(f(-3.5), 0xE);
        assert_eq!(f(f64::NAN), 0x8);
        assert_eq!(Float4E2M1::from_bits(0xF).to_f32(), -6.0);

        let m = |v: f32, mode| e8m0_from_f32(v, true, mode);
        assert_eq!(m(0.124, RoundMode::Up), 0x7C);
        assert_eq!(m(1.1, RoundMode::Up), 0x80);
        assert_eq!(m(1.1, RoundMode::Down), 0x7F);
        assert_eq!(m(1.5, RoundMode::Nearest), 0x80);
        assert_eq!(m(1.4, RoundMode::Nearest), 0x7F);
        assert_eq!(m(f32::MAX, RoundMode::Up), 0xFE);
        assert_eq!(e8m0_from_f32(f32::MAX, false, RoundMode::Up), 0xFF);
        assert_eq!(Float8E8M0::from_bits(0x7F).to_f32(), 1.0);
        assert!(Float8E8M0::from_bits(0xFF).to_f32().is_nan());

        assert_eq!(Int4::from_f64(-9.0, o).get(), 7);
        assert_eq!(Int4::saturate(-9).get(), -8);
        assert_eq!(Int4::from_bits(0xF).get(), -1);
        assert_eq!(UInt4::from_i64(-1, o).get(), 15);
        assert_eq!(Int2::from_i64(2, o).get(), -2);
        assert_eq!(UInt2::saturate(9).get(), 3);
    }

    #[test]
    fn packed_roundtrip_and_cast() {
        use small::*;
        let d = from_packed(DType::I4, &[0x87, 0x0F], 3).unwrap();
        let t = Tensor::new(vec![3], d.clone()).unwrap();
        assert_eq!(t.to_i64_vec().unwrap(), vec![7, -8, -1]);
        assert_eq!(to_packed(&d).unwrap(), vec![0x87, 0x0F]);
        assert!(from_packed(DType::I4, &[0x87], 3).is_err());
        let d2 = from_packed(DType::U2, &[0b11_10_01_00, 0b01], 5).unwrap();
        assert_eq!(to_packed(&d2).unwrap(), vec![0b11_10_01_00, 0b01]);
        // Through Cast: f32 -> float8 -> f32, int4 -> string.
        let x = Tensor::vector(vec![0.47f32, -1e9, f32::NAN]);
        let y = x.cast(DType::F8E4M3FN).unwrap().cast(DType::F32).unwrap();
        let y = y.into_vec::<f32>().unwrap();
        assert_eq!(&y[..2], &[0.46875, -448.0]);
        assert!(y[2].is_nan());
        let s = t.cast(DType::Str).unwrap().into_vec::<String>().unwrap();
        assert_eq!(s, vec!["7", "-8", "-1"]);
        assert_eq!(
            Tensor::vector(vec!["3".to_string()])
                .cast(DType::U4)
                .unwrap()
                .dtype(),
            DType::U4
        );
    }

    #[test]
    fn num_semantics() {
        assert_eq!(Num::div(7i32, 0), 0);
        assert_eq!((-7i32).rem_floor(3), 2);
        assert_eq!((-7i32).rem_trunc(3), -1);
        assert_eq!(Num::add(250u8, 10), 4);
    }
}
