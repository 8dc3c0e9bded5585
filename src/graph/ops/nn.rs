//! Op family: nn. Op structs, attribute parsing and shape rules; kernels in `crate::cpu::nn`.
//!
//! Convolutions (Conv, ConvTranspose, DeformConv), pooling (MaxPool,
//! AveragePool, LpPool, the Global* pools, MaxUnpool, MaxRoiPool) and matrix products
//! (Gemm, MatMul, Einsum). The integer and quantized variants are in `quant`.

use super::{def, OpDef};
use crate::cpu::gemm::Packed;
use crate::cpu::nn::{
    self as k, AutoPad, EinsumSpec, GemmAttrs, GlobalKind, PoolKind, TransposeAttrs, Window,
};
use crate::error::{Error, Result};
use crate::graph::{Activation, Args, Dim, Fact, InferCx, NodeCx, Op, RunCx, Value};
use crate::op_common;
use crate::tensor::{DType, Tensor};
use std::sync::Arc;

pub const OPS: &[OpDef] = &[
    def("", "Conv", parse_conv),
    def("", "ConvTranspose", parse_conv_transpose),
    def("", "DeformConv", parse_deform_conv),
    def("", "MaxPool", parse_max_pool),
    def("", "AveragePool", parse_average_pool),
    def("", "LpPool", parse_lp_pool),
    def("", "GlobalAveragePool", |_| {
        Ok(Box::new(GlobalPool {
            kind: GlobalKind::Average,
        }))
    }),
    def("", "GlobalMaxPool", |_| {
        Ok(Box::new(GlobalPool {
            kind: GlobalKind::Max,
        }))
    }),
    def("", "GlobalLpPool", parse_global_lp_pool),
    def("", "MaxUnpool", parse_max_unpool),
    def("", "MaxRoiPool", parse_max_roi_pool),
    def("", "Gemm", parse_gemm),
    def("", "MatMul", |_| {
        Ok(Box::new(MatMul {
            activation: None,
            bias: None,
            packed_b: None,
        }))
    }),
    def("", "Einsum", parse_einsum),
];

// ---------------------------------------------------------------------------------------
// Attribute helpers
// ---------------------------------------------------------------------------------------

