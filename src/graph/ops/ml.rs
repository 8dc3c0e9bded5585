//! Op family: ml. Op structs, attribute parsing and shape rules; kernels in `crate::cpu::ml`.
//!
//! Domain "ai.onnx.ml" (the scikit-learn converter ops). Map and sequence-of-map types are
//! not supported, so `ZipMap`, `DictVectorizer` and `CastMap` fail the load with a hint.

use super::{def, OpDef};
use crate::cpu::ml::{
    self as k, Aggregate, Ensemble, Keys, LabelMap, Labels, LegacyTrees, Next, NodeMode, Norm,
    PostTransform, TreeNode,
};
use crate::error::{Error, Result};
use crate::graph::{Args, Dim, Fact, InferCx, NodeCx, Op, RunCx, Value};
use crate::op_common;
use crate::tensor::{DType, Tensor};

const ML: &str = "ai.onnx.ml";

pub const OPS: &[OpDef] = &[
    def(ML, "ArrayFeatureExtractor", |_| {
        Ok(Box::new(ArrayFeatureExtractor))
    }),
    def(ML, "Binarizer", parse_binarizer),
    def(ML, "CastMap", parse_map_op),
    def(ML, "CategoryMapper", parse_category_mapper),
    def(ML, "DictVectorizer", parse_map_op),
    def(ML, "FeatureVectorizer", parse_feature_vectorizer),
    def(ML, "Imputer", parse_imputer),
    def(ML, "LabelEncoder", parse_label_encoder),
    def(ML, "LinearClassifier", parse_linear_classifier),
    def(ML, "LinearRegressor", parse_linear_regressor),
    def(ML, "Normalizer", parse_normalizer),
    def(ML, "OneHotEncoder", parse_one_hot_encoder),
    def(ML, "Scaler", parse_scaler),
    def(ML, "TreeEnsemble", parse_tree_ensemble),
    def(ML, "TreeEnsembleClassifier", parse_tree_classifier),
    def(ML, "TreeEnsembleRegressor", parse_tree_regressor),
    def(ML, "ZipMap", parse_map_op),
];

/// Ops on map types, which this runtime does not represent.
fn parse_map_op(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    Err(Error::unsupported_op(format!(
        "ai.onnx.ml.{} works on map types, which are not supported; export classifiers \
         without ZipMap (skl2onnx: options={{id(model): {{'zipmap': False}}}}, i.e. zipmap=False)",
        cx.node.op_type
    )))
}

/// Checks that an input is a float or integer feature tensor.
fn check_numeric(f: &Fact, op: &str) -> Result<()> {
    match f.dtype {
        Some(d) if !(d.is_float() || d.is_int()) => {
            Err(Error::dtype(format!("{op} does not support {d} input")))
        }
        _ => Ok(()),
    }
}

/// Batch dim of a `[N, C]` or `[C]` feature input.
fn batch_dim(f: &Fact) -> Dim {
    match &f.shape {
        Some(s) if s.len() == 1 => Dim::Known(1),
        Some(s) if !s.is_empty() => s[0].clone(),
        _ => Dim::Unknown,
    }
}

/// `[C]` with C from the attribute, or read from a tensor attribute of doubles.
fn floats_or_tensor(cx: &NodeCx, name: &str) -> Result<(Option<Vec<f64>>, bool)> {
    let plain = cx.floats(name)?;
    let tensor = cx.tensor(&format!("{name}_as_tensor"))?;
    match (plain, tensor) {
        (Some(_), Some(_)) => Err(Error::attr(format!(
            "both {name} and {name}_as_tensor are set"
        ))),
        (Some(v), None) => Ok((Some(v.into_iter().map(f64::from).collect()), false)),
        (None, Some(t)) => Ok((Some(t.to_f64_vec()?), t.dtype() == DType::F64)),
        (None, None) => Ok((None, false)),
    }
}

// ---------------------------------------------------------------------------------------

/// `ArrayFeatureExtractor`: selects last-axis elements by index.
/// Spec: https://onnx.ai/onnx/operators/onnx_aionnxml_ArrayFeatureExtractor.html
#[derive(Debug)]
pub struct ArrayFeatureExtractor;

