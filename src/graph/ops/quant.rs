//! Op family: quant. Quantization ops of the default domain (QuantizeLinear,
//! DequantizeLinear, DynamicQuantizeLinear, MatMulInteger, QLinearMatMul, ConvInteger,
//! QLinearConv) and onnxruntime's com.microsoft quantized ops (QLinearAdd/Mul/Sigmoid/
//! LeakyRelu/Concat/AveragePool/GlobalAveragePool/Softmax, QGemm, MatMulIntegerToFloat,
//! DynamicQuantizeMatMul, MatMulNBits, and the com.microsoft spellings of QuantizeLinear,
//! DequantizeLinear and QLinearConv). Kernels in `crate::cpu::quant`.
//!
//! Weight-bearing ops pack their constant weights in [`Op::prepack`]; every op struct has
//! public fields or a `new` so that a graph pass (QDQ fusion) can build it directly.

use super::nn::{
    conv_like_shape, matmul_shape, parse_group, parse_window, weight_dim, weight_kernel,
};
use super::{def, OpDef};
use crate::cpu::nn::Window;
use crate::cpu::qgemm::QPacked;
use crate::cpu::quant::{self as k, NBitsAttrs, QBinOp, QGemmAttrs, QParam};
use crate::error::{Error, Result};
use crate::graph::shape::broadcast_facts;
use crate::graph::{Args, Dim, Fact, InferCx, NodeCx, Op, RunCx, Value};
use crate::op_common;
use crate::tensor::{DType, Tensor};
use std::sync::Arc;

const MS: &str = "com.microsoft";

pub const OPS: &[OpDef] = &[
    def("", "QuantizeLinear", parse_quantize),
    def("", "DequantizeLinear", parse_dequantize),
    def("", "DynamicQuantizeLinear", |_| {
        Ok(Box::new(DynamicQuantizeLinear))
    }),
    def("", "MatMulInteger", |_| Ok(Box::new(MatMulInteger::new()))),
    def("", "QLinearMatMul", |_| Ok(Box::new(QLinearMatMul::new()))),
    def("", "ConvInteger", parse_conv_integer),
    def("", "QLinearConv", parse_qlinear_conv),
    def(MS, "QuantizeLinear", parse_ms_quantize),
    def(MS, "DequantizeLinear", parse_ms_dequantize),
    def(MS, "QLinearConv", parse_ms_qlinear_conv),
    def(MS, "QLinearAdd", |_| {
        Ok(Box::new(QLinearBinary { op: QBinOp::Add }))
    }),
    def(MS, "QLinearMul", |_| {
        Ok(Box::new(QLinearBinary { op: QBinOp::Mul }))
    }),
    def(MS, "QLinearSigmoid", |_| {
        Ok(Box::new(QLinearLookup {
            kind: LookupKind::Sigmoid,
        }))
    }),
    def(MS, "QLinearLeakyRelu", |cx| {
        Ok(Box::new(QLinearLookup {
            kind: LookupKind::LeakyRelu {
                alpha: cx.float_or("alpha", 0.01)?,
            },
        }))
    }),
    def(MS, "QLinearConcat", parse_qlinear_concat),
    def(
        MS,
        "QLinearGlobalAveragePool",
        parse_qlinear_global_avg_pool,
    ),
    def(MS, "QLinearAveragePool", parse_qlinear_avg_pool),
    def(MS, "QLinearSoftmax", parse_qlinear_softmax),
    def(MS, "QGemm", parse_qgemm),
    def(MS, "MatMulIntegerToFloat", |_| {
        Ok(Box::new(MatMulIntegerToFloat::new()))
    }),
    def(MS, "DynamicQuantizeMatMul", |_| {
        Ok(Box::new(DynamicQuantizeMatMul::new()))
    }),
    def(MS, "MatMulNBits", parse_matmul_nbits),
];

/// Weights packed at load, with which of the optional inputs they depend on (zero
/// points, g_idx) were present then: an omitted input and a non-constant one both reach
/// `prepack` as None, so `run` uses the packed data only if the same inputs are present.
#[derive(Debug, Clone)]
pub struct Packed<T> {
    pub data: Arc<T>,
    pub present: Vec<bool>,
}

impl<T> Packed<T> {
    fn new(data: T, consts: &[Option<&Tensor>], optional: &[usize]) -> Self {
        Packed {
            data: Arc::new(data),
            present: optional
                .iter()
                .map(|&i| konst(consts, i).is_some())
                .collect(),
        }
    }
}

/// The packed data if the run's optional inputs match those it was packed with.
fn use_packed<'a, T>(
    p: &'a Option<Packed<T>>,
    args: &Args,
    optional: &[usize],
) -> Result<Option<&'a T>> {
    let Some(p) = p else { return Ok(None) };
    for (&i, &was) in optional.iter().zip(&p.present) {
        if args.opt(i)?.is_some() != was {
            return Ok(None);
        }
    }
    Ok(Some(&p.data))
}

/// The constant input `i` handed to `prepack`, if any.
fn konst<'a>(consts: &[Option<&'a Tensor>], i: usize) -> Option<&'a Tensor> {
    consts.get(i).copied().flatten()
}

fn check_8bit(f: Option<&Fact>, what: &str) -> Result<()> {
    if let Some(dt) = f.and_then(|f| f.dtype) {
        if !matches!(dt, DType::U8 | DType::I8) {
            return Err(Error::dtype(format!(
                "{what} must be uint8 or int8, got {dt}"
            )));
        }
    }
    Ok(())
}

