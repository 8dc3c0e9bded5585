//! CPU kernels for the ml family (ops in `crate::graph::ops::ml`, domain "ai.onnx.ml").
//!
//! Where the ONNX reference and onnxruntime differ (binary classifiers, post transforms,
//! tree aggregation with base values), these kernels follow onnxruntime.

use crate::cpu::gemm::sgemm;
use crate::error::{Error, Result};
use crate::tensor::{alloc_vec, numel, DType, Num, Tensor};
use std::collections::HashMap;

// ---------------------------------------------------------------------------------------
// Post transforms (onnxruntime `ml_common.h` semantics)
// ---------------------------------------------------------------------------------------

/// Score post transform of classifiers and regressors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostTransform {
    None,
    Logistic,
    Softmax,
    SoftmaxZero,
    Probit,
}

impl PostTransform {
    /// From the string attribute of the legacy ops.
    pub fn from_name(s: &str) -> Result<PostTransform> {
        Ok(match s {
            "NONE" => PostTransform::None,
            "LOGISTIC" => PostTransform::Logistic,
            "SOFTMAX" => PostTransform::Softmax,
            "SOFTMAX_ZERO" => PostTransform::SoftmaxZero,
            "PROBIT" => PostTransform::Probit,
            _ => return Err(Error::attr(format!("unknown post_transform '{s}'"))),
        })
    }
    /// From the integer attribute of TreeEnsemble (opset 5). The spec lists SOFTMAX=1,
    /// LOGISTIC=2, but onnxruntime 1.32 reads the code through its own enum order
    /// (1 = LOGISTIC, 2 = SOFTMAX); we follow onnxruntime, which models are tested on.
    pub fn from_code(v: i64) -> Result<PostTransform> {
        Ok(match v {
            0 => PostTransform::None,
            1 => PostTransform::Logistic,
            2 => PostTransform::Softmax,
            3 => PostTransform::SoftmaxZero,
            4 => PostTransform::Probit,
            _ => return Err(Error::attr(format!("unknown post_transform {v}"))),
        })
    }
}

#[inline]
pub fn logistic(v: f32) -> f32 {
    let e = 1.0 / (1.0 + (-v.abs()).exp());
    if v < 0.0 {
        1.0 - e
    } else {
        e
    }
}

fn erf_inv(x: f32) -> f32 {
    let sgn = if x < 0.0 { -1.0 } else { 1.0 };
    let x = (1.0 - x) * (1.0 + x);
    let log = x.ln();
    let v = 2.0 / (std::f32::consts::PI * 0.147) + 0.5 * log;
    let v2 = 1.0 / 0.147 * log;
    let v3 = -v + (v * v - v2).sqrt();
    sgn * v3.sqrt()
}

#[inline]
pub fn probit(v: f32) -> f32 {
    std::f32::consts::SQRT_2 * erf_inv(2.0 * v - 1.0)
}

pub fn softmax(v: &mut [f32]) {
    let max = v.iter().copied().fold(f32::MIN, f32::max);
    let mut sum = 0.0;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    v.iter_mut().for_each(|x| *x /= sum);
}

/// Softmax that leaves (near-)zero scores at zero weight.
pub fn softmax_zero(v: &mut [f32]) {
    let max = v.iter().copied().fold(f32::MIN, f32::max);
    let exp_neg_max = (-max).exp();
    let mut sum = 0.0;
    for x in v.iter_mut() {
        if *x > 0.000_000_1 || *x < -0.000_000_1 {
            *x = (*x - max).exp();
            sum += *x;
        } else {
            *x *= exp_neg_max;
        }
    }
    v.iter_mut().for_each(|x| *x /= sum);
}

/// Applies a post transform to a row of two or more scores.
fn transform_row(v: &mut [f32], post: PostTransform) {
    match post {
        PostTransform::None => {}
        PostTransform::Probit => v.iter_mut().for_each(|x| *x = probit(*x)),
        PostTransform::Logistic => v.iter_mut().for_each(|x| *x = logistic(*x)),
        PostTransform::Softmax => softmax(v),
        PostTransform::SoftmaxZero => softmax_zero(v),
    }
}

/// Expands one binary score into two (onnxruntime `add_second_class` codes 0..3).
fn second_class(score: f32, post: PostTransform, code: i32) -> [f32; 2] {
    match code {
        0 | 1 => [1.0 - score, score],
        2 | 3 if post == PostTransform::Logistic => [logistic(-score), logistic(score)],
        2 | 3 => [-score, score],
        _ => [score, 0.0],
    }
}