impl Op for ArrayFeatureExtractor {
    op_common!("ArrayFeatureExtractor");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let y = cx.input(1)?;
        if let Some(d) = y.dtype {
            if d != DType::I64 {
                return Err(Error::dtype(format!(
                    "ArrayFeatureExtractor indices must be int64, got {d}"
                )));
            }
        }
        let n = y
            .concrete_shape()
            .map_or(Dim::Unknown, |s| Dim::Known(s.iter().product()));
        let shape = x.shape.as_ref().map(|s| {
            let mut o = if s.len() == 1 {
                vec![Dim::Known(1), Dim::Unknown]
            } else {
                s.clone()
            };
            if let Some(l) = o.last_mut() {
                *l = n.clone();
            }
            o
        });
        Ok(vec![Fact::new(x.dtype, shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        Ok(vec![
            k::array_feature_extractor(args.t(0)?, args.t(1)?)?.into()
        ])
    }
}

/// `Binarizer`: 1 where x > threshold, else 0.
/// Spec: https://onnx.ai/onnx/operators/onnx_aionnxml_Binarizer.html
#[derive(Debug)]
pub struct Binarizer {
    pub threshold: f32,
}

fn parse_binarizer(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    Ok(Box::new(Binarizer {
        threshold: cx.float_or("threshold", 0.0)?,
    }))
}

impl Op for Binarizer {
    op_common!("Binarizer");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        check_numeric(x, "Binarizer")?;
        Ok(vec![Fact::new(x.dtype, x.shape.clone())])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        Ok(vec![k::binarizer(args.t(0)?, self.threshold)?.into()])
    }
}

// ---------------------------------------------------------------------------------------

/// `LabelEncoder`: maps each element through a key → value table (opsets 1, 2 and 4).
/// Spec: https://onnx.ai/onnx/operators/onnx_aionnxml_LabelEncoder.html
#[derive(Debug)]
pub struct LabelEncoder {
    /// The table for string inputs and the one for integer inputs (opset 1 maps both
    /// ways); from opset 2 only the one matching the keys is set.
    pub from_str: Option<LabelMap>,
    pub from_num: Option<LabelMap>,
}

/// A string ↔ int64 pair of tables (LabelEncoder-1 and CategoryMapper).
fn two_way(
    keys_s: Vec<String>,
    keys_i: Vec<i64>,
    def_i: i64,
    def_s: String,
) -> Result<(LabelMap, LabelMap)> {
    let to_int = LabelMap {
        keys: Keys::from_tensor(&Tensor::vector(keys_s.clone()))?,
        values: Tensor::vector(keys_i.clone()),
        default: Tensor::scalar(def_i),
    };
    let to_str = LabelMap {
        keys: Keys::from_tensor(&Tensor::vector(keys_i))?,
        values: Tensor::vector(keys_s),
        default: Tensor::scalar(def_s),
    };
    Ok((to_int, to_str))
}

fn parse_label_encoder(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    if cx.opset < 2 {
        let classes = cx.strings("classes_strings")?.unwrap_or_default();
        let def_i = cx.int_or("default_int64", -1)?;
        let def_s = cx.string_or("default_string", "_Unused")?;
        let idx: Vec<i64> = (0..classes.len() as i64).collect();
        let (a, b) = two_way(classes, idx, def_i, def_s)?;
        return Ok(Box::new(LabelEncoder {
            from_str: Some(a),
            from_num: Some(b),
        }));
    }
    let mut keys: Vec<Tensor> = Vec::new();
    if let Some(v) = cx.strings("keys_strings")? {
        keys.push(Tensor::vector(v));
    }
    if let Some(v) = cx.ints("keys_int64s")? {
        keys.push(Tensor::vector(v));
    }
    if let Some(v) = cx.floats("keys_floats")? {
        keys.push(Tensor::vector(v));
    }
    let mut values: Vec<Tensor> = Vec::new();
    if let Some(v) = cx.strings("values_strings")? {
        values.push(Tensor::vector(v));
    }
    if let Some(v) = cx.ints("values_int64s")? {
        values.push(Tensor::vector(v));
    }
    if let Some(v) = cx.floats("values_floats")? {
        values.push(Tensor::vector(v));
    }
    let def_f = cx.float_or("default_float", -0.0)?;
    let def_i = cx.int_or("default_int64", -1)?;
    let def_s = cx.string_or("default_string", "_Unused")?;
    let mut def_t = None;
    if cx.opset >= 4 {
        if let Some(t) = cx.tensor("keys_tensor")? {
            keys.push(t);
        }
        if let Some(t) = cx.tensor("values_tensor")? {
            values.push(t);
        }
        def_t = cx.tensor("default_tensor")?;
    }
    if keys.len() != 1 || values.len() != 1 {
        return Err(Error::attr(format!(
            "LabelEncoder needs exactly one keys_* and one values_* attribute, found {} and {}",
            keys.len(),
            values.len()
        )));
    }
    let (kt, vt) = (keys.remove(0), values.remove(0));
    let kn = kt.len();
    let vt = vt
        .reshape(vec![kn])
        .map_err(|_| Error::attr("LabelEncoder keys and values have different lengths"))?;
    let default = match def_t {
        Some(t) => {
            if t.dtype() != vt.dtype() || t.is_empty() {
                return Err(Error::attr(
                    "LabelEncoder default_tensor must be one value of the values' type",
                ));
            }
            t
        }
        None => match vt.dtype() {
            DType::Str => Tensor::scalar(def_s),
            d if d.is_int() => Tensor::scalar(def_i).cast(d)?,
            d => Tensor::scalar(def_f).cast(d)?,
        },
    };
    let is_str = kt.dtype() == DType::Str;
    let map = LabelMap {
        keys: Keys::from_tensor(&kt)?,
        values: vt,
        default,
    };
    Ok(Box::new(if is_str {
        LabelEncoder {
            from_str: Some(map),
            from_num: None,
        }
    } else {
        LabelEncoder {
            from_str: None,
            from_num: Some(map),
        }
    }))
}

impl LabelEncoder {
    fn table(&self, input: Option<DType>) -> Result<Option<&LabelMap>> {
        match input {
            None => Ok(None),
            Some(DType::Str) => self
                .from_str
                .as_ref()
                .map(Some)
                .ok_or_else(|| Error::dtype("LabelEncoder keys are not strings")),
            Some(d) if d.is_int() || d.is_float() => {
                self.from_num.as_ref().map(Some).ok_or_else(|| {
                    Error::dtype(format!("LabelEncoder keys do not match {d} input"))
                })
            }
            Some(d) => Err(Error::dtype(format!(
                "LabelEncoder does not support {d} input"
            ))),
        }
    }
}

impl Op for LabelEncoder {
    op_common!("LabelEncoder");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let dt = match self.table(x.dtype)? {
            Some(m) => Some(m.out_dtype()),
            None => match (&self.from_str, &self.from_num) {
                (Some(m), None) | (None, Some(m)) => Some(m.out_dtype()),
                _ => None,
            },
        };
        Ok(vec![Fact::new(dt, x.shape.clone())])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let m = self
            .table(Some(x.dtype()))?
            .ok_or_else(|| Error::runtime("LabelEncoder has no table"))?;
        Ok(vec![m.apply(x)?.into()])
    }
}

