//! Op family: attention. Op structs, attribute parsing and shape rules; kernels in `crate::cpu::attention`.

use super::{def, OpDef};
use crate::cpu::attention as k;
use crate::error::{Error, Result};
use crate::graph::shape::Dim;
use crate::graph::{Args, Fact, InferCx, NodeCx, Op, RunCx, Value};
use crate::op_common;
use crate::tensor::{DType, Tensor};

pub const OPS: &[OpDef] = &[
    def("", "Attention", parse_attention),
    def("", "RotaryEmbedding", parse_rotary),
    def("", "CausalConvWithState", parse_causal_conv),
    def("", "LinearAttention", parse_linear_attention),
];

fn opt_usize(cx: &NodeCx, name: &str) -> Result<Option<usize>> {
    match cx.int(name)? {
        Some(v) => usize::try_from(v)
            .ok()
            .filter(|&u| u > 0)
            .map(Some)
            .ok_or_else(|| Error::attr(format!("{name} must be positive, got {v}"))),
        None => Ok(None),
    }
}

fn float_dtype(f: &Fact, what: &str) -> Result<Option<DType>> {
    match f.dtype {
        Some(d) if !d.is_float() => Err(Error::dtype(format!("{what} needs float input, got {d}"))),
        d => Ok(d),
    }
}

fn dim(f: &Fact, i: usize) -> Dim {
    f.shape
        .as_ref()
        .and_then(|s| s.get(i).cloned())
        .unwrap_or(Dim::Unknown)
}

/// `Attention`: scaled dot-product attention with masks, causal masking, GQA, KV cache,
/// softcap and the QK side output. Spec: https://onnx.ai/onnx/operators/onnx__Attention.html
#[derive(Debug)]
pub struct Attention {
    pub p: k::AttnParams,
}

fn parse_attention(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let q_num_heads = opt_usize(cx, "q_num_heads")?;
    let kv_num_heads = opt_usize(cx, "kv_num_heads")?;
    let scale = cx.float("scale")?;
    let is_causal = cx.int_or("is_causal", 0)? != 0;
    let softcap = cx.float_or("softcap", 0.0)?;
    let qk_mode = cx.int_or("qk_matmul_output_mode", 0)?;
    if !(0..=3).contains(&qk_mode) {
        return Err(Error::attr(format!(
            "Attention: qk_matmul_output_mode must be 0..3, got {qk_mode}"
        )));
    }
    // Softmax always runs in f32 here (at least the precision of every allowed type but
    // double), so the requested precision is accepted when it is a float type.
    if let Some(sp) = cx.int("softmax_precision")? {
        let ok = DType::from_onnx(sp as i32).map(|d| d.is_float());
        if !matches!(ok, Ok(true)) {
            return Err(Error::attr(format!(
                "Attention: softmax_precision {sp} is not a float type"
            )));
        }
    }
    Ok(Box::new(Attention {
        p: k::AttnParams {
            q_num_heads,
            kv_num_heads,
            scale,
            is_causal,
            softcap,
            qk_mode,
            want_qk: cx.has_output(3),
        },
    }))
}

