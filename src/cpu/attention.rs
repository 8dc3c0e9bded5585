//! CPU kernels for the attention family (ops in `crate::graph::ops::attention`).
//!
//! Everything is computed in f32: inputs of other float types are widened once and the
//! outputs narrowed back by the op. Attention runs one pair of strided GEMMs per
//! (batch, head): `Q·Kᵀ` straight from the (possibly 3-D, head-interleaved) Q layout, and
//! `P·V` written straight into the output layout, with a numerically stable softmax in
//! between.

use crate::cpu::gemm::{sgemm_ex, Mat};
use crate::error::{Error, Result};
use crate::tensor::{alloc_vec, numel, DType, Tensor};
use std::borrow::Cow;

/// A tensor's elements as f32 (borrowed when it already is f32).
pub fn f32_view(t: &Tensor) -> Result<Cow<'_, [f32]>> {
    if t.dtype() == DType::F32 {
        Ok(Cow::Borrowed(t.as_slice::<f32>()?))
    } else if t.dtype().is_float() {
        Ok(Cow::Owned(t.to_f32_vec()?))
    } else {
        Err(Error::dtype(format!(
            "attention kernels need float tensors, got {}",
            t.dtype()
        )))
    }
}

/// An f32 result narrowed to `dt`.
pub fn f32_out(shape: Vec<usize>, v: Vec<f32>, dt: DType) -> Result<Tensor> {
    let t = Tensor::from_vec(shape, v)?;
    if dt == DType::F32 {
        Ok(t)
    } else {
        t.cast(dt)
    }
}

/// Attributes of `Attention`.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttnParams {
    pub q_num_heads: Option<usize>,
    pub kv_num_heads: Option<usize>,
    pub scale: Option<f32>,
    pub is_causal: bool,
    pub softcap: f32,
    /// 0: QKᵀ (after softcap), 1: same, 2: after the mask, 3: after softmax.
    pub qk_mode: i64,
    pub want_qk: bool,
}

/// Outputs of `Attention` (f32, with shapes).
pub struct AttnOut {
    pub y: (Vec<usize>, Vec<f32>),
    pub present_key: (Vec<usize>, Vec<f32>),
    pub present_value: (Vec<usize>, Vec<f32>),
    pub qk: Option<(Vec<usize>, Vec<f32>)>,
}

pub(crate) fn div_heads(hidden: usize, heads: usize, what: &str) -> Result<usize> {
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(Error::shape(format!(
            "Attention: {what} hidden size {hidden} is not divisible by {heads} heads"
        )));
    }
    Ok(hidden / heads)
}

/// A 4-D view (batch, heads, seq, dim) over Q/K/V given in 3-D or 4-D layout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct View {
    pub(crate) b: usize,
    pub(crate) h: usize,
    pub(crate) s: usize,
    pub(crate) d: usize,
    pub(crate) sb: usize,
    pub(crate) sh: usize,
    pub(crate) ss: usize,
}

/// A 4-D view (batch, heads, seq, dim) of Q/K/V in 3-D or 4-D layout, with strides;
/// shared with the GPU kernel.
pub(crate) fn view(shape: &[usize], heads: Option<usize>, what: &str) -> Result<View> {
    match *shape {
        [b, s, hid] => {
            let h = heads.ok_or_else(|| {
                Error::attr(format!(
                    "Attention: 3-D {what} needs q_num_heads/kv_num_heads"
                ))
            })?;
            let d = div_heads(hid, h, what)?;
            Ok(View {
                b,
                h,
                s,
                d,
                sb: s * hid,
                sh: d,
                ss: hid,
            })
        }
        [b, h, s, d] => Ok(View {
            b,
            h,
            s,
            d,
            sb: h * s * d,
            sh: s * d,
            ss: d,
        }),
        _ => Err(Error::shape(format!(
            "Attention: {what} must be 3-D or 4-D, got {shape:?}"
        ))),
    }
}

