//! Compares a candidate model with a reference on the same inputs: a quantized, pruned or
//! factorized model against its float original, or a distilled student against its
//! teacher. Per output (matched by name): top-1 agreement, cosine similarity, absolute and
//! relative error for floats, the exact-match rate for integers; latency of both models on
//! the CPU path; sizes on disk and gzipped when the caller gives the bytes.
//!
//! A candidate that lacks one of the reference's outputs, or whose output has another
//! shape or kind of dtype, is an error (kinds `InvalidInput`, `Shape`, `DType`) naming
//! every such output, not a panic and not a report of nonsense numbers.

use crate::api::io::json_str;
use crate::api::Model;
use crate::error::{Error, ErrorKind, Result};
use crate::graph::Dim;
use crate::tensor::{DType, Data, Tensor};
use std::fmt::{self, Write as _};

/// How to evaluate.
#[derive(Debug, Clone, Default)]
pub struct EvalOptions {
    /// Timed runs of each input set per model after the untimed run that gives the outputs;
    /// 0 skips timing. Timing needs a clock: the wasm build never times.
    pub repeat: usize,
}

/// Agreement of one output over all input sets.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputReport {
    pub name: String,
    /// The reference's dtype and, for the first input set, its shape.
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Elements compared, over all sets.
    pub elements: usize,
    pub agreement: Agreement,
}

/// Float outputs are compared by distance; everything else must match exactly.
#[derive(Debug, Clone, PartialEq)]
pub enum Agreement {
    Float(FloatAgreement),
    /// Fraction of elements equal (labels, token ids, masks, strings).
    Exact {
        match_rate: f64,
    },
}

/// Distances between two float outputs. Rows are the vectors along the last axis; an
/// output of rank 0 or with a last axis of 1 is one row per input set.
#[derive(Debug, Clone, PartialEq)]
pub struct FloatAgreement {
    pub rows: usize,
    /// Fraction of rows whose argmax over the last axis agrees; None where an argmax means
    /// nothing (rank 0, or a last axis of 1).
    pub top1: Option<f64>,
    pub cosine_mean: f64,
    pub cosine_min: f64,
    pub max_abs: f64,
    pub mean_abs: f64,
    /// max_abs / reference_scale.
    pub max_rel: f64,
    /// Largest |reference| element: the scale that the errors are relative to.
    pub reference_scale: f64,
    /// Elements where either side is NaN or infinite and the two differ; they are left out
    /// of the distances above.
    pub nonfinite: usize,
}

/// Median and minimum of one model's time over the input sets: per set over the repeats,
/// then summed over the sets (one pass over the data).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    pub median_ms: f64,
    pub min_ms: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub repeat: usize,
    pub reference: Timing,
    pub candidate: Timing,
    /// candidate / reference, of the medians (< 1: the candidate is faster).
    pub ratio: f64,
}

/// A model file's size: as stored and gzipped (what a browser downloads from a server that
/// compresses).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSize {
    pub label: String,
    pub bytes: usize,
    pub gzip_bytes: Option<usize>,
}

/// What [`compare`] measured; [`fmt::Display`] prints a table, [`Report::to_json`] one
/// JSON object.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Report {
    pub sets: usize,
    pub outputs: Vec<OutputReport>,
    pub latency: Option<Latency>,
    /// Reference then candidate, when the caller adds them ([`Report::sizes`]).
    pub sizes: Vec<ModelSize>,
    /// Anything the reader should know: generated inputs, candidate outputs left out…
    pub notes: Vec<String>,
    /// The accuracy guard's metric, when asked for: the same number `compress --eval`
    /// checks against its tolerance.
    pub task: Option<TaskMetric>,
}

/// A guard metric on one output: (metric name, output, deviation from the reference).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskMetric {
    pub metric: String,
    pub output: String,
    pub deviation: f64,
}

/// One way the candidate's outputs fail to match the reference's.
#[derive(Debug, Clone, PartialEq)]
pub enum Mismatch {
    /// The candidate has no output of this name.
    Missing { output: String },
    /// Float on one side, integer (or string) on the other.
    DType {
        output: String,
        reference: String,
        candidate: String,
    },
    /// Different shapes: declared ones (`set` None) or produced on an input set.
    Shape {
        output: String,
        set: Option<usize>,
        reference: String,
        candidate: String,
    },
}