impl Op for Attention {
    op_common!("Attention");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let q = cx.input(0)?;
        let kf = cx.input(1)?;
        let v = cx.input(2)?;
        let dt = float_dtype(q, "Attention")?;
        float_dtype(kf, "Attention")?;
        float_dtype(v, "Attention")?;
        let rank = q.rank();
        for f in [kf, v] {
            if let (Some(a), Some(b)) = (rank, f.rank()) {
                if a != b {
                    return Err(Error::shape(
                        "Attention: Q, K and V must have the same rank",
                    ));
                }
            }
        }
        if let Some(r) = rank {
            if r != 3 && r != 4 {
                return Err(Error::shape(format!(
                    "Attention: Q must be 3-D or 4-D, got rank {r}"
                )));
            }
            if r == 3 && (self.p.q_num_heads.is_none() || self.p.kv_num_heads.is_none()) {
                return Err(Error::attr(
                    "Attention: 3-D inputs need q_num_heads and kv_num_heads",
                ));
            }
        }
        let b = dim(q, 0);
        let (y, hq, sq) = match rank {
            Some(4) => (
                Some(vec![b.clone(), dim(q, 1), dim(q, 2), dim(v, 3)]),
                dim(q, 1),
                dim(q, 2),
            ),
            Some(3) => {
                let hid = match (self.p.q_num_heads, self.p.kv_num_heads, dim(v, 2).known()) {
                    (Some(h), Some(kh), Some(vh)) if kh > 0 && vh % kh == 0 => {
                        Dim::Known(h * (vh / kh))
                    }
                    _ => Dim::Unknown,
                };
                (
                    Some(vec![b.clone(), dim(q, 1), hid]),
                    self.p.q_num_heads.map_or(Dim::Unknown, Dim::Known),
                    dim(q, 1),
                )
            }
            _ => (None, Dim::Unknown, Dim::Unknown),
        };
        let kv_shape = |past: Option<&Fact>, cur: &Fact, dd: Option<usize>| -> Option<Vec<Dim>> {
            rank?;
            let kh = match rank {
                Some(4) => dim(cur, 1),
                _ => self.p.kv_num_heads.map_or(Dim::Unknown, Dim::Known),
            };
            let s = match (
                past.map(|p| dim(p, 2)),
                dim(cur, 1 + usize::from(rank == Some(4))),
            ) {
                (None, s) => s,
                (Some(Dim::Known(a)), Dim::Known(c)) => Dim::Known(a + c),
                _ => Dim::Unknown,
            };
            let d = match rank {
                Some(4) => dim(cur, 3),
                _ => match (dim(cur, 2).known(), self.p.kv_num_heads) {
                    (Some(hd), Some(kh)) if kh > 0 => Dim::Known(hd / kh),
                    _ => dd.map_or(Dim::Unknown, Dim::Known),
                },
            };
            Some(vec![b.clone(), kh, s, d])
        };
        let pk = kv_shape(cx.opt(4), kf, None);
        let pv = kv_shape(cx.opt(5), v, None);
        let t = pk.as_ref().map_or(Dim::Unknown, |s| s[2].clone());
        let qk = Some(vec![b.clone(), hq, sq, t]);
        Ok(vec![
            Fact::new(dt, y),
            Fact::new(dt, pk),
            Fact::new(dt, pv),
            Fact::new(dt, qk),
        ])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let q = args.t(0)?;
        let dt = q.dtype();
        let o = k::attention(
            &self.p,
            q,
            args.t(1)?,
            args.t(2)?,
            args.opt(3)?,
            args.opt(4)?,
            args.opt(5)?,
            args.opt(6)?,
        )?;
        let mut v = vec![
            Value::from(k::f32_out(o.y.0, o.y.1, dt)?),
            Value::from(k::f32_out(o.present_key.0, o.present_key.1, dt)?),
            Value::from(k::f32_out(o.present_value.0, o.present_value.1, dt)?),
        ];
        v.push(match o.qk {
            Some((s, d)) => Value::from(k::f32_out(s, d, dt)?),
            None => Value::from(Tensor::zeros(dt, vec![0])?),
        });
        Ok(v)
    }
}

/// `RotaryEmbedding`: rotary position embedding (half-split or interleaved, partial
/// rotation, 3-D or 4-D input). Spec: https://onnx.ai/onnx/operators/onnx__RotaryEmbedding.html
#[derive(Debug)]
pub struct RotaryEmbedding {
    pub interleaved: bool,
    pub rotary_embedding_dim: usize,
    pub num_heads: Option<usize>,
}

fn parse_rotary(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let num_heads = opt_usize(cx, "num_heads")?;
    let r = cx.int_or("rotary_embedding_dim", 0)?;
    let rotary_embedding_dim = usize::try_from(r)
        .map_err(|_| Error::attr(format!("rotary_embedding_dim must be >= 0, got {r}")))?;
    Ok(Box::new(RotaryEmbedding {
        interleaved: cx.int_or("interleaved", 0)? != 0,
        rotary_embedding_dim,
        num_heads,
    }))
}

impl Op for RotaryEmbedding {
    op_common!("RotaryEmbedding");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let dt = float_dtype(x, "RotaryEmbedding")?;
        if let Some(r) = x.rank() {
            if r != 3 && r != 4 {
                return Err(Error::shape(format!(
                    "RotaryEmbedding: input must be 3-D or 4-D, got rank {r}"
                )));
            }
            if r == 3 && self.num_heads.is_none() {
                return Err(Error::attr("RotaryEmbedding: 3-D input needs num_heads"));
            }
        }
        if let Some(p) = cx.opt(3) {
            if let Some(d) = p.dtype {
                if d != DType::I64 {
                    return Err(Error::dtype(format!(
                        "RotaryEmbedding: position_ids must be int64, got {d}"
                    )));
                }
            }
        }
        Ok(vec![Fact::new(dt, x.shape.clone())])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let y = k::rotary_embedding(
            x,
            args.t(1)?,
            args.t(2)?,
            args.opt(3)?,
            self.interleaved,
            self.rotary_embedding_dim,
            self.num_heads,
        )?;
        Ok(vec![Value::from(k::f32_out(
            x.shape().to_vec(),
            y,
            x.dtype(),
        )?)])
    }
}

/// `CausalConvWithState`: depthwise causal 1-D convolution with a carried state and an
/// optional SiLU. Spec: https://onnx.ai/onnx/operators/onnx__CausalConvWithState.html
#[derive(Debug)]
pub struct CausalConvWithState {
    pub silu: bool,
}

fn parse_causal_conv(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let act = cx.string_or("activation", "none")?;
    let silu = match act.as_str() {
        "none" => false,
        "silu" | "swish" => true,
        other => {
            return Err(Error::attr(format!(
                "CausalConvWithState: unsupported activation '{other}'"
            )))
        }
    };
    Ok(Box::new(CausalConvWithState { silu }))
}