fn check_float(f: Option<&Fact>, what: &str) -> Result<()> {
    if let Some(dt) = f.and_then(|f| f.dtype) {
        if !dt.is_float() {
            return Err(Error::dtype(format!(
                "{what} must be a float tensor, got {dt}"
            )));
        }
    }
    Ok(())
}

fn channels_last_attr(cx: &NodeCx) -> Result<bool> {
    match cx.int_or("channels_last", 0)? {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(Error::attr(format!(
            "channels_last must be 0 or 1, got {v}"
        ))),
    }
}

// ---------------------------------------------------------------------------------------
// QuantizeLinear / DequantizeLinear / DynamicQuantizeLinear
// ---------------------------------------------------------------------------------------

fn output_dtype_attr(cx: &NodeCx) -> Result<Option<DType>> {
    match cx.int_or("output_dtype", 0)? {
        0 => Ok(None),
        code => {
            let code =
                i32::try_from(code).map_err(|_| Error::attr(format!("output_dtype {code}")))?;
            DType::from_onnx(code).map(Some)
        }
    }
}

/// `QuantizeLinear`: y = saturate(round(x / scale) + zero_point), per tensor, per axis or
/// blocked. <https://onnx.ai/onnx/operators/onnx__QuantizeLinear.html>
#[derive(Debug, Clone)]
pub struct QuantizeLinear {
    pub axis: i64,
    pub block_size: usize,
    pub output_dtype: Option<DType>,
    /// Saturate float8 outputs (otherwise out-of-range values become NaN/inf).
    pub saturate: bool,
}

fn parse_quantize(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let axis = cx.int_or("axis", 1)?;
    let block_size = usize::try_from(cx.int_or("block_size", 0)?)
        .map_err(|_| Error::attr("block_size must be >= 0"))?;
    let sat = cx.int_or("saturate", 1)?;
    if sat != 0 && sat != 1 {
        return Err(Error::attr(format!("saturate must be 0 or 1, got {sat}")));
    }
    // `precision` (opset 25) selects the type of x / scale; float32 is what we compute in.
    match cx.int_or("precision", 0)? {
        0 | 1 => {}
        p => {
            return Err(Error::unsupported_op(format!(
                "QuantizeLinear precision={p} (only float32 is supported)"
            )))
        }
    }
    let output_dtype = output_dtype_attr(cx)?;
    if let Some(dt) = output_dtype {
        if !k::is_quant_type(dt) {
            return Err(Error::unsupported_dtype(format!(
                "QuantizeLinear to {dt} is not supported"
            )));
        }
    }
    Ok(Box::new(QuantizeLinear {
        axis,
        block_size,
        output_dtype,
        saturate: sat == 1,
    }))
}

/// com.microsoft QuantizeLinear: per tensor or per axis, no other attribute.
fn parse_ms_quantize(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    Ok(Box::new(QuantizeLinear {
        axis: cx.int_or("axis", 1)?,
        block_size: 0,
        output_dtype: None,
        saturate: true,
    }))
}

impl Op for QuantizeLinear {
    fn is_elementwise(&self) -> bool {
        true
    }
    op_common!("QuantizeLinear");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let dt = match cx.opt(2).and_then(|z| z.dtype) {
            Some(z) => {
                if self.output_dtype.is_some_and(|o| o != z) {
                    return Err(Error::dtype(format!(
                        "QuantizeLinear zero point is {z} but output_dtype is {:?}",
                        self.output_dtype
                    )));
                }
                Some(z)
            }
            None if cx.opt(2).is_some() => self.output_dtype,
            None => Some(self.output_dtype.unwrap_or(DType::U8)),
        };
        Ok(vec![Fact::new(dt, x.shape.clone())])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let zp = args.opt(2)?;
        let out_dt = match zp {
            Some(z) => z.dtype(),
            None => self.output_dtype.unwrap_or(DType::U8),
        };
        let y = k::quantize_linear_sat(
            args.t(0)?,
            args.t(1)?,
            zp,
            self.axis,
            self.block_size,
            out_dt,
            self.saturate,
        )?;
        Ok(vec![y.into()])
    }
}

/// `DequantizeLinear`: y = (x - zero_point) * scale, per tensor, per axis or blocked.
/// <https://onnx.ai/onnx/operators/onnx__DequantizeLinear.html>
#[derive(Debug, Clone)]
pub struct DequantizeLinear {
    pub axis: i64,
    pub block_size: usize,
    pub output_dtype: Option<DType>,
}

fn parse_dequantize(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let axis = cx.int_or("axis", 1)?;
    let block_size = usize::try_from(cx.int_or("block_size", 0)?)
        .map_err(|_| Error::attr("block_size must be >= 0"))?;
    let output_dtype = output_dtype_attr(cx)?;
    if let Some(dt) = output_dtype {
        if !dt.is_float() {
            return Err(Error::attr(format!(
                "DequantizeLinear output_dtype must be a float type, got {dt}"
            )));
        }
    }
    Ok(Box::new(DequantizeLinear {
        axis,
        block_size,
        output_dtype,
    }))
}

/// com.microsoft DequantizeLinear: per tensor or per axis, no other attribute.
fn parse_ms_dequantize(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    Ok(Box::new(DequantizeLinear {
        axis: cx.int_or("axis", 1)?,
        block_size: 0,
        output_dtype: None,
    }))
}

