//! CPU kernels for the rnn family (ops in `crate::graph::ops::rnn`): LSTM, GRU and RNN.
//!
//! All three share one driver. Weights are first brought into a prepared form
//! ([`PreparedWeights`]: transposed to `[in, gates*hidden]` so `sgemm` can use them
//! directly, biases pre-summed) which the op caches across calls. A run then does one
//! `sgemm` for the input projection of every timestep at once and, per step, one `sgemm`
//! of the hidden state against the recurrent weights (two for GRU without
//! `linear_before_reset`), followed by a fused elementwise gate update. Per-step work
//! allocates nothing.

use crate::cpu::gemm::sgemm;
use crate::error::{Error, Result};
use crate::tensor::{alloc_vec, numel, DType, Tensor};
use std::borrow::Cow;

/// Which recurrent cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellKind {
    /// Gates i, o, f, c.
    Lstm,
    /// Gates z, r, h.
    Gru { linear_before_reset: bool },
    /// One gate.
    Rnn,
}

impl CellKind {
    /// Number of gates (rows of W per direction, in units of hidden_size).
    pub fn gates(self) -> usize {
        match self {
            CellKind::Lstm => 4,
            CellKind::Gru { .. } => 3,
            CellKind::Rnn => 1,
        }
    }
    /// Number of activation functions per direction.
    pub fn n_activations(self) -> usize {
        match self {
            CellKind::Lstm => 3,
            CellKind::Gru { .. } => 2,
            CellKind::Rnn => 1,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            CellKind::Lstm => "LSTM",
            CellKind::Gru { .. } => "GRU",
            CellKind::Rnn => "RNN",
        }
    }
}

/// Processing direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Reverse,
    Bidirectional,
}

impl Direction {
    pub fn count(self) -> usize {
        match self {
            Direction::Bidirectional => 2,
            _ => 1,
        }
    }
    /// Whether direction slot `d` runs backwards in time.
    fn reversed(self, d: usize) -> bool {
        match self {
            Direction::Forward => false,
            Direction::Reverse => true,
            Direction::Bidirectional => d == 1,
        }
    }
}

/// An activation function of the RNN family (names as in the ONNX spec).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Act {
    Relu,
    Tanh,
    Sigmoid,
    Affine { alpha: f32, beta: f32 },
    LeakyRelu { alpha: f32 },
    ThresholdedRelu { alpha: f32 },
    ScaledTanh { alpha: f32, beta: f32 },
    HardSigmoid { alpha: f32, beta: f32 },
    Elu { alpha: f32 },
    Softsign,
    Softplus,
}

impl Act {
    /// Parses an activation name (case-insensitive), taking alpha/beta from the
    /// iterators for the functions that use them (onnxruntime's rule), else defaults.
    pub fn parse(
        name: &str,
        alphas: &mut impl Iterator<Item = f32>,
        betas: &mut impl Iterator<Item = f32>,
    ) -> Result<Act> {
        let lower = name.to_ascii_lowercase();
        Ok(match lower.as_str() {
            "relu" => Act::Relu,
            "tanh" => Act::Tanh,
            "sigmoid" => Act::Sigmoid,
            "softsign" => Act::Softsign,
            "softplus" => Act::Softplus,
            "affine" => Act::Affine {
                alpha: alphas.next().unwrap_or(1.0),
                beta: betas.next().unwrap_or(0.0),
            },
            "leakyrelu" => Act::LeakyRelu {
                alpha: alphas.next().unwrap_or(0.01),
            },
            "thresholdedrelu" => Act::ThresholdedRelu {
                alpha: alphas.next().unwrap_or(1.0),
            },
            "scaledtanh" => Act::ScaledTanh {
                alpha: alphas.next().unwrap_or(1.0),
                beta: betas.next().unwrap_or(1.0),
            },
            "hardsigmoid" => Act::HardSigmoid {
                alpha: alphas.next().unwrap_or(0.2),
                beta: betas.next().unwrap_or(0.5),
            },
            "elu" => Act::Elu {
                alpha: alphas.next().unwrap_or(1.0),
            },
            _ => {
                return Err(Error::unsupported_op(format!(
                    "RNN activation function '{name}' is not supported"
                )))
            }
        })
    }

