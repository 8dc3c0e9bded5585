//! Op family: text and leftovers. String ops (StringNormalizer, StringConcat, StringSplit,
//! RegexFullMatch, TfIdfVectorizer), Det, and the `ai.onnx.preview.training` optimizers
//! (Adagrad, Adam, Momentum). Op structs, attribute parsing and shape rules; kernels in
//! `crate::cpu::text`.

use super::{def, OpDef};
use crate::cpu::text as k;
use crate::error::{Error, Result};
use crate::graph::shape::broadcast_facts;
use crate::graph::{Args, Dim, Fact, InferCx, NodeCx, Op, RunCx, Value};
use crate::op_common;
use crate::tensor::DType;

const TRAINING: &str = "ai.onnx.preview.training";

pub const OPS: &[OpDef] = &[
    def("", "StringNormalizer", parse_string_normalizer),
    def("", "StringConcat", |_| Ok(Box::new(StringConcat))),
    def("", "StringSplit", parse_string_split),
    def("", "RegexFullMatch", parse_regex_full_match),
    def("", "TfIdfVectorizer", parse_tfidf),
    def("", "Det", |_| Ok(Box::new(Det))),
    def(TRAINING, "Adagrad", parse_adagrad),
    def(TRAINING, "Adam", parse_adam),
    def(TRAINING, "Momentum", parse_momentum),
];

