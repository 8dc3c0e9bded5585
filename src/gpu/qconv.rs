//! QLinearConv and ConvInteger on the GPU: one thread per output value, a direct
//! convolution over (channel of its group, kd, kh, kw) with integer accumulation of
//! (x − x_zp)(w − w_zp[m]) — exact, so the accumulators equal the CPU's. Constant
//! weights are packed four per u32 at load (one padded row of C/group·k taps per output
//! channel) and uploaded once; weights computed at run time are read one per word. The
//! x zero point is read on the device (DynamicQuantizeLinear makes it at run time in
//! the dynamic models); scales, weight zero points and the bias are read on the host and
//! folded into per-channel multipliers exactly as `cpu::quant::qlinear_conv` does. NHWC
//! (com.microsoft `channels_last`) only changes the strides.

use super::qtile::{self, AMode, BSrc, ConvGeo, Epi, Gemm, PackedQ};
use super::quant::{
    bits, dev, host, host_req, is8, one_value, out0, pack4, q8_values, range8, QHELPERS,
};
use super::record::{Recorder, LINEAR};
use super::{GpuTensor, In, Kernel, Lowered, NodeFacts, Out};
use crate::cpu::nn::Window;
use crate::cpu::quant as k;
use crate::error::{Error, Result};
use crate::graph::ops::quant::{ConvInteger, QLinearConv};
use crate::tensor::DType;
use std::sync::Mutex;

/// Constant weights packed four per word.
#[derive(Debug)]
pub(super) struct PackedW {
    pub words: Vec<u32>,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub dev: Mutex<Option<GpuTensor>>,
}

impl PackedW {
    /// Packs `w` as `rows` rows of `len / rows` bytes.
    pub(super) fn new(w: &crate::tensor::Tensor, rows: usize) -> Result<PackedW> {
        let vals = q8_values(w)?;
        let k = vals.len().checked_div(rows).unwrap_or(0);
        Ok(PackedW {
            words: pack4(&vals, rows, k).0,
            shape: w.shape().to_vec(),
            dtype: w.dtype(),
            dev: Mutex::new(None),
        })
    }
    pub(super) fn upload(&self, r: &mut Recorder) -> Result<GpuTensor> {
        super::quant::cached(r, &self.dev, || Ok(self.words.clone()))
    }
}

/// The WGSL of `fn wget(row: u32, k: u32) -> i32` for packed or raw weights.
pub(super) fn wget(packed: bool, signed: bool) -> &'static str {
    match (packed, signed) {
        (true, false) => {
            "fn wget(row: u32, k: u32) -> i32 {
    return i32(extractBits(W[row + k / 4u], (k % 4u) * 8u, 8u));
}"
        }
        (true, true) => {
            "fn wget(row: u32, k: u32) -> i32 {
    return extractBits(bitcast<i32>(W[row + k / 4u]), (k % 4u) * 8u, 8u);
}"
        }
        _ => {
            "fn wget(row: u32, k: u32) -> i32 {
    return bitcast<i32>(W[row + k]);
}"
        }
    }
}

#[derive(Debug)]
struct QConvKernel {
    window: Window,
    group: usize,
    /// QLinearConv (requantized output) rather than ConvInteger (i32 output).
    qlinear: bool,
    channels_last: bool,
    w_idx: usize,
    xz_idx: usize,
    packed: Option<PackedW>,
    /// Constant weights for the tiled implicit GEMM (`qtile`), M rows of C/group·k taps.
    tiled: Option<PackedQ>,
    /// The constant weights' shape (tiled).
    wshape: Vec<usize>,
    /// Products with `dot4I8Packed` (else unpacked bytes), in the tiled GEMM.
    dot4: bool,
    host: Vec<usize>,
}

/// Params before the per-channel arrays.
const HEAD: usize = 40;