/// onnxruntime's `write_scores`: transforms `scores` (1 or more) and writes them to `z`.
fn write_scores(scores: &mut [f32], post: PostTransform, code: i32, z: &mut [f32]) {
    if scores.len() >= 2 {
        transform_row(scores, post);
        for (o, s) in z.iter_mut().zip(scores.iter()) {
            *o = *s;
        }
    } else if let Some(&s) = scores.first() {
        let pair = if post == PostTransform::Probit {
            [probit(s), 0.0]
        } else {
            second_class(s, post, code)
        };
        for (o, s) in z.iter_mut().zip(pair) {
            *o = s;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------

/// Input as f32 (float, double, int32, int64 accepted).
fn to_f32(x: &Tensor, op: &str) -> Result<Vec<f32>> {
    match x.dtype() {
        DType::F32 => Ok(x.as_slice::<f32>()?.to_vec()),
        DType::F64 | DType::F16 | DType::BF16 | DType::I32 | DType::I64 => x.to_f32_vec(),
        d => Err(Error::dtype(format!("{op} does not support {d} input"))),
    }
}

/// (rows, columns) of a feature matrix: `[C]` is one row, `[N, C...]` has N rows.
fn rows_cols(shape: &[usize]) -> (usize, usize) {
    match shape.len() {
        0 => (1, 1),
        1 => (1, shape[0]),
        // Saturating: an empty batch may carry dims whose product overflows.
        _ => (
            shape[0],
            shape[1..].iter().fold(1usize, |a, &d| a.saturating_mul(d)),
        ),
    }
}

// ---------------------------------------------------------------------------------------
// ArrayFeatureExtractor, Binarizer
// ---------------------------------------------------------------------------------------

/// Selects elements of the last axis of `x` by the indices in `y`.
#[allow(clippy::clone_on_copy)] // generic over every dtype, strings included
pub fn array_feature_extractor(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    if x.rank() == 0 {
        return Err(Error::shape(
            "ArrayFeatureExtractor input must have rank >= 1",
        ));
    }
    let stride = x.shape()[x.rank() - 1];
    let idx = y
        .to_i64_vec()?
        .into_iter()
        .map(|i| {
            usize::try_from(i)
                .ok()
                .filter(|&i| i < stride)
                .ok_or_else(|| {
                    Error::runtime(format!(
                        "ArrayFeatureExtractor index {i} is out of range [0, {stride})"
                    ))
                })
        })
        .collect::<Result<Vec<usize>>>()?;
    let mut shape = if x.rank() == 1 {
        vec![1, stride]
    } else {
        x.shape().to_vec()
    };
    let last = shape.len() - 1;
    shape[last] = idx.len();
    let n = numel(&shape, x.dtype())?;
    crate::dispatch!(all x.dtype(), "ArrayFeatureExtractor", T => {
        let src = x.as_slice::<T>()?;
        let mut out: Vec<T> = Vec::with_capacity(n);
        if stride > 0 {
            for row in src.chunks_exact(stride) {
                out.extend(idx.iter().map(|&i| row[i].clone()));
            }
        }
        Tensor::from_vec(shape, out)
    })
}

/// 1 where x > threshold, else 0, in the input's type.
pub fn binarizer(x: &Tensor, threshold: f32) -> Result<Tensor> {
    let th = f64::from(threshold);
    crate::dispatch!(num x.dtype(), "Binarizer", T => {
        let v: Vec<T> = x
            .as_slice::<T>()?
            .iter()
            .map(|&a| if a.to_f64() > th { T::one() } else { T::zero() })
            .collect();
        Tensor::from_vec(x.shape().to_vec(), v)
    })
}

// ---------------------------------------------------------------------------------------
// LabelEncoder, CategoryMapper
// ---------------------------------------------------------------------------------------

/// Keys of a label encoder, hashed by value (floats: -0 = 0, every NaN alike).
#[derive(Debug, Clone)]
pub enum Keys {
    Str(HashMap<String, usize>),
    Int(HashMap<i64, usize>),
    Float(HashMap<u64, usize>),
}

fn float_key(v: f64) -> u64 {
    if v.is_nan() {
        f64::NAN.to_bits()
    } else if v == 0.0 {
        0
    } else {
        v.to_bits()
    }
}

impl Keys {
    /// Builds the key map from a 1-D tensor; later duplicates win.
    pub fn from_tensor(t: &Tensor) -> Result<Keys> {
        Ok(match t.dtype() {
            DType::Str => Keys::Str(
                t.as_slice::<String>()?
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (s.clone(), i))
                    .collect(),
            ),
            d if d.is_int() => Keys::Int(
                t.to_i64_vec()?
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (v, i))
                    .collect(),
            ),
            d if d.is_float() => Keys::Float(
                t.to_f64_vec()?
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (float_key(v), i))
                    .collect(),
            ),
            d => return Err(Error::dtype(format!("LabelEncoder keys cannot be {d}"))),
        })
    }

    /// Position of each element of `x` among the keys.
    fn lookup(&self, x: &Tensor) -> Result<Vec<Option<usize>>> {
        Ok(match (self, x.dtype()) {
            (Keys::Str(m), DType::Str) => x
                .as_slice::<String>()?
                .iter()
                .map(|s| m.get(s).copied())
                .collect(),
            (Keys::Int(m), d) if d.is_int() => {
                x.to_i64_vec()?.iter().map(|v| m.get(v).copied()).collect()
            }
            (Keys::Float(m), d) if d.is_float() => x
                .to_f64_vec()?
                .into_iter()
                .map(|v| m.get(&float_key(v)).copied())
                .collect(),
            (_, d) => {
                return Err(Error::dtype(format!(
                    "LabelEncoder input of type {d} does not match its keys"
                )))
            }
        })
    }
}

/// A value table with a default, for LabelEncoder and CategoryMapper.
#[derive(Debug, Clone)]
pub struct LabelMap {
    pub keys: Keys,
    /// 1-D values, one per key.
    pub values: Tensor,
    /// Scalar (or 1-element) default of the same type as `values`.
    pub default: Tensor,
}

impl LabelMap {
    pub fn out_dtype(&self) -> DType {
        self.values.dtype()
    }

    /// Maps every element of `x`; the output has x's shape and the values' type.
    #[allow(clippy::clone_on_copy)] // generic over every dtype, strings included
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let idx = self.keys.lookup(x)?;
        crate::dispatch!(all self.values.dtype(), "LabelEncoder", T => {
            let vals = self.values.as_slice::<T>()?;
            let def = self
                .default
                .as_slice::<T>()?
                .first()
                .cloned()
                .ok_or_else(|| Error::attr("LabelEncoder default is empty"))?;
            let out: Vec<T> = idx
                .iter()
                .map(|i| match i.and_then(|i| vals.get(i)) {
                    Some(v) => v.clone(),
                    None => def.clone(),
                })
                .collect();
            Tensor::from_vec(x.shape().to_vec(), out)
        })
    }
}

// ---------------------------------------------------------------------------------------
// Scaler, Normalizer, Imputer, OneHotEncoder, FeatureVectorizer
// ---------------------------------------------------------------------------------------

/// Per-feature (last axis) parameter: one value for all, or one per feature.
fn per_feature(v: &[f32], c: usize, what: &str, default: f32) -> Result<Vec<f32>> {
    match v.len() {
        0 => Ok(vec![default; c]),
        1 => Ok(vec![v[0]; c]),
        n if n == c => Ok(v.to_vec()),
        n => Err(Error::shape(format!(
            "{what} has {n} values, the input has {c} features"
        ))),
    }
}

