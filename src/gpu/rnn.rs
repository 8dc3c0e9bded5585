//! LSTM, GRU and RNN on the GPU.
//!
//! Three steps, as on the CPU: the input projection of every timestep at once (one thread
//! per (direction, row of X, gate unit), biases folded in exactly as the CPU folds them),
//! the initial states copied (or zeroed) into the Y_h / Y_c outputs, and then the
//! recurrence in one dispatch: one workgroup per (batch row, direction) runs the whole
//! time loop, its threads striding over the hidden units, with the hidden state in
//! workgroup memory and barriers between the phases of a step. Batch rows never
//! interact, so no step needs the whole GPU to synchronize. Y_h and Y_c hold the running
//! state; Y gets each step's hidden state, and zeros past a row's sequence length.

use super::elementwise::{activation_helpers, lit};
use super::record::{Recorder, LINEAR};
use super::{GpuTensor, In, Kernel, Lowered, NodeFacts, Out};
use crate::cpu::rnn::{Act, CellKind, Direction, RnnParams};
use crate::error::{Error, Result};
use crate::graph::ops::rnn::{Gru, Lstm, Rnn};
use crate::tensor::{DType, Tensor};

/// Largest hidden size the recurrent kernel holds in workgroup memory.
const MAX_HIDDEN: usize = 1024;

/// The WGSL expression of an RNN activation applied to `x`.
fn act_wgsl(a: Act, x: &str) -> String {
    match a {
        Act::Relu => format!("max({x}, 0.0)"),
        Act::Tanh => format!("tanh_({x})"),
        Act::Sigmoid => format!("sigmoid_({x})"),
        Act::Affine { alpha, beta } => format!("({} * {x} + {})", lit(alpha), lit(beta)),
        Act::LeakyRelu { alpha } => format!("select({x}, {} * {x}, {x} < 0.0)", lit(alpha)),
        Act::ThresholdedRelu { alpha } => format!("select(0.0, {x}, {x} > {})", lit(alpha)),
        Act::ScaledTanh { alpha, beta } => {
            format!("({} * tanh_({} * {x}))", lit(alpha), lit(beta))
        }
        Act::HardSigmoid { alpha, beta } => {
            format!("clamp({} * {x} + {}, 0.0, 1.0)", lit(alpha), lit(beta))
        }
        Act::Elu { alpha } => format!("select({x}, {} * (exp({x}) - 1.0), {x} < 0.0)", lit(alpha)),
        Act::Softsign => format!("({x} / (1.0 + abs({x})))"),
        Act::Softplus => format!("softplus_({x})"),
    }
}

/// `fn act{j}(d, x)` for each activation slot j, choosing by direction d.
fn act_fns(acts: &[[Act; 3]], per: usize) -> String {
    let mut s = String::new();
    for j in 0..per {
        s.push_str(&format!("fn act{j}(d: u32, x: f32) -> f32 {{\n"));
        for (d, a) in acts.iter().enumerate().skip(1) {
            s.push_str(&format!(
                "    if (d == {d}u) {{ return {}; }}\n",
                act_wgsl(a[j], "x")
            ));
        }
        let a0 = acts.first().map_or(Act::Tanh, |a| a[j]);
        s.push_str(&format!("    return {};\n}}\n", act_wgsl(a0, "x")));
    }
    s
}

const PROJ: &str = "
@group(0) @binding(0) var<storage, read> X: array<f32>;
@group(0) @binding(1) var<storage, read> W: array<f32>;
@group(0) @binding(2) var<storage, read> B: array<f32>;
@group(0) @binding(3) var<storage, read_write> XW: array<f32>;
@group(0) @binding(4) var<storage, read> P: array<u32>;
// P: count rows gh input hidden lbr
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = linear_id(gid, nwg);
    if (t >= P[0]) { return; }
    let gh = P[2];
    let input = P[3];
    let gu = t % gh;
    let row = (t / gh) % P[1];
    let d = t / (gh * P[1]);
    var acc = B[d * 2u * gh + gu];
    if (P[5] == 0u || gu < 2u * P[4]) { acc += B[d * 2u * gh + gh + gu]; }
    let xb = row * input;
    let wb = (d * gh + gu) * input;
    for (var i = 0u; i < input; i++) { acc += X[xb + i] * W[wb + i]; }
    XW[t] = acc;
}
";