/// `CategoryMapper`: string ↔ int64 through paired category lists.
/// Spec: https://onnx.ai/onnx/operators/onnx_aionnxml_CategoryMapper.html
#[derive(Debug)]
pub struct CategoryMapper {
    pub to_int: LabelMap,
    pub to_str: LabelMap,
}

fn parse_category_mapper(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let s = cx.strings("cats_strings")?.unwrap_or_default();
    let i = cx.ints("cats_int64s")?.unwrap_or_default();
    if s.len() != i.len() {
        return Err(Error::attr(
            "CategoryMapper cats_strings and cats_int64s differ in length",
        ));
    }
    let def_i = cx.int_or("default_int64", -1)?;
    let def_s = cx.string_or("default_string", "_Unused")?;
    let (to_int, to_str) = two_way(s, i, def_i, def_s)?;
    Ok(Box::new(CategoryMapper { to_int, to_str }))
}

impl Op for CategoryMapper {
    op_common!("CategoryMapper");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let dt = match x.dtype {
            Some(DType::Str) => Some(DType::I64),
            Some(DType::I64) => Some(DType::Str),
            Some(d) => {
                return Err(Error::dtype(format!(
                    "CategoryMapper takes string or int64 input, got {d}"
                )))
            }
            None => None,
        };
        Ok(vec![Fact::new(dt, x.shape.clone())])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let m = if x.dtype() == DType::Str {
            &self.to_int
        } else {
            &self.to_str
        };
        Ok(vec![m.apply(x)?.into()])
    }
}

// ---------------------------------------------------------------------------------------

/// `Scaler`: (x - offset) * scale per feature, float output.
/// Spec: https://onnx.ai/onnx/operators/onnx_aionnxml_Scaler.html
#[derive(Debug)]
pub struct Scaler {
    pub offset: Vec<f32>,
    pub scale: Vec<f32>,
}

fn parse_scaler(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    Ok(Box::new(Scaler {
        offset: cx.floats("offset")?.unwrap_or_default(),
        scale: cx.floats("scale")?.unwrap_or_default(),
    }))
}