/// Depthwise (one input channel per group): each thread computes four outputs along x,
/// reading each weight once for the four and, at unit stride and dilation along x,
/// each input once per kernel row and tap (a sliding window of four values), so the
/// divisions and loads per output are a fraction of the one-thread-per-output loop's.
fn source_dw(qlinear: bool, packed: bool, signed: bool, xz: bool) -> String {
    let xz_bind = if xz {
        "@group(0) @binding(3) var<storage, read> XZ: array<u32>;
@group(0) @binding(4) var<storage, read> P: array<u32>;"
    } else {
        "@group(0) @binding(3) var<storage, read> P: array<u32>;"
    };
    let xz_val = if xz { "bitcast<i32>(XZ[0])" } else { "0" };
    let out = if qlinear {
        "let v = acc + bitcast<i32>(P[40u + 2u * M + m]);
        let q = clamp(round_i(f32(v) * bitcast<f32>(P[40u + M + m])) + bitcast<i32>(P[32]),
                      bitcast<i32>(P[30]), bitcast<i32>(P[31]));
        Y[yi] = bitcast<u32>(q);"
    } else {
        "Y[yi] = bitcast<u32>(acc);"
    };
    format!(
        "{LINEAR}{QHELPERS}
@group(0) @binding(0) var<storage, read> X: array<u32>;
@group(0) @binding(1) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read_write> Y: array<u32>;
{xz_bind}
{wget}
var<private> xz: i32;
fn ld(rb: u32, x: i32) -> i32 {{
    if (x < 0 || x >= i32(P[7])) {{ return 0; }}
    return bitcast<i32>(X[rb + u32(x) * P[25]]) - xz;
}}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{
    let i = linear_id(gid, nwg);
    if (i >= P[0]) {{ return; }}
    let M = P[1];
    let owb = P[33];
    let xb = i % owb;
    var t = i / owb;
    let oy = t % P[9];
    t = t / P[9];
    let oz = t % P[8];
    t = t / P[8];
    let m = t % M;
    let n = t / M;
    let ox0 = xb * 4u;
    let g = m / P[3];
    xz = {xz_val};
    let wz = bitcast<i32>(P[40u + m]);
    let kd = P[11]; let kh = P[12]; let kw = P[13];
    let id = i32(P[5]); let ih = i32(P[6]); let iw = i32(P[7]);
    let sw = P[16]; let dw = P[19];
    let z0 = i32(oz * P[14]) - i32(P[20]);
    let y0 = i32(oy * P[15]) - i32(P[21]);
    let xs = i32(ox0 * sw) - i32(P[22]);
    let unit = sw == 1u && dw == 1u;
    let row = m * P[29];
    let xbase = n * P[23] + g * P[24];
    var acc0 = 0; var acc1 = 0; var acc2 = 0; var acc3 = 0;
    var tap = 0u;
    for (var a = 0u; a < kd; a++) {{
        let z = z0 + i32(a * P[17]);
        if (z < 0 || z >= id) {{ tap += kh * kw; continue; }}
        for (var b = 0u; b < kh; b++) {{
            let y = y0 + i32(b * P[18]);
            if (y < 0 || y >= ih) {{ tap += kw; continue; }}
            let rb = xbase + u32(z * ih + y) * u32(iw) * P[25];
            if (unit) {{
                var v0 = ld(rb, xs);
                var v1 = ld(rb, xs + 1);
                var v2 = ld(rb, xs + 2);
                for (var e = 0u; e < kw; e++) {{
                    let v3 = ld(rb, xs + i32(e) + 3);
                    let wv = wget(row, tap) - wz;
                    acc0 += v0 * wv; acc1 += v1 * wv; acc2 += v2 * wv; acc3 += v3 * wv;
                    v0 = v1; v1 = v2; v2 = v3;
                    tap += 1u;
                }}
            }} else {{
                let st = i32(sw);
                for (var e = 0u; e < kw; e++) {{
                    let wv = wget(row, tap) - wz;
                    let x = xs + i32(e * dw);
                    acc0 += ld(rb, x) * wv;
                    acc1 += ld(rb, x + st) * wv;
                    acc2 += ld(rb, x + 2 * st) * wv;
                    acc3 += ld(rb, x + 3 * st) * wv;
                    tap += 1u;
                }}
            }}
        }}
    }}
    let sp0 = (oz * P[9] + oy) * P[10] + ox0;
    var accs = array<i32, 4>(acc0, acc1, acc2, acc3);
    for (var o = 0u; o < 4u; o++) {{
        if (ox0 + o >= P[10]) {{ break; }}
        let acc = accs[o];
        let yi = n * P[26] + m * P[27] + (sp0 + o) * P[28];
        {out}
    }}
}}
",
        wget = wget(packed, signed),
    )
}

