//! Integer matmuls on the GPU: QLinearMatMul, MatMulInteger, QGemm (com.microsoft) and
//! MatMulIntegerToFloat. One thread per output value accumulates (a − a_zp)(b − b_zp[n])
//! in i32 (exact, so equal to the CPU's accumulators); the output is the accumulator
//! (MatMulInteger), requantized to 8 bits, or scaled to f32. A constant 2-D B is packed
//! at load four bytes per u32, one row of K per output column (B transposed), and
//! uploaded once; any other B is read one value per word through strides, with numpy
//! batch broadcasting. A's zero point is read on the device (DynamicQuantizeLinear makes
//! it at run time); scales, B's zero points and bias are read on the host and folded into
//! per-column constants exactly as `cpu::quant` forms them.

use super::qtile::{self, BSrc, Epi, Gemm, PackedQ};
use super::quant::{dev, host, host_req, is8, one_value, out0, q8_values, range8};
use super::record::{Recorder, LINEAR};
use super::{In, Kernel, Lowered, NodeFacts, Out};
use crate::cpu::quant as k;
use crate::error::{Error, Result};
use crate::graph::ops::quant::{
    DynamicQuantizeMatMul, MatMulInteger, MatMulIntegerToFloat, QGemm, QLinearMatMul,
};
use crate::tensor::{DType, Tensor};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// QLinearMatMul: a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp.
    QLinear,
    /// MatMulInteger: a, b, a_zp, b_zp.
    Integer,
    /// QGemm: a, a_scale, a_zp, b, b_scale, b_zp, C?, y_scale?, y_zp?.
    Gemm {
        alpha: f32,
        trans_a: bool,
        trans_b: bool,
    },
    /// MatMulIntegerToFloat: a, b, a_scale, b_scale, a_zp?, b_zp?, bias?.
    ToFloat,
    /// DynamicQuantizeMatMul: a (f32, quantized to uint8 from its range on the device),
    /// b, b_scale, b_zp?, bias?.
    DynQ,
}

impl Kind {
    fn b(self) -> usize {
        match self {
            Kind::QLinear | Kind::Gemm { .. } => 3,
            Kind::Integer | Kind::ToFloat | Kind::DynQ => 1,
        }
    }
    fn a_zp(self) -> usize {
        match self {
            Kind::ToFloat => 4,
            // None: made on the device.
            Kind::DynQ => usize::MAX,
            _ => 2,
        }
    }
    fn b_zp(self) -> usize {
        match self {
            Kind::QLinear | Kind::Gemm { .. } | Kind::ToFloat => 5,
            Kind::Integer | Kind::DynQ => 3,
        }
    }
}

#[derive(Debug)]
struct QMatKernel {
    kind: Kind,
    /// Constant 2-D B, packed as N rows of K.
    packed: Option<PackedQ>,
    host: Vec<usize>,
    /// Products with `dot4I8Packed` (else unpacked bytes).
    dot4: bool,
}

/// A quantized to uint8 with the scale and zero point of DynamicQuantizeLinear's range
/// kernel (`quant::DQL_RANGE`, the parameters `cpu::quant::dynamic_qparams` forms).
const DQ_QUANT: &str = "
@group(0) @binding(0) var<storage, read> X: array<f32>;
@group(0) @binding(1) var<storage, read> S: array<f32>;
@group(0) @binding(2) var<storage, read> Z: array<u32>;
@group(0) @binding(3) var<storage, read_write> Y: array<u32>;
@group(0) @binding(4) var<storage, read> P: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= P[0]) { return; }
    Y[i] = u32(clamp(round(X[i] / S[0]) + f32(Z[0]), 0.0, 255.0));
}
";

/// Broadcast batch offsets of numpy matmul: (M, K, N, a offsets, b offsets).
type Plan = (usize, usize, usize, Vec<usize>, Vec<usize>);