const FILL_ZERO: &str = "
@group(0) @binding(0) var<storage, read_write> Y: array<f32>;
@group(0) @binding(1) var<storage, read> P: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = linear_id(gid, nwg);
    if (t >= P[0]) { return; }
    Y[t] = 0.0;
}
";

/// Shared helpers of the recurrent kernels (P: seq batch hidden nd batch_first has_clip
/// clip rev_mask gh rows lbr input_forget).
const RECUR_COMMON: &str = "
fn clp(x: f32) -> f32 {
    if (P[5] != 0u) {
        let c = bitcast<f32>(P[6]);
        return clamp(x, -c, c);
    }
    return x;
}
fn state_off(d: u32, b: u32) -> u32 {
    if (P[4] != 0u) { return (b * P[3] + d) * P[2]; }
    return (d * P[1] + b) * P[2];
}
fn y_off(t: u32, d: u32, b: u32) -> u32 {
    if (P[4] != 0u) { return ((b * P[0] + t) * P[3] + d) * P[2]; }
    return ((t * P[3] + d) * P[1] + b) * P[2];
}
fn x_row(t: u32, b: u32) -> u32 {
    if (P[4] != 0u) { return b * P[0] + t; }
    return t * P[1] + b;
}
";

/// LSTM: gates i, o, f, c; peepholes i, o, f.
const LSTM: &str = "
@group(0) @binding(0) var<storage, read> XW: array<f32>;
@group(0) @binding(1) var<storage, read> R: array<f32>;
@group(0) @binding(2) var<storage, read> PEEP: array<f32>;
@group(0) @binding(3) var<storage, read> LENS: array<i32>;
@group(0) @binding(4) var<storage, read_write> Y: array<f32>;
@group(0) @binding(5) var<storage, read_write> YH: array<f32>;
@group(0) @binding(6) var<storage, read_write> YC: array<f32>;
@group(0) @binding(7) var<storage, read> P: array<u32>;
var<workgroup> HS: array<f32, 1024>;
var<workgroup> HN: array<f32, 1024>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let b = wid.x;
    let d = wid.y;
    let seq = P[0];
    let H = P[2];
    let gh = P[8];
    let len = u32(LENS[b]);
    let rev = ((P[7] >> d) & 1u) != 0u;
    let so = state_off(d, b);
    let rb = d * gh * H;
    let pb = d * 3u * H;
    for (var u = lid.x; u < H; u += 256u) { HS[u] = YH[so + u]; }
    workgroupBarrier();
    for (var s = 0u; s < seq; s++) {
        let live = s < len;
        var t = s;
        if (live && rev) { t = len - 1u - s; }
        if (live) {
            let xb = (d * P[9] + x_row(t, b)) * gh;
            for (var u = lid.x; u < H; u += 256u) {
                var gi = XW[xb + u];
                var go = XW[xb + H + u];
                var gf = XW[xb + 2u * H + u];
                var gc = XW[xb + 3u * H + u];
                for (var k = 0u; k < H; k++) {
                    let hk = HS[k];
                    gi += hk * R[rb + u * H + k];
                    go += hk * R[rb + (H + u) * H + k];
                    gf += hk * R[rb + (2u * H + u) * H + k];
                    gc += hk * R[rb + (3u * H + u) * H + k];
                }
                let c = YC[so + u];
                gi = act0(d, clp(gi + PEEP[pb + u] * c));
                if (P[11] != 0u) {
                    gf = 1.0 - gi;
                } else {
                    gf = act0(d, clp(gf + PEEP[pb + 2u * H + u] * c));
                }
                gc = act1(d, clp(gc));
                let cn = gf * c + gi * gc;
                YC[so + u] = cn;
                go = act0(d, clp(go + PEEP[pb + H + u] * cn));
                HN[u] = go * act2(d, cn);
            }
        }
        workgroupBarrier();
        for (var u = lid.x; u < H; u += 256u) {
            if (live) {
                HS[u] = HN[u];
                Y[y_off(t, d, b) + u] = HN[u];
            } else {
                Y[y_off(s, d, b) + u] = 0.0;
            }
        }
        workgroupBarrier();
    }
    for (var u = lid.x; u < H; u += 256u) {
        YH[so + u] = select(HS[u], 0.0, len == 0u);
        if (len == 0u) { YC[so + u] = 0.0; }
    }
}
";