impl Mismatch {
    fn kind(&self) -> ErrorKind {
        match self {
            Mismatch::Missing { .. } => ErrorKind::InvalidInput,
            Mismatch::DType { .. } => ErrorKind::DType,
            Mismatch::Shape { .. } => ErrorKind::Shape,
        }
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Missing { output } => {
                write!(f, "output '{output}': the candidate has no such output")
            }
            Mismatch::DType {
                output,
                reference,
                candidate,
            } => write!(
                f,
                "output '{output}': reference {reference}, candidate {candidate}"
            ),
            Mismatch::Shape {
                output,
                set,
                reference,
                candidate,
            } => {
                write!(f, "output '{output}': ")?;
                if let Some(k) = set {
                    write!(f, "on input set {k}, ")?;
                }
                write!(f, "reference shape {reference}, candidate {candidate}")
            }
        }
    }
}

/// One error for all mismatches, of the kind of the most basic one (a missing output
/// before a dtype before a shape), listing each output.
fn mismatch_error(list: &[Mismatch]) -> Error {
    let kind = [ErrorKind::InvalidInput, ErrorKind::DType, ErrorKind::Shape]
        .into_iter()
        .find(|k| list.iter().any(|m| m.kind() == *k))
        .unwrap_or(ErrorKind::Shape);
    let lines: Vec<String> = list.iter().map(|m| m.to_string()).collect();
    Error::new(
        kind,
        format!(
            "the candidate's outputs do not match the reference's: {}",
            lines.join("; ")
        ),
    )
}

fn float_like(dt: DType) -> bool {
    dt.is_float()
}

/// Mismatches visible in the declarations, before running anything: missing outputs,
/// float against integer, and fixed dims that differ.
pub fn declared_mismatches(reference: &Model, candidate: &Model) -> Vec<Mismatch> {
    let mut out = Vec::new();
    for r in reference.outputs() {
        let Some(c) = candidate.outputs().iter().find(|c| c.name == r.name) else {
            out.push(Mismatch::Missing {
                output: r.name.clone(),
            });
            continue;
        };
        if let (Some(rd), Some(cd)) = (r.fact.dtype, c.fact.dtype) {
            if float_like(rd) != float_like(cd) {
                out.push(Mismatch::DType {
                    output: r.name.clone(),
                    reference: rd.to_string(),
                    candidate: cd.to_string(),
                });
                continue;
            }
        }
        if let (Some(rs), Some(cs)) = (&r.fact.shape, &c.fact.shape) {
            let clash = rs.len() != cs.len()
                || rs.iter().zip(cs).any(|p| match p {
                    (Dim::Known(a), Dim::Known(b)) => a != b,
                    _ => false,
                });
            if clash {
                out.push(Mismatch::Shape {
                    output: r.name.clone(),
                    set: None,
                    reference: r.fact.shape_string(),
                    candidate: c.fact.shape_string(),
                });
            }
        }
    }
    out
}

/// Runs both models on every input set and measures how far the candidate's outputs are
/// from the reference's. `inputs` holds one list of named tensors per set; both models get
/// the same tensors.
pub fn compare(
    reference: &Model,
    candidate: &Model,
    inputs: &[Vec<(String, Tensor)>],
    opts: &EvalOptions,
) -> Result<Report> {
    if inputs.is_empty() {
        return Err(Error::input("evaluate needs at least one input set"));
    }
    let declared = declared_mismatches(reference, candidate);
    if !declared.is_empty() {
        return Err(mismatch_error(&declared));
    }
    let names: Vec<String> = reference.outputs().iter().map(|o| o.name.clone()).collect();
    let mut accs: Vec<Option<Accumulator>> = vec![None; names.len()];
    for (k, set) in inputs.iter().enumerate() {
        let feeds: Vec<(&str, Tensor)> = set.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
        let r = run_named(reference, &feeds, "reference", k)?;
        let c = run_named(candidate, &feeds, "candidate", k)?;
        let mut bad = Vec::new();
        let mut pairs = Vec::with_capacity(names.len());
        for name in &names {
            let rt = lookup(&r, name, "reference", k)?;
            let Some(ct) = c.iter().find(|(n, _)| n == name).map(|(_, t)| t) else {
                bad.push(Mismatch::Missing {
                    output: name.clone(),
                });
                continue;
            };
            if let Some(m) = pair_mismatch(name, Some(k), rt, ct) {
                bad.push(m);
            }
            pairs.push((rt, ct));
        }
        if !bad.is_empty() {
            return Err(mismatch_error(&bad));
        }
        for ((acc, name), (rt, ct)) in accs.iter_mut().zip(&names).zip(pairs) {
            let a = acc.get_or_insert_with(|| Accumulator::new(name, rt));
            a.add(rt, ct)?;
        }
    }
    let mut report = Report {
        sets: inputs.len(),
        outputs: accs
            .into_iter()
            .flatten()
            .map(Accumulator::finish)
            .collect(),
        ..Report::default()
    };
    let extra: Vec<&str> = candidate
        .outputs()
        .iter()
        .filter(|c| !names.contains(&c.name))
        .map(|c| c.name.as_str())
        .collect();
    if !extra.is_empty() {
        report.notes.push(format!(
            "candidate outputs not in the reference, not compared: {}",
            extra.join(", ")
        ));
    }
    if opts.repeat > 0 {
        report.latency = time_both(reference, candidate, inputs, opts.repeat)?;
        if report.latency.is_none() {
            report
                .notes
                .push("no latency: this build has no clock".to_string());
        }
    }
    Ok(report)
}