/// Y = (X - offset) * scale, per feature of the last axis; float output.
pub fn scaler(x: &Tensor, offset: &[f32], scale: &[f32]) -> Result<Tensor> {
    if x.is_empty() {
        return Tensor::zeros(DType::F32, x.shape().to_vec());
    }
    let xv = to_f32(x, "Scaler")?;
    let c = x.shape().last().copied().unwrap_or(1);
    let off = per_feature(offset, c, "Scaler offset", 0.0)?;
    let sc = per_feature(scale, c, "Scaler scale", 1.0)?;
    let mut out = xv;
    if c > 0 {
        for row in out.chunks_exact_mut(c) {
            for ((v, &o), &s) in row.iter_mut().zip(&off).zip(&sc) {
                *v = (*v - o) * s;
            }
        }
    }
    Tensor::from_vec(x.shape().to_vec(), out)
}

/// Normalization of a Normalizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Norm {
    Max,
    L1,
    L2,
}

/// Normalizes each row (last axis) by its max, L1 or L2 norm; float output.
pub fn normalizer(x: &Tensor, norm: Norm) -> Result<Tensor> {
    let mut out = to_f32(x, "Normalizer")?;
    let c = x.shape().last().copied().unwrap_or(1);
    if c > 0 {
        for row in out.chunks_exact_mut(c) {
            let d = match norm {
                Norm::Max => row.iter().copied().fold(f32::MIN, f32::max),
                Norm::L1 => row.iter().map(|v| v.abs()).sum(),
                Norm::L2 => row.iter().map(|v| v * v).sum::<f32>().sqrt(),
            };
            if d != 0.0 {
                row.iter_mut().for_each(|v| *v /= d);
            }
        }
    }
    Tensor::from_vec(x.shape().to_vec(), out)
}

/// Imputer: replaces `replaced` (NaN matches NaN) by per-feature values.
pub fn imputer_f(x: &Tensor, imputed: &[f32], replaced: f32) -> Result<Tensor> {
    if x.is_empty() {
        return Ok(x.clone());
    }
    let c = x.shape().last().copied().unwrap_or(1);
    let imp = per_feature(imputed, c, "Imputer imputed_value_floats", 0.0)?;
    crate::dispatch!(float x.dtype(), "Imputer", T => {
        let mut v = x.as_slice::<T>()?.to_vec();
        if c > 0 {
            for row in v.chunks_exact_mut(c) {
                for (a, &im) in row.iter_mut().zip(&imp) {
                    let f = a.to_f32();
                    if f == replaced || (replaced.is_nan() && f.is_nan()) {
                        *a = T::from_f32(im);
                    }
                }
            }
        }
        Tensor::from_vec(x.shape().to_vec(), v)
    })
}

/// Imputer on integer inputs.
pub fn imputer_i(x: &Tensor, imputed: &[i64], replaced: i64) -> Result<Tensor> {
    if x.is_empty() {
        return Ok(x.clone());
    }
    let c = x.shape().last().copied().unwrap_or(1);
    let imp: Vec<i64> = match imputed.len() {
        1 => vec![imputed[0]; c],
        n if n == c => imputed.to_vec(),
        n => {
            return Err(Error::shape(format!(
                "Imputer has {n} imputed values, the input has {c} features"
            )))
        }
    };
    crate::dispatch!(int x.dtype(), "Imputer", T => {
        let mut v = x.as_slice::<T>()?.to_vec();
        if c > 0 {
            for row in v.chunks_exact_mut(c) {
                for (a, &im) in row.iter_mut().zip(&imp) {
                    if a.to_i64() == replaced {
                        *a = T::from_i64(im);
                    }
                }
            }
        }
        Tensor::from_vec(x.shape().to_vec(), v)
    })
}

/// One-hot encoding against a category list; output `x.shape + [n_cats]`, float.
pub fn one_hot_encoder(x: &Tensor, cats: &Keys, n_cats: usize, zeros: bool) -> Result<Tensor> {
    let idx = match (cats, x.dtype()) {
        // Numeric inputs are matched as int64 (onnxruntime casts them).
        (Keys::Int(_), d) if d.is_float() => {
            let as_int = x.cast(DType::I64)?;
            cats.lookup(&as_int)?
        }
        _ => cats.lookup(x)?,
    };
    let mut shape = x.shape().to_vec();
    shape.push(n_cats);
    let mut out = alloc_vec::<f32>(numel(&shape, DType::F32)?)?;
    for (k, i) in idx.iter().enumerate() {
        match i {
            Some(i) if *i < n_cats => out[k * n_cats + i] = 1.0,
            _ if zeros => {}
            _ => {
                return Err(Error::runtime(
                    "OneHotEncoder: input value is not among the categories (zeros=0)",
                ))
            }
        }
    }
    Tensor::from_vec(shape, out)
}

/// Concatenates inputs `[N, C_i]` into `[N, sum(dims)]`, each cut or zero-padded to
/// its declared width; float output.
pub fn feature_vectorizer(inputs: &[&Tensor], dims: &[usize]) -> Result<Tensor> {
    if inputs.len() != dims.len() {
        return Err(Error::input(format!(
            "FeatureVectorizer has {} inputs but {} inputdimensions",
            inputs.len(),
            dims.len()
        )));
    }
    let n = inputs.first().map_or(1, |t| rows_cols(t.shape()).0);
    let total = dims
        .iter()
        .try_fold(0usize, |a, &d| a.checked_add(d))
        .ok_or_else(|| Error::attr("FeatureVectorizer dimensions overflow"))?;
    let mut out = alloc_vec::<f32>(numel(&[n, total], DType::F32)?)?;
    let mut col = 0;
    for (t, &d) in inputs.iter().zip(dims) {
        let (rows, c) = rows_cols(t.shape());
        if rows != n {
            return Err(Error::shape(format!(
                "FeatureVectorizer inputs have {n} and {rows} rows"
            )));
        }
        let v = to_f32(t, "FeatureVectorizer")?;
        let w = c.min(d);
        for r in 0..n {
            out[r * total + col..r * total + col + w].copy_from_slice(&v[r * c..r * c + w]);
        }
        col += d;
    }
    Tensor::from_vec(vec![n, total], out)
}