impl Op for Scaler {
    op_common!("Scaler");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        check_numeric(x, "Scaler")?;
        Ok(vec![Fact::new(Some(DType::F32), x.shape.clone())])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        Ok(vec![
            k::scaler(args.t(0)?, &self.offset, &self.scale)?.into()
        ])
    }
}

/// `Normalizer`: divides each row by its MAX, L1 or L2 norm, float output.
/// Spec: https://onnx.ai/onnx/operators/onnx_aionnxml_Normalizer.html
#[derive(Debug)]
pub struct Normalizer {
    pub norm: Norm,
}

fn parse_normalizer(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let norm = match cx.string_or("norm", "MAX")?.as_str() {
        "MAX" => Norm::Max,
        "L1" => Norm::L1,
        "L2" => Norm::L2,
        o => return Err(Error::attr(format!("Normalizer: unknown norm '{o}'"))),
    };
    Ok(Box::new(Normalizer { norm }))
}

impl Op for Normalizer {
    op_common!("Normalizer");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        check_numeric(x, "Normalizer")?;
        Ok(vec![Fact::new(Some(DType::F32), x.shape.clone())])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        Ok(vec![k::normalizer(args.t(0)?, self.norm)?.into()])
    }
}

/// `Imputer`: replaces a marker value (or NaN) by per-feature values.
/// Spec: https://onnx.ai/onnx/operators/onnx_aionnxml_Imputer.html
#[derive(Debug)]
pub struct Imputer {
    pub floats: Vec<f32>,
    pub ints: Vec<i64>,
    pub replaced_float: f32,
    pub replaced_int: i64,
}

fn parse_imputer(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let floats = cx.floats("imputed_value_floats")?.unwrap_or_default();
    let ints = cx.ints("imputed_value_int64s")?.unwrap_or_default();
    if floats.is_empty() == ints.is_empty() {
        return Err(Error::attr(
            "Imputer needs exactly one of imputed_value_floats and imputed_value_int64s",
        ));
    }
    Ok(Box::new(Imputer {
        floats,
        ints,
        replaced_float: cx.float_or("replaced_value_float", 0.0)?,
        replaced_int: cx.int_or("replaced_value_int64", 0)?,
    }))
}

impl Op for Imputer {
    op_common!("Imputer");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        check_numeric(x, "Imputer")?;
        Ok(vec![Fact::new(x.dtype, x.shape.clone())])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        let y = if x.dtype().is_float() {
            if self.floats.is_empty() {
                return Err(Error::attr(
                    "Imputer on float input needs imputed_value_floats",
                ));
            }
            k::imputer_f(x, &self.floats, self.replaced_float)?
        } else {
            if self.ints.is_empty() {
                return Err(Error::attr(
                    "Imputer on integer input needs imputed_value_int64s",
                ));
            }
            k::imputer_i(x, &self.ints, self.replaced_int)?
        };
        Ok(vec![y.into()])
    }
}

/// `OneHotEncoder`: one-hot vectors over a category list, float output.
/// Spec: https://onnx.ai/onnx/operators/onnx_aionnxml_OneHotEncoder.html
#[derive(Debug)]
pub struct OneHotEncoder {
    pub cats: Keys,
    pub n_cats: usize,
    pub zeros: bool,
}

fn parse_one_hot_encoder(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let s = cx.strings("cats_strings")?;
    let i = cx.ints("cats_int64s")?;
    let zeros = cx.int_or("zeros", 1)? != 0;
    let t = match (s, i) {
        (Some(s), None) => Tensor::vector(s),
        (None, Some(i)) => Tensor::vector(i),
        _ => {
            return Err(Error::attr(
                "OneHotEncoder needs exactly one of cats_strings and cats_int64s",
            ))
        }
    };
    Ok(Box::new(OneHotEncoder {
        n_cats: t.len(),
        cats: Keys::from_tensor(&t)?,
        zeros,
    }))
}

impl Op for OneHotEncoder {
    op_common!("OneHotEncoder");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let shape = x.shape.as_ref().map(|s| {
            let mut o = s.clone();
            o.push(Dim::Known(self.n_cats));
            o
        });
        Ok(vec![Fact::new(Some(DType::F32), shape)])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        Ok(vec![k::one_hot_encoder(
            args.t(0)?,
            &self.cats,
            self.n_cats,
            self.zeros,
        )?
        .into()])
    }
}

/// `FeatureVectorizer`: concatenates feature inputs, each cut or padded to its width.
/// Spec: https://onnx.ai/onnx/operators/onnx_aionnxml_FeatureVectorizer.html
#[derive(Debug)]
pub struct FeatureVectorizer {
    pub dims: Vec<usize>,
}

