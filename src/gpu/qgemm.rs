//! Integer matmuls on the GPU: QLinearMatMul, MatMulInteger, QGemm (com.microsoft) and
//! MatMulIntegerToFloat. One thread per output value accumulates (a − a_zp)(b − b_zp[n])
//! in i32 (exact, so equal to the CPU's accumulators); the output is the accumulator
//! (MatMulInteger), requantized to 8 bits, or scaled to f32. A constant 2-D B is packed
//! at load four bytes per u32, one row of K per output column (B transposed), and
//! uploaded once; any other B is read one value per word through strides, with numpy
//! batch broadcasting. A's zero point is read on the device (DynamicQuantizeLinear makes
//! it at run time); scales, B's zero points and bias are read on the host and folded into
//! per-column constants exactly as `cpu::quant` forms them.

use super::qconv::{wget, PackedW};
use super::quant::{bits, dev, host, host_req, is8, one_value, out0, range8, QHELPERS};
use super::record::{Recorder, LINEAR};
use super::{In, Kernel, Lowered, NodeFacts, Out};
use crate::cpu::quant as k;
use crate::error::{Error, Result};
use crate::graph::ops::quant::{MatMulInteger, MatMulIntegerToFloat, QGemm, QLinearMatMul};
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
}

impl Kind {
    fn b(self) -> usize {
        match self {
            Kind::QLinear | Kind::Gemm { .. } => 3,
            Kind::Integer | Kind::ToFloat => 1,
        }
    }
    fn a_zp(self) -> usize {
        match self {
            Kind::ToFloat => 4,
            _ => 2,
        }
    }
    fn b_zp(self) -> usize {
        match self {
            Kind::QLinear | Kind::Gemm { .. } | Kind::ToFloat => 5,
            Kind::Integer => 3,
        }
    }
}

#[derive(Debug)]
struct QMatKernel {
    kind: Kind,
    /// Constant 2-D B, packed as N rows of K.
    packed: Option<PackedW>,
    host: Vec<usize>,
}

/// Output of the accumulator.
#[derive(Clone, Copy, PartialEq)]
enum Epi {
    Int,
    Requant,
    Float,
}

const HEAD: usize = 20;

