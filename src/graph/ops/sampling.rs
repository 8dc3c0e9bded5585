//! Op family: sampling. Op structs, attribute parsing and shape rules; kernels in
//! `crate::cpu::sampling`.
//!
//! Resize (opset 10-19) and Upsample (7-9), GridSample, AffineGrid, RoiAlign,
//! NonMaxSuppression, Col2Im, HannWindow / HammingWindow / BlackmanWindow, DFT (17-20),
//! STFT and MelWeightMatrix.

use super::{def, OpDef};
use crate::cpu::sampling::{
    self as k, AxisSpec, CoordMode, GridMode, GridPad, InterpMode, KeepAspect, NearestMode,
    ResizeCfg, RoiAlignCfg, WindowKind,
};
use crate::error::{Error, Result};
use crate::graph::attrs::norm_axis;
use crate::graph::{Args, Dim, Fact, InferCx, NodeCx, Op, RunCx, Value};
use crate::op_common;
use crate::tensor::{DType, Tensor};

pub const OPS: &[OpDef] = &[
    def("", "Resize", parse_resize),
    def("", "Upsample", parse_upsample),
    def("", "GridSample", parse_grid_sample),
    def("", "AffineGrid", parse_affine_grid),
    def("", "RoiAlign", parse_roi_align),
    def("", "NonMaxSuppression", parse_nms),
    def("", "Col2Im", parse_col2im),
    def("", "HannWindow", |cx| parse_window(cx, WindowKind::Hann)),
    def("", "HammingWindow", |cx| {
        parse_window(cx, WindowKind::Hamming)
    }),
    def("", "BlackmanWindow", |cx| {
        parse_window(cx, WindowKind::Blackman)
    }),
    def("", "DFT", parse_dft),
    def("", "STFT", parse_stft),
    def("", "MelWeightMatrix", parse_mel),
];

fn check_float(f: &Fact, op: &str, what: &str) -> Result<()> {
    match f.dtype {
        Some(dt) if !dt.is_float() => Err(Error::dtype(format!(
            "{op}: {what} must be a float tensor, got {dt}"
        ))),
        _ => Ok(()),
    }
}

fn check_int(f: &Fact, op: &str, what: &str) -> Result<()> {
    match f.dtype {
        Some(dt) if !dt.is_int() => Err(Error::dtype(format!(
            "{op}: {what} must be an integer tensor, got {dt}"
        ))),
        _ => Ok(()),
    }
}

fn out(t: Tensor) -> Result<Vec<Value>> {
    Ok(vec![Value::from(t)])
}

/// Non-empty optional input.
fn non_empty<'a>(args: &Args<'a>, i: usize) -> Result<Option<&'a Tensor>> {
    Ok(args.opt(i)?.filter(|t| !t.is_empty()))
}

// ------------------------------------------------------------------------------------
// Resize / Upsample
// ------------------------------------------------------------------------------------

/// `Resize`: nearest / linear / cubic resampling from scales or sizes.
/// <https://onnx.ai/onnx/operators/onnx__Resize.html>
#[derive(Debug)]
pub struct Resize {
    pub cfg: ResizeCfg,
    pub axes: Option<Vec<i64>>,
    pub keep_aspect: KeepAspect,
    /// Resize-10 layout: inputs (X, scales).
    pub legacy: bool,
}

fn parse_mode(s: &str, op: &str) -> Result<InterpMode> {
    Ok(match s {
        "nearest" => InterpMode::Nearest,
        "linear" | "bilinear" => InterpMode::Linear,
        "cubic" | "bicubic" => InterpMode::Cubic,
        m => return Err(Error::attr(format!("{op}: unknown mode '{m}'"))),
    })
}