/// Concatenates `past` (B, H, P, D) and the new keys/values (view) into (B, H, P+S, D).
fn concat_kv(
    past: Option<&Tensor>,
    cur: &[f32],
    v: View,
    what: &str,
) -> Result<(Vec<usize>, Vec<f32>)> {
    let (p, pdata): (usize, Cow<[f32]>) = match past {
        Some(t) => {
            let sh = t.shape();
            if sh.len() != 4 || sh[0] != v.b || sh[1] != v.h || sh[3] != v.d {
                return Err(Error::shape(format!(
                    "Attention: past_{what} has shape {sh:?}, expected [{}, {}, P, {}]",
                    v.b, v.h, v.d
                )));
            }
            (sh[2], f32_view(t)?)
        }
        None => (0, Cow::Borrowed(&[][..])),
    };
    let t = p + v.s;
    let shape = vec![v.b, v.h, t, v.d];
    let n = numel(&shape, DType::F32)?;
    let mut out = alloc_vec::<f32>(n)?;
    for b in 0..v.b {
        for h in 0..v.h {
            let base = (b * v.h + h) * t * v.d;
            let pb = (b * v.h + h) * p * v.d;
            out[base..base + p * v.d].copy_from_slice(&pdata[pb..pb + p * v.d]);
            for s in 0..v.s {
                let src = b * v.sb + h * v.sh + s * v.ss;
                let dst = base + (p + s) * v.d;
                out[dst..dst + v.d].copy_from_slice(&cur[src..src + v.d]);
            }
        }
    }
    Ok((shape, out))
}

/// The attention mask as an additive f32 bias with 4-D broadcast strides.
struct Bias {
    data: Vec<f32>,
    /// Strides over (batch, head, query, key); 0 where broadcast.
    st: [usize; 4],
    /// Number of key columns the mask covers (the rest is -inf).
    cols: usize,
}

fn make_bias(m: &Tensor, b: usize, h: usize, sq: usize, t: usize) -> Result<Bias> {
    let (st, cols) = mask_strides(m.shape(), b, h, sq, t)?;
    let data = if m.dtype() == DType::Bool {
        m.as_slice::<bool>()?
            .iter()
            .map(|&x| if x { 0.0 } else { f32::NEG_INFINITY })
            .collect()
    } else {
        m.to_f32_vec()?
    };
    Ok(Bias { data, st, cols })
}

/// The mask's broadcast strides over (batch, head, query, key) and the key columns it
/// covers; shared with the GPU kernel.
pub(crate) fn mask_strides(
    sh: &[usize],
    b: usize,
    h: usize,
    sq: usize,
    t: usize,
) -> Result<([usize; 4], usize)> {
    if sh.is_empty() || sh.len() > 4 {
        return Err(Error::shape(format!(
            "Attention: attn_mask must have rank 1..4, got {sh:?}"
        )));
    }
    let mut d4 = [1usize; 4];
    d4[4 - sh.len()..].copy_from_slice(sh);
    let want = [b, h, sq, t];
    for i in 0..3 {
        if d4[i] != 1 && d4[i] != want[i] {
            return Err(Error::shape(format!(
                "Attention: attn_mask shape {sh:?} does not broadcast to [{b}, {h}, {sq}, {t}]"
            )));
        }
    }
    if d4[3] > t {
        return Err(Error::shape(format!(
            "Attention: attn_mask has {} key columns, more than the {t} keys",
            d4[3]
        )));
    }
    let mut st = [0usize; 4];
    let mut acc = 1;
    for i in (0..4).rev() {
        st[i] = if d4[i] == 1 { 0 } else { acc };
        acc *= d4[i];
    }
    st[3] = 1;
    Ok((st, d4[3]))
}

/// Stable in-place softmax of one row; a row that is entirely -inf becomes NaN like the
/// reference (exp(-inf - -inf)).
fn softmax_row(row: &mut [f32]) {
    let mx = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for x in row.iter_mut() {
        *x = (*x - mx).exp();
        sum += *x;
    }
    let inv = 1.0 / sum;
    for x in row.iter_mut() {
        *x *= inv;
    }
}

