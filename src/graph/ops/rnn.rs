//! Op family: rnn. Op structs, attribute parsing and shape rules; kernels in `crate::cpu::rnn`.
//!
//! LSTM, GRU and RNN share their attributes ([`RnnParams`]) and driver. Each op caches its
//! weights in the kernel's layout (transposed, biases summed), keyed by the identity of
//! the W/R/B/P values, so constant weights are prepared once per model, not per call.

use super::{def, OpDef};
use crate::cpu::rnn::{
    prepare_weights, run_rnn, Act, CellKind, Direction, PreparedWeights, RnnParams, Want,
};
use crate::error::{Error, Result};
use crate::graph::{Args, Dim, Fact, InferCx, NodeCx, Op, RunCx, Value};
use crate::tensor::{DType, Tensor};
use std::fmt;
use std::sync::{Arc, Mutex};

pub const OPS: &[OpDef] = &[
    def("", "LSTM", parse_lstm),
    def("", "GRU", parse_gru),
    def("", "RNN", parse_rnn),
];

/// The W/R/B/P inputs a preparation came from (None where omitted).
type CacheKey = Vec<Option<Arc<Tensor>>>;

/// Prepared weights of the last call, with the W/R/B/P values they came from.
#[derive(Default)]
pub struct WeightCache {
    slot: Mutex<Option<(CacheKey, Arc<PreparedWeights>)>>,
}

impl fmt::Debug for WeightCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WeightCache")
    }
}

/// The tensor behind input `i` when it is held as an `Arc` (for identity checks).
fn arc_input(args: &Args, i: usize) -> Option<Arc<Tensor>> {
    match args.value(i) {
        Some(Value::Tensor(t)) => Some(t.clone()),
        _ => None,
    }
}

impl WeightCache {
    /// Prepared weights for inputs W=1, R=2, B=3 and P=`peep_idx` (if any), reusing the
    /// last ones when the same tensors come again.
    fn get(
        &self,
        p: &RnnParams,
        args: &Args,
        peep_idx: Option<usize>,
    ) -> Result<Arc<PreparedWeights>> {
        let w = args.t(1)?;
        let r = args.t(2)?;
        let b = args.opt(3)?;
        let pp = match peep_idx {
            Some(i) => args.opt(i)?,
            None => None,
        };
        let mut key: CacheKey = vec![arc_input(args, 1), arc_input(args, 2), arc_input(args, 3)];
        if let Some(i) = peep_idx {
            key.push(arc_input(args, i));
        }
        // Cacheable only when every present input is held by an Arc.
        let cacheable = key[0].is_some()
            && key[1].is_some()
            && (b.is_none() || key[2].is_some())
            && (pp.is_none() || key.get(3).is_some_and(|k| k.is_some()));
        if cacheable {
            if let Ok(guard) = self.slot.lock() {
                if let Some((k, pw)) = guard.as_ref() {
                    // Same tensors (constants), or equal contents: weights recomputed by
                    // nodes that constant folding did not reach (e.g. inside an If).
                    let same = k.len() == key.len()
                        && k.iter().zip(&key).all(|(a, b)| match (a, b) {
                            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                            (None, None) => true,
                            _ => false,
                        });
                    let equal = same
                        || (k.len() == key.len()
                            && k.iter().zip(&key).all(|(a, b)| match (a, b) {
                                (Some(a), Some(b)) => a.as_ref() == b.as_ref(),
                                (None, None) => true,
                                _ => false,
                            }));
                    if equal {
                        return Ok(pw.clone());
                    }
                }
            }
        }
        let pw = Arc::new(prepare_weights(p, w, r, b, pp)?);
        if cacheable {
            if let Ok(mut guard) = self.slot.lock() {
                *guard = Some((key, pw.clone()));
            }
        }
        Ok(pw)
    }
}