/// GRU: gates z, r, h.
const GRU: &str = "
@group(0) @binding(0) var<storage, read> XW: array<f32>;
@group(0) @binding(1) var<storage, read> R: array<f32>;
@group(0) @binding(2) var<storage, read> B: array<f32>;
@group(0) @binding(3) var<storage, read> LENS: array<i32>;
@group(0) @binding(4) var<storage, read_write> Y: array<f32>;
@group(0) @binding(5) var<storage, read_write> YH: array<f32>;
@group(0) @binding(6) var<storage, read> P: array<u32>;
var<workgroup> HS: array<f32, 1024>;
var<workgroup> ZS: array<f32, 1024>;
var<workgroup> RG: array<f32, 1024>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let b = wid.x;
    let d = wid.y;
    let seq = P[0];
    let H = P[2];
    let gh = P[8];
    let len = u32(LENS[b]);
    let rev = ((P[7] >> d) & 1u) != 0u;
    let so = state_off(d, b);
    let rb = d * gh * H;
    for (var u = lid.x; u < H; u += 256u) { HS[u] = YH[so + u]; }
    workgroupBarrier();
    for (var s = 0u; s < seq; s++) {
        let live = s < len;
        var t = s;
        if (live && rev) { t = len - 1u - s; }
        let xb = (d * P[9] + x_row(t, b)) * gh;
        if (live) {
            for (var u = lid.x; u < H; u += 256u) {
                var z = XW[xb + u];
                var r = XW[xb + H + u];
                for (var k = 0u; k < H; k++) {
                    let hk = HS[k];
                    z += hk * R[rb + u * H + k];
                    r += hk * R[rb + (H + u) * H + k];
                }
                ZS[u] = act0(d, clp(z));
                r = act0(d, clp(r));
                if (P[10] != 0u) { RG[u] = r; } else { RG[u] = r * HS[u]; }
            }
        }
        workgroupBarrier();
        if (live) {
            for (var u = lid.x; u < H; u += 256u) {
                var hx = XW[xb + 2u * H + u];
                if (P[10] != 0u) {
                    var acc = B[d * 2u * gh + gh + 2u * H + u];
                    for (var k = 0u; k < H; k++) { acc += HS[k] * R[rb + (2u * H + u) * H + k]; }
                    hx += RG[u] * acc;
                } else {
                    for (var k = 0u; k < H; k++) { hx += RG[k] * R[rb + (2u * H + u) * H + k]; }
                }
                hx = act1(d, clp(hx));
                let z = ZS[u];
                ZS[u] = (1.0 - z) * hx + z * HS[u];
            }
        }
        workgroupBarrier();
        for (var u = lid.x; u < H; u += 256u) {
            if (live) {
                HS[u] = ZS[u];
                Y[y_off(t, d, b) + u] = ZS[u];
            } else {
                Y[y_off(s, d, b) + u] = 0.0;
            }
        }
        workgroupBarrier();
    }
    for (var u = lid.x; u < H; u += 256u) {
        YH[so + u] = select(HS[u], 0.0, len == 0u);
    }
}
";

/// RNN: one gate.
const RNN: &str = "
@group(0) @binding(0) var<storage, read> XW: array<f32>;
@group(0) @binding(1) var<storage, read> R: array<f32>;
@group(0) @binding(2) var<storage, read> LENS: array<i32>;
@group(0) @binding(3) var<storage, read_write> Y: array<f32>;
@group(0) @binding(4) var<storage, read_write> YH: array<f32>;
@group(0) @binding(5) var<storage, read> P: array<u32>;
var<workgroup> HS: array<f32, 1024>;
var<workgroup> HN: array<f32, 1024>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let b = wid.x;
    let d = wid.y;
    let seq = P[0];
    let H = P[2];
    let gh = P[8];
    let len = u32(LENS[b]);
    let rev = ((P[7] >> d) & 1u) != 0u;
    let so = state_off(d, b);
    let rb = d * gh * H;
    for (var u = lid.x; u < H; u += 256u) { HS[u] = YH[so + u]; }
    workgroupBarrier();
    for (var s = 0u; s < seq; s++) {
        let live = s < len;
        var t = s;
        if (live && rev) { t = len - 1u - s; }
        if (live) {
            let xb = (d * P[9] + x_row(t, b)) * gh;
            for (var u = lid.x; u < H; u += 256u) {
                var g = XW[xb + u];
                for (var k = 0u; k < H; k++) { g += HS[k] * R[rb + u * H + k]; }
                HN[u] = act0(d, clp(g));
            }
        }
        workgroupBarrier();
        for (var u = lid.x; u < H; u += 256u) {
            if (live) {
                HS[u] = HN[u];
                Y[y_off(t, d, b) + u] = HN[u];
            } else {
                Y[y_off(s, d, b) + u] = 0.0;
            }
        }
        workgroupBarrier();
    }
    for (var u = lid.x; u < H; u += 256u) {
        YH[so + u] = select(HS[u], 0.0, len == 0u);
    }
}
";

