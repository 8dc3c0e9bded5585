//! Calibration for static quantization: run the float model on sample inputs, watch
//! chosen intermediate tensors, and choose for each a (min, max) range to quantize to.
//!
//! The tensors are watched by adding them as extra graph outputs of a copy of the
//! model, which our runtime then loads and runs on the CPU. Only top-level tensors can be
//! watched this way, so an If whose condition is the same on every input set is first
//! replaced, in that copy, by the branch taken (its nodes inlined under their own value
//! names, repeatedly for the Ifs this brings to the top level): the branch's values are
//! then watched like any other. Ifs whose branch varies between sets and Loop/Scan
//! bodies stay unseen; their values are reported as unobserved.

use super::edit::{node, Constants, Names};
use crate::api::{LoadOptions, Model};
use crate::error::{Error, Result};
use crate::onnx::encode_model;
use crate::onnx::proto::{GraphProto, ModelProto, ValueInfoProto};
use crate::tensor::Tensor;
use std::collections::{HashMap, HashSet};

/// How a tensor's observed values become its quantization range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Calibration {
    /// The smallest and largest value seen.
    MinMax,
    /// Clip |x| at this percentile of all values seen (e.g. 99.99).
    Percentile(f64),
    /// Clip |x| where the 128-level quantized histogram loses the least information
    /// (smallest KL divergence to the float histogram).
    Entropy,
}

/// Bins of the |x| histograms (Percentile, Entropy).
const BINS: usize = 2048;
/// Levels the entropy search quantizes to (one side of int8).
const LEVELS: usize = 128;

/// What calibration saw.
#[derive(Debug, Clone, Default)]
pub struct Ranges {
    /// Float tensor name → (min, max), a range that always holds 0.
    pub range: HashMap<String, (f32, f32)>,
    /// Rank of every watched tensor seen (float or not).
    pub rank: HashMap<String, usize>,
    /// Watched names that were not float tensors.
    pub not_float: Vec<String>,
    /// Watched names that are no top-level value of the model (subgraph values, constants,
    /// unknown names).
    pub unobserved: Vec<String>,
    /// If nodes whose branch every input set took, keyed by the If's first output name
    /// (unique, unlike a possibly empty node name): true for then_branch.
    pub taken: HashMap<String, bool>,
    /// Control-flow nodes (name, op type, why) whose bodies calibration could not see.
    pub unseen: Vec<(String, String, String)>,
}

/// Running statistics of one tensor.
#[derive(Debug, Clone)]
struct Observer {
    min: f32,
    max: f32,
    /// Histogram of |x| over [0, amax], BINS bins (empty for MinMax).
    hist: Vec<u64>,
    amax: f32,
}

impl Observer {
    fn new(with_hist: bool) -> Self {
        Observer {
            min: 0.0,
            max: 0.0,
            hist: if with_hist { vec![0; BINS] } else { Vec::new() },
            amax: 0.0,
        }
    }

    fn add(&mut self, v: &[f32]) {
        // Infinities and NaN say nothing useful about a range to quantize to.
        let finite = || v.iter().copied().filter(|x| x.is_finite());
        for x in finite() {
            self.min = self.min.min(x);
            self.max = self.max.max(x);
        }
        if self.hist.is_empty() {
            return;
        }
        let amax = finite().fold(0f32, |m, x| m.max(x.abs()));
        if amax > self.amax {
            self.widen(amax);
        }
        if self.amax == 0.0 {
            self.hist[0] += finite().count() as u64;
            return;
        }
        let per_bin = BINS as f32 / self.amax;
        for x in finite() {
            let b = ((x.abs() * per_bin) as usize).min(BINS - 1);
            self.hist[b] += 1;
        }
    }