// ---------------------------------------------------------------------------------------
// Linear models
// ---------------------------------------------------------------------------------------

/// X·Cᵀ + b for X `[n, f]`, C `[targets, f]`.
fn linear_scores(
    x: &[f32],
    n: usize,
    f: usize,
    coef: &[f32],
    icpt: &[f32],
    t: usize,
) -> Result<Vec<f32>> {
    if t.checked_mul(f) != Some(coef.len()) {
        return Err(Error::shape(format!(
            "{} coefficients do not fit {t} targets of {f} features",
            coef.len()
        )));
    }
    // Cᵀ as [f, t] for sgemm.
    let mut ct = alloc_vec::<f32>(f * t)?;
    for j in 0..t {
        for k in 0..f {
            ct[k * t + j] = coef[j * f + k];
        }
    }
    let mut s = alloc_vec::<f32>(numel(&[n, t], DType::F32)?)?;
    if icpt.len() == t {
        for row in s.chunks_exact_mut(t.max(1)) {
            row.copy_from_slice(icpt);
        }
    } else if !icpt.is_empty() {
        return Err(Error::shape(format!(
            "{} intercepts for {t} targets",
            icpt.len()
        )));
    }
    sgemm(n, f, t, x, &ct, &mut s, true);
    Ok(s)
}

/// Class labels of a classifier.
#[derive(Debug, Clone, PartialEq)]
pub enum Labels {
    Ints(Vec<i64>),
    Strings(Vec<String>),
}

impl Labels {
    pub fn len(&self) -> usize {
        match self {
            Labels::Ints(v) => v.len(),
            Labels::Strings(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn dtype(&self) -> DType {
        match self {
            Labels::Ints(_) => DType::I64,
            Labels::Strings(_) => DType::Str,
        }
    }
    /// Label tensor from class indices (an index past the labels is an error).
    fn gather(&self, idx: &[usize]) -> Result<Tensor> {
        let bad = || Error::runtime("class index out of range of the class labels");
        match self {
            Labels::Ints(v) => Ok(Tensor::vector(
                idx.iter()
                    .map(|&i| v.get(i).copied().ok_or_else(bad))
                    .collect::<Result<Vec<i64>>>()?,
            )),
            Labels::Strings(v) => Ok(Tensor::vector(
                idx.iter()
                    .map(|&i| v.get(i).cloned().ok_or_else(bad))
                    .collect::<Result<Vec<String>>>()?,
            )),
        }
    }
}

/// LinearClassifier: (labels `[N]`, scores `[N, C]`).
pub fn linear_classifier(
    x: &Tensor,
    coef: &[f32],
    icpt: &[f32],
    labels: &Labels,
    post: PostTransform,
) -> Result<(Tensor, Tensor)> {
    let (n, f) = rows_cols(x.shape());
    let xv = to_f32(x, "LinearClassifier")?;
    let t = icpt.len();
    if t == 0 {
        return Err(Error::attr("LinearClassifier needs intercepts"));
    }
    let scores = linear_scores(&xv, n, f, coef, icpt, t)?;
    let add_second = t == 1 && labels.len() == 2;
    let label = if t == 1 {
        // Binary: positive when the score is > 0.
        match labels {
            Labels::Ints(v) => {
                let (neg, pos) = if v.len() == 2 { (v[0], v[1]) } else { (0, 1) };
                Tensor::vector(
                    scores
                        .iter()
                        .map(|&s| if s > 0.0 { pos } else { neg })
                        .collect(),
                )
            }
            Labels::Strings(v) => {
                let (neg, pos) = if v.len() == 2 {
                    (v[0].clone(), v[1].clone())
                } else {
                    ("0".to_string(), "1".to_string())
                };
                Tensor::vector(
                    scores
                        .iter()
                        .map(|&s| if s > 0.0 { pos.clone() } else { neg.clone() })
                        .collect(),
                )
            }
        }
    } else {
        let idx: Vec<usize> = scores
            .chunks_exact(t)
            .map(|row| {
                let mut best = 0;
                for (j, &v) in row.iter().enumerate() {
                    if v > row[best] {
                        best = j;
                    }
                }
                best
            })
            .collect();
        labels.gather(&idx)?
    };
    let cols = if add_second { 2 } else { t };
    let mut z = alloc_vec::<f32>(numel(&[n, cols], DType::F32)?)?;
    if t > 1 {
        z.copy_from_slice(&scores);
        for row in z.chunks_exact_mut(t) {
            transform_row(row, post);
        }
    } else {
        for (i, &s) in scores.iter().enumerate() {
            let row = &mut z[i * cols..(i + 1) * cols];
            if post == PostTransform::Probit {
                row[0] = probit(s);
            } else if add_second {
                // onnxruntime applies LOGISTIC before expanding to [1 - p, p]; the other
                // transforms leave a single binary score as is.
                let p = if post == PostTransform::Logistic {
                    logistic(s)
                } else {
                    s
                };
                row.copy_from_slice(&[1.0 - p, p]);
            } else {
                row[0] = s;
            }
        }
    }
    Ok((label.reshape(vec![n])?, Tensor::from_vec(vec![n, cols], z)?))
}

/// LinearRegressor: `[N, targets]` float.
pub fn linear_regressor(
    x: &Tensor,
    coef: &[f32],
    icpt: &[f32],
    targets: usize,
    post: PostTransform,
) -> Result<Tensor> {
    let (n, f) = rows_cols(x.shape());
    let xv = to_f32(x, "LinearRegressor")?;
    let mut s = linear_scores(&xv, n, f, coef, icpt, targets)?;
    if targets == 1 {
        if post == PostTransform::Probit {
            s.iter_mut().for_each(|v| *v = probit(*v));
        }
    } else if targets > 1 {
        for row in s.chunks_exact_mut(targets) {
            transform_row(row, post);
        }
    }
    Tensor::from_vec(vec![n, targets], s)
}

// ---------------------------------------------------------------------------------------
// Tree ensembles
// ---------------------------------------------------------------------------------------

/// Comparison of an interior node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeMode {
    Leq,
    Lt,
    Gte,
    Gt,
    Eq,
    Neq,
    Member,
}

/// Where a branch leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Node(usize),
    Leaf(usize),
}

/// An interior node.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeNode {
    pub feature: usize,
    pub mode: NodeMode,
    pub value: f64,
    /// Range in `Ensemble::members` for `Member` nodes.
    pub set: (usize, usize),
    pub missing_true: bool,
    pub on_true: Next,
    pub on_false: Next,
}