fn usizes(cx: &NodeCx, name: &str) -> Result<Option<Vec<usize>>> {
    match cx.ints(name)? {
        None => Ok(None),
        Some(v) => v
            .iter()
            .map(|&x| {
                usize::try_from(x).map_err(|_| {
                    Error::attr(format!("attribute '{name}' has a negative value {x}"))
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
    }
}

fn positive(v: &Option<Vec<usize>>, name: &str) -> Result<()> {
    if v.as_ref().is_some_and(|v| v.contains(&0)) {
        return Err(Error::attr(format!("attribute '{name}' must be positive")));
    }
    Ok(())
}

/// Reads auto_pad, kernel_shape, strides, dilations, pads (and ceil_mode if `ceil`).
pub(crate) fn parse_window(cx: &NodeCx, ceil: bool, dilations: bool) -> Result<Window> {
    let auto_pad = AutoPad::parse(&cx.string_or("auto_pad", "NOTSET")?)?;
    let kernel_shape = usizes(cx, "kernel_shape")?;
    let strides = usizes(cx, "strides")?;
    let dil = if dilations {
        usizes(cx, "dilations")?
    } else {
        None
    };
    let pads = usizes(cx, "pads")?;
    positive(&kernel_shape, "kernel_shape")?;
    positive(&strides, "strides")?;
    positive(&dil, "dilations")?;
    if let (Some(p), Some(k)) = (&pads, &kernel_shape) {
        if p.len() != 2 * k.len() {
            return Err(Error::attr("pads must have two values per spatial dim"));
        }
    }
    let ceil_mode = if ceil {
        cx.int_or("ceil_mode", 0)? != 0
    } else {
        false
    };
    Ok(Window {
        auto_pad,
        kernel_shape,
        strides,
        dilations: dil,
        pads,
        ceil_mode,
    })
}

pub(crate) fn parse_group(cx: &NodeCx) -> Result<usize> {
    let g = cx.int_or("group", 1)?;
    usize::try_from(g)
        .ok()
        .filter(|&g| g > 0)
        .ok_or_else(|| Error::attr(format!("group must be positive, got {g}")))
}

/// Output shape of a conv-like op: [N, M, spatial…] with spatial computed when known.
pub(crate) fn conv_like_shape(
    x: &Fact,
    channels: Dim,
    kernel: Option<Vec<usize>>,
    geom: impl Fn(&[usize], &[usize]) -> Result<k::Geom>,
) -> Result<Option<Vec<Dim>>> {
    let Some(xs) = &x.shape else { return Ok(None) };
    if xs.len() < 3 {
        return Err(Error::shape(format!(
            "input {} needs rank >= 3",
            x.shape_string()
        )));
    }
    let mut out = vec![xs[0].clone(), channels];
    let spatial: Option<Vec<usize>> = xs[2..].iter().map(|d| d.known()).collect();
    match (spatial, kernel) {
        (Some(sp), Some(kk)) if kk.len() == sp.len() => {
            let g = geom(&sp, &kk)?;
            out.extend(g.out_dims().iter().map(|&d| Dim::Known(d)));
        }
        _ => out.extend((2..xs.len()).map(|_| Dim::Unknown)),
    }
    Ok(Some(out))
}

pub(crate) fn weight_kernel(w: &Fact) -> Option<Vec<usize>> {
    w.shape
        .as_ref()?
        .get(2..)?
        .iter()
        .map(|d| d.known())
        .collect()
}

pub(crate) fn weight_dim(w: &Fact, i: usize) -> Dim {
    w.shape
        .as_ref()
        .and_then(|s| s.get(i).cloned())
        .unwrap_or(Dim::Unknown)
}

fn float_check(f: &Fact, op: &str) -> Result<()> {
    if let Some(dt) = f.dtype {
        if !dt.is_float() {
            return Err(Error::dtype(format!("{op} does not support {dt}")));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Conv
// ---------------------------------------------------------------------------------------

/// `Conv`: N-d convolution with groups, strides, dilations and padding, plus an optional
/// fused activation. Weights and bias are node inputs (1 and 2), so a folding pass can
/// replace them. <https://onnx.ai/onnx/operators/onnx__Conv.html>
#[derive(Debug, Clone)]
pub struct Conv {
    pub window: Window,
    pub group: usize,
    /// Applied to the output by the kernel; set by the fusion pass (None from the parser).
    pub activation: Option<Activation>,
    /// Constant weights packed for the GEMM at load (see `Op::prepack`).
    pub packed: Option<Arc<k::ConvPacked>>,
}

fn parse_conv(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    Ok(Box::new(Conv {
        window: parse_window(cx, false, true)?,
        group: parse_group(cx)?,
        activation: None,
        packed: None,
    }))
}

impl Op for Conv {
    op_common!("Conv");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let w = cx.input(1)?;
        let mut facts = vec![x, w];
        if let Some(b) = cx.opt(2) {
            facts.push(b);
        }
        let dt = crate::graph::same_dtype(&facts, "Conv")?;
        float_check(x, "Conv")?;
        let shape = conv_like_shape(x, weight_dim(w, 0), weight_kernel(w), |s, kk| {
            self.window.resolve(s, kk)
        })?;
        Ok(vec![Fact::new(dt, shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let y = k::conv_with(
            args.t(0)?,
            args.t(1)?,
            args.opt(2)?,
            &self.window,
            self.group,
            self.activation,
            self.packed.as_deref(),
        )?;
        Ok(vec![y.into()])
    }
    fn prepack(&mut self, consts: &[Option<&Tensor>]) -> Result<()> {
        if let Some(Some(w)) = consts.get(1) {
            if w.dtype().is_float() {
                self.packed = k::pack_conv_weights(w, self.group)?.map(Arc::new);
            }
        }
        Ok(())
    }
}

/// `ConvTranspose`: the gradient of Conv, with output_padding / output_shape.
/// <https://onnx.ai/onnx/operators/onnx__ConvTranspose.html>
#[derive(Debug, Clone)]
pub struct ConvTranspose {
    pub window: Window,
    pub group: usize,
    pub extra: TransposeAttrs,
}

fn parse_conv_transpose(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let window = parse_window(cx, false, true)?;
    let group = parse_group(cx)?;
    let output_padding = usizes(cx, "output_padding")?;
    let output_shape = usizes(cx, "output_shape")?;
    Ok(Box::new(ConvTranspose {
        window,
        group,
        extra: TransposeAttrs {
            output_padding,
            output_shape,
        },
    }))
}

impl Op for ConvTranspose {
    op_common!("ConvTranspose");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let w = cx.input(1)?;
        let dt = crate::graph::same_dtype(&[x, w], "ConvTranspose")?;
        float_check(x, "ConvTranspose")?;
        let m = match weight_dim(w, 1) {
            Dim::Known(v) => Dim::Known(v * self.group),
            _ => Dim::Unknown,
        };
        let shape = conv_like_shape(x, m, weight_kernel(w), |s, kk| {
            k::conv_transpose_geom(s, kk, &self.window, &self.extra)
        })?;
        Ok(vec![Fact::new(dt, shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let y = k::conv_transpose(
            args.t(0)?,
            args.t(1)?,
            args.opt(2)?,
            &self.window,
            &self.extra,
            self.group,
        )?;
        Ok(vec![y.into()])
    }
}

/// `DeformConv`: 2-D convolution with learned tap offsets and an optional mask.
/// <https://onnx.ai/onnx/operators/onnx__DeformConv.html>
#[derive(Debug, Clone)]
pub struct DeformConv {
    pub window: Window,
    pub group: usize,
    pub offset_group: usize,
}

fn parse_deform_conv(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let window = parse_window(cx, false, true)?;
    let group = parse_group(cx)?;
    let og = cx.int_or("offset_group", 1)?;
    let offset_group = usize::try_from(og)
        .ok()
        .filter(|&g| g > 0)
        .ok_or_else(|| Error::attr(format!("offset_group must be positive, got {og}")))?;
    Ok(Box::new(DeformConv {
        window,
        group,
        offset_group,
    }))
}

impl Op for DeformConv {
    op_common!("DeformConv");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let w = cx.input(1)?;
        let dt = crate::graph::same_dtype(&[x, w], "DeformConv")?;
        float_check(x, "DeformConv")?;
        let shape = conv_like_shape(x, weight_dim(w, 0), weight_kernel(w), |s, kk| {
            self.window.resolve(s, kk)
        })?;
        Ok(vec![Fact::new(dt, shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        Ok(vec![k::deform_conv(
            args.t(0)?,
            args.t(1)?,
            args.t(2)?,
            args.opt(3)?,
            args.opt(4)?,
            &self.window,
            self.group,
            self.offset_group,
        )?
        .into()])
    }
}

// ---------------------------------------------------------------------------------------
// Pooling
// ---------------------------------------------------------------------------------------

fn pool_shape(x: &Fact, win: &Window) -> Result<Option<Vec<Dim>>> {
    let Some(xs) = &x.shape else { return Ok(None) };
    let c = xs.get(1).cloned().unwrap_or(Dim::Unknown);
    conv_like_shape(x, c, win.kernel_shape.clone(), |s, kk| win.resolve(s, kk))
}

fn need_kernel(w: &Window) -> Result<()> {
    match &w.kernel_shape {
        Some(k) if !k.is_empty() => Ok(()),
        _ => Err(Error::attr("missing required attribute 'kernel_shape'")),
    }
}

/// `MaxPool`, with the optional argmax indices output.
/// <https://onnx.ai/onnx/operators/onnx__MaxPool.html>
#[derive(Debug, Clone)]
pub struct MaxPool {
    pub window: Window,
    pub storage_order: i64,
    pub want_indices: bool,
}

fn parse_max_pool(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let window = parse_window(cx, true, true)?;
    need_kernel(&window)?;
    let storage_order = cx.int_or("storage_order", 0)?;
    if storage_order != 0 && storage_order != 1 {
        return Err(Error::attr("storage_order must be 0 or 1"));
    }
    Ok(Box::new(MaxPool {
        window,
        storage_order,
        want_indices: cx.has_output(1),
    }))
}

impl Op for MaxPool {
    op_common!("MaxPool");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let shape = pool_shape(x, &self.window)?;
        Ok(vec![
            Fact::new(x.dtype, shape.clone()),
            Fact::new(Some(DType::I64), shape),
        ])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let (y, i) = k::max_pool(
            args.t(0)?,
            &self.window,
            self.storage_order,
            self.want_indices,
        )?;
        let mut out = vec![y.into()];
        if let Some(i) = i {
            out.push(i.into());
        }
        Ok(out)
    }
}

/// `AveragePool` and `LpPool` (`kind` tells which).
/// <https://onnx.ai/onnx/operators/onnx__AveragePool.html>,
/// <https://onnx.ai/onnx/operators/onnx__LpPool.html>
#[derive(Debug, Clone)]
pub struct Pool {
    pub window: Window,
    pub kind: PoolKind,
}

fn parse_average_pool(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let window = parse_window(cx, true, true)?;
    need_kernel(&window)?;
    let cip = cx.int_or("count_include_pad", 0)? != 0;
    Ok(Box::new(Pool {
        window,
        kind: PoolKind::Average {
            count_include_pad: cip,
        },
    }))
}

fn read_p(cx: &NodeCx) -> Result<f32> {
    let p = if cx.opset < 2 {
        cx.float_or("p", 2.0)?
    } else {
        cx.int_or("p", 2)? as f32
    };
    if p.is_nan() || p <= 0.0 {
        return Err(Error::attr(format!("p must be positive, got {p}")));
    }
    Ok(p)
}

fn parse_lp_pool(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let window = parse_window(cx, true, true)?;
    need_kernel(&window)?;
    Ok(Box::new(Pool {
        window,
        kind: PoolKind::Lp { p: read_p(cx)? },
    }))
}

impl Op for Pool {
    fn name(&self) -> &'static str {
        match self.kind {
            PoolKind::Average { .. } => "AveragePool",
            PoolKind::Lp { .. } => "LpPool",
        }
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        float_check(x, self.name())?;
        Ok(vec![Fact::new(x.dtype, pool_shape(x, &self.window)?)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        Ok(vec![k::pool(args.t(0)?, &self.window, self.kind)?.into()])
    }
}

/// `GlobalAveragePool`, `GlobalMaxPool`, `GlobalLpPool`: reduce all spatial dims.
/// <https://onnx.ai/onnx/operators/onnx__GlobalAveragePool.html>
#[derive(Debug, Clone)]
pub struct GlobalPool {
    pub kind: GlobalKind,
}

fn parse_global_lp_pool(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    Ok(Box::new(GlobalPool {
        kind: GlobalKind::Lp(read_p(cx)?),
    }))
}

impl Op for GlobalPool {
    fn name(&self) -> &'static str {
        match self.kind {
            GlobalKind::Average => "GlobalAveragePool",
            GlobalKind::Max => "GlobalMaxPool",
            GlobalKind::Lp(_) => "GlobalLpPool",
        }
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        float_check(x, self.name())?;
        let shape = match &x.shape {
            Some(s) if s.len() < 2 => {
                return Err(Error::shape(format!("{} needs rank >= 2", self.name())))
            }
            Some(s) => {
                let mut v = s[..2].to_vec();
                v.extend((2..s.len()).map(|_| Dim::Known(1)));
                Some(v)
            }
            None => None,
        };
        Ok(vec![Fact::new(x.dtype, shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        Ok(vec![k::global_pool(args.t(0)?, self.kind)?.into()])
    }
}

/// `MaxUnpool`: scatter pooled values back to their argmax positions.
/// <https://onnx.ai/onnx/operators/onnx__MaxUnpool.html>
#[derive(Debug, Clone)]
pub struct MaxUnpool {
    pub window: Window,
}

fn parse_max_unpool(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let kernel_shape = usizes(cx, "kernel_shape")?;
    let strides = usizes(cx, "strides")?;
    let pads = usizes(cx, "pads")?;
    positive(&kernel_shape, "kernel_shape")?;
    positive(&strides, "strides")?;
    let window = Window {
        kernel_shape,
        strides,
        pads,
        ..Window::default()
    };
    need_kernel(&window)?;
    Ok(Box::new(MaxUnpool { window }))
}

impl Op for MaxUnpool {
    op_common!("MaxUnpool");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let rank = match (&cx.opt(2), x.rank()) {
            (Some(f), _) => f
                .shape
                .as_ref()
                .and_then(|s| s.first())
                .and_then(|d| d.known()),
            (None, r) => r,
        };
        let shape = match cx.opt(2).and_then(|f| f.const_i64()) {
            Some(v) => Some(
                v.iter()
                    .map(|&d| usize::try_from(d).map(Dim::Known).unwrap_or(Dim::Unknown))
                    .collect(),
            ),
            None => rank.map(|r| vec![Dim::Unknown; r]),
        };
        Ok(vec![Fact::new(x.dtype, shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        Ok(vec![k::max_unpool(
            args.t(0)?,
            args.t(1)?,
            args.opt(2)?,
            &self.window,
        )?
        .into()])
    }
}

/// `MaxRoiPool`: max pooling over regions of interest.
/// <https://onnx.ai/onnx/operators/onnx__MaxRoiPool.html>
#[derive(Debug, Clone)]
pub struct MaxRoiPool {
    pub pooled_shape: [usize; 2],
    pub spatial_scale: f32,
}

fn parse_max_roi_pool(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let ps = usizes(cx, "pooled_shape")?
        .ok_or_else(|| Error::attr("missing required attribute 'pooled_shape'"))?;
    if ps.len() != 2 || ps.contains(&0) {
        return Err(Error::attr("pooled_shape must be two positive values"));
    }
    Ok(Box::new(MaxRoiPool {
        pooled_shape: [ps[0], ps[1]],
        spatial_scale: cx.float_or("spatial_scale", 1.0)?,
    }))
}

impl Op for MaxRoiPool {
    op_common!("MaxRoiPool");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let r = cx.input(1)?;
        float_check(x, "MaxRoiPool")?;
        let shape = vec![
            r.shape
                .as_ref()
                .and_then(|s| s.first().cloned())
                .unwrap_or(Dim::Unknown),
            x.shape
                .as_ref()
                .and_then(|s| s.get(1).cloned())
                .unwrap_or(Dim::Unknown),
            Dim::Known(self.pooled_shape[0]),
            Dim::Known(self.pooled_shape[1]),
        ];
        Ok(vec![Fact::new(x.dtype, Some(shape))])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        Ok(vec![k::max_roi_pool(
            args.t(0)?,
            args.t(1)?,
            self.pooled_shape,
            self.spatial_scale,
        )?
        .into()])
    }
}

// ---------------------------------------------------------------------------------------
// Matrix products
// ---------------------------------------------------------------------------------------

/// `Gemm`: Y = alpha·op(A)·op(B) + beta·C, plus an optional fused activation.
/// <https://onnx.ai/onnx/operators/onnx__Gemm.html>
#[derive(Debug, Clone)]
pub struct Gemm {
    pub attrs: GemmAttrs,
    /// Applied to the output by the kernel; set by the fusion pass (None from the parser).
    pub activation: Option<Activation>,
    /// Constant B packed for the GEMM at load (see `Op::prepack`).
    pub packed_b: Option<Arc<Packed>>,
}

fn parse_gemm(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    // Opset < 7: `broadcast` only allowed what numpy broadcasting now does.
    let _ = cx.int("broadcast")?;
    Ok(Box::new(Gemm {
        attrs: GemmAttrs {
            alpha: cx.float_or("alpha", 1.0)?,
            beta: cx.float_or("beta", 1.0)?,
            trans_a: cx.int_or("transA", 0)? != 0,
            trans_b: cx.int_or("transB", 0)? != 0,
        },
        activation: None,
        packed_b: None,
    }))
}

impl Op for Gemm {
    op_common!("Gemm");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let a = cx.input(0)?;
        let b = cx.input(1)?;
        let dt = crate::graph::same_dtype(&[a, b], "Gemm")?;
        let dim = |f: &Fact, i: usize| {
            f.shape
                .as_ref()
                .and_then(|s| s.get(i).cloned())
                .unwrap_or(Dim::Unknown)
        };
        for f in [a, b] {
            if f.rank().is_some_and(|r| r != 2) {
                return Err(Error::shape(format!(
                    "Gemm needs 2-D inputs, got {}",
                    f.shape_string()
                )));
            }
        }
        let m = dim(a, if self.attrs.trans_a { 1 } else { 0 });
        let n = dim(b, if self.attrs.trans_b { 0 } else { 1 });
        let ka = dim(a, if self.attrs.trans_a { 0 } else { 1 });
        let kb = dim(b, if self.attrs.trans_b { 1 } else { 0 });
        if let (Dim::Known(x), Dim::Known(y)) = (&ka, &kb) {
            if x != y {
                return Err(Error::shape(format!("Gemm inner dims differ: {x} and {y}")));
            }
        }
        Ok(vec![Fact::new(dt, Some(vec![m, n]))])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        Ok(vec![k::gemm_with(
            args.t(0)?,
            args.t(1)?,
            args.opt(2)?,
            &self.attrs,
            self.activation,
            self.packed_b.as_deref(),
        )?
        .into()])
    }
    fn prepack(&mut self, consts: &[Option<&Tensor>]) -> Result<()> {
        if let Some(Some(b)) = consts.get(1) {
            self.packed_b = k::pack_gemm_b(b, &self.attrs)?.map(Arc::new);
        }
        Ok(())
    }
}

/// MatMul shapes from facts (numpy rules), dims unknown where unknown.
pub(crate) fn matmul_shape(a: &Fact, b: &Fact) -> Result<Option<Vec<Dim>>> {
    let (Some(sa), Some(sb)) = (&a.shape, &b.shape) else {
        return Ok(None);
    };
    if sa.is_empty() || sb.is_empty() {
        return Err(Error::shape("MatMul of a scalar"));
    }
    let ka = sa[sa.len() - 1].clone();
    let kb = if sb.len() == 1 {
        sb[0].clone()
    } else {
        sb[sb.len() - 2].clone()
    };
    if let (Dim::Known(x), Dim::Known(y)) = (&ka, &kb) {
        if x != y {
            return Err(Error::shape(format!(
                "MatMul of {} and {}: inner dims differ",
                a.shape_string(),
                b.shape_string()
            )));
        }
    }
    let ba = if sa.len() > 2 {
        &sa[..sa.len() - 2]
    } else {
        &[]
    };
    let bb = if sb.len() > 2 {
        &sb[..sb.len() - 2]
    } else {
        &[]
    };
    let mut out = crate::graph::shape::broadcast_dims(ba, bb)?;
    if sa.len() > 1 {
        out.push(sa[sa.len() - 2].clone());
    }
    if sb.len() > 1 {
        out.push(sb[sb.len() - 1].clone());
    }
    Ok(Some(out))
}

/// `MatMul` (numpy semantics), plus an optional fused row bias and activation.
/// <https://onnx.ai/onnx/operators/onnx__MatMul.html>
#[derive(Debug, Clone)]
pub struct MatMul {
    /// Applied to the output by the kernel; set by the fusion pass (None from the parser).
    pub activation: Option<Activation>,
    /// A constant vector of the output's last-dim length, added to every output row
    /// before the activation; set by the fusion pass (MatMul+Add), None from the parser.
    pub bias: Option<Arc<Tensor>>,
    /// Constant B packed for the GEMM at load (see `Op::prepack`).
    pub packed_b: Option<Arc<Packed>>,
}

impl Op for MatMul {
    op_common!("MatMul");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let a = cx.input(0)?;
        let b = cx.input(1)?;
        let dt = crate::graph::same_dtype(&[a, b], "MatMul")?;
        Ok(vec![Fact::new(dt, matmul_shape(a, b)?)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        Ok(vec![k::matmul_with(
            args.t(0)?,
            args.t(1)?,
            self.bias.as_deref(),
            self.activation,
            self.packed_b.as_deref(),
        )?
        .into()])
    }
    fn prepack(&mut self, consts: &[Option<&Tensor>]) -> Result<()> {
        if let Some(Some(b)) = consts.get(1) {
            self.packed_b = k::pack_matmul_b(b)?.map(Arc::new);
        }
        Ok(())
    }
}

/// `Einsum`: Einstein summation by diagonals, reductions and batched GEMMs.
/// <https://onnx.ai/onnx/operators/onnx__Einsum.html>
#[derive(Debug, Clone)]
pub struct Einsum {
    pub equation: String,
    pub spec: EinsumSpec,
}

fn parse_einsum(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let equation = cx
        .string("equation")?
        .ok_or_else(|| Error::attr("missing required attribute 'equation'"))?;
    let spec = EinsumSpec::parse(&equation)?;
    if spec.inputs.len() != cx.n_inputs() {
        return Err(Error::attr(format!(
            "einsum equation '{equation}' has {} terms for {} inputs",
            spec.inputs.len(),
            cx.n_inputs()
        )));
    }
    Ok(Box::new(Einsum { equation, spec }))
}

impl Op for Einsum {
    op_common!("Einsum");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let facts: Vec<&Fact> = cx.inputs.iter().collect();
        let dt = crate::graph::same_dtype(&facts, "Einsum")?;
        // The rank is known when there is no ellipsis in the output.
        let shape = match &self.spec.output {
            Some(t) if t.ellipsis.is_none() => Some(vec![Dim::Unknown; t.labels.len()]),
            _ => None,
        };
        Ok(vec![Fact::new(dt, shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let ins: Vec<&Tensor> = (0..args.len()).map(|i| args.t(i)).collect::<Result<_>>()?;
        Ok(vec![k::einsum(&self.spec, &ins)?.into()])
    }
}