    /// Applies the function in place to a slice (the match is outside the loop).
    pub fn apply(self, v: &mut [f32]) {
        match self {
            Act::Relu => v.iter_mut().for_each(|x| *x = x.max(0.0)),
            Act::Tanh => v.iter_mut().for_each(|x| *x = x.tanh()),
            Act::Sigmoid => v.iter_mut().for_each(|x| *x = sigmoid(*x)),
            Act::Affine { alpha, beta } => v.iter_mut().for_each(|x| *x = alpha * *x + beta),
            Act::LeakyRelu { alpha } => v
                .iter_mut()
                .for_each(|x| *x = if *x < 0.0 { alpha * *x } else { *x }),
            Act::ThresholdedRelu { alpha } => v
                .iter_mut()
                .for_each(|x| *x = if *x > alpha { *x } else { 0.0 }),
            Act::ScaledTanh { alpha, beta } => {
                v.iter_mut().for_each(|x| *x = alpha * (beta * *x).tanh())
            }
            Act::HardSigmoid { alpha, beta } => v
                .iter_mut()
                .for_each(|x| *x = (alpha * *x + beta).clamp(0.0, 1.0)),
            Act::Elu { alpha } => v.iter_mut().for_each(|x| {
                *x = if *x < 0.0 {
                    alpha * (x.exp() - 1.0)
                } else {
                    *x
                }
            }),
            Act::Softsign => v.iter_mut().for_each(|x| *x /= 1.0 + x.abs()),
            Act::Softplus => v.iter_mut().for_each(|x| {
                // log(1 + e^x), stable for large x.
                *x = if *x > 20.0 { *x } else { x.exp().ln_1p() }
            }),
        }
    }
}

#[inline]
fn sigmoid(x: f32) -> f32 {
    // 1/(1+e^-x) never produces NaN for finite x: e^-x overflows to inf, giving 0.
    1.0 / (1.0 + (-x).exp())
}

/// Attributes of one RNN-family node, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct RnnParams {
    pub kind: CellKind,
    pub direction: Direction,
    /// `hidden_size` attribute if given (else taken from R).
    pub hidden_size: Option<usize>,
    /// Activations for each direction, `kind.n_activations()` per direction.
    pub activations: Vec<[Act; 3]>,
    /// Clip threshold for gate pre-activations.
    pub clip: Option<f32>,
    /// LSTM only: couple input and forget gates (f = 1 - i).
    pub input_forget: bool,
    /// 0: `[seq, batch, ...]`, 1: `[batch, seq, ...]`.
    pub batch_first: bool,
}

/// Weights of one direction in the layout the kernel wants.
#[derive(Debug, Clone, PartialEq)]
pub struct DirWeights {
    /// W transposed: `[input, gates*hidden]`.
    pub w_t: Vec<f32>,
    /// R transposed: `[hidden, gates*hidden]` (LSTM, RNN) or, for GRU, the z/r part
    /// `[hidden, 2*hidden]` followed by the h part `[hidden, hidden]`.
    pub r_t: Vec<f32>,
    /// Bias added to the input projection, `[gates*hidden]`: Wb + Rb, except the GRU
    /// h gate with `linear_before_reset`, where only Wbh is folded in.
    pub bias: Vec<f32>,
    /// GRU with `linear_before_reset`: Rbh `[hidden]`; empty otherwise.
    pub rbh: Vec<f32>,
    /// LSTM peepholes `[3*hidden]` (i, o, f); empty when absent.
    pub peep: Vec<f32>,
}

/// Prepared weights for every direction.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedWeights {
    pub input_size: usize,
    pub hidden: usize,
    pub dirs: Vec<DirWeights>,
}

/// Tensor values as f32, borrowing when they already are.
fn f32_data<'a>(t: &'a Tensor, what: &str) -> Result<Cow<'a, [f32]>> {
    match t.dtype() {
        DType::F32 => Ok(Cow::Borrowed(t.as_slice::<f32>()?)),
        DType::F64 | DType::F16 | DType::BF16 => Ok(Cow::Owned(t.to_f32_vec()?)),
        other => Err(Error::dtype(format!(
            "{what} must be a float tensor, got {other}"
        ))),
    }
}