/// How tree outputs combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    Average,
    Sum,
    Min,
    Max,
}

/// A validated tree ensemble in one flat layout (built from either attribute scheme).
#[derive(Debug, Clone, PartialEq)]
pub struct Ensemble {
    pub nodes: Vec<TreeNode>,
    pub members: Vec<f64>,
    /// Range in `weights` per leaf.
    pub leaves: Vec<(usize, usize)>,
    /// (target or class, weight).
    pub weights: Vec<(usize, f64)>,
    pub roots: Vec<Next>,
    pub n_targets: usize,
    /// Largest feature id used + 1.
    pub n_features: usize,
    pub aggregate: Aggregate,
    pub post: PostTransform,
    pub base_values: Vec<f64>,
    /// Accumulate in f64 (thresholds/weights given as doubles).
    pub double: bool,
}

/// Builder input for the legacy (TreeEnsembleRegressor/Classifier) attributes.
#[derive(Debug, Default, Clone)]
pub struct LegacyTrees {
    pub treeids: Vec<i64>,
    pub nodeids: Vec<i64>,
    pub featureids: Vec<i64>,
    pub modes: Vec<String>,
    pub values: Vec<f64>,
    pub truenodeids: Vec<i64>,
    pub falsenodeids: Vec<i64>,
    pub missing_true: Vec<i64>,
    pub t_ids: Vec<i64>,
    pub t_nodeids: Vec<i64>,
    pub t_treeids: Vec<i64>,
    pub t_weights: Vec<f64>,
}

fn to_index(v: i64, what: &str) -> Result<usize> {
    usize::try_from(v).map_err(|_| Error::attr(format!("{what} {v} is negative")))
}

impl Ensemble {
    /// Builds from TreeEnsembleRegressor/Classifier attributes.
    pub fn from_legacy(
        a: &LegacyTrees,
        n_targets: usize,
        aggregate: Aggregate,
        post: PostTransform,
        base_values: Vec<f64>,
        double: bool,
    ) -> Result<Ensemble> {
        let n = a.treeids.len();
        if [
            a.nodeids.len(),
            a.featureids.len(),
            a.modes.len(),
            a.values.len(),
            a.truenodeids.len(),
            a.falsenodeids.len(),
        ]
        .iter()
        .any(|&l| l != n)
        {
            return Err(Error::attr(
                "tree ensemble nodes_* attributes differ in length",
            ));
        }
        let m = a.t_ids.len();
        if a.t_nodeids.len() != m || a.t_treeids.len() != m || a.t_weights.len() != m {
            return Err(Error::attr(
                "tree ensemble target/class attributes differ in length",
            ));
        }
        let mut pos: HashMap<(i64, i64), usize> = HashMap::with_capacity(n);
        let mut kind = Vec::with_capacity(n);
        let (mut n_nodes, mut n_leaves) = (0usize, 0usize);
        let mut modes = Vec::with_capacity(n);
        for i in 0..n {
            if pos.insert((a.treeids[i], a.nodeids[i]), i).is_some() {
                return Err(Error::attr(format!(
                    "tree {} has node {} twice",
                    a.treeids[i], a.nodeids[i]
                )));
            }
            let mode = match a.modes[i].as_str() {
                "LEAF" => None,
                "BRANCH_LEQ" => Some(NodeMode::Leq),
                "BRANCH_LT" => Some(NodeMode::Lt),
                "BRANCH_GTE" => Some(NodeMode::Gte),
                "BRANCH_GT" => Some(NodeMode::Gt),
                "BRANCH_EQ" => Some(NodeMode::Eq),
                "BRANCH_NEQ" => Some(NodeMode::Neq),
                other => return Err(Error::attr(format!("unknown node mode '{other}'"))),
            };
            modes.push(mode);
            if mode.is_some() {
                kind.push(Next::Node(n_nodes));
                n_nodes += 1;
            } else {
                kind.push(Next::Leaf(n_leaves));
                n_leaves += 1;
            }
        }
        let target = |tree: i64, id: i64| -> Result<Next> {
            pos.get(&(tree, id))
                .map(|&j| kind[j])
                .ok_or_else(|| Error::attr(format!("tree {tree} has no node {id}")))
        };
        let mut nodes = Vec::with_capacity(n_nodes);
        let mut roots = Vec::new();
        let mut n_features = 0;
        for i in 0..n {
            if i == 0 || a.treeids[i] != a.treeids[i - 1] {
                roots.push(kind[i]);
            }
            let Some(mode) = modes[i] else { continue };
            let feature = to_index(a.featureids[i], "feature id")?;
            n_features = n_features.max(feature + 1);
            nodes.push(TreeNode {
                feature,
                mode,
                value: a.values[i],
                set: (0, 0),
                missing_true: a.missing_true.get(i).is_some_and(|&v| v == 1),
                on_true: target(a.treeids[i], a.truenodeids[i])?,
                on_false: target(a.treeids[i], a.falsenodeids[i])?,
            });
        }
        let mut per_leaf: Vec<Vec<(usize, f64)>> = vec![Vec::new(); n_leaves];
        for k in 0..m {
            // Weights on interior nodes are ignored (old converters wrote them).
            if let Ok(Next::Leaf(l)) = target(a.t_treeids[k], a.t_nodeids[k]) {
                let t = to_index(a.t_ids[k], "target id")?;
                if t >= n_targets {
                    return Err(Error::attr(format!(
                        "target/class id {t} is out of range for {n_targets} outputs"
                    )));
                }
                per_leaf[l].push((t, a.t_weights[k]));
            }
        }
        let mut leaves = Vec::with_capacity(n_leaves);
        let mut weights = Vec::with_capacity(m);
        for w in per_leaf {
            leaves.push((weights.len(), weights.len() + w.len()));
            weights.extend(w);
        }
        Ok(Ensemble {
            nodes,
            members: Vec::new(),
            leaves,
            weights,
            roots,
            n_targets,
            n_features,
            aggregate,
            post,
            base_values,
            double,
        })
    }