/// Compares two sets of outputs already computed (for callers that run the models
/// themselves, e.g. streaming with state): `pairs` holds, per output name, the reference's
/// and the candidate's tensor for each input set.
pub fn compare_outputs(pairs: &[(String, Vec<(Tensor, Tensor)>)]) -> Result<Vec<OutputReport>> {
    let mut out = Vec::with_capacity(pairs.len());
    for (name, sets) in pairs {
        let Some((first, _)) = sets.first() else {
            return Err(Error::input(format!(
                "output '{name}': no tensors to compare"
            )));
        };
        let mut acc = Accumulator::new(name, first);
        let mut bad = Vec::new();
        for (k, (r, c)) in sets.iter().enumerate() {
            match pair_mismatch(name, Some(k), r, c) {
                Some(m) => bad.push(m),
                None => acc.add(r, c)?,
            }
        }
        if !bad.is_empty() {
            return Err(mismatch_error(&bad));
        }
        out.push(acc.finish());
    }
    Ok(out)
}

fn pair_mismatch(name: &str, set: Option<usize>, r: &Tensor, c: &Tensor) -> Option<Mismatch> {
    if float_like(r.dtype()) != float_like(c.dtype())
        || (r.dtype() == DType::Str) != (c.dtype() == DType::Str)
    {
        return Some(Mismatch::DType {
            output: name.to_string(),
            reference: r.dtype().to_string(),
            candidate: c.dtype().to_string(),
        });
    }
    (r.shape() != c.shape()).then(|| Mismatch::Shape {
        output: name.to_string(),
        set,
        reference: format!("{:?}", r.shape()),
        candidate: format!("{:?}", c.shape()),
    })
}

fn run_named(
    model: &Model,
    feeds: &[(&str, Tensor)],
    which: &str,
    set: usize,
) -> Result<Vec<(String, Tensor)>> {
    model.run(feeds).map_err(|e| {
        let mut out = Error::new(
            e.kind(),
            format!("{which} on input set {set}: {}", e.message()),
        );
        if let (Some(n), Some(o)) = (e.node(), e.op()) {
            out = out.at_node(n, o);
        }
        out
    })
}

fn lookup<'a>(
    outs: &'a [(String, Tensor)],
    name: &str,
    which: &str,
    set: usize,
) -> Result<&'a Tensor> {
    outs.iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t)
        .ok_or_else(|| {
            Error::runtime(format!(
                "{which} produced no output '{name}' on input set {set}"
            ))
        })
}

/// Running sums for one output over the input sets.
#[derive(Debug, Clone)]
struct Accumulator {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    elements: usize,
    float: bool,
    // Float outputs.
    rows: usize,
    top1_rows: usize,
    top1_same: usize,
    cos_sum: f64,
    cos_min: f64,
    abs_sum: f64,
    abs_n: usize,
    abs_max: f64,
    scale: f64,
    nonfinite: usize,
    // Exact outputs.
    same: usize,
}

impl Accumulator {
    fn new(name: &str, first: &Tensor) -> Accumulator {
        Accumulator {
            name: name.to_string(),
            dtype: first.dtype(),
            shape: first.shape().to_vec(),
            elements: 0,
            float: float_like(first.dtype()),
            rows: 0,
            top1_rows: 0,
            top1_same: 0,
            cos_sum: 0.0,
            cos_min: f64::INFINITY,
            abs_sum: 0.0,
            abs_n: 0,
            abs_max: 0.0,
            scale: 0.0,
            nonfinite: 0,
            same: 0,
        }
    }