fn parse_resize(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let legacy = cx.opset <= 10;
    let mode = parse_mode(&cx.string_or("mode", "nearest")?, "Resize")?;
    let coord_default = if legacy { "asymmetric" } else { "half_pixel" };
    let coord = match cx
        .string_or("coordinate_transformation_mode", coord_default)?
        .as_str()
    {
        "half_pixel" => CoordMode::HalfPixel,
        "half_pixel_symmetric" => CoordMode::HalfPixelSymmetric,
        "pytorch_half_pixel" => CoordMode::PytorchHalfPixel,
        "align_corners" => CoordMode::AlignCorners,
        "asymmetric" => CoordMode::Asymmetric,
        "tf_half_pixel_for_nn" => CoordMode::TfHalfPixelForNn,
        "tf_crop_and_resize" => CoordMode::TfCropAndResize,
        m => {
            return Err(Error::unsupported_op(format!(
                "Resize coordinate_transformation_mode '{m}'"
            )))
        }
    };
    let nearest = match cx.string("nearest_mode")? {
        None if legacy => NearestMode::Simple,
        None => NearestMode::RoundPreferFloor,
        Some(s) => match s.as_str() {
            "round_prefer_floor" => NearestMode::RoundPreferFloor,
            "round_prefer_ceil" => NearestMode::RoundPreferCeil,
            "floor" => NearestMode::Floor,
            "ceil" => NearestMode::Ceil,
            m => return Err(Error::unsupported_op(format!("Resize nearest_mode '{m}'"))),
        },
    };
    let cubic_a = cx.float_or("cubic_coeff_a", -0.75)?;
    let exclude_outside = cx.int_or("exclude_outside", 0)? != 0;
    let extrapolation = cx.float_or("extrapolation_value", 0.0)?;
    let antialias = cx.int_or("antialias", 0)? != 0;
    let axes = cx.ints("axes")?;
    let keep_aspect = match cx
        .string_or("keep_aspect_ratio_policy", "stretch")?
        .as_str()
    {
        "stretch" => KeepAspect::Stretch,
        "not_larger" => KeepAspect::NotLarger,
        "not_smaller" => KeepAspect::NotSmaller,
        m => {
            return Err(Error::attr(format!(
                "Resize: unknown keep_aspect_ratio_policy '{m}'"
            )))
        }
    };
    if let Some(a) = &axes {
        let mut s = a.clone();
        s.sort_unstable();
        if s.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::attr(format!("Resize: repeated axes {a:?}")));
        }
    }
    Ok(Box::new(Resize {
        cfg: ResizeCfg {
            mode,
            coord,
            nearest,
            cubic_a,
            exclude_outside,
            extrapolation,
            antialias,
        },
        axes,
        keep_aspect,
        legacy,
    }))
}

impl Resize {
    fn axes(&self, rank: usize) -> Result<Vec<usize>> {
        match &self.axes {
            None => Ok((0..rank).collect()),
            Some(a) => {
                let v: Vec<usize> = a
                    .iter()
                    .map(|&x| norm_axis(x, rank))
                    .collect::<Result<_>>()?;
                let mut s = v.clone();
                s.sort_unstable();
                if s.windows(2).any(|w| w[0] == w[1]) {
                    return Err(Error::attr(format!("Resize: repeated axes {a:?}")));
                }
                Ok(v)
            }
        }
    }

    /// Indices of (roi, scales, sizes) inputs.
    fn slots(&self) -> (Option<usize>, usize, Option<usize>) {
        if self.legacy {
            (None, 1, None)
        } else {
            (Some(1), 2, Some(3))
        }
    }

    fn geometry(
        &self,
        in_shape: &[usize],
        roi: Option<Vec<f32>>,
        scales: Option<Vec<f32>>,
        sizes: Option<Vec<i64>>,
    ) -> Result<Vec<AxisSpec>> {
        let axes = self.axes(in_shape.len())?;
        let roi = if self.cfg.coord == CoordMode::TfCropAndResize {
            roi
        } else {
            None
        };
        k::resize_axes(
            in_shape,
            scales.as_deref(),
            sizes.as_deref(),
            &axes,
            roi.as_deref(),
            self.keep_aspect,
        )
    }
}

fn fact_f32(f: Option<&Fact>) -> Option<Option<Vec<f32>>> {
    match f {
        None => Some(None),
        Some(f) => {
            let t = f.value.as_ref()?;
            if t.is_empty() {
                Some(None)
            } else {
                t.to_f32_vec().ok().map(Some)
            }
        }
    }
}