    /// Re-bins the histogram over [0, amax]: each old bin's count moves to the new bin
    /// holding its centre.
    fn widen(&mut self, amax: f32) {
        let old = std::mem::replace(&mut self.hist, vec![0; BINS]);
        let old_w = self.amax / BINS as f32;
        let new_w = amax / BINS as f32;
        for (i, c) in old.into_iter().enumerate().filter(|(_, c)| *c > 0) {
            let centre = (i as f32 + 0.5) * old_w;
            self.hist[((centre / new_w) as usize).min(BINS - 1)] += c;
        }
        self.amax = amax;
    }

    fn range(&self, method: Calibration) -> (f32, f32) {
        let t = match method {
            Calibration::MinMax => return (self.min, self.max),
            Calibration::Percentile(p) => percentile_threshold(&self.hist, self.amax, p),
            Calibration::Entropy => entropy_threshold(&self.hist, self.amax),
        };
        (self.min.max(-t).min(0.0), self.max.min(t).max(0.0))
    }
}

/// |x| below which `p` % of the values lie (the upper edge of the bin reaching it).
fn percentile_threshold(hist: &[u64], amax: f32, p: f64) -> f32 {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let target = ((total as f64) * p.clamp(0.0, 100.0) / 100.0).ceil() as u64;
    let mut seen = 0;
    for (i, c) in hist.iter().enumerate() {
        seen += c;
        if seen >= target {
            return (i + 1) as f32 * amax / hist.len() as f32;
        }
    }
    amax
}

/// The |x| threshold with the least KL divergence between the float histogram clipped
/// there (clipped values counted in the last bin) and its 128-level quantization.
fn entropy_threshold(hist: &[u64], amax: f32) -> f32 {
    let n = hist.len();
    if n <= LEVELS || hist.iter().all(|&c| c == 0) {
        return amax;
    }
    let mut best = (f64::INFINITY, n);
    let mut p = vec![0f64; n];
    let mut q = vec![0f64; n];
    for i in LEVELS..=n {
        let outliers: u64 = hist[i..].iter().sum();
        for (pk, &h) in p.iter_mut().zip(&hist[..i]) {
            *pk = h as f64;
        }
        p[i - 1] += outliers as f64;
        // Each level covers a run of bins; its count spreads evenly over the run's
        // non-empty bins (empty bins stay empty: they were never seen).
        for level in 0..LEVELS {
            let (s, e) = (level * i / LEVELS, (level + 1) * i / LEVELS);
            let run = &hist[s..e];
            let sum: u64 = run.iter().sum();
            let nonzero = run.iter().filter(|&&c| c > 0).count();
            for (qk, &h) in q[s..e].iter_mut().zip(run) {
                *qk = if h > 0 {
                    sum as f64 / nonzero as f64
                } else {
                    0.0
                };
            }
        }
        let (ps, qs): (f64, f64) = (p[..i].iter().sum(), q[..i].iter().sum());
        if ps == 0.0 || qs == 0.0 {
            continue;
        }
        let mut kl = 0.0;
        for (&pk, &qk) in p[..i].iter().zip(&q[..i]) {
            if pk > 0.0 {
                let pn = pk / ps;
                // A bin the quantized histogram cannot hold costs as much as a tiny one.
                let qn = (qk / qs).max(1e-10);
                kl += pn * (pn / qn).ln();
            }
        }
        if kl < best.0 {
            best = (kl, i);
        }
    }
    best.1 as f32 * amax / n as f32
}