    /// Adds one input set's pair (same shape, checked by the caller).
    fn add(&mut self, r: &Tensor, c: &Tensor) -> Result<()> {
        self.elements += r.len();
        if !self.float {
            self.same += exact_same(r, c)?;
            return Ok(());
        }
        let x = r.to_f64_vec()?;
        let y = c.to_f64_vec()?;
        for (&a, &b) in x.iter().zip(&y) {
            if a.is_finite() && b.is_finite() {
                let d = (a - b).abs();
                self.abs_sum += d;
                self.abs_n += 1;
                self.abs_max = self.abs_max.max(d);
                self.scale = self.scale.max(a.abs());
            } else if !(a == b || (a.is_nan() && b.is_nan())) {
                self.nonfinite += 1;
            }
        }
        let last = r.shape().last().copied().unwrap_or(1);
        let rowwise = r.rank() >= 1 && last > 1;
        let cols = if rowwise { last } else { x.len().max(1) };
        if x.is_empty() {
            return Ok(());
        }
        for (a, b) in x.chunks(cols).zip(y.chunks(cols)) {
            let cos = cosine(a, b);
            self.cos_sum += cos;
            self.cos_min = self.cos_min.min(cos);
            self.rows += 1;
            if rowwise {
                self.top1_rows += 1;
                self.top1_same += usize::from(argmax(a) == argmax(b));
            }
        }
        Ok(())
    }

    fn finish(self) -> OutputReport {
        let agreement = if self.float {
            let rows = self.rows.max(1) as f64;
            Agreement::Float(FloatAgreement {
                rows: self.rows,
                top1: (self.top1_rows > 0).then(|| self.top1_same as f64 / self.top1_rows as f64),
                cosine_mean: if self.rows == 0 {
                    1.0
                } else {
                    self.cos_sum / rows
                },
                cosine_min: if self.rows == 0 { 1.0 } else { self.cos_min },
                max_abs: self.abs_max,
                mean_abs: self.abs_sum / self.abs_n.max(1) as f64,
                max_rel: relative(self.abs_max, self.scale),
                reference_scale: self.scale,
                nonfinite: self.nonfinite,
            })
        } else {
            Agreement::Exact {
                match_rate: if self.elements == 0 {
                    1.0
                } else {
                    self.same as f64 / self.elements as f64
                },
            }
        };
        OutputReport {
            name: self.name,
            dtype: self.dtype,
            shape: self.shape,
            elements: self.elements,
            agreement,
        }
    }
}

/// Error relative to a scale; an all-zero reference makes any error infinitely large.
fn relative(err: f64, scale: f64) -> f64 {
    if err == 0.0 {
        0.0
    } else if scale == 0.0 {
        f64::INFINITY
    } else {
        err / scale
    }
}

fn exact_same(r: &Tensor, c: &Tensor) -> Result<usize> {
    Ok(match (r.data(), c.data()) {
        (Data::Str(a), Data::Str(b)) => a.iter().zip(b).filter(|(p, q)| p == q).count(),
        _ => {
            let a = r.to_i64_vec()?;
            let b = c.to_i64_vec()?;
            a.iter().zip(&b).filter(|(p, q)| p == q).count()
        }
    })
}

/// Cosine of the angle between two vectors; two zero vectors agree (1), a zero vector
/// against a non-zero one does not (0). Non-finite elements are skipped.
fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let (mut dot, mut na, mut nb) = (0.0, 0.0, 0.0);
    for (&p, &q) in a.iter().zip(b) {
        if p.is_finite() && q.is_finite() {
            dot += p * q;
            na += p * p;
            nb += q * q;
        }
    }
    match (na == 0.0, nb == 0.0) {
        (true, true) => 1.0,
        (true, false) | (false, true) => 0.0,
        // Rounding can push |cos| a hair past 1;
        // sqrt(na * nb), not sqrt(na) * sqrt(nb): identical vectors then give exactly 1.
        _ => (dot / (na * nb).sqrt()).clamp(-1.0, 1.0),
    }
}

/// Index of the first largest element (NaN counts as smallest).
fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] || (v[best].is_nan() && !x.is_nan()) {
            best = i;
        }
    }
    best
}

#[cfg(not(target_arch = "wasm32"))]
fn time_both(
    reference: &Model,
    candidate: &Model,
    inputs: &[Vec<(String, Tensor)>],
    repeat: usize,
) -> Result<Option<Latency>> {
    use std::time::Instant;
    let mut r_total = Timing {
        median_ms: 0.0,
        min_ms: 0.0,
    };
    let mut c_total = r_total;
    for (k, set) in inputs.iter().enumerate() {
        let feeds: Vec<(&str, Tensor)> = set.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
        let (mut rt, mut ct) = (Vec::with_capacity(repeat), Vec::with_capacity(repeat));
        // Alternating the two models spreads drift in machine load over both.
        for _ in 0..repeat {
            let t = Instant::now();
            run_named(reference, &feeds, "reference", k)?;
            rt.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            run_named(candidate, &feeds, "candidate", k)?;
            ct.push(t.elapsed().as_secs_f64() * 1e3);
        }
        for (total, times) in [(&mut r_total, rt), (&mut c_total, ct)] {
            let t = median_min(times);
            total.median_ms += t.median_ms;
            total.min_ms += t.min_ms;
        }
    }
    Ok(Some(Latency {
        repeat,
        reference: r_total,
        candidate: c_total,
        ratio: c_total.median_ms / r_total.median_ms.max(1e-9),
    }))
}