    /// The leaf reached by one row.
    fn leaf(&self, root: Next, x: &[f64]) -> Result<usize> {
        let mut cur = root;
        // A well-formed tree is acyclic, so no path is longer than the node count.
        for _ in 0..=self.nodes.len() {
            match cur {
                Next::Leaf(l) => return Ok(l),
                Next::Node(i) => {
                    let nd = self
                        .nodes
                        .get(i)
                        .ok_or_else(|| Error::runtime("tree node index out of range"))?;
                    let v = x
                        .get(nd.feature)
                        .copied()
                        .ok_or_else(|| Error::runtime("tree feature index out of range"))?;
                    let t = nd.value;
                    let go = (nd.missing_true && v.is_nan())
                        || match nd.mode {
                            NodeMode::Leq => v <= t,
                            NodeMode::Lt => v < t,
                            NodeMode::Gte => v >= t,
                            NodeMode::Gt => v > t,
                            NodeMode::Eq => v == t,
                            NodeMode::Neq => v != t,
                            NodeMode::Member => self
                                .members
                                .get(nd.set.0..nd.set.1)
                                .is_some_and(|s| s.contains(&v)),
                        };
                    cur = if go { nd.on_true } else { nd.on_false };
                }
            }
        }
        Err(Error::runtime("tree ensemble has a cycle"))
    }

    fn leaf_weights(&self, l: usize) -> &[(usize, f64)] {
        self.leaves
            .get(l)
            .and_then(|&(a, b)| self.weights.get(a..b))
            .unwrap_or(&[])
    }

    /// Features as f64 rows, checked against the ensemble.
    fn rows(&self, x: &Tensor) -> Result<(Vec<f64>, usize, usize)> {
        if x.rank() > 2 {
            return Err(Error::shape(format!(
                "tree ensembles take 1-D or 2-D input, got {:?}",
                x.shape()
            )));
        }
        let (n, c) = rows_cols(x.shape());
        if self.n_features > c {
            return Err(Error::shape(format!(
                "the trees read feature {} but the input has {c} features",
                self.n_features - 1
            )));
        }
        let v = match x.dtype() {
            DType::F32 | DType::F64 | DType::F16 | DType::BF16 | DType::I32 | DType::I64 => {
                x.to_f64_vec()?
            }
            d => return Err(Error::dtype(format!("tree ensembles do not support {d}"))),
        };
        Ok((v, n, c))
    }

    /// Raw per-row sums for the classifier: (scores, has_score) of `[n, n_targets]`.
    fn sums<T: Num>(&self, x: &[f64], n: usize, c: usize) -> Result<(Vec<T>, Vec<bool>)> {
        let nt = self.n_targets;
        let mut s = alloc_vec::<T>(numel(&[n, nt], T::DTYPE)?)?;
        let mut has = vec![false; s.len()];
        for r in 0..n {
            let row = &x[r * c..(r + 1) * c];
            for &root in &self.roots {
                let l = self.leaf(root, row)?;
                for &(t, w) in self.leaf_weights(l) {
                    let k = r * nt + t;
                    s[k] = s[k].add(T::from_f64(w));
                    has[k] = true;
                }
            }
        }
        Ok((s, has))
    }

    /// Regression output `[n, n_targets]` in f64 (values rounded through `T` as it goes).
    fn regress_t<T: Num>(&self, x: &[f64], n: usize, c: usize) -> Result<Vec<f64>> {
        let nt = self.n_targets;
        let n_trees = T::from_f64(self.roots.len() as f64);
        let mut out = alloc_vec::<f64>(numel(&[n, nt], DType::F64)?)?;
        let mut s = vec![T::zero(); nt];
        let mut has = vec![false; nt];
        let mut row32 = vec![0f32; nt];
        let base: Vec<T> = self.base_values.iter().map(|&b| T::from_f64(b)).collect();
        let use_base = base.len() == nt;
        let origin = if base.len() == 1 { base[0] } else { T::zero() };
        for r in 0..n {
            let row = &x[r * c..(r + 1) * c];
            s.iter_mut().for_each(|v| *v = T::zero());
            has.iter_mut().for_each(|v| *v = false);
            for &root in &self.roots {
                let l = self.leaf(root, row)?;
                let lw = self.leaf_weights(l);
                if nt == 1 {
                    // onnxruntime uses the leaf's first weight when there is one target.
                    let Some(&(_, w)) = lw.first() else { continue };
                    self.merge(&mut s[0], &mut has[0], T::from_f64(w));
                } else {
                    for &(t, w) in lw {
                        self.merge(&mut s[t], &mut has[t], T::from_f64(w));
                    }
                }
            }
            let o = &mut out[r * nt..(r + 1) * nt];
            if nt == 1 {
                let v = match self.aggregate {
                    Aggregate::Sum => s[0].add(origin),
                    Aggregate::Average => s[0].div(n_trees).add(origin),
                    Aggregate::Min | Aggregate::Max => {
                        if has[0] {
                            s[0].add(origin)
                        } else {
                            origin
                        }
                    }
                };
                o[0] = if self.post == PostTransform::Probit {
                    f64::from(probit(v.to_f32()))
                } else {
                    v.to_f64()
                };
            } else {
                for j in 0..nt {
                    let b = if use_base { base[j] } else { T::zero() };
                    let v = match self.aggregate {
                        Aggregate::Sum => s[j].add(b),
                        Aggregate::Average => s[j].div(n_trees).add(b),
                        Aggregate::Min | Aggregate::Max => {
                            b.add(if has[j] { s[j] } else { T::zero() })
                        }
                    };
                    o[j] = v.to_f64();
                }
                if self.post != PostTransform::None {
                    for (d, v) in row32.iter_mut().zip(o.iter()) {
                        *d = *v as f32;
                    }
                    transform_row(&mut row32, self.post);
                    for (d, v) in o.iter_mut().zip(&row32) {
                        *d = f64::from(*v);
                    }
                }
            }
        }
        Ok(out)
    }