fn source(qlinear: bool, packed: bool, signed: bool, xz: bool) -> String {
    let xz_bind = if xz {
        "@group(0) @binding(3) var<storage, read> XZ: array<u32>;
@group(0) @binding(4) var<storage, read> P: array<u32>;"
    } else {
        "@group(0) @binding(3) var<storage, read> P: array<u32>;"
    };
    let xz_val = if xz { "bitcast<i32>(XZ[0])" } else { "0" };
    let out = if qlinear {
        "let v = acc + bitcast<i32>(P[40u + 2u * M + m]);
    let q = clamp(round_i(f32(v) * bitcast<f32>(P[40u + M + m])) + bitcast<i32>(P[32]),
                  bitcast<i32>(P[30]), bitcast<i32>(P[31]));
    Y[yi] = bitcast<u32>(q);"
    } else {
        "Y[yi] = bitcast<u32>(acc);"
    };
    format!(
        "{LINEAR}{QHELPERS}
@group(0) @binding(0) var<storage, read> X: array<u32>;
@group(0) @binding(1) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read_write> Y: array<u32>;
{xz_bind}
{wget}
// P: total M cg mg osz | in d h w | out d h w | kernel | stride | dilation | pad begin |
//    x strides n c sp | y strides n m sp | row words | lo hi yz | ... | wz[M] mult[M] bias[M]
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{
    let i = linear_id(gid, nwg);
    if (i >= P[0]) {{ return; }}
    let M = P[1];
    let cg = P[2];
    let osz = P[4];
    let sp = i % osz;
    let m = (i / osz) % M;
    let n = i / (osz * M);
    let ox = sp % P[10];
    let t = sp / P[10];
    let oy = t % P[9];
    let oz = t / P[9];
    let g = m / P[3];
    let xz = {xz_val};
    let wz = bitcast<i32>(P[40u + m]);
    let kd = P[11]; let kh = P[12]; let kw = P[13];
    let id = i32(P[5]); let ih = i32(P[6]); let iw = i32(P[7]);
    let z0 = i32(oz * P[14]) - i32(P[20]);
    let y0 = i32(oy * P[15]) - i32(P[21]);
    let x0 = i32(ox * P[16]) - i32(P[22]);
    let row = m * P[29];
    var acc = 0;
    var tap = 0u;
    for (var c = 0u; c < cg; c++) {{
        let xb = n * P[23] + (g * cg + c) * P[24];
        for (var a = 0u; a < kd; a++) {{
            let z = z0 + i32(a * P[17]);
            if (z < 0 || z >= id) {{ tap += kh * kw; continue; }}
            for (var b = 0u; b < kh; b++) {{
                let y = y0 + i32(b * P[18]);
                if (y < 0 || y >= ih) {{ tap += kw; continue; }}
                let rb = xb + u32(z * ih + y) * u32(iw) * P[25];
                for (var e = 0u; e < kw; e++) {{
                    let x = x0 + i32(e * P[19]);
                    if (x >= 0 && x < iw) {{
                        let xv = bitcast<i32>(X[rb + u32(x) * P[25]]) - xz;
                        acc += xv * (wget(row, tap) - wz);
                    }}
                    tap += 1u;
                }}
            }}
        }}
    }}
    let yi = n * P[26] + m * P[27] + sp * P[28];
    {out}
}}
",
        wget = wget(packed, signed),
    )
}