/// Per-batch sequence lengths, checked as the CPU checks them.
fn seq_lengths(t: Option<&Tensor>, batch: usize, seq: usize) -> Result<Vec<i32>> {
    let Some(t) = t else {
        return vec![seq; batch]
            .into_iter()
            .map(|s| i32::try_from(s).map_err(|_| Error::runtime("sequence too long")))
            .collect();
    };
    let v = t.to_i64_vec()?;
    if v.len() != batch {
        return Err(Error::shape(format!(
            "sequence_lens has {} values, batch size is {batch}",
            v.len()
        )));
    }
    v.iter()
        .map(|&l| match usize::try_from(l) {
            Ok(u) if u <= seq => Ok(l as i32),
            _ => Err(Error::runtime(format!(
                "sequence_lens value {l} is out of range [0, {seq}]"
            ))),
        })
        .collect()
}

/// Bit d set when direction slot d runs backwards in time.
fn rev_mask(dir: Direction) -> u32 {
    match dir {
        Direction::Forward => 0,
        Direction::Reverse => 1,
        Direction::Bidirectional => 2,
    }
}

/// The recurrent kernel's source for these parameters.
fn recur_source(p: &RnnParams) -> String {
    let per = p.kind.n_activations();
    let body = match p.kind {
        CellKind::Lstm => LSTM,
        CellKind::Gru { .. } => GRU,
        CellKind::Rnn => RNN,
    };
    format!(
        "{}{body}{RECUR_COMMON}{}",
        activation_helpers(),
        act_fns(&p.activations, per)
    )
}

#[derive(Debug)]
struct RnnKernel {
    p: RnnParams,
}

fn check_shape(t: &GpuTensor, want: &[usize], what: &str) -> Result<()> {
    if t.shape != want {
        return Err(Error::shape(format!(
            "{what} has shape {:?}, expected {want:?}",
            t.shape
        )));
    }
    Ok(())
}