fn check_shape(t: &Tensor, want: &[usize], what: &str) -> Result<()> {
    if t.shape() != want {
        return Err(Error::shape(format!(
            "{what} has shape {:?}, expected {want:?}",
            t.shape()
        )));
    }
    Ok(())
}

/// Transposes a row-major `[rows, cols]` block into `[cols, rows]`.
fn transpose_into(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    for r in 0..rows {
        let row = &src[r * cols..(r + 1) * cols];
        for (c, &v) in row.iter().enumerate() {
            dst[c * rows + r] = v;
        }
    }
}

/// Validates W, R, B, P and brings them into the kernel's layout.
pub fn prepare_weights(
    p: &RnnParams,
    w: &Tensor,
    r: &Tensor,
    b: Option<&Tensor>,
    peep: Option<&Tensor>,
) -> Result<PreparedWeights> {
    let name = p.kind.name();
    let nd = p.direction.count();
    let g = p.kind.gates();
    if r.rank() != 3 || w.rank() != 3 {
        return Err(Error::shape(format!(
            "{name}: W and R must be 3-D, got {:?} and {:?}",
            w.shape(),
            r.shape()
        )));
    }
    let hidden = match p.hidden_size {
        Some(h) => h,
        None => r.shape()[2],
    };
    let gh = g
        .checked_mul(hidden)
        .ok_or_else(|| Error::shape(format!("{name}: hidden_size too large")))?;
    let input_size = w.shape()[2];
    check_shape(w, &[nd, gh, input_size], &format!("{name} W"))?;
    check_shape(r, &[nd, gh, hidden], &format!("{name} R"))?;
    // R matched [nd, gh, hidden], so these products fit in memory-sized numbers.
    if let Some(b) = b {
        check_shape(b, &[nd, gh.saturating_mul(2)], &format!("{name} B"))?;
    }
    if let Some(pp) = peep {
        if p.kind != CellKind::Lstm {
            return Err(Error::input(format!("{name} has no peephole input")));
        }
        check_shape(pp, &[nd, hidden.saturating_mul(3)], "LSTM P")?;
    }
    let wd = f32_data(w, "W")?;
    let rd = f32_data(r, "R")?;
    let bd = b.map(|b| f32_data(b, "B")).transpose()?;
    let pd = peep.map(|t| f32_data(t, "P")).transpose()?;
    let lbr = matches!(
        p.kind,
        CellKind::Gru {
            linear_before_reset: true
        }
    );
    let mut dirs = Vec::with_capacity(nd);
    for d in 0..nd {
        let wsrc = &wd[d * gh * input_size..(d + 1) * gh * input_size];
        let mut w_t = alloc_vec::<f32>(gh * input_size)?;
        transpose_into(wsrc, gh, input_size, &mut w_t);
        let rsrc = &rd[d * gh * hidden..(d + 1) * gh * hidden];
        let mut r_t = alloc_vec::<f32>(gh * hidden)?;
        if let CellKind::Gru { .. } = p.kind {
            let (zr, h) = r_t.split_at_mut(2 * hidden * hidden);
            transpose_into(&rsrc[..2 * hidden * hidden], 2 * hidden, hidden, zr);
            transpose_into(&rsrc[2 * hidden * hidden..], hidden, hidden, h);
        } else {
            transpose_into(rsrc, gh, hidden, &mut r_t);
        }
        let mut bias = alloc_vec::<f32>(gh)?;
        let mut rbh = Vec::new();
        if let Some(bd) = &bd {
            let row = &bd[d * 2 * gh..(d + 1) * 2 * gh];
            let (wb, rb) = row.split_at(gh);
            for (k, o) in bias.iter_mut().enumerate() {
                *o = wb[k] + rb[k];
            }
            if lbr {
                // Rbh stays inside the reset-gate product.
                bias[2 * hidden..].copy_from_slice(&wb[2 * hidden..]);
                rbh = rb[2 * hidden..].to_vec();
            }
        } else if lbr {
            rbh = alloc_vec::<f32>(hidden)?;
        }
        let peep = match &pd {
            Some(pd) => pd[d * 3 * hidden..(d + 1) * 3 * hidden].to_vec(),
            None => Vec::new(),
        };
        dirs.push(DirWeights {
            w_t,
            r_t,
            bias,
            rbh,
            peep,
        });
    }
    Ok(PreparedWeights {
        input_size,
        hidden,
        dirs,
    })
}