impl Kernel for QConvKernel {
    fn host_inputs(&self) -> &[usize] {
        &self.host
    }
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = dev(ins, 0, "x")?;
        let (odt, oshape) = out0(outs)?;
        let (wshape, wdt, packed) = match (&self.packed, &self.tiled) {
            (Some(p), _) => (p.shape.clone(), p.dtype, true),
            (None, Some(t)) => (
                self.wshape.clone(),
                if t.signed { DType::I8 } else { DType::U8 },
                true,
            ),
            _ => {
                let w = dev(ins, self.w_idx, "w")?;
                (w.shape.clone(), w.dtype, false)
            }
        };
        let xs = &x.shape;
        let rank = xs.len();
        if rank < 3 || wshape.len() != rank {
            return Err(Error::shape(format!(
                "conv input {xs:?} and weights {wshape:?}"
            )));
        }
        let (c, spatial) = if self.channels_last {
            (xs[rank - 1], &xs[1..rank - 1])
        } else {
            (xs[1], &xs[2..])
        };
        let (m, cg) = (wshape[0], wshape[1]);
        let group = self.group;
        if group == 0 || c != cg * group || m % group != 0 {
            return Err(Error::shape(format!(
                "conv input {xs:?} and weights {wshape:?} do not fit group {group}"
            )));
        }
        let geo = self.window.resolve(spatial, &wshape[2..])?;
        let (isz, osz) = (geo.in_size(), geo.out_size());
        let ktaps = cg * geo.k_size();
        let row_words = if packed { ktaps.div_ceil(4) } else { ktaps };
        // Weight zero points, multipliers and bias, one per output channel.
        let wz_i = if self.qlinear { 5 } else { 3 };
        let wz = k::zero_points(host(ins, wz_i), wdt, "w_zero_point")?;
        let per = |v: usize, what: &str| -> Result<()> {
            if v == 1 || v == m {
                Ok(())
            } else {
                Err(Error::shape(format!(
                    "{what} has {v} values for {m} channels"
                )))
            }
        };
        per(wz.len(), "w_zero_point")?;
        if let Some(t) = &self.tiled {
            return self.encode_tiled(r, ins, t, (x, &geo, m, cg), &wz, (odt, oshape));
        }
        let w = match &self.packed {
            Some(p) => p.upload(r)?,
            None => dev(ins, self.w_idx, "w")?.clone(),
        };
        let mut p = vec![0u32; HEAD];
        let (mut lo, mut hi, mut yz) = (0, 0, 0);
        let mut tail: Vec<u32> = (0..m)
            .map(|j| wz[if wz.len() == 1 { 0 } else { j }] as u32)
            .collect();
        if self.qlinear {
            let xsc = k::scalar_scale(host_req(ins, 1, "x_scale")?, "x_scale")?;
            let wsc = k::scales(host_req(ins, 4, "w_scale")?, "w_scale")?;
            per(wsc.len(), "w_scale")?;
            let ysc = k::scalar_scale(host_req(ins, 6, "y_scale")?, "y_scale")?;
            yz = k::scalar_zp(host(ins, 7), odt, "y_zero_point")?;
            (lo, hi) = range8(odt).ok_or_else(|| Error::unsupported_dtype("QLinearConv output"))?;
            tail.extend((0..m).map(|j| {
                let s = wsc[if wsc.len() == 1 { 0 } else { j }];
                bits(xsc * s / ysc)
            }));
            match host(ins, 8) {
                Some(b) => {
                    let v = b.as_slice::<i32>().map_err(|_| {
                        Error::dtype(format!("QLinearConv bias must be int32, got {}", b.dtype()))
                    })?;
                    if v.len() != m {
                        return Err(Error::shape(format!(
                            "QLinearConv bias has {} values for {m} channels",
                            v.len()
                        )));
                    }
                    tail.extend(v.iter().map(|&b| b as u32));
                }
                None => tail.extend(std::iter::repeat_n(0u32, m)),
            }
        }
        let y = r.alloc(odt, oshape.clone())?;
        let n = xs[0];
        let expect = n * m * osz;
        if y.len() != expect {
            return Err(Error::shape(format!(
                "conv output {oshape:?} differs from the geometry ({expect} values)"
            )));
        }
        let (sx, sy) = if self.channels_last {
            ([isz * c, 1, c], [osz * m, 1, m])
        } else {
            ([c * isz, isz, 1], [m * osz, osz, 1])
        };
        let head = [
            expect,
            m,
            cg,
            m / group,
            osz,
            geo.input[0],
            geo.input[1],
            geo.input[2],
            geo.output[0],
            geo.output[1],
            geo.output[2],
            geo.kernel[0],
            geo.kernel[1],
            geo.kernel[2],
            geo.stride[0],
            geo.stride[1],
            geo.stride[2],
            geo.dilation[0],
            geo.dilation[1],
            geo.dilation[2],
            geo.pad_begin[0],
            geo.pad_begin[1],
            geo.pad_begin[2],
            sx[0],
            sx[1],
            sx[2],
            sy[0],
            sy[1],
            sy[2],
            row_words,
        ];
        for (d, &v) in p.iter_mut().zip(head.iter()) {
            *d = v as u32;
        }
        p[30] = lo as u32;
        p[31] = hi as u32;
        p[32] = yz as u32;
        p.extend(tail);
        if expect == 0 {
            return Ok(vec![Out::Dev(y)]);
        }
        let xz = match ins.get(self.xz_idx) {
            Some(In::Dev(t)) => Some(*t),
            _ => None,
        };
        let depthwise = cg == 1;
        let threads = if depthwise {
            let owb = geo.output[2].div_ceil(4);
            p[33] = owb as u32;
            n * m * geo.output[0] * geo.output[1] * owb
        } else {
            expect
        };
        p[0] = threads as u32;
        let src = if depthwise {
            source_dw(self.qlinear, packed, wdt == DType::I8, xz.is_some())
        } else {
            source(self.qlinear, packed, wdt == DType::I8, xz.is_some())
        };
        let mut bufs = vec![x.buffer(), w.buffer(), y.buffer()];
        if let Some(z) = xz {
            bufs.push(z.buffer());
        }
        let grid = r.grid(threads);
        r.dispatch(&src, &bufs, &p, grid)?;
        Ok(vec![Out::Dev(y)])
    }
}