impl Op for Resize {
    op_common!("Resize");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let (roi_i, sc_i, sz_i) = self.slots();
        let mut shape = x.rank().map(|r| vec![Dim::Unknown; r]);
        let roi = roi_i.map_or(Some(None), |i| fact_f32(cx.opt(i)));
        let scales = fact_f32(cx.opt(sc_i));
        let sizes = match sz_i.and_then(|i| cx.opt(i)) {
            None => Some(None),
            Some(f) => f.value.as_ref().and_then(|t| {
                if t.is_empty() {
                    Some(None)
                } else {
                    t.to_i64_vec().ok().map(Some)
                }
            }),
        };
        if let (Some(in_shape), Some(roi), Some(scales), Some(sizes)) =
            (x.concrete_shape(), roi, scales.clone(), sizes.clone())
        {
            let specs = self.geometry(&in_shape, roi, scales, sizes)?;
            shape = Some(specs.iter().map(|s| Dim::Known(s.out_len)).collect());
        } else if let Some(xs) = &x.shape {
            // Symbolic input dims: keep what constant scales or sizes still tell.
            let axes = self.axes(xs.len())?;
            let mut d = xs.clone();
            match (scales.flatten(), sizes.flatten()) {
                (Some(sc), None) if sc.len() == axes.len() => {
                    for (&a, &s) in axes.iter().zip(&sc) {
                        d[a] = match &xs[a] {
                            _ if s == 1.0 => xs[a].clone(),
                            Dim::Known(n) if s.is_finite() && s > 0.0 => {
                                let p = s * *n as f32;
                                if p < 1e15 {
                                    Dim::Known(p.floor() as usize)
                                } else {
                                    Dim::Unknown
                                }
                            }
                            _ => Dim::Unknown,
                        };
                    }
                    shape = Some(d);
                }
                (None, Some(sz)) if sz.len() == axes.len() => {
                    for (&a, &v) in axes.iter().zip(&sz) {
                        d[a] = match usize::try_from(v) {
                            Ok(n) if self.keep_aspect == KeepAspect::Stretch => Dim::Known(n),
                            _ => Dim::Unknown,
                        };
                    }
                    shape = Some(d);
                }
                _ => {}
            }
        }
        Ok(vec![Fact::new(x.dtype, shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let (roi_i, sc_i, sz_i) = self.slots();
        let roi = match roi_i {
            Some(i) => non_empty(args, i)?.map(|t| t.to_f32_vec()).transpose()?,
            None => None,
        };
        let scales = non_empty(args, sc_i)?.map(|t| t.to_f32_vec()).transpose()?;
        let sizes = match sz_i {
            Some(i) => non_empty(args, i)?.map(|t| t.to_i64_vec()).transpose()?,
            None => None,
        };
        let specs = self.geometry(x.shape(), roi, scales, sizes)?;
        out(k::resize(x, &self.cfg, &specs)?)
    }
}

/// `Upsample` (deprecated): nearest or linear upsampling by scales (attribute in opset 7,
/// input from opset 9). <https://onnx.ai/onnx/operators/onnx__Upsample.html>
#[derive(Debug)]
pub struct Upsample {
    pub cfg: ResizeCfg,
    pub scales: Option<Vec<f32>>,
}

fn parse_upsample(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let mode = parse_mode(&cx.string_or("mode", "nearest")?, "Upsample")?;
    if mode == InterpMode::Cubic {
        return Err(Error::unsupported_op("Upsample mode 'cubic'"));
    }
    let scales = cx.floats("scales")?;
    if scales.is_none() && cx.n_inputs() < 2 {
        return Err(Error::attr("Upsample needs 'scales'"));
    }
    Ok(Box::new(Upsample {
        cfg: ResizeCfg {
            mode,
            coord: CoordMode::Asymmetric,
            nearest: NearestMode::Simple,
            cubic_a: -0.75,
            exclude_outside: false,
            extrapolation: 0.0,
            antialias: false,
        },
        scales,
    }))
}

impl Upsample {
    fn geometry(&self, in_shape: &[usize], scales: &[f32]) -> Result<Vec<AxisSpec>> {
        let axes: Vec<usize> = (0..in_shape.len()).collect();
        k::resize_axes(
            in_shape,
            Some(scales),
            None,
            &axes,
            None,
            KeepAspect::Stretch,
        )
    }
}

impl Op for Upsample {
    op_common!("Upsample");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let mut shape = x.rank().map(|r| vec![Dim::Unknown; r]);
        let scales = match &self.scales {
            Some(s) => Some(s.clone()),
            None => cx
                .opt(1)
                .and_then(|f| f.value.as_ref())
                .and_then(|t| t.to_f32_vec().ok()),
        };
        if let (Some(in_shape), Some(s)) = (x.concrete_shape(), scales) {
            let specs = self.geometry(&in_shape, &s)?;
            shape = Some(specs.iter().map(|s| Dim::Known(s.out_len)).collect());
        }
        Ok(vec![Fact::new(x.dtype, shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let scales = match &self.scales {
            Some(s) => s.clone(),
            None => args.t(1)?.to_f32_vec()?,
        };
        let specs = self.geometry(x.shape(), &scales)?;
        out(k::resize(x, &self.cfg, &specs)?)
    }
}

// ------------------------------------------------------------------------------------
// GridSample / AffineGrid
// ------------------------------------------------------------------------------------

/// `GridSample`: samples the input at grid locations (2-D and N-D).
/// <https://onnx.ai/onnx/operators/onnx__GridSample.html>
#[derive(Debug)]
pub struct GridSample {
    pub mode: GridMode,
    pub padding: GridPad,
    pub align_corners: bool,
}

fn parse_grid_sample(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let mode = match cx.string_or("mode", "linear")?.as_str() {
        "linear" | "bilinear" => GridMode::Linear,
        "nearest" => GridMode::Nearest,
        "cubic" | "bicubic" => GridMode::Cubic,
        m => return Err(Error::attr(format!("GridSample: unknown mode '{m}'"))),
    };
    let padding = match cx.string_or("padding_mode", "zeros")?.as_str() {
        "zeros" => GridPad::Zeros,
        "border" => GridPad::Border,
        "reflection" => GridPad::Reflection,
        m => {
            return Err(Error::attr(format!(
                "GridSample: unknown padding_mode '{m}'"
            )))
        }
    };
    let align_corners = cx.int_or("align_corners", 0)? != 0;
    Ok(Box::new(GridSample {
        mode,
        padding,
        align_corners,
    }))
}

impl Op for GridSample {
    op_common!("GridSample");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let g = cx.input(1)?;
        check_float(g, "GridSample", "grid")?;
        let shape = match (&x.shape, &g.shape) {
            (Some(xs), Some(gs)) => {
                if xs.len() != gs.len() || xs.len() < 3 {
                    return Err(Error::shape(format!(
                        "GridSample: input {} and grid {} ranks differ or are below 3",
                        x.shape_string(),
                        g.shape_string()
                    )));
                }
                let mut s = vec![xs[0].clone(), xs[1].clone()];
                s.extend(gs[1..gs.len() - 1].iter().cloned());
                Some(s)
            }
            (Some(xs), None) => Some(vec![Dim::Unknown; xs.len()]),
            (None, Some(gs)) => Some(vec![Dim::Unknown; gs.len()]),
            _ => None,
        };
        Ok(vec![Fact::new(x.dtype, shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        out(k::grid_sample(
            args.t(0)?,
            args.t(1)?,
            self.mode,
            self.padding,
            self.align_corners,
        )?)
    }
}

/// `AffineGrid`: sampling grids from affine matrices.
/// <https://onnx.ai/onnx/operators/onnx__AffineGrid.html>
#[derive(Debug)]
pub struct AffineGrid {
    pub align_corners: bool,
}

fn parse_affine_grid(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    Ok(Box::new(AffineGrid {
        align_corners: cx.int_or("align_corners", 0)? != 0,
    }))
}

impl Op for AffineGrid {
    op_common!("AffineGrid");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let theta = cx.input(0)?;
        check_float(theta, "AffineGrid", "theta")?;
        let size = cx.input(1)?;
        check_int(size, "AffineGrid", "size")?;
        let shape = match size.const_i64() {
            Some(s) if s.len() == 4 || s.len() == 5 => {
                let mut d: Vec<Dim> = Vec::new();
                for (i, &v) in s.iter().enumerate() {
                    if i == 1 {
                        continue;
                    }
                    d.push(usize::try_from(v).map_or(Dim::Unknown, Dim::Known));
                }
                d.push(Dim::Known(s.len() - 2));
                Some(d)
            }
            _ => size
                .concrete_shape()
                .and_then(|s| s.first().copied())
                .map(|n| vec![Dim::Unknown; n]),
        };
        Ok(vec![Fact::new(theta.dtype, shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let size = args.t(1)?.to_i64_vec()?;
        out(k::affine_grid(args.t(0)?, &size, self.align_corners)?)
    }
}

// ------------------------------------------------------------------------------------
// RoiAlign
// ------------------------------------------------------------------------------------

/// `RoiAlign`: bilinear region pooling over rois.
/// <https://onnx.ai/onnx/operators/onnx__RoiAlign.html>
#[derive(Debug)]
pub struct RoiAlign {
    pub cfg: RoiAlignCfg,
}

fn parse_roi_align(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let default_ctm = if cx.opset >= 16 {
        "half_pixel"
    } else {
        "output_half_pixel"
    };
    let half_pixel = match cx
        .string_or("coordinate_transformation_mode", default_ctm)?
        .as_str()
    {
        "half_pixel" => true,
        "output_half_pixel" => false,
        m => {
            return Err(Error::attr(format!(
                "RoiAlign: unknown coordinate_transformation_mode '{m}'"
            )))
        }
    };
    let max_mode = match cx.string_or("mode", "avg")?.as_str() {
        "avg" => false,
        "max" => true,
        m => return Err(Error::attr(format!("RoiAlign: unknown mode '{m}'"))),
    };
    let dim = |name: &str| -> Result<usize> {
        let v = cx.int_or(name, 1)?;
        usize::try_from(v)
            .ok()
            .filter(|&u| u > 0)
            .ok_or_else(|| Error::attr(format!("RoiAlign: {name} must be positive, got {v}")))
    };
    let output_height = dim("output_height")?;
    let output_width = dim("output_width")?;
    let sampling_ratio = cx.int_or("sampling_ratio", 0)?;
    if sampling_ratio < 0 {
        return Err(Error::attr("RoiAlign: sampling_ratio must not be negative"));
    }
    let spatial_scale = cx.float_or("spatial_scale", 1.0)?;
    Ok(Box::new(RoiAlign {
        cfg: RoiAlignCfg {
            max_mode,
            output_height,
            output_width,
            sampling_ratio,
            spatial_scale,
            half_pixel,
        },
    }))
}

impl Op for RoiAlign {
    op_common!("RoiAlign");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        check_float(x, "RoiAlign", "X")?;
        let rois = cx.input(1)?;
        check_int(cx.input(2)?, "RoiAlign", "batch_indices")?;
        let r = rois
            .shape
            .as_ref()
            .and_then(|s| s.first().cloned())
            .unwrap_or(Dim::Unknown);
        let c = x
            .shape
            .as_ref()
            .and_then(|s| s.get(1).cloned())
            .unwrap_or(Dim::Unknown);
        Ok(vec![Fact::new(
            x.dtype,
            Some(vec![
                r,
                c,
                Dim::Known(self.cfg.output_height),
                Dim::Known(self.cfg.output_width),
            ]),
        )])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        out(k::roi_align(args.t(0)?, args.t(1)?, args.t(2)?, &self.cfg)?)
    }
}

// ------------------------------------------------------------------------------------
// NonMaxSuppression
// ------------------------------------------------------------------------------------

/// `NonMaxSuppression`: greedy per-class box selection by IoU.
/// <https://onnx.ai/onnx/operators/onnx__NonMaxSuppression.html>
#[derive(Debug)]
pub struct NonMaxSuppression {
    pub center_point_box: bool,
}

fn parse_nms(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let c = cx.int_or("center_point_box", 0)?;
    if c != 0 && c != 1 {
        return Err(Error::attr(format!(
            "NonMaxSuppression: center_point_box must be 0 or 1, got {c}"
        )));
    }
    Ok(Box::new(NonMaxSuppression {
        center_point_box: c == 1,
    }))
}

impl Op for NonMaxSuppression {
    op_common!("NonMaxSuppression");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        check_float(cx.input(0)?, "NonMaxSuppression", "boxes")?;
        check_float(cx.input(1)?, "NonMaxSuppression", "scores")?;
        Ok(vec![Fact::new(
            Some(DType::I64),
            Some(vec![Dim::Unknown, Dim::Known(3)]),
        )])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let max = match non_empty(args, 2)? {
            Some(t) => t.scalar_i64()?,
            None => 0,
        };
        let iou = match non_empty(args, 3)? {
            Some(t) => t.scalar_f64()? as f32,
            None => 0.0,
        };
        let score = match non_empty(args, 4)? {
            Some(t) => Some(t.scalar_f64()? as f32),
            None => None,
        };
        out(k::non_max_suppression(
            args.t(0)?,
            args.t(1)?,
            max,
            iou,
            score,
            self.center_point_box,
        )?)
    }
}

// ------------------------------------------------------------------------------------
// Col2Im
// ------------------------------------------------------------------------------------

/// `Col2Im`: rearranges column blocks back into an image, summing overlaps.
/// <https://onnx.ai/onnx/operators/onnx__Col2Im.html>
#[derive(Debug)]
pub struct Col2Im {
    pub dilations: Option<Vec<i64>>,
    pub pads: Option<Vec<i64>>,
    pub strides: Option<Vec<i64>>,
}

fn parse_col2im(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    Ok(Box::new(Col2Im {
        dilations: cx.ints("dilations")?,
        pads: cx.ints("pads")?,
        strides: cx.ints("strides")?,
    }))
}

impl Op for Col2Im {
    op_common!("Col2Im");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        check_int(cx.input(1)?, "Col2Im", "image_shape")?;
        check_int(cx.input(2)?, "Col2Im", "block_shape")?;
        let img = cx.input(1)?;
        let shape = match img.const_i64() {
            Some(v) => {
                let mut d = vec![Dim::Unknown, Dim::Unknown];
                if let Some(xs) = &x.shape {
                    if let Some(n) = xs.first() {
                        d[0] = n.clone();
                    }
                    // C = input dim 1 / block size, when both are known.
                    let block: Option<i64> = cx.input(2)?.const_i64().map(|b| b.iter().product());
                    if let (Some(Dim::Known(cb)), Some(k)) = (xs.get(1), block) {
                        if let Ok(k) = usize::try_from(k) {
                            if k > 0 && cb % k == 0 {
                                d[1] = Dim::Known(cb / k);
                            }
                        }
                    }
                }
                d.extend(
                    v.iter()
                        .map(|&i| usize::try_from(i).map_or(Dim::Unknown, Dim::Known)),
                );
                Some(d)
            }
            None => img
                .concrete_shape()
                .and_then(|s| s.first().copied())
                .map(|n| vec![Dim::Unknown; n + 2]),
        };
        Ok(vec![Fact::new(x.dtype, shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let image = args.t(1)?.to_i64_vec()?;
        let block = args.t(2)?.to_i64_vec()?;
        let r = image.len();
        let dil = self.dilations.clone().unwrap_or_else(|| vec![1; r]);
        let pads = self.pads.clone().unwrap_or_else(|| vec![0; 2 * r]);
        let st = self.strides.clone().unwrap_or_else(|| vec![1; r]);
        out(k::col2im(args.t(0)?, &image, &block, &dil, &pads, &st)?)
    }
}

// ------------------------------------------------------------------------------------
// Windows, MelWeightMatrix
// ------------------------------------------------------------------------------------

fn output_dtype(cx: &NodeCx, op: &str) -> Result<DType> {
    let code = cx.int_or("output_datatype", 1)?;
    let dt = i32::try_from(code)
        .map_err(|_| Error::attr(format!("{op}: bad output_datatype {code}")))
        .and_then(DType::from_onnx)?;
    if !dt.is_numeric() {
        return Err(Error::attr(format!(
            "{op}: output_datatype {dt} is not numeric"
        )));
    }
    Ok(dt)
}

/// `HannWindow`, `HammingWindow`, `BlackmanWindow`: window functions.
/// <https://onnx.ai/onnx/operators/onnx__HannWindow.html>
#[derive(Debug)]
pub struct Window {
    pub kind: WindowKind,
    pub periodic: bool,
    pub dtype: DType,
}

fn parse_window(cx: &mut NodeCx, kind: WindowKind) -> Result<Box<dyn Op>> {
    Ok(Box::new(Window {
        kind,
        periodic: cx.int_or("periodic", 1)? != 0,
        dtype: output_dtype(cx, "window")?,
    }))
}

impl Op for Window {
    fn name(&self) -> &'static str {
        match self.kind {
            WindowKind::Hann => "HannWindow",
            WindowKind::Hamming => "HammingWindow",
            WindowKind::Blackman => "BlackmanWindow",
        }
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let size = cx.input(0)?;
        check_int(size, self.name(), "size")?;
        let d = size
            .const_i64()
            .and_then(|v| v.first().copied())
            .and_then(|v| usize::try_from(v).ok())
            .map_or(Dim::Unknown, Dim::Known);
        Ok(vec![Fact::new(Some(self.dtype), Some(vec![d]))])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let size = args.t(0)?.scalar_i64()?;
        out(k::window(self.kind, size, self.periodic, self.dtype)?)
    }
}

/// `MelWeightMatrix`: triangular mel filter bank.
/// <https://onnx.ai/onnx/operators/onnx__MelWeightMatrix.html>
#[derive(Debug)]
pub struct MelWeightMatrix {
    pub dtype: DType,
}

fn parse_mel(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    Ok(Box::new(MelWeightMatrix {
        dtype: output_dtype(cx, "MelWeightMatrix")?,
    }))
}

impl Op for MelWeightMatrix {
    op_common!("MelWeightMatrix");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let c = |i: usize| -> Option<usize> {
            cx.opt(i)
                .and_then(|f| f.const_i64())
                .and_then(|v| v.first().copied())
                .and_then(|v| usize::try_from(v).ok())
        };
        let bins = c(1).map_or(Dim::Unknown, |d| Dim::Known(d / 2 + 1));
        let mel = c(0).map_or(Dim::Unknown, Dim::Known);
        Ok(vec![Fact::new(Some(self.dtype), Some(vec![bins, mel]))])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        out(k::mel_weight_matrix(
            args.t(0)?.scalar_i64()?,
            args.t(1)?.scalar_i64()?,
            args.t(2)?.scalar_i64()?,
            args.t(3)?.scalar_f64()?,
            args.t(4)?.scalar_f64()?,
            self.dtype,
        )?)
    }
}

// ------------------------------------------------------------------------------------
// DFT / STFT
// ------------------------------------------------------------------------------------

/// `DFT`: discrete Fourier transform along one axis (real or complex input, inverse,
/// one-sided). <https://onnx.ai/onnx/operators/onnx__DFT.html>
#[derive(Debug)]
pub struct Dft {
    /// The axis attribute (opset 17-19); from opset 20 the axis is input 2.
    pub axis: Option<i64>,
    pub inverse: bool,
    pub onesided: bool,
}

fn parse_dft(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let axis = if cx.opset < 20 {
        Some(cx.int_or("axis", 1)?)
    } else {
        None
    };
    Ok(Box::new(Dft {
        axis,
        inverse: cx.int_or("inverse", 0)? != 0,
        onesided: cx.int_or("onesided", 0)? != 0,
    }))
}

fn opt_len(t: Option<&Tensor>, what: &str) -> Result<Option<usize>> {
    match t {
        None => Ok(None),
        Some(t) => {
            let v = t.scalar_i64()?;
            usize::try_from(v)
                .ok()
                .filter(|&u| u > 0)
                .map(Some)
                .ok_or_else(|| Error::runtime(format!("{what} must be positive, got {v}")))
        }
    }
}

impl Dft {
    fn out_shape(&self, xs: &[Dim], axis: i64, n: Option<usize>) -> Result<Vec<Dim>> {
        let rank = xs.len();
        let a = norm_axis(axis, rank)?;
        if a + 1 >= rank {
            return Err(Error::shape(format!(
                "DFT: axis {axis} must not be the last (component) axis"
            )));
        }
        let mut s = xs.to_vec();
        let len = xs[a].known();
        let irfft = self.inverse && self.onesided;
        let n = match n {
            Some(n) => Some(n),
            None if irfft => len.map(|l| 2 * l.saturating_sub(1)),
            None => len,
        };
        s[a] = match n {
            Some(n) if self.onesided && !self.inverse => Dim::Known(n / 2 + 1),
            Some(n) => Dim::Known(n),
            None => Dim::Unknown,
        };
        s[rank - 1] = Dim::Known(if irfft { 1 } else { 2 });
        Ok(s)
    }
}

impl Op for Dft {
    op_common!("DFT");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        check_float(x, "DFT", "input")?;
        let n_fact = cx.opt(1);
        let n = match n_fact {
            None => Some(None),
            Some(f) => f
                .const_i64()
                .and_then(|v| v.first().copied())
                .map(|v| usize::try_from(v).ok()),
        };
        let axis = match self.axis {
            Some(a) => Some(a),
            None => match cx.opt(2) {
                None => Some(-2),
                Some(f) => f.const_i64().and_then(|v| v.first().copied()),
            },
        };
        let shape = match (&x.shape, axis, n) {
            (Some(xs), Some(a), Some(n)) => Some(self.out_shape(xs, a, n)?),
            (Some(xs), _, _) => Some(vec![Dim::Unknown; xs.len()]),
            _ => None,
        };
        Ok(vec![Fact::new(x.dtype, shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let n = opt_len(non_empty(args, 1)?, "DFT: dft_length")?;
        let axis = match self.axis {
            Some(a) => a,
            None => match non_empty(args, 2)? {
                Some(t) => t.scalar_i64()?,
                None => -2,
            },
        };
        let a = norm_axis(axis, x.rank())?;
        out(k::dft(x, a, n, self.inverse, self.onesided)?)
    }
}

/// `STFT`: short-time Fourier transform of (batch, length, 1|2) signals.
/// <https://onnx.ai/onnx/operators/onnx__STFT.html>
#[derive(Debug)]
pub struct Stft {
    pub onesided: bool,
}

fn parse_stft(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    Ok(Box::new(Stft {
        onesided: cx.int_or("onesided", 1)? != 0,
    }))
}

impl Op for Stft {
    op_common!("STFT");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        check_float(x, "STFT", "signal")?;
        check_int(cx.input(1)?, "STFT", "frame_step")?;
        if let Some(r) = x.rank() {
            if r != 3 {
                return Err(Error::shape(format!(
                    "STFT: signal must be 3-D, got {}",
                    x.shape_string()
                )));
            }
        }
        let b = x
            .shape
            .as_ref()
            .and_then(|s| s.first().cloned())
            .unwrap_or(Dim::Unknown);
        // Frames and bins when the signal length, frame_step and frame length (input 3,
        // else the window's length, else the signal's) are known.
        let len = x
            .shape
            .as_ref()
            .and_then(|s| s.get(1))
            .and_then(|d| d.known());
        // An empty window or frame_length counts as absent (as in `run`); a present one
        // whose value is not known leaves the counts unknown.
        let win_or_len = match cx.opt(2).map(|f| f.concrete_shape()) {
            None => len,
            Some(Some(s)) if s.first().is_some_and(|&w| w > 0) => s.first().copied(),
            Some(Some(_)) => len,
            Some(None) => None,
        };
        let fl = match cx.opt(3).map(|f| f.const_i64()) {
            None => win_or_len,
            Some(Some(v)) => match v.first() {
                Some(&f) => usize::try_from(f).ok(),
                None => win_or_len,
            },
            Some(None) => None,
        };
        let step = cx
            .opt(1)
            .and_then(|f| f.const_i64())
            .and_then(|v| v.first().copied())
            .and_then(|s| usize::try_from(s).ok())
            .filter(|&s| s > 0);
        let (frames, bins) = match (len, fl, step) {
            (Some(l), Some(f), Some(st)) if f > 0 && f <= l => (
                Dim::Known(1 + (l - f) / st),
                Dim::Known(if self.onesided { f / 2 + 1 } else { f }),
            ),
            _ => (Dim::Unknown, Dim::Unknown),
        };
        Ok(vec![Fact::new(
            x.dtype,
            Some(vec![b, frames, bins, Dim::Known(2)]),
        )])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let step = args.t(1)?.scalar_i64()?;
        let window = non_empty(args, 2)?;
        let fl = match non_empty(args, 3)? {
            Some(t) => Some(t.scalar_i64()?),
            None => None,
        };
        out(k::stft(args.t(0)?, step, window, fl, self.onesided)?)
    }
}