/// Outputs of a run; `y_c` only for LSTM. Each output is computed only when asked for.
#[derive(Debug)]
pub struct RnnOutputs {
    pub y: Option<Tensor>,
    pub y_h: Option<Tensor>,
    pub y_c: Option<Tensor>,
}

/// Which outputs to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    pub y: bool,
    pub y_h: bool,
    pub y_c: bool,
}

/// Reads sequence_lens into per-batch lengths, each checked against seq_len.
fn seq_lengths(t: Option<&Tensor>, batch: usize, seq: usize) -> Result<Vec<usize>> {
    let Some(t) = t else {
        return Ok(vec![seq; batch]);
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
            Ok(l) if l <= seq => Ok(l),
            _ => Err(Error::runtime(format!(
                "sequence_lens value {l} is out of range [0, {seq}]"
            ))),
        })
        .collect()
}

/// Clips every value to [-c, c].
#[inline]
fn clip_slice(v: &mut [f32], clip: Option<f32>) {
    if let Some(c) = clip {
        v.iter_mut().for_each(|x| *x = x.clamp(-c, c));
    }
}

/// Runs an RNN-family cell over a sequence.
///
/// `x` is `[seq, batch, input]` (or `[batch, seq, input]` with `batch_first`);
/// `h0`/`c0` are `[dirs, batch, hidden]` (or `[batch, dirs, hidden]`).
pub fn run_rnn(
    p: &RnnParams,
    wts: &PreparedWeights,
    x: &Tensor,
    seq_lens: Option<&Tensor>,
    h0: Option<&Tensor>,
    c0: Option<&Tensor>,
    want: Want,
) -> Result<RnnOutputs> {
    let name = p.kind.name();
    let out_dtype = x.dtype();
    if !out_dtype.is_float() {
        return Err(Error::dtype(format!(
            "{name} input X must be float, got {out_dtype}"
        )));
    }
    if x.rank() != 3 {
        return Err(Error::shape(format!(
            "{name} X must be 3-D, got {:?}",
            x.shape()
        )));
    }
    let (seq, batch) = if p.batch_first {
        (x.shape()[1], x.shape()[0])
    } else {
        (x.shape()[0], x.shape()[1])
    };
    let input = x.shape()[2];
    let hidden = wts.hidden;
    let nd = p.direction.count();
    if input != wts.input_size {
        return Err(Error::shape(format!(
            "{name} X has input size {input}, W expects {}",
            wts.input_size
        )));
    }
    if wts.dirs.len() != nd || p.activations.len() != nd {
        return Err(Error::runtime(format!(
            "{name}: weights/activations do not match the direction count"
        )));
    }
    let state_shape: Vec<usize> = if p.batch_first {
        vec![batch, nd, hidden]
    } else {
        vec![nd, batch, hidden]
    };
    if let Some(h) = h0 {
        check_shape(h, &state_shape, &format!("{name} initial_h"))?;
    }
    let is_lstm = p.kind == CellKind::Lstm;
    if let Some(c) = c0 {
        if !is_lstm {
            return Err(Error::input(format!("{name} has no initial_c input")));
        }
        check_shape(c, &state_shape, "LSTM initial_c")?;
    }
    let lens = seq_lengths(seq_lens, batch, seq)?;
    let g = p.kind.gates();
    let gh = g * hidden;
    let xd = f32_data(x, "X")?;
    let h0d = h0.map(|t| f32_data(t, "initial_h")).transpose()?;
    let c0d = c0.map(|t| f32_data(t, "initial_c")).transpose()?;

    let y_shape: Vec<usize> = if p.batch_first {
        vec![batch, seq, nd, hidden]
    } else {
        vec![seq, nd, batch, hidden]
    };
    let mut y = if want.y {
        alloc_vec::<f32>(numel(&y_shape, DType::F32)?)?
    } else {
        Vec::new()
    };
    let state_n = numel(&state_shape, DType::F32)?;
    let mut y_h = alloc_vec::<f32>(if want.y_h { state_n } else { 0 })?;
    let mut y_c = alloc_vec::<f32>(if want.y_c && is_lstm { state_n } else { 0 })?;
    // Offset of the state row (d, b) in [dirs, batch, hidden] / [batch, dirs, hidden].
    let state_off = |d: usize, b: usize| -> usize {
        if p.batch_first {
            (b * nd + d) * hidden
        } else {
            (d * batch + b) * hidden
        }
    };
    // Offset of the Y row (t, d, b).
    let y_off = |t: usize, d: usize, b: usize| -> usize {
        if p.batch_first {
            ((b * seq + t) * nd + d) * hidden
        } else {
            ((t * nd + d) * batch + b) * hidden
        }
    };
    // Row of X (and of the projection) for (t, b).
    let x_row = |t: usize, b: usize| -> usize {
        if p.batch_first {
            b * seq + t
        } else {
            t * batch + b
        }
    };

    let rows = numel(&[seq, batch], DType::F32)?;
    let mut xw = alloc_vec::<f32>(numel(&[rows, gh], DType::F32)?)?;
    let bh = numel(&[batch, hidden], DType::F32)?;
    let mut h = alloc_vec::<f32>(bh)?;
    let mut c = alloc_vec::<f32>(if is_lstm { bh } else { 0 })?;
    let mut gates = alloc_vec::<f32>(numel(&[batch, gh], DType::F32)?)?;
    // GRU scratch: h-gate input part and (r ⊙ h) or (h·Rh^T).
    let gru = matches!(p.kind, CellKind::Gru { .. });
    let mut gh_buf = alloc_vec::<f32>(if gru { bh } else { 0 })?;
    let mut tmp = alloc_vec::<f32>(if gru { bh } else { 0 })?;

    for d in 0..nd {
        let dw = &wts.dirs[d];
        let acts = &p.activations[d];
        let rev = p.direction.reversed(d);
        // Input projection for every (t, b) at once, bias folded in.
        for row in xw.chunks_exact_mut(gh) {
            row.copy_from_slice(&dw.bias);
        }
        sgemm(rows, input, gh, &xd, &dw.w_t, &mut xw, true);
        // Initial state.
        for b in 0..batch {
            let hs = &mut h[b * hidden..(b + 1) * hidden];
            match &h0d {
                Some(h0) => hs.copy_from_slice(&h0[state_off(d, b)..state_off(d, b) + hidden]),
                None => hs.fill(0.0),
            }
            if is_lstm {
                let cs = &mut c[b * hidden..(b + 1) * hidden];
                match &c0d {
                    Some(c0) => cs.copy_from_slice(&c0[state_off(d, b)..state_off(d, b) + hidden]),
                    None => cs.fill(0.0),
                }
            }
        }
        for s in 0..seq {
            // Time index of this step for batch row b (None: row already finished).
            let time = |b: usize| -> Option<usize> {
                let l = lens[b];
                if s >= l {
                    None
                } else if rev {
                    Some(l - 1 - s)
                } else {
                    Some(s)
                }
            };
            match p.kind {
                CellKind::Lstm | CellKind::Rnn => {
                    for b in 0..batch {
                        if let Some(t) = time(b) {
                            let r0 = x_row(t, b) * gh;
                            gates[b * gh..(b + 1) * gh].copy_from_slice(&xw[r0..r0 + gh]);
                        }
                    }
                    sgemm(batch, hidden, gh, &h, &dw.r_t, &mut gates, true);
                    for b in 0..batch {
                        let Some(t) = time(b) else { continue };
                        let gb = &mut gates[b * gh..(b + 1) * gh];
                        let hb = &mut h[b * hidden..(b + 1) * hidden];
                        if is_lstm {
                            let cb = &mut c[b * hidden..(b + 1) * hidden];
                            lstm_cell(p, acts, &dw.peep, hidden, gb, cb, hb);
                        } else {
                            clip_slice(gb, p.clip);
                            acts[0].apply(gb);
                            hb.copy_from_slice(gb);
                        }
                        if want.y {
                            let o = y_off(t, d, b);
                            y[o..o + hidden].copy_from_slice(hb);
                        }
                    }
                }
                CellKind::Gru {
                    linear_before_reset,
                } => {
                    let h2 = 2 * hidden;
                    let zr_n = batch * h2;
                    let (gzr, _) = gates.split_at_mut(zr_n);
                    for b in 0..batch {
                        if let Some(t) = time(b) {
                            let r0 = x_row(t, b) * gh;
                            gzr[b * h2..(b + 1) * h2].copy_from_slice(&xw[r0..r0 + h2]);
                            gh_buf[b * hidden..(b + 1) * hidden]
                                .copy_from_slice(&xw[r0 + h2..r0 + gh]);
                        }
                    }
                    let (rzr_t, rh_t) = dw.r_t.split_at(h2 * hidden);
                    sgemm(batch, hidden, h2, &h, rzr_t, gzr, true);
                    clip_slice(gzr, p.clip);
                    acts[0].apply(gzr);
                    if linear_before_reset {
                        // h~ = g(Xh + Wbh + r ⊙ (H·Rh^T + Rbh))
                        for row in tmp.chunks_exact_mut(hidden) {
                            row.copy_from_slice(&dw.rbh);
                        }
                        sgemm(batch, hidden, hidden, &h, rh_t, &mut tmp, true);
                        for b in 0..batch {
                            let r = &gzr[b * h2 + hidden..(b + 1) * h2];
                            let gb = &mut gh_buf[b * hidden..(b + 1) * hidden];
                            let tb = &tmp[b * hidden..(b + 1) * hidden];
                            for ((o, &rv), &tv) in gb.iter_mut().zip(r).zip(tb) {
                                *o += rv * tv;
                            }
                        }
                    } else {
                        // h~ = g(Xh + Wbh + Rbh + (r ⊙ H)·Rh^T)
                        for b in 0..batch {
                            let r = &gzr[b * h2 + hidden..(b + 1) * h2];
                            let hb = &h[b * hidden..(b + 1) * hidden];
                            let tb = &mut tmp[b * hidden..(b + 1) * hidden];
                            for ((o, &rv), &hv) in tb.iter_mut().zip(r).zip(hb) {
                                *o = rv * hv;
                            }
                        }
                        sgemm(batch, hidden, hidden, &tmp, rh_t, &mut gh_buf, true);
                    }
                    clip_slice(&mut gh_buf, p.clip);
                    acts[1].apply(&mut gh_buf);
                    for b in 0..batch {
                        let Some(t) = time(b) else { continue };
                        let z = &gzr[b * h2..b * h2 + hidden];
                        let hn = &gh_buf[b * hidden..(b + 1) * hidden];
                        let hb = &mut h[b * hidden..(b + 1) * hidden];
                        for ((o, &zv), &nv) in hb.iter_mut().zip(z).zip(hn) {
                            *o = (1.0 - zv) * nv + zv * *o;
                        }
                        if want.y {
                            let o = y_off(t, d, b);
                            y[o..o + hidden].copy_from_slice(hb);
                        }
                    }
                }
            }
        }
        // Final states; a row with length 0 gives zeros (as onnxruntime does).
        for b in 0..batch {
            let o = state_off(d, b);
            let empty = lens[b] == 0;
            if want.y_h {
                let dst = &mut y_h[o..o + hidden];
                if empty {
                    dst.fill(0.0);
                } else {
                    dst.copy_from_slice(&h[b * hidden..(b + 1) * hidden]);
                }
            }
            if want.y_c && is_lstm {
                let dst = &mut y_c[o..o + hidden];
                if empty {
                    dst.fill(0.0);
                } else {
                    dst.copy_from_slice(&c[b * hidden..(b + 1) * hidden]);
                }
            }
        }
    }
    let finish = |v: Vec<f32>, shape: Vec<usize>| -> Result<Tensor> {
        let t = Tensor::from_vec(shape, v)?;
        if out_dtype == DType::F32 {
            Ok(t)
        } else {
            t.cast(out_dtype)
        }
    };
    Ok(RnnOutputs {
        y: if want.y {
            Some(finish(y, y_shape)?)
        } else {
            None
        },
        y_h: if want.y_h {
            Some(finish(y_h, state_shape.clone())?)
        } else {
            None
        },
        y_c: if want.y_c && is_lstm {
            Some(finish(y_c, state_shape)?)
        } else {
            None
        },
    })
}