impl QConvKernel {
    /// The convolution as a tiled GEMM per (image, group): rows are output positions,
    /// columns the group's output channels, k its input channels × taps.
    fn encode_tiled(
        &self,
        r: &mut Recorder,
        ins: &[In],
        t: &PackedQ,
        (x, geo, m, cg): (&GpuTensor, &crate::cpu::nn::Geom, usize, usize),
        wz: &[i32],
        (odt, oshape): (DType, Vec<usize>),
    ) -> Result<Vec<Out>> {
        let xs = &x.shape;
        let rank = xs.len();
        let c = if self.channels_last {
            xs[rank - 1]
        } else {
            xs[1]
        };
        let group = self.group;
        let (isz, osz) = (geo.in_size(), geo.out_size());
        let pick = |v: &[i32], j: usize| v[if v.len() == 1 { 0 } else { j }];
        let bz: Vec<i32> = (0..m).map(|j| pick(wz, j)).collect();
        let (mut lo, mut hi, mut yz) = (0, 0, 0);
        let mut mult = vec![0f32; m];
        let mut ibias = vec![0i32; m];
        let epi = if self.qlinear {
            let xsc = k::scalar_scale(host_req(ins, 1, "x_scale")?, "x_scale")?;
            let wsc = k::scales(host_req(ins, 4, "w_scale")?, "w_scale")?;
            if wsc.len() != 1 && wsc.len() != m {
                return Err(Error::shape(format!(
                    "w_scale has {} values for {m} channels",
                    wsc.len()
                )));
            }
            let ysc = k::scalar_scale(host_req(ins, 6, "y_scale")?, "y_scale")?;
            yz = k::scalar_zp(host(ins, 7), odt, "y_zero_point")?;
            (lo, hi) = range8(odt).ok_or_else(|| Error::unsupported_dtype("QLinearConv output"))?;
            for (j, v) in mult.iter_mut().enumerate() {
                *v = xsc * wsc[if wsc.len() == 1 { 0 } else { j }] / ysc;
            }
            if let Some(b) = host(ins, 8) {
                let v = b.as_slice::<i32>().map_err(|_| {
                    Error::dtype(format!("QLinearConv bias must be int32, got {}", b.dtype()))
                })?;
                if v.len() != m {
                    return Err(Error::shape(format!(
                        "QLinearConv bias has {} values for {m} channels",
                        v.len()
                    )));
                }
                ibias.copy_from_slice(v);
            }
            Epi::Requant
        } else {
            Epi::Int
        };
        let y = r.alloc(odt, oshape.clone())?;
        let n = xs[0];
        if y.len() != n * m * osz {
            return Err(Error::shape(format!(
                "conv output {oshape:?} differs from the geometry ({} values)",
                n * m * osz
            )));
        }
        if y.is_empty() {
            return Ok(vec![Out::Dev(y)]);
        }
        let (sxn, sxc, sxsp) = if self.channels_last {
            (isz * c, 1, c)
        } else {
            (c * isz, isz, 1)
        };
        let (ysb, ysr, ysc) = if self.channels_last {
            (osz * m, m, 1)
        } else {
            (m * osz, 1, osz)
        };
        let pointwise = geo.kernel == [1, 1, 1]
            && geo.stride == [1, 1, 1]
            && geo.pad_begin == [0, 0, 0]
            && geo.output == geo.input;
        let ao: Vec<usize> = (0..n * group)
            .map(|z| (z / group) * sxn + (z % group) * cg * sxc)
            .collect();
        let xz = match ins.get(self.xz_idx) {
            Some(In::Dev(t)) => Some(*t),
            _ => None,
        };
        let conv = (!pointwise).then_some(ConvGeo {
            input: geo.input,
            output: geo.output,
            kernel: geo.kernel,
            stride: geo.stride,
            dilation: geo.dilation,
            pad: geo.pad_begin,
            sxc,
            sxsp,
        });
        qtile::encode(
            r,
            &Gemm {
                a: x,
                a_signed: x.dtype == DType::I8,
                az: xz,
                amode: if pointwise {
                    AMode::Strided
                } else {
                    AMode::Conv
                },
                sam: sxsp,
                sak: sxc,
                conv,
                b: BSrc::Packed(t),
                b_signed: t.signed,
                m: osz,
                n: m / group,
                k: cg * geo.k_size(),
                groups: group,
                bo: vec![0; ao.len()],
                ao,
                bz,
                mult,
                ibias,
                fbias: None,
                epi,
                lo,
                hi,
                yz,
                c: None,
                y: &y,
                ysb,
                ysr,
                ysc,
                dot4: self.dot4,
                a_scale: None,
            },
        )?;
        Ok(vec![Out::Dev(y)])
    }
}