/// `Attention` (opset 23/24) in f32.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    p: &AttnParams,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    past_k: Option<&Tensor>,
    past_v: Option<&Tensor>,
    nonpad: Option<&Tensor>,
) -> Result<AttnOut> {
    let rank = q.rank();
    if k.rank() != rank || v.rank() != rank {
        return Err(Error::shape(
            "Attention: Q, K and V must have the same rank",
        ));
    }
    let qv = view(q.shape(), p.q_num_heads, "Q")?;
    let kv = view(k.shape(), p.kv_num_heads, "K")?;
    let vv = view(v.shape(), p.kv_num_heads, "V")?;
    if kv.b != qv.b || vv.b != qv.b || kv.s != vv.s || kv.h != vv.h || kv.d != qv.d {
        return Err(Error::shape(format!(
            "Attention: incompatible shapes Q {:?}, K {:?}, V {:?}",
            q.shape(),
            k.shape(),
            v.shape()
        )));
    }
    if kv.h == 0 || qv.h % kv.h != 0 {
        return Err(Error::shape(format!(
            "Attention: {} query heads are not a multiple of {} kv heads",
            qv.h, kv.h
        )));
    }
    let reps = qv.h / kv.h;
    let qd = f32_view(q)?;
    let kd = f32_view(k)?;
    let vd = f32_view(v)?;
    let (pk_shape, pk) = concat_kv(past_k, &kd, kv, "key")?;
    let (pv_shape, pv) = concat_kv(past_v, &vd, vv, "value")?;
    if pk_shape[2] != pv_shape[2] {
        return Err(Error::shape(
            "Attention: past_key and past_value lengths differ",
        ));
    }
    let past = pk_shape[2] - kv.s;
    let (b, hq, sq, d, dv, t) = (qv.b, qv.h, qv.s, qv.d, vv.d, pk_shape[2]);
    let scale = p.scale.unwrap_or(1.0 / (d as f32).sqrt());
    let bias = mask.map(|m| make_bias(m, b, hq, sq, t)).transpose()?;
    let nonpad: Option<Vec<i64>> = match nonpad {
        Some(n) => {
            let v = n.to_i64_vec()?;
            if v.len() != b {
                return Err(Error::shape(format!(
                    "Attention: nonpad_kv_seqlen has {} entries for batch {b}",
                    v.len()
                )));
            }
            Some(v)
        }
        None => None,
    };
    let (y_shape, ys, yoff_h, ld_y) = if rank == 3 {
        (vec![b, sq, hq * dv], sq * hq * dv, dv, hq * dv)
    } else {
        (vec![b, hq, sq, dv], hq * sq * dv, sq * dv, dv)
    };
    let mut y = alloc_vec::<f32>(numel(&y_shape, DType::F32)?)?;
    let qk_shape = vec![b, hq, sq, t];
    let mut qk_out = if p.want_qk {
        Some(alloc_vec::<f32>(numel(&qk_shape, DType::F32)?)?)
    } else {
        None
    };
    let mut sc = alloc_vec::<f32>(numel(&[sq, t], DType::F32)?)?;
    for bi in 0..b {
        let valid = match &nonpad {
            Some(n) => usize::try_from(n[bi]).unwrap_or(0).min(t),
            None => t,
        };
        for h in 0..hq {
            let kh = h / reps;
            let qoff = bi * qv.sb + h * qv.sh;
            let koff = (bi * kv.h + kh) * t * d;
            let voff = (bi * kv.h + kh) * t * dv;
            let ok = sgemm_ex(
                sq,
                d,
                t,
                scale,
                Mat {
                    data: &qd[qoff..],
                    rs: qv.ss,
                    cs: 1,
                },
                Mat::col_major(&pk[koff..], d),
                0.0,
                &mut sc,
                t,
            );
            if !ok {
                return Err(Error::runtime("Attention: QK^T GEMM shape mismatch"));
            }
            if p.softcap > 0.0 {
                let c = p.softcap;
                let ic = 1.0 / c;
                for x in sc.iter_mut() {
                    *x = c * (*x * ic).tanh();
                }
            }
            let qk_at = (bi * hq + h) * sq * t;
            if let (Some(o), 0 | 1) = (qk_out.as_mut(), p.qk_mode) {
                o[qk_at..qk_at + sq * t].copy_from_slice(&sc);
            }
            for i in 0..sq {
                let row = &mut sc[i * t..(i + 1) * t];
                if let Some(bs) = &bias {
                    let mo = bi * bs.st[0] + h * bs.st[1] + i * bs.st[2];
                    let mrow = &bs.data[mo..mo + bs.cols];
                    for (x, m) in row.iter_mut().zip(mrow) {
                        *x += m;
                    }
                    for x in row[bs.cols..].iter_mut() {
                        *x = f32::NEG_INFINITY;
                    }
                }
                if p.is_causal {
                    // Key j is visible from query i when j - past <= i.
                    let lim = (past + i + 1).min(t);
                    for x in row[lim..].iter_mut() {
                        *x = f32::NEG_INFINITY;
                    }
                }
                for x in row[valid..].iter_mut() {
                    *x = f32::NEG_INFINITY;
                }
            }
            if let (Some(o), 2) = (qk_out.as_mut(), p.qk_mode) {
                o[qk_at..qk_at + sq * t].copy_from_slice(&sc);
            }
            for row in sc.chunks_exact_mut(t.max(1)) {
                softmax_row(row);
            }
            if let (Some(o), 3) = (qk_out.as_mut(), p.qk_mode) {
                o[qk_at..qk_at + sq * t].copy_from_slice(&sc);
            }
            let yoff = bi * ys + h * yoff_h;
            let ok = sgemm_ex(
                sq,
                t,
                dv,
                1.0,
                Mat::row_major(&sc, t),
                Mat::row_major(&pv[voff..], dv),
                0.0,
                &mut y[yoff..],
                ld_y,
            );
            if !ok {
                return Err(Error::runtime("Attention: PV GEMM shape mismatch"));
            }
        }
    }
    Ok(AttnOut {
        y: (y_shape, y),
        present_key: (pk_shape, pk),
        present_value: (pv_shape, pv),
        qk: qk_out.map(|o| (qk_shape, o)),
    })
}