/// Runs `m` on each input set and returns a range for each float tensor of `names`.
/// The model is loaded by our runtime on the CPU with `names` as extra outputs.
pub fn calibrate(
    m: &ModelProto,
    names: &[String],
    sets: &[Vec<(String, Tensor)>],
    method: Calibration,
) -> Result<Ranges> {
    if sets.is_empty() {
        return Err(Error::input("calibration needs at least one input set"));
    }
    if let Calibration::Percentile(p) = method {
        if !(0.0..=100.0).contains(&p) || p.is_nan() {
            return Err(Error::input(format!("percentile {p} is not in 0..100")));
        }
    }
    let (mut probe, taken, unseen) = inline_taken_branches(m, sets)?;
    let g = probe
        .graph
        .as_mut()
        .ok_or_else(|| Error::invalid_model("the model has no graph"))?;
    // Top-level values: node outputs and graph inputs that are no initializer.
    let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut values: HashSet<&str> = g
        .node
        .iter()
        .filter(|n| !(n.op_type == "Constant" && n.domain.is_empty()))
        .flat_map(|n| n.output.iter().map(|s| s.as_str()))
        .collect();
    values.extend(g.input.iter().map(|v| v.name.as_str()));
    let mut ranges = Ranges {
        taken,
        unseen,
        ..Default::default()
    };
    let mut watched = Vec::new();
    let mut seen = HashSet::new();
    for name in names {
        if !seen.insert(name.as_str()) {
            continue;
        }
        if name.is_empty() || inits.contains(name.as_str()) || !values.contains(name.as_str()) {
            ranges.unobserved.push(name.clone());
        } else {
            watched.push(name.clone());
        }
    }
    let outputs: HashSet<String> = g.output.iter().map(|o| o.name.clone()).collect();
    for w in &watched {
        if !outputs.contains(w) {
            // No type: the loader infers it, like any intermediate value's.
            g.output.push(ValueInfoProto {
                name: w.clone(),
                r#type: None,
            });
        }
    }
    let model = Model::load_with(&encode_model(&probe), &LoadOptions::default())?;
    let with_hist = !matches!(method, Calibration::MinMax);
    let mut obs: HashMap<String, Observer> = HashMap::new();
    let wanted: HashSet<&str> = watched.iter().map(|s| s.as_str()).collect();
    let mut not_float = HashSet::new();
    for set in sets {
        let feed: Vec<(&str, Tensor)> = set.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
        for (name, t) in model.run(&feed)? {
            if !wanted.contains(name.as_str()) {
                continue;
            }
            ranges.rank.insert(name.clone(), t.rank());
            if !t.dtype().is_float() {
                not_float.insert(name);
                continue;
            }
            obs.entry(name)
                .or_insert_with(|| Observer::new(with_hist))
                .add(&t.to_f32_vec()?);
        }
    }
    for w in watched {
        if not_float.contains(&w) {
            ranges.not_float.push(w);
        } else if let Some(o) = obs.get(&w) {
            ranges.range.insert(w, o.range(method));
        }
    }
    Ok(ranges)
}

/// The branch of If node `n`: then_branch when `then`.
fn branch(n: &crate::onnx::proto::NodeProto, then: bool) -> Option<&GraphProto> {
    let want = if then { "then_branch" } else { "else_branch" };
    n.attribute
        .iter()
        .find(|a| a.name == want)
        .and_then(|a| a.g.as_ref())
}