impl Op for CausalConvWithState {
    op_common!("CausalConvWithState");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let w = cx.input(1)?;
        let dt = float_dtype(x, "CausalConvWithState")?;
        float_dtype(w, "CausalConvWithState")?;
        if let Some(r) = x.rank() {
            if r != 3 {
                return Err(Error::shape(format!(
                    "CausalConvWithState: input must be 3-D, got rank {r}"
                )));
            }
        }
        let st = match dim(w, 2) {
            Dim::Known(kk) if kk >= 1 => Dim::Known(kk - 1),
            _ => Dim::Unknown,
        };
        let state = x.rank().map(|_| vec![dim(x, 0), dim(x, 1), st]);
        Ok(vec![Fact::new(dt, x.shape.clone()), Fact::new(dt, state)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let dt = x.dtype();
        let (y, ss, st) =
            k::causal_conv_with_state(x, args.t(1)?, args.opt(2)?, args.opt(3)?, self.silu)?;
        Ok(vec![
            Value::from(k::f32_out(x.shape().to_vec(), y, dt)?),
            Value::from(k::f32_out(ss, st, dt)?),
        ])
    }
}

/// `LinearAttention`: recurrent linear attention with linear, gated, delta or gated-delta
/// state updates. Spec: https://onnx.ai/onnx/operators/onnx__LinearAttention.html
#[derive(Debug)]
pub struct LinearAttention {
    pub rule: k::LinRule,
    pub q_num_heads: usize,
    pub kv_num_heads: usize,
    pub scale: f32,
}

fn parse_linear_attention(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    // chunk_size is a tuning hint with no effect on the result.
    cx.int_or("chunk_size", 64)?;
    let q_num_heads = opt_usize(cx, "q_num_heads")?
        .ok_or_else(|| Error::attr("LinearAttention needs q_num_heads"))?;
    let kv_num_heads = opt_usize(cx, "kv_num_heads")?
        .ok_or_else(|| Error::attr("LinearAttention needs kv_num_heads"))?;
    if q_num_heads % kv_num_heads != 0 {
        return Err(Error::attr(format!(
            "LinearAttention: q_num_heads {q_num_heads} is not a multiple of kv_num_heads {kv_num_heads}"
        )));
    }
    let scale = cx.float_or("scale", 0.0)?;
    let rule = match cx.string_or("update_rule", "gated_delta")?.as_str() {
        "linear" => k::LinRule {
            gating: false,
            delta: false,
        },
        "gated" => k::LinRule {
            gating: true,
            delta: false,
        },
        "delta" => k::LinRule {
            gating: false,
            delta: true,
        },
        "gated_delta" => k::LinRule {
            gating: true,
            delta: true,
        },
        other => {
            return Err(Error::attr(format!(
                "LinearAttention: unknown update_rule '{other}'"
            )))
        }
    };
    Ok(Box::new(LinearAttention {
        rule,
        q_num_heads,
        kv_num_heads,
        scale,
    }))
}

impl Op for LinearAttention {
    op_common!("LinearAttention");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let q = cx.input(0)?;
        let kf = cx.input(1)?;
        let v = cx.input(2)?;
        let dt = float_dtype(q, "LinearAttention")?;
        float_dtype(kf, "LinearAttention")?;
        float_dtype(v, "LinearAttention")?;
        for f in [q, kf, v] {
            if let Some(r) = f.rank() {
                if r != 3 {
                    return Err(Error::shape(format!(
                        "LinearAttention: inputs must be 3-D, got rank {r}"
                    )));
                }
            }
        }
        let (hq, hkv) = (self.q_num_heads, self.kv_num_heads);
        let dk = dim(q, 2)
            .known()
            .map_or(Dim::Unknown, |h| Dim::Known(h / hq));
        let dv = dim(v, 2)
            .known()
            .map_or(Dim::Unknown, |h| Dim::Known(h / hkv));
        let out_h = dim(v, 2)
            .known()
            .map_or(Dim::Unknown, |h| Dim::Known(h / hkv * hq));
        let st_dt = cx.opt(3).and_then(|f| f.dtype).or(dt);
        Ok(vec![
            Fact::new(dt, Some(vec![dim(q, 0), dim(q, 1), out_h])),
            Fact::new(st_dt, Some(vec![dim(q, 0), Dim::Known(hkv), dk, dv])),
        ])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let q = args.t(0)?;
        let dt = q.dtype();
        let past = args.opt(3)?;
        let scale = if self.scale == 0.0 {
            let dk = q.shape().get(2).copied().unwrap_or(0) / self.q_num_heads;
            1.0 / (dk.max(1) as f32).sqrt()
        } else {
            self.scale
        };
        let (yshape, y, ss, st) = k::linear_attention(
            self.rule,
            self.q_num_heads,
            self.kv_num_heads,
            scale,
            q,
            args.t(1)?,
            args.t(2)?,
            past,
            args.opt(4)?,
            args.opt(5)?,
        )?;
        Ok(vec![
            Value::from(k::f32_out(yshape, y, dt)?),
            Value::from(k::f32_out(ss, st, past.map_or(dt, |p| p.dtype()))?),
        ])
    }
}