/// Reads the attributes shared by LSTM, GRU and RNN.
fn parse_common(cx: &mut NodeCx, kind: CellKind) -> Result<RnnParams> {
    let name = kind.name();
    let direction = match cx.string_or("direction", "forward")?.as_str() {
        "forward" => Direction::Forward,
        "reverse" => Direction::Reverse,
        "bidirectional" => Direction::Bidirectional,
        other => return Err(Error::attr(format!("{name}: unknown direction '{other}'"))),
    };
    let hidden_size = match cx.int("hidden_size")? {
        None => None,
        Some(h) => Some(usize::try_from(h).ok().filter(|&h| h > 0).ok_or_else(|| {
            Error::attr(format!("{name}: hidden_size must be positive, got {h}"))
        })?),
    };
    let clip = match cx.float("clip")? {
        None => None,
        Some(c) if c > 0.0 => Some(c),
        Some(c) => {
            return Err(Error::attr(format!(
                "{name}: clip must be positive, got {c}"
            )))
        }
    };
    let layout = if cx.opset >= 14 {
        cx.int_or("layout", 0)?
    } else {
        0
    };
    if layout != 0 && layout != 1 {
        return Err(Error::attr(format!(
            "{name}: layout must be 0 or 1, got {layout}"
        )));
    }
    if cx.opset < 7 {
        // Removed in opset 7; whether Y is produced follows the node's outputs anyway.
        cx.int("output_sequence")?;
    }
    let nd = direction.count();
    let per = kind.n_activations();
    let alphas = cx.floats("activation_alpha")?.unwrap_or_default();
    let betas = cx.floats("activation_beta")?.unwrap_or_default();
    let names = cx.strings("activations")?.unwrap_or_else(|| {
        let one: &[&str] = match kind {
            CellKind::Lstm => &["Sigmoid", "Tanh", "Tanh"],
            CellKind::Gru { .. } => &["Sigmoid", "Tanh"],
            CellKind::Rnn => &["Tanh"],
        };
        one.iter().map(|s| s.to_string()).collect()
    });
    let mut ai = alphas.into_iter();
    let mut bi = betas.into_iter();
    let parsed = names
        .iter()
        .map(|n| Act::parse(n, &mut ai, &mut bi))
        .collect::<Result<Vec<Act>>>()?;
    if parsed.len() < per {
        return Err(Error::attr(format!(
            "{name}: needs {per} activations per direction, got {}",
            parsed.len()
        )));
    }
    let mut activations = Vec::with_capacity(nd);
    for d in 0..nd {
        // A list for one direction is reused for both (as onnxruntime does).
        let base = if parsed.len() >= per * nd { d * per } else { 0 };
        let mut a = [Act::Tanh; 3];
        a[..per].copy_from_slice(&parsed[base..base + per]);
        activations.push(a);
    }
    Ok(RnnParams {
        kind,
        direction,
        hidden_size,
        activations,
        clip,
        input_forget: false,
        batch_first: layout == 1,
    })
}

/// Which outputs the node names; more outputs than the op has is a model error.
fn wanted(cx: &NodeCx, kind: CellKind) -> Result<Want> {
    let max = if kind == CellKind::Lstm { 3 } else { 2 };
    if cx.n_outputs() > max {
        return Err(Error::invalid_model(format!(
            "{} has at most {max} outputs, the node lists {}",
            kind.name(),
            cx.n_outputs()
        )));
    }
    Ok(Want {
        y: cx.has_output(0),
        y_h: cx.has_output(1),
        y_c: cx.has_output(2),
    })
}

fn parse_lstm(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let mut params = parse_common(cx, CellKind::Lstm)?;
    params.input_forget = match cx.int_or("input_forget", 0)? {
        0 => false,
        1 => true,
        v => {
            return Err(Error::attr(format!(
                "LSTM: input_forget must be 0 or 1, got {v}"
            )))
        }
    };
    Ok(Box::new(Lstm {
        params,
        want: wanted(cx, CellKind::Lstm)?,
        cache: WeightCache::default(),
    }))
}