impl Op for DequantizeLinear {
    fn is_elementwise(&self) -> bool {
        true
    }
    op_common!("DequantizeLinear");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let dt = self.output_dtype.or(cx.input(1)?.dtype);
        Ok(vec![Fact::new(dt, x.shape.clone())])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let scale = args.t(1)?;
        let out_dt = self.output_dtype.unwrap_or(scale.dtype());
        let y = k::dequantize_linear(
            args.t(0)?,
            scale,
            args.opt(2)?,
            self.axis,
            self.block_size,
            out_dt,
        )?;
        Ok(vec![y.into()])
    }
}

/// `DynamicQuantizeLinear`: uint8 quantization of a float32 tensor with scale and zero
/// point computed from its range (onnxruntime: scale 1 for an all-zero input).
/// <https://onnx.ai/onnx/operators/onnx__DynamicQuantizeLinear.html>
#[derive(Debug, Clone)]
pub struct DynamicQuantizeLinear;

impl Op for DynamicQuantizeLinear {
    op_common!("DynamicQuantizeLinear");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        if let Some(dt) = x.dtype {
            if dt != DType::F32 {
                return Err(Error::unsupported_dtype(format!(
                    "DynamicQuantizeLinear does not support {dt}"
                )));
            }
        }
        Ok(vec![
            Fact::new(Some(DType::U8), x.shape.clone()),
            Fact::known(DType::F32, &[]),
            Fact::known(DType::U8, &[]),
        ])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let (y, s, z) = k::dynamic_quantize_linear(args.t(0)?)?;
        Ok(vec![y.into(), s.into(), z.into()])
    }
}

// ---------------------------------------------------------------------------------------
// Integer matmuls
// ---------------------------------------------------------------------------------------

/// `MatMulInteger`: 8-bit matmul with zero points, i32 output. Inputs: A, B,
/// a_zero_point?, b_zero_point?. <https://onnx.ai/onnx/operators/onnx__MatMulInteger.html>
#[derive(Debug, Clone, Default)]
pub struct MatMulInteger {
    /// B (input 1) with its zero points, packed at load when both are constant.
    pub packed_b: Option<Packed<QPacked>>,
}

impl MatMulInteger {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Op for MatMulInteger {
    op_common!("MatMulInteger");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        check_8bit(cx.opt(0), "MatMulInteger A")?;
        check_8bit(cx.opt(1), "MatMulInteger B")?;
        Ok(vec![Fact::new(
            Some(DType::I32),
            matmul_shape(cx.input(0)?, cx.input(1)?)?,
        )])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        Ok(vec![k::matmul_integer(
            args.t(0)?,
            args.t(1)?,
            args.opt(2)?,
            args.opt(3)?,
            use_packed(&self.packed_b, args, &[3])?,
        )?
        .into()])
    }
    fn prepack(&mut self, consts: &[Option<&Tensor>]) -> Result<()> {
        if let Some(b) = konst(consts, 1) {
            self.packed_b =
                k::pack_matmul_b(b, konst(consts, 3))?.map(|p| Packed::new(p, consts, &[3]));
        }
        Ok(())
    }
}

/// `QLinearMatMul`: quantized matmul (integer accumulate, requantize with round half to
/// even and saturation). Inputs: a, a_scale, a_zero_point, b, b_scale, b_zero_point,
/// y_scale, y_zero_point. <https://onnx.ai/onnx/operators/onnx__QLinearMatMul.html>
#[derive(Debug, Clone, Default)]
pub struct QLinearMatMul {
    /// b (input 3) with its zero points (input 5), packed at load when both are constant.
    pub packed_b: Option<Packed<QPacked>>,
}

impl QLinearMatMul {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Op for QLinearMatMul {
    op_common!("QLinearMatMul");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        check_8bit(cx.opt(0), "QLinearMatMul a")?;
        check_8bit(cx.opt(3), "QLinearMatMul b")?;
        let dt = cx.opt(7).and_then(|f| f.dtype).or(cx.input(0)?.dtype);
        Ok(vec![Fact::new(
            dt,
            matmul_shape(cx.input(0)?, cx.input(3)?)?,
        )])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        Ok(vec![k::qlinear_matmul(
            args.t(0)?,
            args.t(1)?,
            args.opt(2)?,
            args.t(3)?,
            args.t(4)?,
            args.opt(5)?,
            args.t(6)?,
            args.opt(7)?,
            use_packed(&self.packed_b, args, &[5])?,
        )?
        .into()])
    }
    fn prepack(&mut self, consts: &[Option<&Tensor>]) -> Result<()> {
        if let Some(b) = konst(consts, 3) {
            self.packed_b =
                k::pack_matmul_b(b, konst(consts, 5))?.map(|p| Packed::new(p, consts, &[5]));
        }
        Ok(())
    }
}

/// `MatMulIntegerToFloat` (com.microsoft): Y = (A − a_zp)(B − b_zp) · a_scale · b_scale
/// + bias, float. Inputs: A, B, a_scale, b_scale, a_zero_point?, b_zero_point?, bias?.
#[derive(Debug, Clone, Default)]
pub struct MatMulIntegerToFloat {
    /// B (input 1) with its zero points (input 5), packed at load.
    pub packed_b: Option<Packed<QPacked>>,
}