impl Kernel for RnnKernel {
    fn host_inputs(&self) -> &[usize] {
        &[4]
    }
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let p = &self.p;
        let name = p.kind.name();
        let dev = |i: usize| -> Result<Option<&GpuTensor>> {
            match ins.get(i) {
                Some(In::Dev(t)) => Ok(Some(*t)),
                Some(In::Absent) | None => Ok(None),
                Some(In::Host(_)) => Err(Error::runtime(format!("{name}: input {i} on the host"))),
            }
        };
        let need = |i: usize, what: &str| -> Result<&GpuTensor> {
            dev(i)?.ok_or_else(|| Error::input(format!("{name}: missing {what}")))
        };
        let x = need(0, "X")?;
        let w = need(1, "W")?;
        let rw = need(2, "R")?;
        if x.shape.len() != 3 || w.shape.len() != 3 || rw.shape.len() != 3 {
            return Err(Error::shape(format!(
                "{name}: X, W and R must be 3-D, got {:?}, {:?} and {:?}",
                x.shape, w.shape, rw.shape
            )));
        }
        let is_lstm = p.kind == CellKind::Lstm;
        let nd = p.direction.count();
        let g = p.kind.gates();
        let hidden = p.hidden_size.unwrap_or(rw.shape[2]);
        if hidden > MAX_HIDDEN {
            return Err(Error::unsupported_op(format!(
                "{name}: hidden size {hidden} is over the GPU kernel's {MAX_HIDDEN}"
            )));
        }
        let gh = g * hidden;
        let (seq, batch) = if p.batch_first {
            (x.shape[1], x.shape[0])
        } else {
            (x.shape[0], x.shape[1])
        };
        let input = x.shape[2];
        check_shape(w, &[nd, gh, input], &format!("{name} W"))?;
        check_shape(rw, &[nd, gh, hidden], &format!("{name} R"))?;
        let state_shape: Vec<usize> = if p.batch_first {
            vec![batch, nd, hidden]
        } else {
            vec![nd, batch, hidden]
        };
        let b = dev(3)?;
        if let Some(b) = b {
            check_shape(b, &[nd, 2 * gh], &format!("{name} B"))?;
        }
        let h0 = dev(5)?;
        if let Some(h) = h0 {
            check_shape(h, &state_shape, &format!("{name} initial_h"))?;
        }
        let (c0, peep) = if is_lstm {
            (dev(6)?, dev(7)?)
        } else {
            (None, None)
        };
        if let Some(c) = c0 {
            check_shape(c, &state_shape, "LSTM initial_c")?;
        }
        if let Some(pp) = peep {
            check_shape(pp, &[nd, 3 * hidden], "LSTM P")?;
        }
        let lens = seq_lengths(ins.get(4).and_then(|t| t.host()), batch, seq)?;
        let n_out = if is_lstm { 3 } else { 2 };
        if outs.len() < n_out {
            return Err(Error::runtime(format!("{name}: missing outputs")));
        }
        let y = r.alloc(outs[0].0, outs[0].1.clone())?;
        let yh = r.alloc(outs[1].0, outs[1].1.clone())?;
        let yc = if is_lstm {
            Some(r.alloc(outs[2].0, outs[2].1.clone())?)
        } else {
            None
        };
        for (t, what) in [(&yh, "Y_h"), (&y, "Y")] {
            let want: Vec<usize> = if what == "Y" {
                if p.batch_first {
                    vec![batch, seq, nd, hidden]
                } else {
                    vec![seq, nd, batch, hidden]
                }
            } else {
                state_shape.clone()
            };
            check_shape(t, &want, &format!("{name} {what}"))?;
        }
        // Initial states into Y_h / Y_c, which hold the running state.
        let state_n = nd * batch * hidden;
        let init = |r: &mut Recorder, src: Option<&GpuTensor>, dst: &GpuTensor| -> Result<()> {
            match src {
                Some(s) => r.copy(s, 0, dst, 0, state_n),
                None => {
                    let grid = r.grid(state_n);
                    r.dispatch(
                        &format!("{LINEAR}{FILL_ZERO}"),
                        &[dst.buffer()],
                        &[state_n as u32],
                        grid,
                    )
                }
            }
        };
        init(r, h0, &yh)?;
        if let Some(yc) = &yc {
            init(r, c0, yc)?;
        }
        // Input projection, biases folded in.
        let rows = seq * batch;
        let xw = r.alloc(DType::F32, vec![nd, rows, gh])?;
        let zeros = |r: &mut Recorder, n: usize| -> Result<GpuTensor> {
            r.upload(&Tensor::from_vec(vec![n], vec![0f32; n])?)
        };
        let bz;
        let bias = match b {
            Some(b) => b,
            None => {
                bz = zeros(r, nd * 2 * gh)?;
                &bz
            }
        };
        let lbr = matches!(
            p.kind,
            CellKind::Gru {
                linear_before_reset: true
            }
        );
        let count = nd * rows * gh;
        let grid = r.grid(count);
        r.dispatch(
            &format!("{LINEAR}{PROJ}"),
            &[x.buffer(), w.buffer(), bias.buffer(), xw.buffer()],
            &[
                count as u32,
                rows as u32,
                gh as u32,
                input as u32,
                hidden as u32,
                lbr as u32,
            ],
            grid,
        )?;
        // The recurrence.
        let lens_b = r.upload(&Tensor::from_vec(vec![batch], lens)?)?;
        let params = [
            seq as u32,
            batch as u32,
            hidden as u32,
            nd as u32,
            p.batch_first as u32,
            p.clip.is_some() as u32,
            p.clip.unwrap_or(0.0).to_bits(),
            rev_mask(p.direction),
            gh as u32,
            rows as u32,
            lbr as u32,
            p.input_forget as u32,
        ];
        if batch > 0 && hidden > 0 {
            let src = recur_source(p);
            let pz;
            let bufs: Vec<&wgpu::Buffer> = match p.kind {
                CellKind::Lstm => {
                    let pp = match peep {
                        Some(pp) => pp,
                        None => {
                            pz = zeros(r, nd * 3 * hidden)?;
                            &pz
                        }
                    };
                    let yc = yc
                        .as_ref()
                        .ok_or_else(|| Error::runtime("LSTM: missing Y_c"))?;
                    vec![
                        xw.buffer(),
                        rw.buffer(),
                        pp.buffer(),
                        lens_b.buffer(),
                        y.buffer(),
                        yh.buffer(),
                        yc.buffer(),
                    ]
                }
                CellKind::Gru { .. } => vec![
                    xw.buffer(),
                    rw.buffer(),
                    bias.buffer(),
                    lens_b.buffer(),
                    y.buffer(),
                    yh.buffer(),
                ],
                CellKind::Rnn => vec![
                    xw.buffer(),
                    rw.buffer(),
                    lens_b.buffer(),
                    y.buffer(),
                    yh.buffer(),
                ],
            };
            r.dispatch(&src, &bufs, &params, [batch as u32, nd as u32, 1])?;
        }
        let mut res = vec![Out::Dev(y), Out::Dev(yh)];
        if let Some(yc) = yc {
            res.push(Out::Dev(yc));
        }
        Ok(res)
    }
}