fn parse_feature_vectorizer(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let dims = cx
        .ints("inputdimensions")?
        .unwrap_or_default()
        .into_iter()
        .map(|d| {
            usize::try_from(d)
                .map_err(|_| Error::attr(format!("FeatureVectorizer dimension {d} is negative")))
        })
        .collect::<Result<Vec<usize>>>()?;
    if dims.len() != cx.n_inputs() {
        return Err(Error::attr(format!(
            "FeatureVectorizer has {} inputs but {} inputdimensions",
            cx.n_inputs(),
            dims.len()
        )));
    }
    Ok(Box::new(FeatureVectorizer { dims }))
}

impl Op for FeatureVectorizer {
    op_common!("FeatureVectorizer");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        let total = self.dims.iter().fold(0usize, |a, &d| a.saturating_add(d));
        Ok(vec![Fact::new(
            Some(DType::F32),
            Some(vec![batch_dim(x), Dim::Known(total)]),
        )])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let ins = (0..args.len())
            .map(|i| args.t(i))
            .collect::<Result<Vec<&Tensor>>>()?;
        Ok(vec![k::feature_vectorizer(&ins, &self.dims)?.into()])
    }
}

// ---------------------------------------------------------------------------------------

fn parse_labels(cx: &NodeCx, ints: &str, strings: &str) -> Result<Option<Labels>> {
    let i = cx.ints(ints)?;
    let s = cx.strings(strings)?;
    match (i, s) {
        (Some(_), Some(_)) => Err(Error::attr(format!("both {ints} and {strings} are set"))),
        (Some(i), None) => Ok(Some(Labels::Ints(i))),
        (None, Some(s)) => Ok(Some(Labels::Strings(s))),
        (None, None) => Ok(None),
    }
}

/// `LinearClassifier`: linear scores, labels by argmax (or sign for one score).
/// Spec: https://onnx.ai/onnx/operators/onnx_aionnxml_LinearClassifier.html
#[derive(Debug)]
pub struct LinearClassifier {
    pub coefficients: Vec<f32>,
    pub intercepts: Vec<f32>,
    pub labels: Labels,
    pub post: PostTransform,
}

fn parse_linear_classifier(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let coefficients = cx
        .floats("coefficients")?
        .ok_or_else(|| Error::attr("LinearClassifier needs coefficients"))?;
    let intercepts = cx.floats("intercepts")?.unwrap_or_default();
    // multi_class does not change inference (onnxruntime ignores it too).
    cx.int("multi_class")?;
    let post = PostTransform::from_name(&cx.string_or("post_transform", "NONE")?)?;
    let t = intercepts.len();
    if t == 0 {
        return Err(Error::attr("LinearClassifier needs intercepts"));
    }
    let labels = parse_labels(cx, "classlabels_ints", "classlabels_strings")?
        .unwrap_or_else(|| Labels::Ints((0..t as i64).collect()));
    if t > 1 && labels.len() != t {
        return Err(Error::attr(format!(
            "LinearClassifier has {t} classes but {} labels",
            labels.len()
        )));
    }
    Ok(Box::new(LinearClassifier {
        coefficients,
        intercepts,
        labels,
        post,
    }))
}

impl Op for LinearClassifier {
    op_common!("LinearClassifier");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        check_numeric(x, "LinearClassifier")?;
        let n = batch_dim(x);
        let t = self.intercepts.len();
        let cols = if t == 1 && self.labels.len() == 2 {
            2
        } else {
            t
        };
        Ok(vec![
            Fact::new(Some(self.labels.dtype()), Some(vec![n.clone()])),
            Fact::new(Some(DType::F32), Some(vec![n, Dim::Known(cols)])),
        ])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let (y, z) = k::linear_classifier(
            args.t(0)?,
            &self.coefficients,
            &self.intercepts,
            &self.labels,
            self.post,
        )?;
        Ok(vec![y.into(), z.into()])
    }
}

/// `LinearRegressor`: X·coefficientsᵀ + intercepts.
/// Spec: https://onnx.ai/onnx/operators/onnx_aionnxml_LinearRegressor.html
#[derive(Debug)]
pub struct LinearRegressor {
    pub coefficients: Vec<f32>,
    pub intercepts: Vec<f32>,
    pub targets: usize,
    pub post: PostTransform,
}