fn parse_gru(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let lbr = if cx.opset >= 3 {
        cx.int_or("linear_before_reset", 0)?
    } else {
        0
    };
    let linear_before_reset = match lbr {
        0 => false,
        1 => true,
        v => {
            return Err(Error::attr(format!(
                "GRU: linear_before_reset must be 0 or 1, got {v}"
            )))
        }
    };
    let params = parse_common(
        cx,
        CellKind::Gru {
            linear_before_reset,
        },
    )?;
    Ok(Box::new(Gru {
        want: wanted(cx, params.kind)?,
        params,
        cache: WeightCache::default(),
    }))
}

fn parse_rnn(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let params = parse_common(cx, CellKind::Rnn)?;
    Ok(Box::new(Rnn {
        want: wanted(cx, CellKind::Rnn)?,
        params,
        cache: WeightCache::default(),
    }))
}

/// Shape rule shared by the three ops.
fn infer_rnn(p: &RnnParams, cx: &InferCx) -> Result<Vec<Fact>> {
    let name = p.kind.name();
    let x = cx.input(0)?;
    let w = cx.input(1)?;
    let r = cx.input(2)?;
    let mut dt = crate::graph::same_dtype(&[x, w, r], name)?;
    for i in [3usize, 5, 6, 7] {
        if let Some(f) = cx.opt(i) {
            if i >= 6 && p.kind != CellKind::Lstm {
                return Err(Error::input(format!("{name} takes at most 6 inputs")));
            }
            dt = crate::graph::same_dtype(&[x, f], name)?.or(dt);
        }
    }
    if let Some(d) = dt {
        if !d.is_float() {
            return Err(Error::dtype(format!("{name} needs float inputs, got {d}")));
        }
    }
    if let Some(sl) = cx.opt(4) {
        if let Some(d) = sl.dtype {
            if d != DType::I32 {
                return Err(Error::dtype(format!(
                    "{name}: sequence_lens must be int32, got {d}"
                )));
            }
        }
    }
    for (f, what) in [(x, "X"), (w, "W"), (r, "R")] {
        if let Some(rk) = f.rank() {
            if rk != 3 {
                return Err(Error::shape(format!(
                    "{name}: {what} must be 3-D, got rank {rk}"
                )));
            }
        }
    }
    let nd = p.direction.count();
    let g = p.kind.gates();
    let dim = |f: &Fact, i: usize| -> Dim {
        f.shape
            .as_ref()
            .and_then(|s| s.get(i).cloned())
            .unwrap_or(Dim::Unknown)
    };
    let hidden = match p.hidden_size {
        Some(h) => Dim::Known(h),
        None => dim(r, 2),
    };
    if let (Some(h), Some(rs)) = (hidden.known(), r.concrete_shape()) {
        let gh = g.saturating_mul(h);
        if rs != [nd, gh, h] {
            return Err(Error::shape(format!(
                "{name}: R has shape {rs:?}, expected [{nd}, {gh}, {h}]"
            )));
        }
    }
    if let (Some(h), Some(ws)) = (hidden.known(), w.concrete_shape()) {
        let gh = g.saturating_mul(h);
        if ws[0] != nd || ws[1] != gh {
            return Err(Error::shape(format!(
                "{name}: W has shape {ws:?}, expected [{nd}, {gh}, input]"
            )));
        }
        if let Some(xi) = dim(x, 2).known() {
            if xi != ws[2] {
                return Err(Error::shape(format!(
                    "{name}: X has input size {xi}, W expects {}",
                    ws[2]
                )));
            }
        }
    }
    let (seq, batch) = if p.batch_first {
        (dim(x, 1), dim(x, 0))
    } else {
        (dim(x, 0), dim(x, 1))
    };
    let ndd = Dim::Known(nd);
    let (y, st) = if p.batch_first {
        (
            vec![batch.clone(), seq, ndd.clone(), hidden.clone()],
            vec![batch, ndd, hidden],
        )
    } else {
        (
            vec![seq, ndd.clone(), batch.clone(), hidden.clone()],
            vec![ndd, batch, hidden],
        )
    };
    let mut outs = vec![Fact::new(dt, Some(y)), Fact::new(dt, Some(st.clone()))];
    if p.kind == CellKind::Lstm {
        outs.push(Fact::new(dt, Some(st)));
    }
    Ok(outs)
}