impl MatMulIntegerToFloat {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Op for MatMulIntegerToFloat {
    op_common!("MatMulIntegerToFloat");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        check_8bit(cx.opt(0), "MatMulIntegerToFloat A")?;
        check_8bit(cx.opt(1), "MatMulIntegerToFloat B")?;
        check_float(cx.opt(2), "MatMulIntegerToFloat a_scale")?;
        let dt = cx.input(2)?.dtype;
        Ok(vec![Fact::new(
            dt,
            matmul_shape(cx.input(0)?, cx.input(1)?)?,
        )])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        Ok(vec![k::matmul_integer_to_float(
            args.t(0)?,
            args.t(1)?,
            args.t(2)?,
            args.t(3)?,
            args.opt(4)?,
            args.opt(5)?,
            args.opt(6)?,
            use_packed(&self.packed_b, args, &[5])?,
        )?
        .into()])
    }
    fn prepack(&mut self, consts: &[Option<&Tensor>]) -> Result<()> {
        if let Some(b) = konst(consts, 1) {
            self.packed_b =
                k::pack_matmul_b(b, konst(consts, 5))?.map(|p| Packed::new(p, consts, &[5]));
        }
        Ok(())
    }
}

/// `DynamicQuantizeMatMul` (com.microsoft): A (float) quantized to uint8 from its range,
/// then as MatMulIntegerToFloat. Inputs: A, B, b_scale, b_zero_point?, bias?.
#[derive(Debug, Clone, Default)]
pub struct DynamicQuantizeMatMul {
    /// B (input 1) with its zero points (input 3), packed at load.
    pub packed_b: Option<Packed<QPacked>>,
}

impl DynamicQuantizeMatMul {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Op for DynamicQuantizeMatMul {
    op_common!("DynamicQuantizeMatMul");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        if let Some(dt) = cx.input(0)?.dtype {
            if dt != DType::F32 {
                return Err(Error::dtype(format!(
                    "DynamicQuantizeMatMul A must be float32, got {dt}"
                )));
            }
        }
        check_8bit(cx.opt(1), "DynamicQuantizeMatMul B")?;
        Ok(vec![Fact::new(
            Some(DType::F32),
            matmul_shape(cx.input(0)?, cx.input(1)?)?,
        )])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        Ok(vec![k::dynamic_quantize_matmul(
            args.t(0)?,
            args.t(1)?,
            args.t(2)?,
            args.opt(3)?,
            args.opt(4)?,
            use_packed(&self.packed_b, args, &[3])?,
        )?
        .into()])
    }
    fn prepack(&mut self, consts: &[Option<&Tensor>]) -> Result<()> {
        if let Some(b) = konst(consts, 1) {
            self.packed_b =
                k::pack_matmul_b(b, konst(consts, 3))?.map(|p| Packed::new(p, consts, &[3]));
        }
        Ok(())
    }
}

/// `QGemm` (com.microsoft): Y = alpha · (A − a_zp)(B − b_zp) · a_scale · b_scale + C,
/// requantized when y_zero_point is given, else float. Inputs: A, a_scale, a_zero_point,
/// B, b_scale, b_zero_point, C?, y_scale?, y_zero_point?.
#[derive(Debug, Clone)]
pub struct QGemm {
    pub attrs: QGemmAttrs,
    /// B (after transB) with its zero points, packed at load.
    pub packed_b: Option<Packed<QPacked>>,
}

impl QGemm {
    pub fn new(alpha: f32, trans_a: bool, trans_b: bool) -> Self {
        QGemm {
            attrs: QGemmAttrs {
                alpha,
                trans_a,
                trans_b,
            },
            packed_b: None,
        }
    }
}

fn parse_qgemm(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    Ok(Box::new(QGemm::new(
        cx.float_or("alpha", 1.0)?,
        cx.int_or("transA", 0)? != 0,
        cx.int_or("transB", 0)? != 0,
    )))
}