fn source(epi: Epi, packed: bool, signed: bool, az: bool, c: bool) -> String {
    let mut binds = String::new();
    let mut next = 3;
    let ybind = if epi == Epi::Float { "f32" } else { "u32" };
    if az {
        binds += &format!("@group(0) @binding({next}) var<storage, read> AZ: array<u32>;\n");
        next += 1;
    }
    if c {
        binds += &format!("@group(0) @binding({next}) var<storage, read> C: array<u32>;\n");
        next += 1;
    }
    binds += &format!("@group(0) @binding({next}) var<storage, read> P: array<u32>;\n");
    let az_val = if az { "bitcast<i32>(AZ[0])" } else { "0" };
    let c_add = if c {
        "acc += bitcast<i32>(C[m * P[15] + col * P[16]]);"
    } else {
        ""
    };
    let out = match epi {
        Epi::Int => "Y[i] = bitcast<u32>(acc);",
        Epi::Requant => {
            "let q = clamp(round_i(f32(acc) * bitcast<f32>(P[20u + N + col])) + bitcast<i32>(P[12]),
                  bitcast<i32>(P[10]), bitcast<i32>(P[11]));
    Y[i] = bitcast<u32>(q);"
        }
        Epi::Float => {
            "let v = f32(acc) * bitcast<f32>(P[20u + N + col]);
    Y[i] = select(v, v + bitcast<f32>(P[20u + 2u * N + col]), P[17] != 0u);"
        }
    };
    let brow = if packed {
        "col * P[9]"
    } else {
        "boff + col * P[8]"
    };
    let bk = if packed { "kk" } else { "kk * P[7]" };
    format!(
        "{LINEAR}{QHELPERS}
@group(0) @binding(0) var<storage, read> A: array<u32>;
@group(0) @binding(1) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read_write> Y: array<{ybind}>;
{binds}
{wget}
// P: total M N K batch | sam sak sbk sbn | row words | lo hi yz | - | - | csm csn | bias? |
//    - - | bz[N] mult[N] bias[N] a_off[batch] b_off[batch]
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{
    let i = linear_id(gid, nwg);
    if (i >= P[0]) {{ return; }}
    let M = P[1];
    let N = P[2];
    let K = P[3];
    let col = i % N;
    let m = (i / N) % M;
    let b = i / (M * N);
    let aoff = P[20u + 3u * N + b];
    let boff = P[20u + 3u * N + P[4] + b];
    let az = {az_val};
    let bz = bitcast<i32>(P[20u + col]);
    let arow = aoff + m * P[5];
    let row = {brow};
    var acc = 0;
    for (var kk = 0u; kk < K; kk++) {{
        acc += (bitcast<i32>(A[arow + kk * P[6]]) - az) * (wget(row, {bk}) - bz);
    }}
    {c_add}
    {out}
}}
",
        wget = wget(packed, signed),
    )
}

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
        let (w, bshape, bdt, packed) = match &self.packed {
            Some(p) => (p.upload(r)?, p.shape.clone(), p.dtype, true),
            None => {
                let b = dev(ins, kind.b(), "B")?;
                (b.clone(), b.shape.clone(), b.dtype, false)
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
        };
        if epi == Epi::Float && odt != DType::F32 {
            return Err(Error::unsupported_dtype(
                "integer matmul float output other than f32",
            ));
        }
        let mut p = vec![0u32; HEAD];
        let head = [total, m, n, kk, batch, sam, sak, sbk, sbn, kk.div_ceil(4)];
        for (d, &v) in p.iter_mut().zip(head.iter()) {
            *d = v as u32;
        }
        p[10] = lo as u32;
        p[11] = hi as u32;
        p[12] = yz as u32;
        p[15] = c_strides.0 as u32;
        p[16] = c_strides.1 as u32;
        p[17] = bias.is_some() as u32;
        p.extend(bz.iter().map(|&z| z as u32));
        p.extend(mult.iter().map(|&v| bits(v)));
        match &bias {
            Some(b) => p.extend(b.iter().map(|&v| bits(v))),
            None => p.extend(std::iter::repeat_n(0u32, n)),
        }
        p.extend(ao.iter().map(|&v| v as u32));
        p.extend(bo.iter().map(|&v| v as u32));
        let az = match ins.get(kind.a_zp()) {
            Some(In::Dev(t)) => Some(*t),
            _ => None,
        };
        let src = source(epi, packed, bdt == DType::I8, az.is_some(), c_buf.is_some());
        let mut bufs = vec![a.buffer(), w.buffer(), y.buffer()];
        if let Some(z) = az {
            bufs.push(z.buffer());
        }
        if let Some(c) = c_buf {
            bufs.push(c.buffer());
        }
        let grid = r.grid(total);
        r.dispatch(&src, &bufs, &p, grid)?;
        Ok(vec![Out::Dev(y)])
    }
}

/// B transposed to N rows of K (from K×N, or N×K already when `trans`).
fn pack_b(b: &Tensor, trans: bool) -> Result<PackedW> {
    let [r, c] = *b.shape() else {
        return Err(Error::shape("packed B must be 2-D"));
    };
    let bt = if trans {
        b.clone()
    } else {
        crate::cpu::layout::transpose(b, Some(&[1, 0]))?
    };
    let (n, k) = if trans { (r, c) } else { (c, r) };
    let mut p = PackedW::new(&bt, n)?;
    p.shape = vec![n, k];
    Ok(p)
}

pub(super) fn lower(f: &NodeFacts, _cx: &super::GpuContext) -> Lowered {
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
    } else {
        return Lowered::NotMine;
    };
    let name = &f.node.op_type;
    if !is8(f.in_dtype(0)) || !is8(f.in_dtype(kind.b())) {
        return Lowered::Cpu(format!("{name} of these types stays on the CPU"));
    }
    let scalar_a = match kind {
        Kind::QLinear => one_value(f, 1) && one_value(f, 2),
        Kind::ToFloat => one_value(f, 2) && one_value(f, 4),
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
    };
    if packed.is_some() {
        host.push(kind.b());
    }
    Lowered::Kernel(Box::new(QMatKernel { kind, packed, host }))
}