fn parse_linear_regressor(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let coefficients = cx.floats("coefficients")?.unwrap_or_default();
    let intercepts = cx.floats("intercepts")?.unwrap_or_default();
    let t = cx.int_or("targets", 1)?;
    let targets = usize::try_from(t)
        .ok()
        .filter(|&t| t > 0)
        .ok_or_else(|| Error::attr(format!("LinearRegressor targets must be positive, got {t}")))?;
    let post = PostTransform::from_name(&cx.string_or("post_transform", "NONE")?)?;
    Ok(Box::new(LinearRegressor {
        coefficients,
        intercepts,
        targets,
        post,
    }))
}

impl Op for LinearRegressor {
    op_common!("LinearRegressor");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        check_numeric(x, "LinearRegressor")?;
        Ok(vec![Fact::new(
            Some(DType::F32),
            Some(vec![batch_dim(x), Dim::Known(self.targets)]),
        )])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        Ok(vec![k::linear_regressor(
            args.t(0)?,
            &self.coefficients,
            &self.intercepts,
            self.targets,
            self.post,
        )?
        .into()])
    }
}

// ---------------------------------------------------------------------------------------

/// Reads the nodes_* attributes shared by TreeEnsembleRegressor and -Classifier.
fn parse_legacy_nodes(cx: &NodeCx, prefix: &str) -> Result<(LegacyTrees, bool)> {
    let ints = |n: &str| -> Result<Vec<i64>> { Ok(cx.ints(n)?.unwrap_or_default()) };
    let (values, d1) = floats_or_tensor(cx, "nodes_values")?;
    floats_or_tensor(cx, "nodes_hitrates")?; // not used for inference
    let (weights, d2) = floats_or_tensor(cx, &format!("{prefix}_weights"))?;
    let t = LegacyTrees {
        treeids: ints("nodes_treeids")?,
        nodeids: ints("nodes_nodeids")?,
        featureids: ints("nodes_featureids")?,
        modes: cx.strings("nodes_modes")?.unwrap_or_default(),
        values: values.unwrap_or_default(),
        truenodeids: ints("nodes_truenodeids")?,
        falsenodeids: ints("nodes_falsenodeids")?,
        missing_true: ints("nodes_missing_value_tracks_true")?,
        t_ids: ints(&format!("{prefix}_ids"))?,
        t_nodeids: ints(&format!("{prefix}_nodeids"))?,
        t_treeids: ints(&format!("{prefix}_treeids"))?,
        t_weights: weights.unwrap_or_default(),
    };
    Ok((t, d1 || d2))
}

fn tree_rows(x: &Fact) -> Result<Dim> {
    check_numeric(x, "tree ensemble")?;
    if let Some(r) = x.rank() {
        if r == 0 || r > 2 {
            return Err(Error::shape(format!(
                "tree ensembles take 1-D or 2-D input, got rank {r}"
            )));
        }
    }
    Ok(batch_dim(x))
}

/// `TreeEnsembleRegressor` (ai.onnx.ml 1/3): sum/average/min/max of tree leaves.
/// Spec: https://onnx.ai/onnx/operators/onnx_aionnxml_TreeEnsembleRegressor.html
#[derive(Debug)]
pub struct TreeEnsembleRegressor {
    pub ensemble: Ensemble,
}

fn parse_tree_regressor(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let (trees, d) = parse_legacy_nodes(cx, "target")?;
    let aggregate = match cx.string_or("aggregate_function", "SUM")?.as_str() {
        "SUM" => Aggregate::Sum,
        "AVERAGE" => Aggregate::Average,
        "MIN" => Aggregate::Min,
        "MAX" => Aggregate::Max,
        o => return Err(Error::attr(format!("unknown aggregate_function '{o}'"))),
    };
    let post = PostTransform::from_name(&cx.string_or("post_transform", "NONE")?)?;
    let (base, db) = floats_or_tensor(cx, "base_values")?;
    let n = cx.int_or("n_targets", 1)?;
    let n_targets = usize::try_from(n)
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| Error::attr(format!("n_targets must be positive, got {n}")))?;
    let ensemble = Ensemble::from_legacy(
        &trees,
        n_targets,
        aggregate,
        post,
        base.unwrap_or_default(),
        d || db,
    )?;
    Ok(Box::new(TreeEnsembleRegressor { ensemble }))
}

impl Op for TreeEnsembleRegressor {
    op_common!("TreeEnsembleRegressor");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let n = tree_rows(cx.input(0)?)?;
        Ok(vec![Fact::new(
            Some(DType::F32),
            Some(vec![n, Dim::Known(self.ensemble.n_targets)]),
        )])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        Ok(vec![self.ensemble.regress(args.t(0)?, DType::F32)?.into()])
    }
}