    #[inline]
    fn merge<T: Num>(&self, s: &mut T, has: &mut bool, w: T) {
        match self.aggregate {
            Aggregate::Sum | Aggregate::Average => *s = s.add(w),
            Aggregate::Min => {
                if !*has || w < *s {
                    *s = w
                }
            }
            Aggregate::Max => {
                if !*has || w > *s {
                    *s = w
                }
            }
        }
        *has = true;
    }

    /// Regression: `[N, n_targets]` in `out_dtype` (a float type).
    pub fn regress(&self, x: &Tensor, out_dtype: DType) -> Result<Tensor> {
        let (v, n, c) = self.rows(x)?;
        let out = if self.double {
            self.regress_t::<f64>(&v, n, c)?
        } else {
            self.regress_t::<f32>(&v, n, c)?
        };
        Tensor::from_vec(vec![n, self.n_targets], out)?.cast(out_dtype)
    }

    /// Classification (onnxruntime's TreeEnsembleClassifier rules): labels `[N]` and
    /// scores `[N, n_classes]` float.
    pub fn classify(&self, x: &Tensor, labels: &Labels) -> Result<(Tensor, Tensor)> {
        let (v, n, c) = self.rows(x)?;
        let nc = self.n_targets;
        if labels.len() != nc || nc < 2 {
            return Err(Error::attr(format!(
                "TreeEnsembleClassifier needs at least 2 class labels, has {}",
                labels.len()
            )));
        }
        let (s, has): (Vec<f64>, Vec<bool>) = if self.double {
            self.sums::<f64>(&v, n, c)?
        } else {
            let (s, h) = self.sums::<f32>(&v, n, c)?;
            (s.into_iter().map(f64::from).collect(), h)
        };
        let classes: std::collections::HashSet<usize> =
            self.weights.iter().map(|&(t, _)| t).collect();
        let all_pos = self.weights.iter().all(|&(_, w)| w >= 0.0);
        let binary_case = nc == 2 && classes.len() == 1;
        let base = &self.base_values;
        let mut z = alloc_vec::<f32>(numel(&[n, nc], DType::F32)?)?;
        // Class index per row, or a literal 0/1 label (onnxruntime's two-class rule).
        let mut idx = Vec::with_capacity(n);
        let mut literal = Vec::with_capacity(n);
        let mut sc: Vec<f32> = Vec::with_capacity(nc);
        for r in 0..n {
            let rs = &s[r * nc..(r + 1) * nc];
            let mut rh = has[r * nc..(r + 1) * nc].to_vec();
            let zr = &mut z[r * nc..(r + 1) * nc];
            sc.clear();
            if nc > 2 {
                let mut vals = rs.to_vec();
                for (k, &b) in base.iter().enumerate().take(nc) {
                    if rh[k] {
                        vals[k] += b;
                    } else {
                        rh[k] = true;
                        vals[k] = b;
                    }
                }
                let mut best: Option<usize> = None;
                for k in 0..nc {
                    if rh[k] && best.is_none_or(|b| vals[k] > vals[b]) {
                        best = Some(k);
                    }
                }
                idx.push(best.unwrap_or(0));
                literal.push(false);
                sc.extend(vals.iter().map(|&v| v as f32));
                write_scores(&mut sc, self.post, -1, zr);
                continue;
            }
            let (mut s0, mut s1) = (rs[0], rs[1]);
            let (h0, mut h1) = (rh[0], rh[1]);
            let mut size = 2;
            let mut code = -1;
            if base.len() == 2 {
                if h1 {
                    s1 = base[1] + s0;
                    s0 = -s1;
                    h1 = true;
                } else {
                    s1 += base[1];
                    s0 += base[0];
                }
            } else if base.len() == 1 {
                s0 += base[0];
                if !h1 {
                    size = 1;
                }
            } else if base.is_empty() {
                code = 3;
                if !h1 {
                    size = 1;
                }
            }
            let pos = if size == 2 && h1 {
                s1
            } else if h0 {
                s0
            } else {
                0.0
            };
            let positive = if binary_case {
                if all_pos {
                    code = if pos > 0.5 { 0 } else { 1 };
                    pos > 0.5
                } else {
                    code = if pos > 0.0 { 2 } else { 3 };
                    pos > 0.0
                }
            } else {
                pos > 0.0
            };
            idx.push(usize::from(positive));
            literal.push(!binary_case);
            sc.push(s0 as f32);
            if size == 2 {
                sc.push(s1 as f32);
            }
            write_scores(&mut sc, self.post, code, zr);
        }
        let label = match labels {
            // Two classes without the binary case give 0/1 as the label itself.
            Labels::Ints(v) => Tensor::vector(
                idx.iter()
                    .zip(&literal)
                    .map(|(&i, &lit)| {
                        if lit {
                            Ok(i as i64)
                        } else {
                            v.get(i).copied().ok_or_else(|| {
                                Error::runtime("class index out of range of the class labels")
                            })
                        }
                    })
                    .collect::<Result<Vec<i64>>>()?,
            ),
            Labels::Strings(_) => labels.gather(&idx)?,
        };
        Ok((label, Tensor::from_vec(vec![n, nc], z)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_extractor_and_binarizer() {
        let x = Tensor::from_vec(vec![2, 3], vec![1f32, 2., 3., 4., 5., 6.]).unwrap();
        let y = Tensor::vector(vec![2i64, 0]);
        let z = array_feature_extractor(&x, &y).unwrap();
        assert_eq!(z.shape(), &[2, 2]);
        assert_eq!(z.as_slice::<f32>().unwrap(), &[3., 1., 6., 4.]);
        let classes = Tensor::vector(vec![10i64, 20, 30]);
        let z = array_feature_extractor(&classes, &Tensor::vector(vec![1i64])).unwrap();
        assert_eq!(z.shape(), &[1, 1]);
        assert!(array_feature_extractor(&x, &Tensor::vector(vec![3i64])).is_err());
        assert!(array_feature_extractor(&x, &Tensor::vector(vec![-1i64])).is_err());
        let b = binarizer(&x, 3.0).unwrap();
        assert_eq!(b.as_slice::<f32>().unwrap(), &[0., 0., 0., 1., 1., 1.]);
    }

    #[test]
    fn label_encoder_floats_and_default() {
        let keys = Keys::from_tensor(&Tensor::vector(vec![f32::NAN, 0.0, 1.5])).unwrap();
        let m = LabelMap {
            keys,
            values: Tensor::vector(vec![7i64, 8, 9]),
            default: Tensor::scalar(-1i64),
        };
        let x = Tensor::vector(vec![-0.0f32, f32::NAN, 1.5, 2.0]);
        let y = m.apply(&x).unwrap();
        assert_eq!(y.as_slice::<i64>().unwrap(), &[8, 7, 9, -1]);
        assert!(m.apply(&Tensor::vector(vec!["a".to_string()])).is_err());
    }

    #[test]
    fn trees_regress_and_cycle_error() {
        // One stump: x0 <= 0.5 → leaf 1 (w 1) else leaf 2 (w 2).
        let a = LegacyTrees {
            treeids: vec![0, 0, 0],
            nodeids: vec![0, 1, 2],
            featureids: vec![0, 0, 0],
            modes: vec!["BRANCH_LEQ".into(), "LEAF".into(), "LEAF".into()],
            values: vec![0.5, 0., 0.],
            truenodeids: vec![1, 0, 0],
            falsenodeids: vec![2, 0, 0],
            missing_true: vec![],
            t_ids: vec![0, 0],
            t_nodeids: vec![1, 2],
            t_treeids: vec![0, 0],
            t_weights: vec![1.0, 2.0],
        };
        let e = Ensemble::from_legacy(&a, 1, Aggregate::Sum, PostTransform::None, vec![0.5], false)
            .unwrap();
        let x = Tensor::from_vec(vec![2, 1], vec![0.0f32, 1.0]).unwrap();
        let y = e.regress(&x, DType::F32).unwrap();
        assert_eq!(y.as_slice::<f32>().unwrap(), &[1.5, 2.5]);
        let mut bad = a.clone();
        bad.truenodeids = vec![0, 0, 0];
        bad.modes = vec!["BRANCH_LEQ".into(), "LEAF".into(), "LEAF".into()];
        let e = Ensemble::from_legacy(&bad, 1, Aggregate::Sum, PostTransform::None, vec![], false)
            .unwrap();
        assert!(e.regress(&x, DType::F32).is_err());
        let mut missing = a;
        missing.truenodeids = vec![5, 0, 0];
        assert!(Ensemble::from_legacy(
            &missing,
            1,
            Aggregate::Sum,
            PostTransform::None,
            vec![],
            false
        )
        .is_err());
    }

    #[test]
    fn linear_classifier_binary() {
        let x = Tensor::from_vec(vec![2, 2], vec![1f32, 0., -1., 0.]).unwrap();
        let (y, z) = linear_classifier(
            &x,
            &[2.0, 0.0],
            &[0.0],
            &Labels::Ints(vec![3, 4]),
            PostTransform::None,
        )
        .unwrap();
        assert_eq!(y.as_slice::<i64>().unwrap(), &[4, 3]);
        assert_eq!(z.shape(), &[2, 2]);
        assert_eq!(z.as_slice::<f32>().unwrap(), &[-1.0, 2.0, 3.0, -2.0]);
    }

    #[test]
    fn tree_classifier_strings_and_membership() {
        // Stump on x0 <= 0: left leaf votes class 0, right leaf class 2.
        let a = LegacyTrees {
            treeids: vec![0, 0, 0],
            nodeids: vec![0, 1, 2],
            featureids: vec![0, 0, 0],
            modes: vec!["BRANCH_LEQ".into(), "LEAF".into(), "LEAF".into()],
            values: vec![0.0, 0., 0.],
            truenodeids: vec![1, 0, 0],
            falsenodeids: vec![2, 0, 0],
            missing_true: vec![1, 0, 0],
            t_ids: vec![0, 2],
            t_nodeids: vec![1, 2],
            t_treeids: vec![0, 0],
            t_weights: vec![1.0, 1.0],
        };
        let e = Ensemble::from_legacy(&a, 3, Aggregate::Sum, PostTransform::None, vec![], false)
            .unwrap();
        let labels = Labels::Strings(vec!["a".into(), "b".into(), "c".into()]);
        let x = Tensor::from_vec(vec![3, 1], vec![-1f32, 1.0, f32::NAN]).unwrap();
        let (y, z) = e.classify(&x, &labels).unwrap();
        assert_eq!(y.as_slice::<String>().unwrap(), &["a", "c", "a"]);
        assert_eq!(z.as_slice::<f32>().unwrap()[..3], [1.0, 0.0, 0.0]);
        // Too few features is an error, not a panic.
        let x0 = Tensor::from_vec(vec![1, 0], Vec::<f32>::new()).unwrap();
        assert!(e.classify(&x0, &labels).is_err());
        // Set membership.
        let mut m = e.clone();
        m.nodes[0].mode = NodeMode::Member;
        m.members = vec![3.0, 5.0];
        m.nodes[0].set = (0, 2);
        let x = Tensor::from_vec(vec![2, 1], vec![5f32, 4.0]).unwrap();
        let (y, _) = m.classify(&x, &labels).unwrap();
        assert_eq!(y.as_slice::<String>().unwrap(), &["a", "c"]);
    }
}