fn want_dtype(f: &Fact, dt: DType, what: &str) -> Result<()> {
    match f.dtype {
        Some(d) if d != dt => Err(Error::dtype(format!("{what}: expected {dt}, got {d}"))),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------
// StringNormalizer
// ---------------------------------------------------------------------------------------

/// `StringNormalizer`: case change and stopword removal on a [C] or [1, C] string tensor.
/// <https://onnx.ai/onnx/operators/onnx__StringNormalizer.html>
#[derive(Debug)]
pub struct StringNormalizer {
    pub opts: k::NormalizerOpts,
}

fn parse_string_normalizer(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let case = match cx.string_or("case_change_action", "NONE")?.as_str() {
        "NONE" => k::CaseChange::None,
        "LOWER" => k::CaseChange::Lower,
        "UPPER" => k::CaseChange::Upper,
        other => {
            return Err(Error::attr(format!(
                "StringNormalizer: unknown case_change_action '{other}'"
            )))
        }
    };
    let case_sensitive = cx.int_or("is_case_sensitive", 0)? != 0;
    let locale = cx.string_or("locale", "")?;
    // Rust's Unicode case mapping is the locale-independent one; locales with special
    // case rules (Turkish dotless i, Azeri, Lithuanian) would differ.
    let lang = locale
        .split(['_', '-', '.'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    if matches!(lang.as_str(), "tr" | "az" | "lt") {
        return Err(Error::unsupported_op(format!(
            "StringNormalizer: locale '{locale}' has special case rules"
        )));
    }
    let stopwords = cx.strings("stopwords")?.unwrap_or_default();
    Ok(Box::new(StringNormalizer {
        opts: k::NormalizerOpts::new(case, case_sensitive, stopwords),
    }))
}

impl Op for StringNormalizer {
    op_common!("StringNormalizer");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        want_dtype(x, DType::Str, "StringNormalizer")?;
        let shape = match x.rank() {
            None => None,
            Some(1) => Some(vec![Dim::Unknown]),
            Some(2) => {
                if let Some(Dim::Known(n)) = x.shape.as_ref().and_then(|s| s.first()) {
                    if *n != 1 {
                        return Err(Error::shape(
                            "StringNormalizer: a 2-D input must have shape [1, C]",
                        ));
                    }
                }
                Some(vec![Dim::Known(1), Dim::Unknown])
            }
            Some(r) => {
                return Err(Error::shape(format!(
                    "StringNormalizer: input must be [C] or [1, C], got rank {r}"
                )))
            }
        };
        Ok(vec![Fact::new(Some(DType::Str), shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        Ok(vec![k::string_normalizer(args.t(0)?, &self.opts)?.into()])
    }
}

// ---------------------------------------------------------------------------------------
// StringConcat
// ---------------------------------------------------------------------------------------

/// `StringConcat`: elementwise concatenation of two string tensors, with broadcasting.
/// <https://onnx.ai/onnx/operators/onnx__StringConcat.html>
#[derive(Debug)]
pub struct StringConcat;

impl Op for StringConcat {
    op_common!("StringConcat");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let (a, b) = (cx.input(0)?, cx.input(1)?);
        want_dtype(a, DType::Str, "StringConcat")?;
        want_dtype(b, DType::Str, "StringConcat")?;
        Ok(vec![Fact::new(Some(DType::Str), broadcast_facts(&[a, b])?)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        Ok(vec![k::string_concat(args.t(0)?, args.t(1)?)?.into()])
    }
}

// ---------------------------------------------------------------------------------------
// StringSplit
// ---------------------------------------------------------------------------------------

/// `StringSplit`: splits each string on a delimiter (or runs of whitespace), padding the
/// substrings to the longest split; also returns the per-element counts.
/// <https://onnx.ai/onnx/operators/onnx__StringSplit.html>
#[derive(Debug)]
pub struct StringSplit {
    /// None: split on runs of whitespace (Python `str.split()`).
    pub delimiter: Option<String>,
    /// None: unlimited.
    pub maxsplit: Option<usize>,
}

fn parse_string_split(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let delimiter = cx.string("delimiter")?.filter(|d| !d.is_empty());
    let maxsplit = match cx.int("maxsplit")? {
        Some(m) if m >= 0 => Some(usize::try_from(m).unwrap_or(usize::MAX)),
        _ => None,
    };
    Ok(Box::new(StringSplit {
        delimiter,
        maxsplit,
    }))
}

impl Op for StringSplit {
    op_common!("StringSplit");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        want_dtype(x, DType::Str, "StringSplit")?;
        let subs = x.shape.as_ref().map(|s| {
            let mut s = s.clone();
            s.push(Dim::Unknown);
            s
        });
        Ok(vec![
            Fact::new(Some(DType::Str), subs),
            Fact::new(Some(DType::I64), x.shape.clone()),
        ])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let (subs, counts) = k::string_split(args.t(0)?, self.delimiter.as_deref(), self.maxsplit)?;
        Ok(vec![subs.into(), counts.into()])
    }
}

// ---------------------------------------------------------------------------------------
// RegexFullMatch
// ---------------------------------------------------------------------------------------

/// `RegexFullMatch`: whether each string fully matches an RE2-style pattern (a small
/// backtracking matcher: literals, `.`, classes, `\w\W\d\D\s\S\b\B`, groups with `|`,
/// `* + ? {m,n}` (greedy and lazy), `^ $`).
/// <https://onnx.ai/onnx/operators/onnx__RegexFullMatch.html>
#[derive(Debug)]
pub struct RegexFullMatch {
    pub regex: k::Regex,
}

fn parse_regex_full_match(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let pattern = cx
        .string("pattern")?
        .ok_or_else(|| Error::attr("RegexFullMatch needs a 'pattern' attribute"))?;
    Ok(Box::new(RegexFullMatch {
        regex: k::Regex::new(&pattern)?,
    }))
}

impl Op for RegexFullMatch {
    op_common!("RegexFullMatch");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        want_dtype(x, DType::Str, "RegexFullMatch")?;
        Ok(vec![Fact::new(Some(DType::Bool), x.shape.clone())])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        Ok(vec![k::regex_full_match(args.t(0)?, &self.regex)?.into()])
    }
}

// ---------------------------------------------------------------------------------------
// TfIdfVectorizer
// ---------------------------------------------------------------------------------------

/// `TfIdfVectorizer`: n-gram (with skips) counts of int or string sequences, weighted
/// TF, IDF or TF-IDF.
/// <https://onnx.ai/onnx/operators/onnx__TfIdfVectorizer.html>
#[derive(Debug)]
pub struct TfIdfVectorizer {
    pub model: k::TfIdf,
}

fn parse_tfidf(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let max_gram = cx.req_int("max_gram_length")?;
    let min_gram = cx.req_int("min_gram_length")?;
    let max_skip = cx.req_int("max_skip_count")?;
    let mode = match cx
        .string("mode")?
        .ok_or_else(|| Error::attr("TfIdfVectorizer needs 'mode'"))?
        .as_str()
    {
        "TF" => k::TfIdfMode::Tf,
        "IDF" => k::TfIdfMode::Idf,
        "TFIDF" => k::TfIdfMode::TfIdf,
        other => {
            return Err(Error::attr(format!(
                "TfIdfVectorizer: unknown mode '{other}'"
            )))
        }
    };
    let ngram_counts = cx
        .ints("ngram_counts")?
        .ok_or_else(|| Error::attr("TfIdfVectorizer needs 'ngram_counts'"))?;
    let ngram_indexes = cx
        .ints("ngram_indexes")?
        .ok_or_else(|| Error::attr("TfIdfVectorizer needs 'ngram_indexes'"))?;
    let pool_ints = cx.ints("pool_int64s")?;
    let pool_strings = cx.strings("pool_strings")?;
    let weights = cx.floats("weights")?;
    let pool = match (pool_ints, pool_strings) {
        (Some(p), None) => k::Pool::Ints(p),
        (None, Some(p)) => k::Pool::Strings(p),
        _ => {
            return Err(Error::attr(
                "TfIdfVectorizer needs exactly one of pool_int64s and pool_strings",
            ))
        }
    };
    Ok(Box::new(TfIdfVectorizer {
        model: k::TfIdf::new(k::TfIdfSpec {
            max_gram,
            min_gram,
            max_skip,
            mode,
            ngram_counts,
            ngram_indexes,
            pool,
            weights,
        })?,
    }))
}

impl Op for TfIdfVectorizer {
    op_common!("TfIdfVectorizer");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        if let Some(dt) = x.dtype {
            let ok = match self.model.pool() {
                k::Pool::Ints(_) => matches!(dt, DType::I32 | DType::I64),
                k::Pool::Strings(_) => dt == DType::Str,
            };
            if !ok {
                return Err(Error::dtype(format!(
                    "TfIdfVectorizer: input type {dt} does not match the pool"
                )));
            }
        }
        let n = Dim::Known(self.model.output_size());
        let shape = match &x.shape {
            None => None,
            Some(s) if s.len() <= 1 => Some(vec![n]),
            Some(s) if s.len() == 2 => Some(vec![s[0].clone(), n]),
            Some(s) => {
                return Err(Error::shape(format!(
                    "TfIdfVectorizer: input must be [C] or [B, C], got rank {}",
                    s.len()
                )))
            }
        };
        Ok(vec![Fact::new(Some(DType::F32), shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        Ok(vec![self.model.run(args.t(0)?)?.into()])
    }
}

// ---------------------------------------------------------------------------------------
// Det
// ---------------------------------------------------------------------------------------

/// `Det`: determinant of square matrices [..., M, M] (LU with partial pivoting).
/// <https://onnx.ai/onnx/operators/onnx__Det.html>
#[derive(Debug)]
pub struct Det;

impl Op for Det {
    op_common!("Det");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        if let Some(dt) = x.dtype {
            if !dt.is_float() {
                return Err(Error::dtype(format!("Det does not support {dt}")));
            }
        }
        let shape = match &x.shape {
            None => None,
            Some(s) if s.len() < 2 => {
                return Err(Error::shape("Det: input must have rank >= 2"));
            }
            Some(s) => {
                let (a, b) = (&s[s.len() - 2], &s[s.len() - 1]);
                if let (Dim::Known(a), Dim::Known(b)) = (a, b) {
                    if a != b {
                        return Err(Error::shape(format!(
                            "Det: matrices must be square, got {a}x{b}"
                        )));
                    }
                }
                Some(s[..s.len() - 2].to_vec())
            }
        };
        Ok(vec![Fact::new(x.dtype, shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        Ok(vec![k::det(args.t(0)?)?.into()])
    }
}

// ---------------------------------------------------------------------------------------
// Training optimizers (ai.onnx.preview.training)
// ---------------------------------------------------------------------------------------

/// Optimizer inputs are R, T, then `groups` blocks of `n` tensors each; outputs are
/// `groups - 1` blocks (X and the state tensors: everything but G).
fn optimizer_infer(cx: &InferCx, groups: usize, what: &str) -> Result<Vec<Fact>> {
    let n_in = cx.inputs.len();
    if n_in < 2 + groups || !(n_in - 2).is_multiple_of(groups) {
        return Err(Error::invalid_model(format!(
            "{what}: expected 2 + {groups}*N inputs, got {n_in}"
        )));
    }
    let n = (n_in - 2) / groups;
    let mut out = Vec::with_capacity(n * (groups - 1));
    for g in (0..groups).filter(|&g| g != 1) {
        for i in 0..n {
            let f = cx.input(2 + g * n + i)?;
            out.push(Fact::new(f.dtype, f.shape.clone()));
        }
    }
    Ok(out)
}

/// `Adagrad` (ai.onnx.preview.training): one Adagrad step for N tensors.
/// <https://onnx.ai/onnx/operators/onnx_aionnxpreviewtraining_Adagrad.html>
#[derive(Debug)]
pub struct Adagrad {
    pub decay_factor: f64,
    pub epsilon: f64,
    pub norm_coefficient: f64,
}

fn parse_adagrad(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    Ok(Box::new(Adagrad {
        decay_factor: f64::from(cx.float_or("decay_factor", 0.0)?),
        epsilon: f64::from(cx.float_or("epsilon", 0.0)?),
        norm_coefficient: f64::from(cx.float_or("norm_coefficient", 0.0)?),
    }))
}

impl Op for Adagrad {
    op_common!("Adagrad");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        optimizer_infer(cx, 3, "Adagrad")
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let out = k::optimizer(args, 3, "Adagrad", |r, t, ins, outs| {
            let r = r / (1.0 + t * self.decay_factor);
            let (x, g, h) = (ins[0], ins[1], ins[2]);
            let gr = self.norm_coefficient * x + g;
            let h_new = h + gr * gr;
            outs[0] = x - r * gr / (h_new.sqrt() + self.epsilon);
            outs[1] = h_new;
        })?;
        Ok(out.into_iter().map(Value::from).collect())
    }
}

/// `Adam` (ai.onnx.preview.training): one Adam step for N tensors.
/// <https://onnx.ai/onnx/operators/onnx_aionnxpreviewtraining_Adam.html>
#[derive(Debug)]
pub struct Adam {
    pub alpha: f64,
    pub beta: f64,
    pub epsilon: f64,
    pub norm_coefficient: f64,
    pub norm_coefficient_post: f64,
}

fn parse_adam(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    Ok(Box::new(Adam {
        alpha: f64::from(cx.float_or("alpha", 0.9)?),
        beta: f64::from(cx.float_or("beta", 0.999)?),
        epsilon: f64::from(cx.float_or("epsilon", 0.0)?),
        norm_coefficient: f64::from(cx.float_or("norm_coefficient", 0.0)?),
        norm_coefficient_post: f64::from(cx.float_or("norm_coefficient_post", 0.0)?),
    }))
}

impl Op for Adam {
    op_common!("Adam");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        optimizer_infer(cx, 4, "Adam")
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let out = k::optimizer(args, 4, "Adam", |r, t, ins, outs| {
            let (x, g, v, h) = (ins[0], ins[1], ins[2], ins[3]);
            let gr = self.norm_coefficient * x + g;
            let v_new = self.alpha * v + (1.0 - self.alpha) * gr;
            let h_new = self.beta * h + (1.0 - self.beta) * gr * gr;
            let r = if t > 0.0 {
                r * (1.0 - self.beta.powf(t)).sqrt() / (1.0 - self.alpha.powf(t))
            } else {
                r
            };
            let x_new = x - r * (v_new / (h_new.sqrt() + self.epsilon));
            outs[0] = (1.0 - self.norm_coefficient_post) * x_new;
            outs[1] = v_new;
            outs[2] = h_new;
        })?;
        Ok(out.into_iter().map(Value::from).collect())
    }
}

/// `Momentum` (ai.onnx.preview.training): one SGD-with-momentum step (standard or
/// Nesterov) for N tensors.
/// <https://onnx.ai/onnx/operators/onnx_aionnxpreviewtraining_Momentum.html>
#[derive(Debug)]
pub struct Momentum {
    pub alpha: f64,
    pub beta: f64,
    pub nesterov: bool,
    pub norm_coefficient: f64,
}

fn parse_momentum(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let req = |name: &str| -> Result<f64> {
        cx.float(name)?
            .map(f64::from)
            .ok_or_else(|| Error::attr(format!("Momentum needs '{name}'")))
    };
    let alpha = req("alpha")?;
    let beta = req("beta")?;
    let norm_coefficient = req("norm_coefficient")?;
    let nesterov = match cx.string("mode")?.as_deref() {
        Some("standard") => false,
        Some("nesterov") => true,
        Some(other) => {
            return Err(Error::attr(format!("Momentum: unknown mode '{other}'")));
        }
        None => return Err(Error::attr("Momentum needs 'mode'")),
    };
    Ok(Box::new(Momentum {
        alpha,
        beta,
        nesterov,
        norm_coefficient,
    }))
}

impl Op for Momentum {
    op_common!("Momentum");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        optimizer_infer(cx, 3, "Momentum")
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let out = k::optimizer(args, 3, "Momentum", |r, t, ins, outs| {
            let (x, g, v) = (ins[0], ins[1], ins[2]);
            let gr = self.norm_coefficient * x + g;
            let beta = if t > 0.0 { self.beta } else { 1.0 };
            let v_new = self.alpha * v + beta * gr;
            outs[0] = if self.nesterov {
                x - r * (gr + self.alpha * v_new)
            } else {
                x - r * v_new
            };
            outs[1] = v_new;
        })?;
        Ok(out.into_iter().map(Value::from).collect())
    }
}