/// Runs the kernel and lays the outputs out as the node expects.
fn run_common(p: &RnnParams, want: Want, cache: &WeightCache, args: &Args) -> Result<Vec<Value>> {
    let is_lstm = p.kind == CellKind::Lstm;
    let pw = cache.get(p, args, if is_lstm { Some(7) } else { None })?;
    let x = args.t(0)?;
    let c0 = if is_lstm { args.opt(6)? } else { None };
    let out = run_rnn(p, &pw, x, args.opt(4)?, args.opt(5)?, c0, want)?;
    let empty = || Value::from(Tensor::vector(Vec::<f32>::new()));
    let mut v = vec![
        out.y.map_or_else(empty, Value::from),
        out.y_h.map_or_else(empty, Value::from),
    ];
    if is_lstm {
        v.push(out.y_c.map_or_else(empty, Value::from));
    }
    Ok(v)
}

macro_rules! rnn_op {
    ($(#[$doc:meta])* $ty:ident, $name:expr) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $ty {
            pub params: RnnParams,
            /// Which of Y, Y_h, Y_c the node reads.
            pub want: Want,
            cache: WeightCache,
        }

        impl Op for $ty {
            crate::op_common!($name);
            fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
                infer_rnn(&self.params, cx)
            }
            fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
                run_common(&self.params, self.want, &self.cache, args)
            }
        }
    };
}

rnn_op!(
    /// `LSTM`: long short-term memory layer, all directions, activations, peepholes
    /// and layouts. Spec: https://onnx.ai/onnx/operators/onnx__LSTM.html
    Lstm,
    "LSTM"
);
rnn_op!(
    /// `GRU`: gated recurrent unit layer (both `linear_before_reset` variants).
    /// Spec: https://onnx.ai/onnx/operators/onnx__GRU.html
    Gru,
    "GRU"
);
rnn_op!(
    /// `RNN`: simple (Elman) recurrent layer. Spec: https://onnx.ai/onnx/operators/onnx__RNN.html
    Rnn,
    "RNN"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_cache_reuses_prepared_weights() {
        let p = RnnParams {
            kind: CellKind::Rnn,
            direction: Direction::Forward,
            hidden_size: None,
            activations: vec![[Act::Tanh; 3]],
            clip: None,
            input_forget: false,
            batch_first: false,
        };
        let x = Value::from(Tensor::from_vec(vec![1, 1, 2], vec![1f32, 2.]).unwrap());
        let w = Value::from(Tensor::from_vec(vec![1, 1, 2], vec![0.5f32, 0.25]).unwrap());
        let r = Value::from(Tensor::from_vec(vec![1, 1, 1], vec![1f32]).unwrap());
        let cache = WeightCache::default();
        let ins = [Some(&x), Some(&w), Some(&r)];
        let args = Args {
            inputs: &ins,
            implicit: &[],
        };
        let a = cache.get(&p, &args, None).unwrap();
        let b = cache.get(&p, &args, None).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        // Equal contents in a fresh tensor also hit.
        let w2 = Value::from(Tensor::from_vec(vec![1, 1, 2], vec![0.5f32, 0.25]).unwrap());
        let ins2 = [Some(&x), Some(&w2), Some(&r)];
        let args2 = Args {
            inputs: &ins2,
            implicit: &[],
        };
        assert!(Arc::ptr_eq(&a, &cache.get(&p, &args2, None).unwrap()));
        // Different contents miss.
        let w3 = Value::from(Tensor::from_vec(vec![1, 1, 2], vec![1f32, 0.25]).unwrap());
        let ins3 = [Some(&x), Some(&w3), Some(&r)];
        let args3 = Args {
            inputs: &ins3,
            implicit: &[],
        };
        let c = cache.get(&p, &args3, None).unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(c.dirs[0].w_t, vec![1.0, 0.25]);
        let out = run_common(
            &p,
            Want {
                y: true,
                y_h: true,
                y_c: false,
            },
            &cache,
            &args3,
        )
        .unwrap();
        assert_eq!(out.len(), 2);
    }
}