/// `RotaryEmbedding` (opset 23) in f32. X is (B, H, S, D) or (B, S, H·D); the caches are
/// (max_pos, R/2) with `position_ids` (B, S), or (B, S, R/2) without.
pub fn rotary_embedding(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    pos: Option<&Tensor>,
    interleaved: bool,
    rot_dim: usize,
    num_heads: Option<usize>,
) -> Result<Vec<f32>> {
    // (b, s, h) -> offset of the head vector, and head size.
    let (b, s, h, d, sb, ss, sh) = match *x.shape() {
        [b, h, s, d] => (b, s, h, d, h * s * d, d, s * d),
        [b, s, hid] => {
            let h = num_heads
                .ok_or_else(|| Error::attr("RotaryEmbedding: 3-D input needs num_heads"))?;
            if h == 0 || hid % h != 0 {
                return Err(Error::shape(format!(
                    "RotaryEmbedding: hidden size {hid} not divisible by num_heads {h}"
                )));
            }
            let d = hid / h;
            (b, s, h, d, s * hid, hid, d)
        }
        _ => {
            return Err(Error::shape(format!(
                "RotaryEmbedding: input must be 3-D or 4-D, got {:?}",
                x.shape()
            )))
        }
    };
    let r = if rot_dim == 0 { d } else { rot_dim };
    if r > d || r % 2 != 0 {
        return Err(Error::shape(format!(
            "RotaryEmbedding: rotary_embedding_dim {r} must be even and at most head size {d}"
        )));
    }
    let half = r / 2;
    let cd = f32_view(cos)?;
    let sd = f32_view(sin)?;
    if cos.shape() != sin.shape() {
        return Err(Error::shape(
            "RotaryEmbedding: cos_cache and sin_cache shapes differ",
        ));
    }
    let cs = cos.shape();
    if cs.last().copied() != Some(half) {
        return Err(Error::shape(format!(
            "RotaryEmbedding: cache last dim {:?} must be rotary_embedding_dim/2 = {half}",
            cs.last()
        )));
    }
    // Row of the cache for (batch, position).
    let pos_ids: Option<Vec<i64>> = match pos {
        Some(p) => {
            if p.shape() != [b, s] || cs.len() != 2 {
                return Err(Error::shape(format!(
                    "RotaryEmbedding: position_ids {:?} must be [{b}, {s}] with 2-D caches",
                    p.shape()
                )));
            }
            Some(p.to_i64_vec()?)
        }
        None => {
            if cs != [b, s, half] {
                return Err(Error::shape(format!(
                    "RotaryEmbedding: caches {cs:?} must be [{b}, {s}, {half}] without position_ids"
                )));
            }
            None
        }
    };
    let xd = f32_view(x)?;
    let mut out = xd.to_vec();
    for bi in 0..b {
        for si in 0..s {
            let row = match &pos_ids {
                Some(pi) => {
                    let id = pi[bi * s + si];
                    match usize::try_from(id) {
                        Ok(u) if u < cs[0] => u,
                        _ => {
                            return Err(Error::runtime(format!(
                                "RotaryEmbedding: position id {id} out of range [0, {})",
                                cs[0]
                            )))
                        }
                    }
                }
                None => bi * s + si,
            };
            let c = &cd[row * half..(row + 1) * half];
            let sn = &sd[row * half..(row + 1) * half];
            for hi in 0..h {
                let o = bi * sb + si * ss + hi * sh;
                let src = &xd[o..o + r];
                let dst = &mut out[o..o + r];
                if interleaved {
                    for j in 0..half {
                        let (x1, x2) = (src[2 * j], src[2 * j + 1]);
                        dst[2 * j] = c[j] * x1 - sn[j] * x2;
                        dst[2 * j + 1] = sn[j] * x1 + c[j] * x2;
                    }
                } else {
                    for j in 0..half {
                        let (x1, x2) = (src[j], src[j + half]);
                        dst[j] = c[j] * x1 - sn[j] * x2;
                        dst[j + half] = sn[j] * x1 + c[j] * x2;
                    }
                }
            }
        }
    }
    Ok(out)
}