fn matmul_plan(ash: &[usize], bsh: &[usize]) -> Result<Plan> {
    if ash.is_empty() || bsh.is_empty() {
        return Err(Error::shape("MatMul operands must have rank >= 1"));
    }
    let a2: Vec<usize> = if ash.len() == 1 {
        vec![1, ash[0]]
    } else {
        ash.to_vec()
    };
    let b2: Vec<usize> = if bsh.len() == 1 {
        vec![bsh[0], 1]
    } else {
        bsh.to_vec()
    };
    let m = a2[a2.len() - 2];
    let k = a2[a2.len() - 1];
    let n = b2[b2.len() - 1];
    if b2[b2.len() - 2] != k {
        return Err(Error::shape(format!(
            "MatMul inner dims differ: {ash:?} and {bsh:?}"
        )));
    }
    let ab = &a2[..a2.len() - 2];
    let bb = &b2[..b2.len() - 2];
    let rk = ab.len().max(bb.len());
    let pad = |s: &[usize]| -> Vec<usize> {
        let mut v = vec![1; rk - s.len()];
        v.extend_from_slice(s);
        v
    };
    let (ab, bb) = (pad(ab), pad(bb));
    let mut ob = Vec::with_capacity(rk);
    for (x, y) in ab.iter().zip(&bb) {
        if x != y && *x != 1 && *y != 1 {
            return Err(Error::shape(format!(
                "MatMul batch dims do not broadcast: {ash:?} and {bsh:?}"
            )));
        }
        ob.push(*x.max(y));
    }
    let batch: usize = ob.iter().product();
    let strides = |s: &[usize], mat: usize| -> Vec<usize> {
        let mut st = vec![0; rk];
        let mut acc = mat;
        for d in (0..rk).rev() {
            st[d] = if s[d] == 1 { 0 } else { acc };
            acc *= s[d];
        }
        st
    };
    let (sa, sb) = (strides(&ab, m * k), strides(&bb, k * n));
    let mut ao = Vec::with_capacity(batch);
    let mut bo = Vec::with_capacity(batch);
    for i in 0..batch {
        let (mut rem, mut oa, mut obf) = (i, 0, 0);
        for d in (0..rk).rev() {
            let c = rem % ob[d];
            rem /= ob[d];
            oa += c * sa[d];
            obf += c * sb[d];
        }
        ao.push(oa);
        bo.push(obf);
    }
    Ok((m, k, n, ao, bo))
}

/// One value per column from 1 or `n` values.
fn per_col<T: Copy>(v: &[T], n: usize, what: &str) -> Result<Vec<T>> {
    match v.len() {
        1 => Ok(vec![v[0]; n]),
        l if l == n => Ok(v.to_vec()),
        l => Err(Error::shape(format!(
            "{what} has {l} values for {n} columns"
        ))),
    }
}