pub(super) fn lower(f: &NodeFacts, _cx: &super::GpuContext) -> Lowered {
    let any = f.node.op.as_any();
    let p = if let Some(o) = any.downcast_ref::<Lstm>() {
        &o.params
    } else if let Some(o) = any.downcast_ref::<Gru>() {
        &o.params
    } else if let Some(o) = any.downcast_ref::<Rnn>() {
        &o.params
    } else {
        return Lowered::NotMine;
    };
    let name = p.kind.name();
    let floats = [0usize, 1, 2, 3, 5, 6, 7]
        .iter()
        .all(|&i| !f.has_input(i) || super::gpu_float(f.in_dtype(i)));
    if !floats {
        return Lowered::Cpu(format!("{name} on non-f32 inputs stays on the CPU"));
    }
    let hidden = p.hidden_size.or_else(|| {
        f.ins
            .get(2)
            .copied()
            .flatten()
            .and_then(|r| r.shape.as_ref())
            .and_then(|s| s.get(2))
            .and_then(|d| d.known())
    });
    if hidden.is_some_and(|h| h > MAX_HIDDEN) {
        return Lowered::Cpu(format!(
            "{name} with hidden size over {MAX_HIDDEN} stays on the CPU"
        ));
    }
    if p.activations.len() != p.direction.count() {
        return Lowered::Cpu(format!("{name}: activations do not match the directions"));
    }
    Lowered::Kernel(Box::new(RnnKernel { p: p.clone() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_lengths_checked() {
        assert_eq!(seq_lengths(None, 3, 4).unwrap(), vec![4, 4, 4]);
        let t = Tensor::from_vec(vec![2], vec![1i32, 3]).unwrap();
        assert_eq!(seq_lengths(Some(&t), 2, 3).unwrap(), vec![1, 3]);
        assert!(seq_lengths(Some(&t), 2, 2).is_err());
        assert!(seq_lengths(Some(&t), 3, 3).is_err());
        let neg = Tensor::from_vec(vec![1], vec![-1i32]).unwrap();
        assert!(seq_lengths(Some(&neg), 1, 3).is_err());
    }

    #[test]
    fn activation_functions_per_direction() {
        let a = [Act::Sigmoid, Act::Tanh, Act::Relu];
        let b = [
            Act::HardSigmoid {
                alpha: 0.5,
                beta: 0.25,
            },
            Act::Softsign,
            Act::Relu,
        ];
        let s = act_fns(&[a, b], 2);
        assert!(s.contains("fn act0(d: u32, x: f32)"));
        assert!(s.contains("fn act1(d: u32, x: f32)"));
        assert!(!s.contains("fn act2"));
        assert!(s.contains("if (d == 1u) { return clamp("));
        assert!(s.contains("return sigmoid_(x);"));
        assert!(s.contains("(x / (1.0 + abs(x)))"));
        assert_eq!(rev_mask(Direction::Bidirectional), 2);
        assert_eq!(rev_mask(Direction::Reverse), 1);
    }
}