/// `CausalConvWithState`: depthwise causal 1-D conv over (B, C, L) with a (C, 1, K)
/// kernel, carrying the last K-1 inputs as state. Returns (output, present_state).
pub fn causal_conv_with_state(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    past: Option<&Tensor>,
    silu: bool,
) -> Result<(Vec<f32>, Vec<usize>, Vec<f32>)> {
    let [bn, c, l] = *x.shape() else {
        return Err(Error::shape(format!(
            "CausalConvWithState: input must be 3-D, got {:?}",
            x.shape()
        )));
    };
    let k = match *w.shape() {
        [wc, 1, k] if wc == c && k >= 1 => k,
        _ => {
            return Err(Error::shape(format!(
                "CausalConvWithState: weight {:?} must be [{c}, 1, K]",
                w.shape()
            )))
        }
    };
    let wd = f32_view(w)?;
    let xd = f32_view(x)?;
    let bd = match bias {
        Some(t) => {
            if t.shape() != [c] {
                return Err(Error::shape("CausalConvWithState: bias must be [C]"));
            }
            Some(f32_view(t)?)
        }
        None => None,
    };
    let pd = match past {
        Some(t) => {
            if t.shape() != [bn, c, k - 1] {
                return Err(Error::shape(format!(
                    "CausalConvWithState: past_state {:?} must be [{bn}, {c}, {}]",
                    t.shape(),
                    k - 1
                )));
            }
            Some(f32_view(t)?)
        }
        None => None,
    };
    let n = numel(&[bn, c, l], DType::F32)?;
    let mut out = alloc_vec::<f32>(n)?;
    let mut state = alloc_vec::<f32>(numel(&[bn, c, k - 1], DType::F32)?)?;
    let mut pad = alloc_vec::<f32>(k - 1 + l)?;
    for bi in 0..bn {
        for ci in 0..c {
            let so = (bi * c + ci) * (k - 1);
            match &pd {
                Some(p) => pad[..k - 1].copy_from_slice(&p[so..so + k - 1]),
                None => pad[..k - 1].fill(0.0),
            }
            let xo = (bi * c + ci) * l;
            pad[k - 1..].copy_from_slice(&xd[xo..xo + l]);
            let wr = &wd[ci * k..(ci + 1) * k];
            let b0 = bd.as_ref().map_or(0.0, |b| b[ci]);
            let orow = &mut out[xo..xo + l];
            for (t, o) in orow.iter_mut().enumerate() {
                let win = &pad[t..t + k];
                let mut acc = b0;
                for (a, wv) in win.iter().zip(wr) {
                    acc += a * wv;
                }
                *o = if silu {
                    acc * crate::graph::sigmoid(acc)
                } else {
                    acc
                };
            }
            state[so..so + k - 1].copy_from_slice(&pad[l..l + k - 1]);
        }
    }
    Ok((out, vec![bn, c, k - 1], state))
}