/// `TreeEnsembleClassifier` (ai.onnx.ml 1/3): class scores from tree leaves, labels by
/// onnxruntime's rules (including its binary special cases).
/// Spec: https://onnx.ai/onnx/operators/onnx_aionnxml_TreeEnsembleClassifier.html
#[derive(Debug)]
pub struct TreeEnsembleClassifier {
    pub ensemble: Ensemble,
    pub labels: Labels,
}

fn parse_tree_classifier(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let (trees, d) = parse_legacy_nodes(cx, "class")?;
    let post = PostTransform::from_name(&cx.string_or("post_transform", "NONE")?)?;
    let (base, db) = floats_or_tensor(cx, "base_values")?;
    let labels = parse_labels(cx, "classlabels_int64s", "classlabels_strings")?
        .ok_or_else(|| Error::attr("TreeEnsembleClassifier needs class labels"))?;
    if labels.len() < 2 {
        return Err(Error::unsupported_op(
            "TreeEnsembleClassifier with fewer than 2 class labels",
        ));
    }
    let ensemble = Ensemble::from_legacy(
        &trees,
        labels.len(),
        Aggregate::Sum,
        post,
        base.unwrap_or_default(),
        d || db,
    )?;
    Ok(Box::new(TreeEnsembleClassifier { ensemble, labels }))
}

impl Op for TreeEnsembleClassifier {
    op_common!("TreeEnsembleClassifier");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let n = tree_rows(cx.input(0)?)?;
        Ok(vec![
            Fact::new(Some(self.labels.dtype()), Some(vec![n.clone()])),
            Fact::new(
                Some(DType::F32),
                Some(vec![n, Dim::Known(self.labels.len())]),
            ),
        ])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let (y, z) = self.ensemble.classify(args.t(0)?, &self.labels)?;
        Ok(vec![y.into(), z.into()])
    }
}

/// `TreeEnsemble` (ai.onnx.ml 5): the unified tree ensemble with leaf/node arrays and
/// set-membership splits; output in the input's float type.
/// Spec: https://onnx.ai/onnx/operators/onnx_aionnxml_TreeEnsemble.html
#[derive(Debug)]
pub struct TreeEnsemble {
    pub ensemble: Ensemble,
}