impl Kernel for QMatKernel {
    fn host_inputs(&self) -> &[usize] {
        &self.host
    }
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let kind = self.kind;
        let a = dev(ins, 0, "A")?;
        let (odt, oshape) = out0(outs)?;
        let (bshape, bdt, packed) = match &self.packed {
            Some(p) => (
                vec![p.rows, p.k],
                if p.signed { DType::I8 } else { DType::U8 },
                true,
            ),
            None => {
                let b = dev(ins, kind.b(), "B")?;
                (b.shape.clone(), b.dtype, false)
            }
        };
        // Geometry: M, K, N, strides of A and B, batch offsets.
        let (m, kk, n, ao, bo, sam, sak, sbk, sbn) = match kind {
            Kind::Gemm {
                trans_a, trans_b, ..
            } => {
                if a.shape.len() != 2 || bshape.len() != 2 {
                    return Err(Error::shape("QGemm needs 2-D A and B"));
                }
                let (ar, ac) = (a.shape[0], a.shape[1]);
                let (m, kk) = if trans_a { (ac, ar) } else { (ar, ac) };
                let (kb, n) = if packed {
                    // Packed at load already transposed to N rows of K.
                    (bshape[1], bshape[0])
                } else if trans_b {
                    (bshape[1], bshape[0])
                } else {
                    (bshape[0], bshape[1])
                };
                if kb != kk {
                    return Err(Error::shape(format!(
                        "QGemm inner dims differ: {:?} and {bshape:?}",
                        a.shape
                    )));
                }
                let (sam, sak) = if trans_a { (1, ac) } else { (ac, 1) };
                let (sbk, sbn) = if trans_b {
                    (1, bshape[1])
                } else {
                    (bshape[1], 1)
                };
                (m, kk, n, vec![0], vec![0], sam, sak, sbk, sbn)
            }
            _ => {
                let bs = if packed {
                    vec![bshape[1], bshape[0]]
                } else {
                    bshape.clone()
                };
                let (m, kk, n, ao, bo) = matmul_plan(&a.shape, &bs)?;
                (m, kk, n, ao, bo, kk, 1, n, 1)
            }
        };
        let batch = ao.len();
        let total = batch * m * n;
        let y = r.alloc(odt, oshape.clone())?;
        if y.len() != total {
            return Err(Error::shape(format!(
                "integer matmul output {oshape:?} differs from {total} values"
            )));
        }
        if total == 0 {
            return Ok(vec![Out::Dev(y)]);
        }
        let bz = per_col(
            &k::zero_points(host(ins, kind.b_zp()), bdt, "b_zero_point")?,
            n,
            "b_zero_point",
        )?;
        let (mut lo, mut hi, mut yz) = (0, 0, 0);
        let mut mult = vec![0f32; n];
        let mut bias: Option<Vec<f32>> = None;
        let mut c_strides = (0usize, 0usize);
        let mut c_buf = None;
        let epi = match kind {
            Kind::Integer => Epi::Int,
            Kind::QLinear => {
                let sa = k::scalar_scale(host_req(ins, 1, "a_scale")?, "a_scale")?;
                let sb = per_col(
                    &k::scales(host_req(ins, 4, "b_scale")?, "b_scale")?,
                    n,
                    "b_scale",
                )?;
                let ys = k::scalar_scale(host_req(ins, 6, "y_scale")?, "y_scale")?;
                yz = k::scalar_zp(host(ins, 7), odt, "y_zero_point")?;
                (lo, hi) =
                    range8(odt).ok_or_else(|| Error::unsupported_dtype("QLinearMatMul output"))?;
                mult = sb.iter().map(|&s| sa * s / ys).collect();
                Epi::Requant
            }
            Kind::Gemm { alpha, .. } => {
                let sa = k::scalar_scale(host_req(ins, 1, "a_scale")?, "a_scale")?;
                let sb = per_col(
                    &k::scales(host_req(ins, 4, "b_scale")?, "b_scale")?,
                    n,
                    "b_scale",
                )?;
                let ys = host(ins, 7)
                    .map(|t| k::scalar_scale(t, "y_scale"))
                    .transpose()?;
                mult = sb
                    .iter()
                    .map(|&s| {
                        let v = alpha * sa * s;
                        match ys {
                            Some(y) => v / y,
                            None => v,
                        }
                    })
                    .collect();
                if let Some(In::Dev(c)) = ins.get(6) {
                    let cs = &c.shape;
                    let l = c.len();
                    c_strides = match (cs.len(), l) {
                        (_, 1) => (0, 0),
                        (1, l) if l == n => (0, 1),
                        (2, l) if cs[0] == 1 && l == n => (0, 1),
                        (2, l) if cs[1] == 1 && l == m => (1, 0),
                        (2, l) if l == m * n && cs[0] == m => (n, 1),
                        _ => {
                            return Err(Error::shape(format!(
                                "QGemm C of shape {cs:?} does not broadcast to [{m}, {n}]"
                            )))
                        }
                    };
                    if c.dtype != DType::I32 {
                        return Err(Error::dtype("QGemm C must be int32"));
                    }
                    c_buf = Some(*c);
                }
                match host(ins, 8) {
                    Some(z) => {
                        if ys.is_none() {
                            return Err(Error::input("QGemm y_zero_point needs y_scale"));
                        }
                        yz = k::scalar_zp(Some(z), z.dtype(), "y_zero_point")?;
                        (lo, hi) = range8(z.dtype())
                            .ok_or_else(|| Error::unsupported_dtype("QGemm output"))?;
                        Epi::Requant
                    }
                    None => Epi::Float,
                }
            }
            Kind::ToFloat => {
                let sa = k::scalar_scale(host_req(ins, 2, "a_scale")?, "a_scale")?;
                let sb = per_col(
                    &k::scales(host_req(ins, 3, "b_scale")?, "b_scale")?,
                    n,
                    "b_scale",
                )?;
                mult = sb.iter().map(|&s| sa * s).collect();
                if let Some(b) = host(ins, 6) {
                    let v = k::scales(b, "bias")?;
                    if v.len() != n {
                        return Err(Error::shape(format!(
                            "bias has {} values for {n} columns",
                            v.len()
                        )));
                    }
                    bias = Some(v);
                }
                Epi::Float
            }
            Kind::DynQ => {
                // The CPU's multiplier is a_scale · b_scale[n], a_scale made on the device:
                // the kernel forms the product in the same order.
                mult = per_col(
                    &k::scales(host_req(ins, 2, "b_scale")?, "b_scale")?,
                    n,
                    "b_scale",
                )?;
                if let Some(b) = host(ins, 4) {
                    let v = k::scales(b, "bias")?;
                    if v.len() != n {
                        return Err(Error::shape(format!(
                            "bias has {} values for {n} columns",
                            v.len()
                        )));
                    }
                    bias = Some(v);
                }
                Epi::Float
            }
        };
        if epi == Epi::Float && odt != DType::F32 {
            return Err(Error::unsupported_dtype(
                "integer matmul float output other than f32",
            ));
        }
        let mut az = match ins.get(kind.a_zp()) {
            Some(In::Dev(t)) => Some(*t),
            _ => None,
        };
        // DynamicQuantizeMatMul: A's range, scale and zero point, then A in uint8.
        let dynq = if kind == Kind::DynQ {
            if a.dtype != DType::F32 {
                return Err(Error::dtype("DynamicQuantizeMatMul A must be float32"));
            }
            let s = r.alloc(DType::F32, vec![])?;
            let z = r.alloc(DType::U8, vec![])?;
            let qa = r.alloc(DType::U8, a.shape.clone())?;
            let len = a.len() as u32;
            r.dispatch(
                super::quant::DQL_RANGE,
                &[a.buffer(), s.buffer(), z.buffer()],
                &[len],
                [1, 1, 1],
            )?;
            let grid = r.grid(a.len());
            r.dispatch(
                &format!("{LINEAR}{DQ_QUANT}"),
                &[a.buffer(), s.buffer(), z.buffer(), qa.buffer()],
                &[len],
                grid,
            )?;
            Some((s, z, qa))
        } else {
            None
        };
        let a = match &dynq {
            Some((_, z, qa)) => {
                az = Some(z);
                qa
            }
            None => a,
        };
        let b = match &self.packed {
            Some(p) => BSrc::Packed(p),
            None => BSrc::Raw {
                t: dev(ins, kind.b(), "B")?,
                sbk,
                sbn,
            },
        };
        let c = c_buf.map(|t| (t, c_strides.0, c_strides.1));
        qtile::encode(
            r,
            &Gemm {
                a,
                a_signed: a.dtype == DType::I8,
                az,
                amode: qtile::AMode::Strided,
                sam,
                sak,
                conv: None,
                b,
                b_signed: bdt == DType::I8,
                m,
                n,
                k: kk,
                groups: 1,
                ao,
                bo,
                bz,
                mult,
                ibias: vec![0; n],
                fbias: bias,
                epi,
                lo,
                hi,
                yz,
                c,
                y: &y,
                ysb: m * n,
                ysr: n,
                ysc: 1,
                dot4: self.dot4,
                a_scale: dynq.as_ref().map(|(s, _, _)| s),
            },
        )?;
        Ok(vec![Out::Dev(y)])
    }
}