#[cfg(target_arch = "wasm32")]
fn time_both(
    _reference: &Model,
    _candidate: &Model,
    _inputs: &[Vec<(String, Tensor)>],
    _repeat: usize,
) -> Result<Option<Latency>> {
    // std::time::Instant panics on wasm32-unknown-unknown.
    Ok(None)
}

#[cfg(not(target_arch = "wasm32"))]
fn median_min(mut v: Vec<f64>) -> Timing {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = match n {
        0 => 0.0,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    };
    Timing {
        median_ms: median,
        min_ms: v.first().copied().unwrap_or(0.0),
    }
}

impl ModelSize {
    /// The size of a model's bytes, gzipped too where this build has an encoder (native).
    pub fn of(label: impl Into<String>, bytes: &[u8]) -> Result<ModelSize> {
        Ok(ModelSize {
            label: label.into(),
            bytes: bytes.len(),
            gzip_bytes: gzip_len(bytes)?,
        })
    }
}

/// Bytes after gzip at the highest level (`gzip -9`), as a download would be packed.
#[cfg(not(target_arch = "wasm32"))]
pub fn gzip_len(bytes: &[u8]) -> Result<Option<usize>> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(bytes)
        .and_then(|_| enc.finish())
        .map(|v| Some(v.len()))
        .map_err(|e| Error::io(format!("gzip: {e}")))
}

#[cfg(target_arch = "wasm32")]
pub fn gzip_len(_bytes: &[u8]) -> Result<Option<usize>> {
    Ok(None)
}

/// One set of inputs made up from the declared types: symbolic and unnamed dims set to 1,
/// floats uniform in [0, 1), integers in [0, 100), booleans either; the same for a seed.
/// Optional inputs (with an initializer default) are left out.
pub fn random_inputs(model: &Model, seed: u64) -> Result<Vec<(String, Tensor)>> {
    let mut rng = SplitMix64(seed);
    let mut out = Vec::new();
    for info in model.inputs().iter().filter(|i| !i.optional) {
        let name = &info.name;
        let dt = info
            .fact
            .dtype
            .ok_or_else(|| Error::input(format!("input '{name}' has no declared type")))?;
        let shape = info
            .shape_with_ones()
            .ok_or_else(|| Error::input(format!("input '{name}' has no declared rank")))?;
        let n = crate::tensor::numel(&shape, dt)?;
        let mut v = crate::tensor::alloc_vec::<f64>(n)?;
        let (hi, float) = match dt {
            DType::Bool => (2.0, false),
            _ if dt.is_float() => (1.0, true),
            _ if dt.is_int() => (100.0, false),
            _ => {
                return Err(Error::unsupported_dtype(format!(
                    "input '{name}': cannot make up {dt} values"
                )))
            }
        };
        for x in v.iter_mut() {
            let u = hi * rng.next_f64();
            // Integers take the floor so that [0, N) never yields N.
            *x = if float { u } else { u.floor() };
        }
        let t = Tensor::from_vec(shape, v)?;
        out.push((name.clone(), if dt == DType::F64 { t } else { t.cast(dt)? }));
    }
    Ok(out)
}