/// One LSTM cell update for one batch row. `g` holds the pre-activations i, o, f, c
/// (input projection + recurrent product + biases); `c` and `h` are updated in place.
fn lstm_cell(
    p: &RnnParams,
    acts: &[Act; 3],
    peep: &[f32],
    hidden: usize,
    g: &mut [f32],
    c: &mut [f32],
    h: &mut [f32],
) {
    let (gi, rest) = g.split_at_mut(hidden);
    let (go, rest) = rest.split_at_mut(hidden);
    let (gf, gc) = rest.split_at_mut(hidden);
    let has_peep = peep.len() == 3 * hidden;
    if has_peep {
        let (pi, rest) = peep.split_at(hidden);
        let pf = &rest[hidden..];
        for ((x, &pv), &cv) in gi.iter_mut().zip(pi).zip(c.iter()) {
            *x += pv * cv;
        }
        for ((x, &pv), &cv) in gf.iter_mut().zip(pf).zip(c.iter()) {
            *x += pv * cv;
        }
    }
    clip_slice(gi, p.clip);
    acts[0].apply(gi);
    if p.input_forget {
        for (f, &i) in gf.iter_mut().zip(gi.iter()) {
            *f = 1.0 - i;
        }
    } else {
        clip_slice(gf, p.clip);
        acts[0].apply(gf);
    }
    clip_slice(gc, p.clip);
    acts[1].apply(gc);
    for (((cv, &f), &i), &cc) in c.iter_mut().zip(gf.iter()).zip(gi.iter()).zip(gc.iter()) {
        *cv = f * *cv + i * cc;
    }
    if has_peep {
        let po = &peep[hidden..2 * hidden];
        for ((x, &pv), &cv) in go.iter_mut().zip(po).zip(c.iter()) {
            *x += pv * cv;
        }
    }
    clip_slice(go, p.clip);
    acts[0].apply(go);
    // h = o ⊙ h(C); gc is free scratch now.
    gc.copy_from_slice(c);
    acts[2].apply(gc);
    for ((hv, &o), &cv) in h.iter_mut().zip(go.iter()).zip(gc.iter()) {
        *hv = o * cv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kind: CellKind, dir: Direction) -> RnnParams {
        let a = [Act::Sigmoid, Act::Tanh, Act::Tanh];
        let r = [Act::Tanh, Act::Tanh, Act::Tanh];
        let acts = if kind == CellKind::Rnn { r } else { a };
        RnnParams {
            kind,
            direction: dir,
            hidden_size: None,
            activations: vec![acts; dir.count()],
            clip: None,
            input_forget: false,
            batch_first: false,
        }
    }

    const ALL: Want = Want {
        y: true,
        y_h: true,
        y_c: true,
    };

    #[test]
    fn rnn_identity_weights() {
        // hidden 1, input 1: h_t = tanh(x_t + h_{t-1})
        let p = params(CellKind::Rnn, Direction::Forward);
        let w = Tensor::from_vec(vec![1, 1, 1], vec![1f32]).unwrap();
        let r = Tensor::from_vec(vec![1, 1, 1], vec![1f32]).unwrap();
        let pw = prepare_weights(&p, &w, &r, None, None).unwrap();
        let x = Tensor::from_vec(vec![2, 1, 1], vec![0.5f32, 0.25]).unwrap();
        let out = run_rnn(&p, &pw, &x, None, None, None, ALL).unwrap();
        let h1 = 0.5f32.tanh();
        let h2 = (0.25 + h1).tanh();
        let y = out.y.unwrap().into_vec::<f32>().unwrap();
        assert!((y[0] - h1).abs() < 1e-6 && (y[1] - h2).abs() < 1e-6);
        assert_eq!(out.y_h.unwrap().into_vec::<f32>().unwrap(), vec![y[1]]);
        assert!(out.y_c.is_none());
    }

    #[test]
    fn reverse_with_lengths() {
        // Reverse direction with seq_len 1 for batch row 1 only reads x[0].
        let p = params(CellKind::Rnn, Direction::Reverse);
        let w = Tensor::from_vec(vec![1, 1, 1], vec![1f32]).unwrap();
        let r = Tensor::from_vec(vec![1, 1, 1], vec![0f32]).unwrap();
        let pw = prepare_weights(&p, &w, &r, None, None).unwrap();
        let x = Tensor::from_vec(vec![2, 2, 1], vec![0.1f32, 0.2, 0.3, 0.4]).unwrap();
        let lens = Tensor::vector(vec![2i32, 1]);
        let out = run_rnn(&p, &pw, &x, Some(&lens), None, None, ALL).unwrap();
        let y = out.y.unwrap().into_vec::<f32>().unwrap();
        // y[t, 0, b]
        assert!((y[0] - 0.1f32.tanh()).abs() < 1e-6);
        assert!((y[1] - 0.2f32.tanh()).abs() < 1e-6);
        assert!((y[2] - 0.3f32.tanh()).abs() < 1e-6);
        assert_eq!(y[3], 0.0);
        let yh = out.y_h.unwrap().into_vec::<f32>().unwrap();
        assert!((yh[0] - 0.1f32.tanh()).abs() < 1e-6);
        assert!((yh[1] - 0.2f32.tanh()).abs() < 1e-6);
    }

    #[test]
    fn lstm_zero_weights() {
        // With zero weights: i=f=o=0.5, c~=0 → C = 0.5*C0, H = 0.5*tanh(C).
        let p = params(CellKind::Lstm, Direction::Bidirectional);
        let w = Tensor::zeros(DType::F32, vec![2, 8, 3]).unwrap();
        let r = Tensor::zeros(DType::F32, vec![2, 8, 2]).unwrap();
        let pw = prepare_weights(&p, &w, &r, None, None).unwrap();
        let x = Tensor::zeros(DType::F32, vec![1, 1, 3]).unwrap();
        let c0 = Tensor::from_vec(vec![2, 1, 2], vec![1f32, 2., 3., 4.]).unwrap();
        let out = run_rnn(&p, &pw, &x, None, None, Some(&c0), ALL).unwrap();
        let yc = out.y_c.unwrap().into_vec::<f32>().unwrap();
        assert_eq!(yc, vec![0.5, 1.0, 1.5, 2.0]);
        let yh = out.y_h.unwrap().into_vec::<f32>().unwrap();
        assert!((yh[3] - 0.5 * 2f32.tanh()).abs() < 1e-6);
        assert_eq!(out.y.unwrap().shape(), &[1, 2, 1, 2]);
    }

    #[test]
    fn errors() {
        let p = params(
            CellKind::Gru {
                linear_before_reset: false,
            },
            Direction::Forward,
        );
        let w = Tensor::zeros(DType::F32, vec![1, 6, 3]).unwrap();
        let r = Tensor::zeros(DType::F32, vec![1, 5, 2]).unwrap();
        assert!(prepare_weights(&p, &w, &r, None, None).is_err());
        let r = Tensor::zeros(DType::F32, vec![1, 6, 2]).unwrap();
        let pw = prepare_weights(&p, &w, &r, None, None).unwrap();
        let x = Tensor::zeros(DType::F32, vec![2, 1, 4]).unwrap();
        assert!(run_rnn(&p, &pw, &x, None, None, None, ALL).is_err());
        let x = Tensor::zeros(DType::F32, vec![2, 1, 3]).unwrap();
        let lens = Tensor::vector(vec![-1i32]);
        assert!(run_rnn(&p, &pw, &x, Some(&lens), None, None, ALL).is_err());
        let lens = Tensor::vector(vec![3i32]);
        assert!(run_rnn(&p, &pw, &x, Some(&lens), None, None, ALL).is_err());
    }
}