impl Op for QGemm {
    op_common!("QGemm");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        check_8bit(cx.opt(0), "QGemm A")?;
        check_8bit(cx.opt(3), "QGemm B")?;
        let dim = |f: &Fact, i: usize| -> Dim {
            f.shape
                .as_ref()
                .and_then(|s| s.get(i).cloned())
                .unwrap_or(Dim::Unknown)
        };
        let (a, b) = (cx.input(0)?, cx.input(3)?);
        for (f, what) in [(a, "A"), (b, "B")] {
            if f.rank().is_some_and(|r| r != 2) {
                return Err(Error::shape(format!(
                    "QGemm {what} must be 2-D, got {}",
                    f.shape_string()
                )));
            }
        }
        let m = dim(a, usize::from(self.attrs.trans_a));
        let n = dim(b, usize::from(!self.attrs.trans_b));
        let dt = match cx.opt(8) {
            Some(z) => z.dtype,
            None => Some(DType::F32),
        };
        Ok(vec![Fact::new(dt, Some(vec![m, n]))])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        Ok(vec![k::qgemm_op(
            args.t(0)?,
            args.t(1)?,
            args.t(2)?,
            args.t(3)?,
            args.t(4)?,
            args.t(5)?,
            args.opt(6)?,
            args.opt(7)?,
            args.opt(8)?,
            &self.attrs,
            use_packed(&self.packed_b, args, &[5])?,
        )?
        .into()])
    }
    fn prepack(&mut self, consts: &[Option<&Tensor>]) -> Result<()> {
        if let (Some(b), Some(bz)) = (konst(consts, 3), konst(consts, 5)) {
            self.packed_b = k::pack_qgemm_b(b, Some(bz), self.attrs.trans_b)?
                .map(|p| Packed::new(p, consts, &[5]));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Integer convolutions
// ---------------------------------------------------------------------------------------

/// `ConvInteger`: 8-bit convolution with zero points and an i32 output. Inputs: x, w,
/// x_zero_point?, w_zero_point?. <https://onnx.ai/onnx/operators/onnx__ConvInteger.html>
#[derive(Debug, Clone)]
pub struct ConvInteger {
    pub window: Window,
    pub group: usize,
    /// Weights (input 1) with zero points (input 3), one A operand per group.
    pub packed_w: Option<Packed<Vec<QPacked>>>,
}

impl ConvInteger {
    pub fn new(window: Window, group: usize) -> Self {
        ConvInteger {
            window,
            group,
            packed_w: None,
        }
    }
}

fn parse_conv_integer(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    Ok(Box::new(ConvInteger::new(
        parse_window(cx, false, true)?,
        parse_group(cx)?,
    )))
}

impl Op for ConvInteger {
    op_common!("ConvInteger");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let w = cx.input(1)?;
        check_8bit(Some(x), "ConvInteger x")?;
        check_8bit(Some(w), "ConvInteger w")?;
        let shape = conv_like_shape(x, weight_dim(w, 0), weight_kernel(w), |s, kk| {
            self.window.resolve(s, kk)
        })?;
        Ok(vec![Fact::new(Some(DType::I32), shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let y = k::conv_integer(
            args.t(0)?,
            args.t(1)?,
            args.opt(2)?,
            args.opt(3)?,
            &self.window,
            self.group,
            use_packed(&self.packed_w, args, &[3])?.map(|p| p.as_slice()),
        )?;
        Ok(vec![y.into()])
    }
    fn prepack(&mut self, consts: &[Option<&Tensor>]) -> Result<()> {
        if let Some(w) = konst(consts, 1) {
            let p = k::pack_conv_weights(w, konst(consts, 3), self.group)?;
            self.packed_w = Some(Packed::new(p, consts, &[3]));
        }
        Ok(())
    }
}

/// `QLinearConv` (default domain and com.microsoft): quantized convolution — integer
/// accumulate, int32 bias, requantize per output channel with round half to even and
/// saturation. Inputs: x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale,
/// y_zero_point, B?. <https://onnx.ai/onnx/operators/onnx__QLinearConv.html>
#[derive(Debug, Clone)]
pub struct QLinearConv {
    pub window: Window,
    pub group: usize,
    /// com.microsoft's NHWC layout (x and y channels last; w stays [M, C/group, k…]).
    pub channels_last: bool,
    /// Weights (input 3) with zero points (input 5), one A operand per group.
    pub packed_w: Option<Packed<Vec<QPacked>>>,
}

impl QLinearConv {
    /// From a float Conv's window and group (NCHW).
    pub fn new(window: Window, group: usize) -> Self {
        QLinearConv {
            window,
            group,
            channels_last: false,
            packed_w: None,
        }
    }
}

fn parse_qlinear_conv(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    Ok(Box::new(QLinearConv::new(
        parse_window(cx, false, true)?,
        parse_group(cx)?,
    )))
}

fn parse_ms_qlinear_conv(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let mut op = QLinearConv::new(parse_window(cx, false, true)?, parse_group(cx)?);
    op.channels_last = channels_last_attr(cx)?;
    Ok(Box::new(op))
}

/// NCHW shape fact of an NHWC one (or back).
fn move_channels(f: &Fact, to_first: bool) -> Fact {
    let mut g = f.clone();
    if let Some(s) = &mut g.shape {
        if s.len() >= 3 {
            if to_first {
                let c = s.remove(s.len() - 1);
                s.insert(1, c);
            } else {
                let c = s.remove(1);
                s.push(c);
            }
        }
    }
    g
}

impl Op for QLinearConv {
    op_common!("QLinearConv");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x0 = cx.input(0)?;
        let x = if self.channels_last {
            move_channels(x0, true)
        } else {
            x0.clone()
        };
        let w = cx.input(3)?;
        check_8bit(Some(x0), "QLinearConv x")?;
        check_8bit(Some(w), "QLinearConv w")?;
        let dt = cx.opt(7).and_then(|f| f.dtype).or(x.dtype);
        let shape = conv_like_shape(&x, weight_dim(w, 0), weight_kernel(w), |s, kk| {
            self.window.resolve(s, kk)
        })?;
        let y = Fact::new(dt, shape);
        Ok(vec![if self.channels_last {
            move_channels(&y, false)
        } else {
            y
        }])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let moved;
        let x = if self.channels_last {
            moved = k::channels_move(x, true)?;
            &moved
        } else {
            x
        };
        let y = k::qlinear_conv(
            x,
            args.t(1)?,
            args.opt(2)?,
            args.t(3)?,
            args.t(4)?,
            args.opt(5)?,
            args.t(6)?,
            args.opt(7)?,
            args.opt(8)?,
            &self.window,
            self.group,
            use_packed(&self.packed_w, args, &[5])?.map(|p| p.as_slice()),
        )?;
        let y = if self.channels_last {
            k::channels_move(&y, false)?
        } else {
            y
        };
        Ok(vec![y.into()])
    }
    fn prepack(&mut self, consts: &[Option<&Tensor>]) -> Result<()> {
        if let Some(w) = konst(consts, 3) {
            let p = k::pack_conv_weights(w, konst(consts, 5), self.group)?;
            self.packed_w = Some(Packed::new(p, consts, &[5]));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// QLinear elementwise
// ---------------------------------------------------------------------------------------

/// `QLinearAdd` / `QLinearMul` (com.microsoft), per-tensor parameters, numpy
/// broadcasting. Inputs: A, A_scale, A_zero_point?, B, B_scale, B_zero_point?, C_scale,
/// C_zero_point?.
#[derive(Debug, Clone)]
pub struct QLinearBinary {
    pub op: QBinOp,
}

impl Op for QLinearBinary {
    fn is_elementwise(&self) -> bool {
        true
    }
    fn name(&self) -> &'static str {
        match self.op {
            QBinOp::Add => "QLinearAdd",
            QBinOp::Mul => "QLinearMul",
        }
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        Some(self)
    }
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let (a, b) = (cx.input(0)?, cx.input(3)?);
        let dt = crate::graph::same_dtype(&[a, b], self.name())?;
        Ok(vec![Fact::new(dt, broadcast_facts(&[a, b])?)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let (a, b) = (args.t(0)?, args.t(3)?);
        let dt = a.dtype();
        let pa = QParam::read(args.t(1)?, args.opt(2)?, dt, "A")?;
        let pb = QParam::read(args.t(4)?, args.opt(5)?, dt, "B")?;
        let pc = QParam::read(args.t(6)?, args.opt(7)?, dt, "C")?;
        Ok(vec![k::qlinear_binary(self.op, a, pa, b, pb, pc)?.into()])
    }
}

/// Function of a lookup-table op.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LookupKind {
    Sigmoid,
    LeakyRelu { alpha: f32 },
}

/// `QLinearSigmoid` / `QLinearLeakyRelu` (com.microsoft): a 256-entry table of
/// quantize(f(dequantize(x))). Inputs: X, X_scale, X_zero_point?, Y_scale, Y_zero_point?.
#[derive(Debug, Clone)]
pub struct QLinearLookup {
    pub kind: LookupKind,
}

impl Op for QLinearLookup {
    fn is_elementwise(&self) -> bool {
        true
    }
    fn name(&self) -> &'static str {
        match self.kind {
            LookupKind::Sigmoid => "QLinearSigmoid",
            LookupKind::LeakyRelu { .. } => "QLinearLeakyRelu",
        }
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        Some(self)
    }
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        check_8bit(Some(x), self.name())?;
        Ok(vec![Fact::new(x.dtype, x.shape.clone())])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let dt = x.dtype();
        let px = QParam::read(args.t(1)?, args.opt(2)?, dt, "X")?;
        let py = QParam::read(args.t(3)?, args.opt(4)?, dt, "Y")?;
        // ORT's logistic is a polynomial approximation, so its tables can differ from
        // these (exact) ones by one unit near rounding ties.
        let table = match self.kind {
            LookupKind::Sigmoid => k::lookup_table(dt, px, py, crate::graph::sigmoid)?,
            LookupKind::LeakyRelu { alpha } => {
                k::lookup_table(dt, px, py, |v| if v >= 0.0 { v } else { alpha * v })?
            }
        };
        Ok(vec![k::apply_table(x, &table)?.into()])
    }
}

/// `LookupTable` (internal, made by `passes::lut`, not an ONNX op): maps each byte of an
/// 8-bit input through a 256-entry table, y[i] = table[x[i] as byte]. The table holds
/// what a chain of pointwise ops computes for each of the 256 inputs, so the chain
/// runs as one gather. `rank` is the output rank: scalar constants of higher rank in the
/// chain broadcast the input up to it (leading 1s).
#[derive(Debug, Clone)]
pub struct LookupTable {
    pub table: Tensor,
    pub rank: usize,
}

impl Op for LookupTable {
    crate::op_common!("LookupTable");
    fn is_elementwise(&self) -> bool {
        true
    }
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        check_8bit(Some(x), self.name())?;
        let shape = x.shape.clone().map(|s| {
            let mut v = vec![crate::graph::Dim::Known(1); self.rank.saturating_sub(s.len())];
            v.extend(s);
            v
        });
        Ok(vec![Fact::new(Some(self.table.dtype()), shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        Ok(vec![
            k::gather_table(args.t(0)?, &self.table, self.rank)?.into()
        ])
    }
}

/// `QLinearConcat` (com.microsoft): inputs Y_scale, Y_zero_point, then (X, X_scale,
/// X_zero_point) per tensor; attribute axis.
#[derive(Debug, Clone)]
pub struct QLinearConcat {
    pub axis: i64,
}

fn parse_qlinear_concat(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let n = cx.n_inputs();
    if n < 5 || !(n - 2).is_multiple_of(3) {
        return Err(Error::invalid_model(format!(
            "QLinearConcat needs Y_scale, Y_zero_point and (X, scale, zero point) triples, got {n} inputs"
        )));
    }
    Ok(Box::new(QLinearConcat {
        axis: cx
            .int("axis")?
            .ok_or_else(|| Error::attr("QLinearConcat needs the 'axis' attribute"))?,
    }))
}

impl Op for QLinearConcat {
    op_common!("QLinearConcat");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let dt = cx.input(1)?.dtype;
        let xs: Vec<&Fact> = cx.inputs.iter().skip(2).step_by(3).collect();
        let mut shape: Option<Vec<Dim>> = None;
        let mut ok = true;
        for f in &xs {
            match (&f.shape, &mut shape) {
                (Some(s), None) => shape = Some(s.clone()),
                (Some(s), Some(acc)) if s.len() == acc.len() => {
                    let ax = crate::graph::attrs::norm_axis(self.axis, s.len())?;
                    acc[ax] = match (&acc[ax], &s[ax]) {
                        (Dim::Known(a), Dim::Known(b)) => Dim::Known(a + b),
                        _ => Dim::Unknown,
                    };
                }
                (Some(_), Some(_)) => {
                    return Err(Error::shape("QLinearConcat inputs have different ranks"))
                }
                (None, _) => ok = false,
            }
        }
        Ok(vec![Fact::new(dt, if ok { shape } else { None })])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let y_zp = args.t(1)?;
        let ydt = y_zp.dtype();
        let py = QParam::read(args.t(0)?, Some(y_zp), ydt, "Y")?;
        let mut ins = Vec::new();
        let mut i = 2;
        while i + 2 < args.len() {
            let x = args.t(i)?;
            let p = QParam::read(args.t(i + 1)?, Some(args.t(i + 2)?), ydt, "X")?;
            ins.push((x, p));
            i += 3;
        }
        Ok(vec![k::qlinear_concat(py, ydt, &ins, self.axis)?.into()])
    }
}

// ---------------------------------------------------------------------------------------
// Pooling
// ---------------------------------------------------------------------------------------

/// `QLinearGlobalAveragePool` (com.microsoft). Inputs: X, x_scale, x_zero_point,
/// y_scale, y_zero_point.
#[derive(Debug, Clone)]
pub struct QLinearGlobalAveragePool {
    pub channels_last: bool,
}

fn parse_qlinear_global_avg_pool(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    Ok(Box::new(QLinearGlobalAveragePool {
        channels_last: channels_last_attr(cx)?,
    }))
}

fn pooled_fact(
    x: &Fact,
    spatial: impl Fn(&[Dim]) -> Result<Vec<Dim>>,
    channels_last: bool,
) -> Result<Fact> {
    let xf = if channels_last {
        move_channels(x, true)
    } else {
        x.clone()
    };
    let shape = match &xf.shape {
        Some(s) if s.len() < 3 => {
            return Err(Error::shape(format!(
                "pool input {} needs rank >= 3",
                xf.shape_string()
            )))
        }
        Some(s) => {
            let mut o = s[..2].to_vec();
            o.extend(spatial(&s[2..])?);
            Some(o)
        }
        None => None,
    };
    let y = Fact::new(xf.dtype, shape);
    Ok(if channels_last {
        move_channels(&y, false)
    } else {
        y
    })
}

impl Op for QLinearGlobalAveragePool {
    op_common!("QLinearGlobalAveragePool");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        check_8bit(Some(x), "QLinearGlobalAveragePool X")?;
        Ok(vec![pooled_fact(
            x,
            |s| Ok(vec![Dim::Known(1); s.len()]),
            self.channels_last,
        )?])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let dt = x.dtype();
        let px = QParam::read(args.t(1)?, args.opt(2)?, dt, "x")?;
        let py = QParam::read(args.t(3)?, args.opt(4)?, dt, "y")?;
        let y = if self.channels_last {
            let y = k::qlinear_global_avg_pool(&k::channels_move(x, true)?, px, py)?;
            k::channels_move(&y, false)?
        } else {
            k::qlinear_global_avg_pool(x, px, py)?
        };
        Ok(vec![y.into()])
    }
}

/// `QLinearAveragePool` (com.microsoft). Inputs: X, x_scale, x_zero_point?, y_scale,
/// y_zero_point?.
#[derive(Debug, Clone)]
pub struct QLinearAveragePool {
    pub window: Window,
    pub count_include_pad: bool,
    pub channels_last: bool,
}

fn parse_qlinear_avg_pool(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let window = parse_window(cx, true, false)?;
    if window.kernel_shape.is_none() {
        return Err(Error::attr("QLinearAveragePool needs kernel_shape"));
    }
    Ok(Box::new(QLinearAveragePool {
        window,
        count_include_pad: cx.int_or("count_include_pad", 0)? != 0,
        channels_last: channels_last_attr(cx)?,
    }))
}

impl Op for QLinearAveragePool {
    op_common!("QLinearAveragePool");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        check_8bit(Some(x), "QLinearAveragePool X")?;
        let ks = self.window.kernel_shape.clone().unwrap_or_default();
        Ok(vec![pooled_fact(
            x,
            |s| {
                let known: Option<Vec<usize>> = s.iter().map(|d| d.known()).collect();
                Ok(match known {
                    Some(sp) => self
                        .window
                        .resolve(&sp, &ks)?
                        .out_dims()
                        .iter()
                        .map(|&d| Dim::Known(d))
                        .collect(),
                    None => vec![Dim::Unknown; s.len()],
                })
            },
            self.channels_last,
        )?])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let dt = x.dtype();
        let px = QParam::read(args.t(1)?, args.opt(2)?, dt, "x")?;
        let py = QParam::read(args.t(3)?, args.opt(4)?, dt, "y")?;
        let y = if self.channels_last {
            let xm = k::channels_move(x, true)?;
            let y = k::qlinear_avg_pool(&xm, px, py, &self.window, self.count_include_pad)?;
            k::channels_move(&y, false)?
        } else {
            k::qlinear_avg_pool(x, px, py, &self.window, self.count_include_pad)?
        };
        Ok(vec![y.into()])
    }
}

// ---------------------------------------------------------------------------------------
// QLinearSoftmax
// ---------------------------------------------------------------------------------------

/// `QLinearSoftmax` (com.microsoft): `opset` is the opset of the Softmax it replaces
/// (rows are one axis from 13 on, else all dims from `axis`); axis defaults to -1 from
/// opset 13 and 1 before. Inputs: X, X_scale, x_zero_point?, y_scale, y_zero_point.
#[derive(Debug, Clone)]
pub struct QLinearSoftmax {
    pub axis: i64,
    pub opset: i64,
}

fn parse_qlinear_softmax(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let opset = cx
        .int("opset")?
        .ok_or_else(|| Error::attr("QLinearSoftmax needs the 'opset' attribute"))?;
    let axis = cx.int_or("axis", if opset < 13 { 1 } else { -1 })?;
    Ok(Box::new(QLinearSoftmax { axis, opset }))
}

impl Op for QLinearSoftmax {
    op_common!("QLinearSoftmax");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        check_8bit(Some(x), "QLinearSoftmax X")?;
        Ok(vec![Fact::new(x.dtype, x.shape.clone())])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let dt = x.dtype();
        let xs = k::scalar_scale(args.t(1)?, "X_scale")?;
        let py = QParam::read(args.t(3)?, args.opt(4)?, dt, "y")?;
        Ok(vec![
            k::qlinear_softmax(x, xs, py, self.axis, self.opset)?.into()
        ])
    }
}

// ---------------------------------------------------------------------------------------
// MatMulNBits
// ---------------------------------------------------------------------------------------

/// `MatMulNBits` (com.microsoft): A[…, K] · dequantized(B)ᵀ + bias with B blockwise
/// quantized to `bits` bits along K. Inputs: A, B, scales, zero_points?, g_idx?, bias?.
#[derive(Debug, Clone)]
pub struct MatMulNBits {
    pub attrs: NBitsAttrs,
    pub accuracy_level: i64,
    /// The dequantized weights, N×K, made at load when B and scales are constant.
    pub dequantized: Option<Packed<Vec<f32>>>,
}

fn parse_matmul_nbits(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let pos = |name: &str| -> Result<usize> {
        let v = cx
            .int(name)?
            .ok_or_else(|| Error::attr(format!("MatMulNBits needs the '{name}' attribute")))?;
        usize::try_from(v)
            .ok()
            .filter(|&v| v > 0)
            .ok_or_else(|| Error::attr(format!("MatMulNBits {name} must be positive, got {v}")))
    };
    let kk = pos("K")?;
    let n = pos("N")?;
    let block_size = pos("block_size")?;
    let bits = usize::try_from(cx.int_or("bits", 4)?).unwrap_or(0);
    if !matches!(bits, 2 | 4 | 8) {
        return Err(Error::unsupported_op(format!(
            "MatMulNBits with bits={bits}"
        )));
    }
    if block_size < 16 || !block_size.is_power_of_two() {
        return Err(Error::attr(format!(
            "MatMulNBits block_size must be a power of two >= 16, got {block_size}"
        )));
    }
    let accuracy_level = cx.int_or("accuracy_level", 0)?;
    if cx.int_or("weight_prepacked", 0)? != 0 {
        return Err(Error::unsupported_op("MatMulNBits with weight_prepacked=1"));
    }
    Ok(Box::new(MatMulNBits {
        attrs: NBitsAttrs {
            k: kk,
            n,
            bits,
            block_size,
        },
        accuracy_level,
        dequantized: None,
    }))
}

impl Op for MatMulNBits {
    op_common!("MatMulNBits");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let a = cx.input(0)?;
        check_float(Some(a), "MatMulNBits A")?;
        let shape = match &a.shape {
            Some(s) if s.is_empty() => return Err(Error::shape("MatMulNBits A is a scalar")),
            Some(s) => {
                if let Some(kd) = s[s.len() - 1].known() {
                    if kd != self.attrs.k {
                        return Err(Error::shape(format!(
                            "MatMulNBits A's last dim is {kd}, K is {}",
                            self.attrs.k
                        )));
                    }
                }
                let mut o = s.clone();
                o[s.len() - 1] = Dim::Known(self.attrs.n);
                Some(o)
            }
            None => None,
        };
        Ok(vec![Fact::new(a.dtype, shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        Ok(vec![k::matmul_nbits(
            args.t(0)?,
            args.t(1)?,
            args.t(2)?,
            args.opt(3)?,
            args.opt(4)?,
            args.opt(5)?,
            &self.attrs,
            use_packed(&self.dequantized, args, &[3, 4])?.map(|d| d.as_slice()),
        )?
        .into()])
    }
    fn prepack(&mut self, consts: &[Option<&Tensor>]) -> Result<()> {
        if let (Some(b), Some(s)) = (konst(consts, 1), konst(consts, 2)) {
            let w = k::dequantize_nbits(b, s, konst(consts, 3), konst(consts, 4), &self.attrs)?;
            self.dequantized = Some(Packed::new(w, consts, &[3, 4]));
        }
        Ok(())
    }
}