/// A copy of `m` in which every If whose condition is the same on all `sets` is
/// replaced by its taken branch, repeatedly (nested Ifs surface once their parent is
/// inlined). Returns the copy, the branches taken, and the control-flow nodes left.
#[allow(clippy::type_complexity)]
fn inline_taken_branches(
    m: &ModelProto,
    sets: &[Vec<(String, Tensor)>],
) -> Result<(
    ModelProto,
    HashMap<String, bool>,
    Vec<(String, String, String)>,
)> {
    let mut probe = m.clone();
    let mut taken = HashMap::new();
    let mut varying: HashMap<String, String> = HashMap::new();
    loop {
        let g = probe
            .graph
            .as_ref()
            .ok_or_else(|| Error::invalid_model("the model has no graph"))?;
        let ifs: Vec<usize> = (0..g.node.len())
            .filter(|&i| {
                let n = &g.node[i];
                n.op_type == "If"
                    && n.domain.is_empty()
                    && n.input.first().is_some_and(|c| !c.is_empty())
                    && n.output.first().is_some_and(|o| !varying.contains_key(o))
                    && branch(n, true).is_some()
                    && branch(n, false).is_some()
            })
            .collect();
        if ifs.is_empty() {
            break;
        }
        // Each condition's value on every set: a constant is read, the rest are run.
        let consts = Constants::new(g);
        let mut cond_of: HashMap<String, Vec<bool>> = HashMap::new();
        let mut to_run = Vec::new();
        for &i in &ifs {
            let c = &g.node[i].input[0];
            match consts.get(c) {
                Some(t) => {
                    let v = t?.to_f64_vec()?;
                    cond_of.insert(c.clone(), vec![v.first().is_some_and(|x| *x != 0.0)]);
                }
                None => to_run.push(c.clone()),
            }
        }
        if !to_run.is_empty() {
            let mut run_copy = probe.clone();
            let rg = run_copy.graph.as_mut().expect("checked above");
            for c in &to_run {
                if !rg.output.iter().any(|o| o.name == *c) {
                    rg.output.push(ValueInfoProto {
                        name: c.clone(),
                        r#type: None,
                    });
                }
            }
            let model = Model::load_with(&encode_model(&run_copy), &LoadOptions::default())?;
            let wanted: HashSet<&str> = to_run.iter().map(|s| s.as_str()).collect();
            for set in sets {
                let feed: Vec<(&str, Tensor)> =
                    set.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
                for (name, t) in model.run(&feed)? {
                    if wanted.contains(name.as_str()) {
                        let v = t.to_f64_vec()?;
                        let b = v.first().is_some_and(|x| *x != 0.0);
                        cond_of.entry(name).or_default().push(b);
                    }
                }
            }
        }
        let g = probe.graph.as_mut().expect("checked above");
        let mut names = Names::of(g);
        let mut inlined = false;
        // From the back, so that splicing keeps the earlier indices valid.
        for &i in ifs.iter().rev() {
            let n = &g.node[i];
            let key = n.output[0].clone();
            let seen = cond_of.get(&n.input[0]).cloned().unwrap_or_default();
            let then = match seen.first() {
                Some(&b) if seen.iter().all(|&x| x == b) => b,
                _ => {
                    varying.insert(
                        key,
                        "its condition differs between the calibration sets".into(),
                    );
                    continue;
                }
            };
            let b = branch(n, then).expect("checked above").clone();
            if b.output.len() < n.output.iter().filter(|o| !o.is_empty()).count() {
                varying.insert(key, "its branch has fewer outputs than the If".into());
                continue;
            }
            let mut nodes = b.node;
            for (bo, o) in b.output.iter().zip(&n.output) {
                if !o.is_empty() {
                    let id = names.fresh(&format!("{o}_inlined"));
                    nodes.push(node("Identity", id, &[&bo.name], &[o]));
                }
            }
            g.initializer.extend(b.initializer);
            g.sparse_initializer.extend(b.sparse_initializer);
            g.node.splice(i..=i, nodes);
            taken.insert(key, then);
            inlined = true;
        }
        if !inlined {
            break;
        }
    }
    let mut unseen = Vec::new();
    let g = probe.graph.as_ref().expect("checked above");
    for n in &g.node {
        let why = match n.op_type.as_str() {
            "If" => n
                .output
                .first()
                .and_then(|o| varying.get(o))
                .cloned()
                .unwrap_or_else(|| "its condition could not be observed".into()),
            "Loop" | "Scan" => "its body runs a varying number of times".into(),
            _ => continue,
        };
        unseen.push((n.name.clone(), n.op_type.clone(), why));
    }
    Ok((probe, taken, unseen))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10 000 values spread over [-1, 1] (a fixed pseudo-random walk) and one outlier.
    fn with_outlier() -> Vec<f32> {
        let mut s = 12345u32;
        let mut v: Vec<f32> = (0..10_000)
            .map(|_| {
                s = s.wrapping_mul(1_103_515_245).wrapping_add(12345);
                // A bell shape: the mean of three uniforms.
                let u = |k: u32| ((s >> k) & 0x3ff) as f32 / 1023.0;
                (u(0) + u(10) + u(20)) / 1.5 - 1.0
            })
            .collect();
        v.push(100.0);
        v
    }

    fn observe(v: &[f32], method: Calibration) -> (f32, f32) {
        let mut o = Observer::new(method != Calibration::MinMax);
        // In two batches, the second holding the outlier: the histogram must widen.
        let (a, b) = v.split_at(v.len() / 2);
        o.add(a);
        o.add(b);
        o.range(method)
    }

    #[test]
    fn min_max_keeps_the_outlier_and_zero() {
        let (lo, hi) = observe(&with_outlier(), Calibration::MinMax);
        assert_eq!(hi, 100.0);
        assert!((-1.0..-0.8).contains(&lo), "{lo}");
        // A range of positives still holds 0, so that 0 quantizes exactly.
        assert_eq!(observe(&[2.0, 3.0], Calibration::MinMax), (0.0, 3.0));
    }

    #[test]
    fn percentile_clips_the_outlier() {
        let (lo, hi) = observe(&with_outlier(), Calibration::Percentile(99.99));
        assert!(hi < 1.5 && hi > 0.8, "{hi}");
        assert!(lo < -0.8, "{lo}");
        // 100 % keeps everything.
        let (_, hi) = observe(&with_outlier(), Calibration::Percentile(100.0));
        assert!(hi >= 99.0, "{hi}");
    }

    #[test]
    fn entropy_clips_the_outlier_but_not_the_bulk() {
        let (lo, hi) = observe(&with_outlier(), Calibration::Entropy);
        assert!(hi < 10.0, "threshold {hi} kept the outlier");
        assert!(lo < -0.8, "{lo}: the bulk of the values was clipped");
        // Without an outlier, a uniform spread keeps (nearly) its whole range.
        let v: Vec<f32> = (0..20_000).map(|i| i as f32 / 20_000.0).collect();
        let (_, hi) = observe(&v, Calibration::Entropy);
        assert!(hi > 0.9, "{hi}");
    }

    #[test]
    fn widening_keeps_counts() {
        let mut o = Observer::new(true);
        o.add(&[0.5; 10]);
        o.add(&[4.0; 5]);
        assert_eq!(o.hist.iter().sum::<u64>(), 15);
        assert_eq!(o.amax, 4.0);
        // The 0.5s sit in the first eighth of the new range.
        let low: u64 = o.hist[..BINS / 8 + 1].iter().sum();
        assert_eq!(low, 10);
    }

    #[test]
    fn calibrate_watches_intermediate_values() {
        use crate::compress::edit::node;
        use crate::onnx::encode::tensor_to_proto;
        use crate::onnx::proto::{GraphProto, OperatorSetId, TypeProto};
        // y = Relu(x · 2) - 1, watching the Mul and Relu outputs.
        let vi = |name: &str| ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto::Tensor {
                elem_type: 1,
                shape: None,
            }),
        };
        let m = ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetId {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(GraphProto {
                node: vec![
                    node("Mul", "mul".into(), &["x", "two"], &["m"]),
                    node("Relu", "relu".into(), &["m"], &["r"]),
                    node("Sub", "sub".into(), &["r", "one"], &["y"]),
                ],
                initializer: vec![
                    tensor_to_proto("two", &Tensor::scalar(2f32)).unwrap(),
                    tensor_to_proto("one", &Tensor::scalar(1f32)).unwrap(),
                ],
                input: vec![vi("x")],
                output: vec![vi("y")],
                ..Default::default()
            }),
            ..Default::default()
        };
        let set = |v: Vec<f32>| vec![("x".to_string(), Tensor::vector(v))];
        let sets = [set(vec![-1.0, 0.5]), set(vec![3.0, -0.25])];
        let names: Vec<String> = ["m", "r", "y", "two", "nope"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let r = calibrate(&m, &names, &sets, Calibration::MinMax).unwrap();
        assert_eq!(r.range["m"], (-2.0, 6.0));
        assert_eq!(r.range["r"], (0.0, 6.0));
        assert_eq!(r.range["y"], (-1.0, 5.0));
        assert_eq!(r.rank["m"], 1);
        assert_eq!(r.unobserved, ["two", "nope"]);
    }
}