/// SplitMix64: seeded and dependency-free, so made-up inputs repeat across runs and
/// machines (also the CLI's `bench` inputs).
pub struct SplitMix64(pub u64);
impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Report {
    /// Adds the two models' sizes (reference first).
    pub fn sizes(mut self, reference: ModelSize, candidate: ModelSize) -> Report {
        self.sizes = vec![reference, candidate];
        self
    }

    /// One JSON object; non-finite numbers are written as null.
    pub fn to_json(&self) -> String {
        let mut s = String::new();
        let _ = write!(s, "{{\"sets\":{},\"outputs\":[", self.sets);
        for (i, o) in self.outputs.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let shape: Vec<String> = o.shape.iter().map(|d| d.to_string()).collect();
            let _ = write!(
                s,
                "{{\"name\":{},\"dtype\":{},\"shape\":[{}],\"elements\":{},",
                json_str(&o.name),
                json_str(o.dtype.name()),
                shape.join(","),
                o.elements
            );
            match &o.agreement {
                Agreement::Float(f) => {
                    let _ = write!(
                        s,
                        "\"kind\":\"float\",\"rows\":{},\"top1\":{},\"cosine_mean\":{},\"cosine_min\":{},\"max_abs\":{},\"mean_abs\":{},\"max_rel\":{},\"reference_scale\":{},\"nonfinite\":{},\"exact_match\":null}}",
                        f.rows,
                        f.top1.map_or("null".into(), json_num),
                        json_num(f.cosine_mean),
                        json_num(f.cosine_min),
                        json_num(f.max_abs),
                        json_num(f.mean_abs),
                        json_num(f.max_rel),
                        json_num(f.reference_scale),
                        f.nonfinite
                    );
                }
                Agreement::Exact { match_rate } => {
                    let _ = write!(
                        s,
                        "\"kind\":\"exact\",\"top1\":null,\"cosine_mean\":null,\"cosine_min\":null,\"max_abs\":null,\"mean_abs\":null,\"max_rel\":null,\"exact_match\":{}}}",
                        json_num(*match_rate)
                    );
                }
            }
        }
        s.push_str("],\"latency\":");
        match &self.latency {
            Some(l) => {
                let t = |t: &Timing| {
                    format!(
                        "{{\"median_ms\":{},\"min_ms\":{}}}",
                        json_num(t.median_ms),
                        json_num(t.min_ms)
                    )
                };
                let _ = write!(
                    s,
                    "{{\"repeat\":{},\"reference\":{},\"candidate\":{},\"ratio\":{}}}",
                    l.repeat,
                    t(&l.reference),
                    t(&l.candidate),
                    json_num(l.ratio)
                );
            }
            None => s.push_str("null"),
        }
        s.push_str(",\"sizes\":[");
        for (i, m) in self.sizes.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(
                s,
                "{{\"label\":{},\"bytes\":{},\"gzip_bytes\":{}}}",
                json_str(&m.label),
                m.bytes,
                m.gzip_bytes.map_or("null".into(), |g| g.to_string())
            );
        }
        s.push_str("],\"task\":");
        match &self.task {
            Some(t) => {
                let _ = write!(
                    s,
                    "{{\"metric\":{},\"output\":{},\"deviation\":{}}}",
                    json_str(&t.metric),
                    json_str(&t.output),
                    json_num(t.deviation)
                );
            }
            None => s.push_str("null"),
        }
        s.push_str(",\"notes\":[");
        let notes: Vec<String> = self.notes.iter().map(|n| json_str(n)).collect();
        s.push_str(&notes.join(","));
        s.push_str("]}");
        s
    }
}

fn json_num(x: f64) -> String {
    if x.is_finite() {
        // Shortest representation that reads back to the same f64.
        format!("{x:?}")
    } else {
        "null".into()
    }
}

/// A number in the table: fixed for everyday magnitudes, scientific for tiny or huge ones.
fn num(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if !x.is_finite() {
        format!("{x}")
    } else if (1e-3..1e5).contains(&x.abs()) {
        format!("{x:.4}")
    } else {
        format!("{x:.3e}")
    }
}