pub(super) fn lower(f: &NodeFacts, cx: &super::GpuContext) -> Lowered {
    let any = f.node.op.as_any();
    let (window, group, qlinear, channels_last, w_idx) =
        if let Some(c) = any.downcast_ref::<QLinearConv>() {
            (c.window.clone(), c.group, true, c.channels_last, 3)
        } else if let Some(c) = any.downcast_ref::<ConvInteger>() {
            (c.window.clone(), c.group, false, false, 1)
        } else {
            return Lowered::NotMine;
        };
    let name = &f.node.op_type;
    if !is8(f.in_dtype(0)) || !is8(f.in_dtype(w_idx)) {
        return Lowered::Cpu(format!("{name} of these types stays on the CPU"));
    }
    if qlinear && !is8(f.out_dtype(0)) {
        return Lowered::Cpu(format!("{name} to this type stays on the CPU"));
    }
    if !one_value(f, 2) {
        return Lowered::Cpu(format!(
            "{name} with a per-channel x zero point stays on the CPU"
        ));
    }
    // Constant weights: the tiled implicit GEMM, except one input channel per group
    // (depthwise), which a direct loop over the few taps does well.
    let (mut packed, mut tiled, mut wshape) = (None, None, Vec::new());
    match f.consts.get(w_idx).copied().flatten() {
        Some(w) if w.rank() >= 3 && w.shape()[1] > 1 => {
            let rows = w.shape()[0];
            let k = w.len().checked_div(rows).unwrap_or(0);
            match q8_values(w).and_then(|v| PackedQ::new(&v, rows, k, w.dtype() == DType::I8)) {
                Ok(p) => tiled = Some(p),
                Err(e) => return Lowered::Cpu(format!("{name} weights: {e}")),
            }
            wshape = w.shape().to_vec();
        }
        Some(w) if w.rank() >= 3 => match PackedW::new(w, w.shape()[0]) {
            Ok(p) => packed = Some(p),
            Err(e) => return Lowered::Cpu(format!("{name} weights: {e}")),
        },
        _ => {}
    }
    let mut host: Vec<usize> = if qlinear {
        vec![1, 4, 5, 6, 7, 8]
    } else {
        vec![3]
    };
    if packed.is_some() || tiled.is_some() {
        host.push(w_idx);
    }
    Lowered::Kernel(Box::new(QConvKernel {
        tiled,
        wshape,
        dot4: qtile::use_dot4(cx),
        window,
        group,
        qlinear,
        channels_last,
        w_idx,
        xz_idx: 2,
        packed,
        host,
    }))
}