/// B transposed to N rows of K (from K×N, or N×K already when `trans`).
fn pack_b(b: &Tensor, trans: bool) -> Result<PackedQ> {
    let [r, c] = *b.shape() else {
        return Err(Error::shape("packed B must be 2-D"));
    };
    let bt = if trans {
        b.clone()
    } else {
        crate::cpu::layout::transpose(b, Some(&[1, 0]))?
    };
    let (n, k) = if trans { (r, c) } else { (c, r) };
    PackedQ::new(&q8_values(&bt)?, n, k, b.dtype() == DType::I8)
}

pub(super) fn lower(f: &NodeFacts, cx: &super::GpuContext) -> Lowered {
    let any = f.node.op.as_any();
    let kind = if any.is::<QLinearMatMul>() {
        Kind::QLinear
    } else if any.is::<MatMulInteger>() {
        Kind::Integer
    } else if let Some(g) = any.downcast_ref::<QGemm>() {
        Kind::Gemm {
            alpha: g.attrs.alpha,
            trans_a: g.attrs.trans_a,
            trans_b: g.attrs.trans_b,
        }
    } else if any.is::<MatMulIntegerToFloat>() {
        Kind::ToFloat
    } else if any.is::<DynamicQuantizeMatMul>() {
        Kind::DynQ
    } else {
        return Lowered::NotMine;
    };
    let name = &f.node.op_type;
    let a_ok = if kind == Kind::DynQ {
        f.in_dtype(0) == Some(DType::F32)
    } else {
        is8(f.in_dtype(0))
    };
    if !a_ok || !is8(f.in_dtype(kind.b())) {
        return Lowered::Cpu(format!("{name} of these types stays on the CPU"));
    }
    let scalar_a = match kind {
        Kind::QLinear => one_value(f, 1) && one_value(f, 2),
        Kind::ToFloat => one_value(f, 2) && one_value(f, 4),
        Kind::DynQ => true,
        _ => one_value(f, 2),
    };
    if !scalar_a {
        return Lowered::Cpu(format!("{name} with per-row A parameters stays on the CPU"));
    }
    let trans = matches!(kind, Kind::Gemm { trans_b: true, .. });
    let packed = match f.consts.get(kind.b()).copied().flatten() {
        Some(b) if b.rank() == 2 => match pack_b(b, trans) {
            Ok(p) => Some(p),
            Err(e) => return Lowered::Cpu(format!("{name} B: {e}")),
        },
        _ => None,
    };
    let mut host: Vec<usize> = match kind {
        Kind::QLinear => vec![1, 4, 5, 6, 7],
        Kind::Integer => vec![3],
        Kind::Gemm { .. } => vec![1, 4, 5, 7, 8],
        Kind::ToFloat => vec![2, 3, 5, 6],
        Kind::DynQ => vec![2, 3, 4],
    };
    if packed.is_some() {
        host.push(kind.b());
    }
    Lowered::Kernel(Box::new(QMatKernel {
        kind,
        packed,
        host,
        dot4: qtile::use_dot4(cx),
    }))
}