/// Kilobytes with one decimal, as people read download sizes.
fn kb(bytes: usize) -> String {
    format!("{:.1} KB", bytes as f64 / 1000.0)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "agreement over {} input set(s):", self.sets)?;
        let width = self
            .outputs
            .iter()
            .map(|o| o.name.chars().count())
            .max()
            .unwrap_or(0)
            .max(6);
        writeln!(
            f,
            "  {:<width$}  {:<9} {:<16} {:>7} {:>9} {:>9} {:>10} {:>10} {:>10}",
            "output",
            "dtype",
            "shape",
            "top-1",
            "cos mean",
            "cos min",
            "max abs",
            "mean abs",
            "max rel"
        )?;
        for o in &self.outputs {
            let shape = format!("{:?}", o.shape);
            write!(
                f,
                "  {:<width$}  {:<9} {:<16} ",
                o.name,
                o.dtype.name(),
                shape
            )?;
            match &o.agreement {
                Agreement::Float(a) => {
                    writeln!(
                        f,
                        "{:>7} {:>9.6} {:>9.6} {:>10} {:>10} {:>10}",
                        a.top1.map_or("-".into(), |t| format!("{t:.4}")),
                        a.cosine_mean,
                        a.cosine_min,
                        num(a.max_abs),
                        num(a.mean_abs),
                        num(a.max_rel)
                    )?;
                    if a.nonfinite > 0 {
                        writeln!(
                            f,
                            "  {:<width$}  {} element(s) NaN or infinite on one side only",
                            "", a.nonfinite
                        )?;
                    }
                }
                Agreement::Exact { match_rate } => {
                    writeln!(f, "exact match {match_rate:.4}")?;
                }
            }
        }
        if let Some(l) = &self.latency {
            writeln!(
                f,
                "latency: median (min) of {} run(s) per set, summed over {} set(s):",
                l.repeat, self.sets
            )?;
            writeln!(
                f,
                "  reference  {:>10.3} ms ({:.3})",
                l.reference.median_ms, l.reference.min_ms
            )?;
            writeln!(
                f,
                "  candidate  {:>10.3} ms ({:.3})  x{:.2} of the reference",
                l.candidate.median_ms, l.candidate.min_ms, l.ratio
            )?;
        }
        if self.sizes.len() == 2 {
            writeln!(f, "size:")?;
            for (which, m) in ["reference", "candidate"].iter().zip(&self.sizes) {
                writeln!(
                    f,
                    "  {which}  {:>10} on disk, {:>10} gzipped  {}",
                    kb(m.bytes),
                    m.gzip_bytes.map_or("n/a".into(), kb),
                    m.label
                )?;
            }
            let (r, c) = (&self.sizes[0], &self.sizes[1]);
            if r.bytes > 0 {
                write!(
                    f,
                    "  candidate/reference: x{:.3} on disk",
                    c.bytes as f64 / r.bytes as f64
                )?;
                if let (Some(rg), Some(cg)) = (r.gzip_bytes, c.gzip_bytes) {
                    write!(f, ", x{:.3} gzipped", cg as f64 / rg.max(1) as f64)?;
                }
                writeln!(f)?;
            }
        }
        if let Some(t) = &self.task {
            writeln!(
                f,
                "task metric: {} on '{}': deviation {:.5}",
                t.metric, t.output, t.deviation
            )?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::from_vec(shape.to_vec(), v.to_vec()).unwrap()
    }

    fn float(r: &OutputReport) -> &FloatAgreement {
        match &r.agreement {
            Agreement::Float(f) => f,
            other => panic!("not a float report: {other:?}"),
        }
    }

    fn one(name: &str, pairs: Vec<(Tensor, Tensor)>) -> Result<OutputReport> {
        compare_outputs(&[(name.to_string(), pairs)]).map(|mut v| v.remove(0))
    }

    #[test]
    fn identical_outputs_agree_fully() {
        let a = t(&[2, 3], &[0.1, 0.7, 0.2, 3.0, -1.0, 2.0]);
        let r = one("y", vec![(a.clone(), a)]).unwrap();
        let f = float(&r);
        assert_eq!(f.top1, Some(1.0));
        assert_eq!((f.cosine_mean, f.cosine_min), (1.0, 1.0));
        assert_eq!((f.max_abs, f.mean_abs, f.max_rel), (0.0, 0.0, 0.0));
        assert_eq!((f.rows, r.elements, f.reference_scale), (2, 6, 3.0));
    }

    #[test]
    fn distances_top1_and_cosine_by_row() {
        // Row 0 keeps its argmax; row 1 flips it, and is orthogonal to the reference.
        let r = t(&[2, 2], &[1.0, 0.0, 0.0, 2.0]);
        let c = t(&[2, 2], &[1.0, 0.5, 4.0, 0.0]);
        let f = one("y", vec![(r, c)]).unwrap();
        let f = float(&f);
        assert_eq!(f.top1, Some(0.5));
        let cos0 = 1.0 / 1.25f64.sqrt();
        assert!((f.cosine_mean - cos0 / 2.0).abs() < 1e-12, "{f:?}");
        assert_eq!(f.cosine_min, 0.0);
        assert_eq!(f.max_abs, 4.0);
        assert!((f.mean_abs - (0.5 + 4.0 + 2.0) / 4.0).abs() < 1e-12);
        assert_eq!(f.max_rel, 2.0);
    }

    #[test]
    fn sets_accumulate_and_last_axis_one_is_one_row_per_set() {
        // [N,1] (a probability per item): no top-1; cosine over the whole set.
        let r1 = t(&[2, 1], &[1.0, 0.0]);
        let c1 = t(&[2, 1], &[0.0, 1.0]);
        let r2 = t(&[2, 1], &[0.5, 0.5]);
        let f = one("p", vec![(r1, c1), (r2.clone(), r2)]).unwrap();
        let f = float(&f);
        assert_eq!(f.top1, None);
        assert_eq!(f.rows, 2);
        assert_eq!((f.cosine_mean, f.cosine_min), (0.5, 0.0));
        assert_eq!(f.max_abs, 1.0);
        assert_eq!(f.mean_abs, 0.5);
        let s = one("s", vec![(Tensor::scalar(2f32), Tensor::scalar(1f32))]).unwrap();
        assert_eq!(float(&s).top1, None);
        assert_eq!(float(&s).max_rel, 0.5);
    }

    #[test]
    fn integer_outputs_are_compared_exactly() {
        let r = Tensor::from_vec(vec![4], vec![1i64, 2, 3, 4]).unwrap();
        let c = Tensor::from_vec(vec![4], vec![1i64, 2, 0, 4]).unwrap();
        let o = one("label", vec![(r, c)]).unwrap();
        assert_eq!(o.agreement, Agreement::Exact { match_rate: 0.75 });
    }

    #[test]
    fn nonfinite_elements_are_counted_not_hidden() {
        let r = t(&[3], &[1.0, 2.0, f32::NAN]);
        let c = t(&[3], &[1.0, f32::NAN, f32::NAN]);
        let o = one("y", vec![(r, c)]).unwrap();
        assert_eq!(float(&o).nonfinite, 1);
        assert_eq!(float(&o).max_abs, 0.0);
    }

    #[test]
    fn shape_and_dtype_mismatches_are_typed_errors() {
        let e = one("y", vec![(t(&[1, 3], &[0.; 3]), t(&[3, 1], &[0.; 3]))]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Shape);
        assert!(
            e.message().contains("'y'") && e.message().contains("[1, 3]"),
            "{e}"
        );
        let labels = Tensor::from_vec(vec![3], vec![0i64; 3]).unwrap();
        let e = one("y", vec![(t(&[3], &[0.; 3]), labels)]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::DType);
        assert!(e.message().contains("int64"), "{e}");
    }

    #[test]
    fn argmax_takes_the_first_maximum_and_skips_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
        assert_eq!(argmax(&[f64::NAN, 0.5, 0.2]), 1);
        assert_eq!(cosine(&[0.0, 0.0], &[0.0, 0.0]), 1.0);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        assert_eq!(cosine(&[1.0, 1.0], &[-2.0, -2.0]), -1.0);
    }

    const DIGITS: &[u8] = include_bytes!("../../models/digits_mlp.onnx");

    #[test]
    fn a_model_against_itself_on_made_up_inputs() {
        let m = Model::load(DIGITS).unwrap();
        let x = random_inputs(&m, 3).unwrap();
        assert_eq!(x.len(), 1);
        assert_eq!(x[0].1.shape()[0], 1, "symbolic batch set to 1");
        assert_eq!(random_inputs(&m, 3).unwrap(), x, "same seed, same inputs");
        let opts = EvalOptions { repeat: 2 };
        let r = compare(&m, &m, &[x.clone(), x], &opts).unwrap();
        assert_eq!(r.sets, 2);
        assert_eq!(r.outputs.len(), 2);
        assert_eq!(r.outputs[0].agreement, Agreement::Exact { match_rate: 1.0 });
        let f = float(&r.outputs[1]);
        assert_eq!((f.top1, f.cosine_min, f.max_abs), (Some(1.0), 1.0, 0.0));
        let l = r.latency.unwrap();
        assert!(l.reference.min_ms > 0.0 && l.reference.min_ms <= l.reference.median_ms);
        assert!(l.ratio > 0.0);
    }

    #[test]
    fn report_prints_and_serialises() {
        let a = t(&[1, 2], &[0.25, 0.75]);
        let mut r = Report {
            sets: 1,
            outputs: compare_outputs(&[("prob\"y\"".into(), vec![(a.clone(), a)])]).unwrap(),
            ..Report::default()
        }
        .sizes(
            ModelSize::of("ref.onnx", &[0u8; 1000]).unwrap(),
            ModelSize::of("cand.onnx", &[7u8; 10]).unwrap(),
        );
        r.notes.push("made-up inputs".into());
        let json = r.to_json();
        assert!(
            json.starts_with("{\"sets\":1,\"outputs\":[{\"name\":\"prob\\\"y\\\"\""),
            "{json}"
        );
        assert!(json.contains("\"top1\":1.0,\"cosine_mean\":1.0"), "{json}");
        assert!(json.contains("\"latency\":null"), "{json}");
        assert!(
            json.contains("\"label\":\"ref.onnx\",\"bytes\":1000"),
            "{json}"
        );
        // A thousand zeros gzip to a few dozen bytes.
        let gz = r.sizes[0].gzip_bytes.unwrap();
        assert!(gz > 10 && gz < 100, "{gz}");
        let text = r.to_string();
        assert!(
            text.contains("cos mean") && text.contains("note: made-up inputs"),
            "{text}"
        );
    }

    #[test]
    fn json_numbers_read_back_and_nonfinite_is_null() {
        assert_eq!(json_num(0.1), "0.1");
        assert_eq!(json_num(1.0), "1.0");
        assert_eq!(json_num(f64::INFINITY), "null");
        assert_eq!(relative(1.0, 0.0), f64::INFINITY);
        assert_eq!(relative(0.0, 0.0), 0.0);
    }
}