/// Two f32 outputs with their shapes.
pub type ShapedPair = (Vec<usize>, Vec<f32>, Vec<usize>, Vec<f32>);

/// Update rule of `LinearAttention`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinRule {
    pub gating: bool,
    pub delta: bool,
}

/// `LinearAttention` (opset 27) in f32, token by token. q (B, T, Hq·dk), k (B, T, Hkv·dk),
/// v (B, T, Hkv·dv); state (B, Hkv, dk, dv). Returns (output shape, output, state shape, state).
#[allow(clippy::too_many_arguments)]
pub fn linear_attention(
    rule: LinRule,
    hq: usize,
    hkv: usize,
    scale: f32,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    past: Option<&Tensor>,
    decay: Option<&Tensor>,
    beta: Option<&Tensor>,
) -> Result<ShapedPair> {
    let bad = |m: String| Err(Error::shape(format!("LinearAttention: {m}")));
    let (&[b, t, qh], &[kb, kt, kh], &[vb, vt, vh]) = (q.shape(), k.shape(), v.shape()) else {
        return bad("query, key and value must be 3-D".into());
    };
    if hq == 0 || hkv == 0 || !hq.is_multiple_of(hkv) || qh % hq != 0 || vh % hkv != 0 {
        return bad(format!("heads {hq}/{hkv} do not divide the hidden sizes"));
    }
    let (dk, dv) = (qh / hq, vh / hkv);
    if (kb, kt, kh, vb, vt) != (b, t, hkv * dk, b, t) {
        return bad(format!(
            "shapes {:?}, {:?}, {:?} do not agree",
            q.shape(),
            k.shape(),
            v.shape()
        ));
    }
    if rule.gating != decay.is_some() || rule.delta != beta.is_some() {
        return Err(Error::input(
            "LinearAttention: decay/beta presence does not match update_rule",
        ));
    }
    let dec = decay.map(f32_view).transpose()?;
    let dec_w = match decay.map(|d| d.shape().to_vec()) {
        Some(s) if s.len() == 3 && s[0] == b && s[1] == t && s[2] == hkv => 1,
        Some(s) if s.len() == 3 && s[0] == b && s[1] == t && s[2] == hkv * dk => dk,
        Some(s) => return bad(format!("decay shape {s:?} is invalid")),
        None => 0,
    };
    let bet = beta.map(f32_view).transpose()?;
    let bet_w = match beta.map(|d| d.shape().to_vec()) {
        Some(s) if s.len() == 3 && s[0] == b && s[1] == t && (s[2] == hkv || s[2] == 1) => s[2],
        Some(s) => return bad(format!("beta shape {s:?} is invalid")),
        None => 0,
    };
    let st_shape = vec![b, hkv, dk, dv];
    let mut state = match past {
        Some(p) => {
            if p.shape() != st_shape.as_slice() {
                return bad(format!("past_state {:?} must be {st_shape:?}", p.shape()));
            }
            f32_view(p)?.into_owned()
        }
        None => alloc_vec::<f32>(numel(&st_shape, DType::F32)?)?,
    };
    let (qd, kd, vd) = (f32_view(q)?, f32_view(k)?, f32_view(v)?);
    let mut out = alloc_vec::<f32>(numel(&[b, t, hq * dv], DType::F32)?)?;
    let mut vt_buf = vec![0.0f32; dv];
    let group = hq / hkv;
    for bi in 0..b {
        for ti in 0..t {
            let row = bi * t + ti;
            for h in 0..hkv {
                let s = &mut state[(bi * hkv + h) * dk * dv..(bi * hkv + h + 1) * dk * dv];
                if let Some(g) = &dec {
                    let go = row * hkv * dec_w + h * dec_w;
                    for i in 0..dk {
                        let f = g[go + if dec_w == 1 { 0 } else { i }].exp();
                        for x in s[i * dv..(i + 1) * dv].iter_mut() {
                            *x *= f;
                        }
                    }
                }
                let kr = &kd[row * hkv * dk + h * dk..][..dk];
                vt_buf.copy_from_slice(&vd[row * hkv * dv + h * dv..][..dv]);
                if let Some(be) = &bet {
                    let bv = be[row * bet_w + if bet_w == 1 { 0 } else { h }];
                    for (m, x) in vt_buf.iter_mut().enumerate() {
                        let mut r = 0.0f32;
                        for i in 0..dk {
                            r += s[i * dv + m] * kr[i];
                        }
                        *x = bv * (*x - r);
                    }
                }
                for i in 0..dk {
                    let ki = kr[i];
                    for (x, &u) in s[i * dv..(i + 1) * dv].iter_mut().zip(&vt_buf) {
                        *x += ki * u;
                    }
                }
                for g in 0..group {
                    let qh_i = h * group + g;
                    let qr = &qd[row * hq * dk + qh_i * dk..][..dk];
                    let o = &mut out[row * hq * dv + qh_i * dv..][..dv];
                    o.fill(0.0);
                    for i in 0..dk {
                        let qi = qr[i] * scale;
                        for (x, &sv) in o.iter_mut().zip(&s[i * dv..(i + 1) * dv]) {
                            *x += qi * sv;
                        }
                    }
                }
            }
        }
    }
    Ok((vec![b, t, hq * dv], out, st_shape, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_uniform_keys_average_values() {
        // Identical keys: softmax is uniform, output is the mean of V.
        let q = Tensor::from_vec(vec![1, 1, 1, 2], vec![1.0f32, 2.0]).unwrap();
        let k = Tensor::from_vec(vec![1, 1, 2, 2], vec![1.0f32, 1.0, 1.0, 1.0]).unwrap();
        let v = Tensor::from_vec(vec![1, 1, 2, 1], vec![2.0f32, 4.0]).unwrap();
        let p = AttnParams::default();
        let o = attention(&p, &q, &k, &v, None, None, None, None).unwrap();
        assert_eq!(o.y.0, vec![1, 1, 1, 1]);
        assert!((o.y.1[0] - 3.0).abs() < 1e-6);
        // Causal with one query sees only the first key.
        let p = AttnParams {
            is_causal: true,
            ..Default::default()
        };
        let o = attention(&p, &q, &k, &v, None, None, None, None).unwrap();
        assert!((o.y.1[0] - 2.0).abs() < 1e-6);
    }

    #[test]
    fn attention_rejects_bad_heads() {
        let q = Tensor::from_vec(vec![1, 1, 3], vec![0.0f32; 3]).unwrap();
        let p = AttnParams {
            q_num_heads: Some(2),
            kv_num_heads: Some(2),
            ..Default::default()
        };
        assert!(attention(&p, &q, &q, &q, None, None, None, None).is_err());
    }

    #[test]
    fn rotary_rotates_pairs() {
        let x = Tensor::from_vec(vec![1, 1, 1, 2], vec![1.0f32, 0.0]).unwrap();
        let c = Tensor::from_vec(vec![1, 1, 1], vec![0.0f32]).unwrap();
        let s = Tensor::from_vec(vec![1, 1, 1], vec![1.0f32]).unwrap();
        let y = rotary_embedding(&x, &c, &s, None, false, 0, None).unwrap();
        assert_eq!(y, vec![0.0, 1.0]);
        let bad = Tensor::from_vec(vec![1, 1], vec![0i64]).unwrap();
        assert!(rotary_embedding(&x, &c, &s, Some(&bad), false, 0, None).is_err());
    }

    #[test]
    fn causal_conv_state() {
        let x = Tensor::from_vec(vec![1, 1, 3], vec![1.0f32, 2.0, 3.0]).unwrap();
        let w = Tensor::from_vec(vec![1, 1, 2], vec![1.0f32, 1.0]).unwrap();
        let (y, _, st) = causal_conv_with_state(&x, &w, None, None, false).unwrap();
        assert_eq!(y, vec![1.0, 3.0, 5.0]);
        assert_eq!(st, vec![3.0]);
        let w2 = Tensor::from_vec(vec![2, 1, 2], vec![1.0f32; 4]).unwrap();
        assert!(causal_conv_with_state(&x, &w2, None, None, false).is_err());
    }
}