fn parse_tree_ensemble(cx: &mut NodeCx) -> Result<Box<dyn Op>> {
    let req_ints = |n: &str| -> Result<Vec<i64>> {
        cx.ints(n)?
            .ok_or_else(|| Error::attr(format!("TreeEnsemble needs '{n}'")))
    };
    let req_tensor = |n: &str| -> Result<Tensor> {
        cx.tensor(n)?
            .ok_or_else(|| Error::attr(format!("TreeEnsemble needs '{n}'")))
    };
    let featureids = req_ints("nodes_featureids")?;
    let truenodeids = req_ints("nodes_truenodeids")?;
    let falsenodeids = req_ints("nodes_falsenodeids")?;
    let trueleafs = req_ints("nodes_trueleafs")?;
    let falseleafs = req_ints("nodes_falseleafs")?;
    let leaf_targetids = req_ints("leaf_targetids")?;
    let tree_roots = req_ints("tree_roots")?;
    let splits_t = req_tensor("nodes_splits")?;
    let modes = req_tensor("nodes_modes")?.to_i64_vec()?;
    let leaf_w = req_tensor("leaf_weights")?;
    let missing = cx
        .ints("nodes_missing_value_tracks_true")?
        .unwrap_or_default();
    cx.tensor("nodes_hitrates")?; // not used for inference
    let members = match cx.tensor("membership_values")? {
        Some(t) => t.to_f64_vec()?,
        None => Vec::new(),
    };
    let aggregate = match cx.int_or("aggregate_function", 1)? {
        0 => Aggregate::Average,
        1 => Aggregate::Sum,
        2 => Aggregate::Min,
        3 => Aggregate::Max,
        v => return Err(Error::attr(format!("unknown aggregate_function {v}"))),
    };
    let post = PostTransform::from_code(cx.int_or("post_transform", 0)?)?;
    let n_targets_attr = cx.int("n_targets")?;
    let double = splits_t.dtype() == DType::F64 || leaf_w.dtype() == DType::F64;
    let splits = splits_t.to_f64_vec()?;
    let weights = leaf_w.to_f64_vec()?;
    let n = featureids.len();
    if [
        truenodeids.len(),
        falsenodeids.len(),
        trueleafs.len(),
        falseleafs.len(),
        splits.len(),
        modes.len(),
    ]
    .iter()
    .any(|&l| l != n)
        || (!missing.is_empty() && missing.len() != n)
    {
        return Err(Error::attr(
            "TreeEnsemble nodes_* attributes differ in length",
        ));
    }
    if leaf_targetids.len() != weights.len() {
        return Err(Error::attr(
            "TreeEnsemble leaf_* attributes differ in length",
        ));
    }
    let n_leaves = weights.len();
    let next = |id: i64, leaf: i64| -> Result<Next> {
        let i = usize::try_from(id)
            .map_err(|_| Error::attr(format!("TreeEnsemble node id {id} is negative")))?;
        if leaf != 0 {
            if i >= n_leaves {
                return Err(Error::attr(format!("TreeEnsemble leaf {i} does not exist")));
            }
            Ok(Next::Leaf(i))
        } else {
            if i >= n {
                return Err(Error::attr(format!("TreeEnsemble node {i} does not exist")));
            }
            Ok(Next::Node(i))
        }
    };
    let mut nodes = Vec::with_capacity(n);
    let mut member_vals: Vec<f64> = Vec::new();
    let mut mi = members.iter();
    let mut n_features = 0;
    for i in 0..n {
        let mode = match modes[i] {
            0 => NodeMode::Leq,
            1 => NodeMode::Lt,
            2 => NodeMode::Gte,
            3 => NodeMode::Gt,
            4 => NodeMode::Eq,
            5 => NodeMode::Neq,
            6 => NodeMode::Member,
            v => return Err(Error::attr(format!("TreeEnsemble: unknown node mode {v}"))),
        };
        let mut set = (0, 0);
        if mode == NodeMode::Member {
            // Each set-membership node takes the next NaN-terminated run of values.
            let start = member_vals.len();
            for &v in mi.by_ref() {
                if v.is_nan() {
                    break;
                }
                member_vals.push(v);
            }
            set = (start, member_vals.len());
        }
        let feature = usize::try_from(featureids[i])
            .map_err(|_| Error::attr("TreeEnsemble feature id is negative"))?;
        n_features = n_features.max(feature + 1);
        nodes.push(TreeNode {
            feature,
            mode,
            value: splits[i],
            set,
            missing_true: missing.get(i).is_some_and(|&m| m == 1),
            on_true: next(truenodeids[i], trueleafs[i])?,
            on_false: next(falsenodeids[i], falseleafs[i])?,
        });
    }
    let targets = leaf_targetids
        .iter()
        .map(|&t| usize::try_from(t).map_err(|_| Error::attr("TreeEnsemble target id is negative")))
        .collect::<Result<Vec<usize>>>()?;
    let n_targets = match n_targets_attr {
        Some(v) => usize::try_from(v)
            .ok()
            .filter(|&v| v > 0)
            .ok_or_else(|| Error::attr(format!("n_targets must be positive, got {v}")))?,
        None => targets.iter().max().map_or(1, |m| m + 1),
    };
    if targets.iter().any(|&t| t >= n_targets) {
        return Err(Error::attr("TreeEnsemble leaf target id is out of range"));
    }
    let roots = tree_roots
        .iter()
        .map(|&r| next(r, 0))
        .collect::<Result<Vec<Next>>>()?;
    let ensemble = Ensemble {
        nodes,
        members: member_vals,
        leaves: (0..n_leaves).map(|i| (i, i + 1)).collect(),
        weights: targets.into_iter().zip(weights).collect(),
        roots,
        n_targets,
        n_features,
        aggregate,
        post,
        base_values: Vec::new(),
        double,
    };
    Ok(Box::new(TreeEnsemble { ensemble }))
}

impl Op for TreeEnsemble {
    op_common!("TreeEnsemble");
    fn infer(&self, cx: &InferCx) -> Result<Vec<Fact>> {
        let x = cx.input(0)?;
        if let Some(d) = x.dtype {
            if !d.is_float() {
                return Err(Error::dtype(format!(
                    "TreeEnsemble takes float input, got {d}"
                )));
            }
        }
        let n = tree_rows(x)?;
        Ok(vec![Fact::new(
            x.dtype,
            Some(vec![n, Dim::Known(self.ensemble.n_targets)]),
        )])
    }
    fn run(&self, _cx: &mut RunCx, args: &Args) -> Result<Vec<Value>> {
        let x = args.t(0)?;
        Ok(vec![self.ensemble.regress(x, x.dtype())?.into()])
    }
}
