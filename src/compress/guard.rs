//! The accuracy guard: runs the compression steps, measures the candidate against the
//! float model on the user's data with the user's metric, and where the tolerance is
//! broken, backs off node by node — the most sensitive first — until it holds.
//!
//! Sensitivity is measured one node at a time: the candidate where only that node is
//! compressed. Nodes are then restored (the step leaves them as they were) in order of
//! sensitivity; the smallest such prefix that meets the tolerance is found by bisection.
//! Each restored node then gets the strongest of its steps' milder settings that still
//! meets the tolerance (per-channel instead of per-tensor, less sparse, a higher rank…),
//! the least sensitive first. The cost is one evaluation per changed node, a logarithmic
//! number of full checks, and one per milder setting tried. The result says what was
//! backed off, to what, and why; `passed` is false when even keeping every changed node
//! as it was did not reach the tolerance: the caller must not write such a model without
//! saying so.

use super::edit::name_nodes;
use super::StepReport;
use crate::api::{LoadOptions, Model};
use crate::error::{Error, Result};
use crate::onnx::encode_model;
use crate::onnx::proto::ModelProto;
use crate::tensor::Tensor;
use std::collections::HashMap;
use std::fmt;

/// How the guard has backed off one node within one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grade {
    /// The step's milder setting of this index (`Step::milder`).
    Milder(usize),
    /// Left as it was.
    Keep,
}

/// The guard's back-offs for one step, by node name; a node not named is compressed
/// as asked.
#[derive(Debug, Clone, Default)]
pub struct Grades(HashMap<String, Grade>);

impl Grades {
    /// The nodes to leave as they were.
    pub fn kept(&self) -> Vec<String> {
        self.nodes_at(Grade::Keep)
    }

    /// The nodes given the milder setting `i`.
    pub fn milder(&self, i: usize) -> Vec<String> {
        self.nodes_at(Grade::Milder(i))
    }

    fn nodes_at(&self, grade: Grade) -> Vec<String> {
        let mut v: Vec<String> = (self.0.iter())
            .filter(|(_, g)| **g == grade)
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }

    pub fn get(&self, node: &str) -> Option<Grade> {
        self.0.get(node).copied()
    }

    pub fn set(&mut self, node: &str, grade: Option<Grade>) {
        match grade {
            Some(g) => self.0.insert(node.to_string(), g),
            None => self.0.remove(node),
        };
    }
}

/// A step's work: rewrite the model as the grades say.
type ApplyFn = dyn Fn(&mut ModelProto, &Grades) -> Result<StepReport>;

/// One compression step, with the milder settings the guard may fall back to for a node
/// before it leaves the node as it was.
pub struct Step {
    pub label: String,
    /// Labels of the milder settings, strongest first ("per-channel", "sparsity 25 %"…).
    pub milder: Vec<String>,
    apply: Box<ApplyFn>,
}

impl Step {
    /// `apply(model, grades)` must leave every node `grades.kept()` names as it was, and
    /// give those `grades.milder(i)` names the setting `milder[i]`.
    pub fn new(
        label: impl Into<String>,
        apply: impl Fn(&mut ModelProto, &Grades) -> Result<StepReport> + 'static,
    ) -> Step {
        Step {
            label: label.into(),
            milder: Vec::new(),
            apply: Box::new(apply),
        }
    }

    /// The milder settings `apply` understands, strongest first.
    pub fn with_milder(mut self, milder: Vec<String>) -> Step {
        self.milder = milder;
        self
    }
}

/// How the candidate is compared with the float model. Each metric gives a deviation
/// (0 = identical); the guard passes when the deviation is at most the tolerance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Metric {
    /// 1 − the fraction of rows whose argmax over the last axis agrees.
    Top1,
    /// 1 − the mean cosine similarity of the rows.
    Cosine,
    /// Mean absolute error.
    Mae,
    /// Largest absolute error.
    MaxAbs,
    /// 1 − the fraction of elements on the same side of the threshold (a detector's or a
    /// voice-activity model's decision).
    Agree(f64),
}

impl std::str::FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Metric, String> {
        Ok(match s {
            "top1" => Metric::Top1,
            "cosine" => Metric::Cosine,
            "mae" => Metric::Mae,
            "maxabs" => Metric::MaxAbs,
            "agree" => Metric::Agree(0.5),
            _ => match s.strip_prefix("agree@").map(str::parse::<f64>) {
                Some(Ok(t)) => Metric::Agree(t),
                _ => {
                    return Err(format!(
                        "unknown metric '{s}': top1, cosine, mae, maxabs, agree or agree@T"
                    ))
                }
            },
        })
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Metric::Top1 => write!(f, "top1"),
            Metric::Cosine => write!(f, "cosine"),
            Metric::Mae => write!(f, "mae"),
            Metric::MaxAbs => write!(f, "maxabs"),
            Metric::Agree(t) => write!(f, "agree@{t}"),
        }
    }
}

impl Metric {
    /// The deviation of `cand` from `refr` (same shapes) under this metric.
    fn deviation(&self, pairs: &[(&Tensor, &Tensor)]) -> Result<f64> {
        let mut rows = 0usize;
        let (mut hits, mut cos_sum, mut abs_sum, mut max_abs, mut n) = (0f64, 0f64, 0f64, 0f64, 0);
        for (r, c) in pairs {
            if r.shape() != c.shape() {
                return Err(Error::input(format!(
                    "the candidate's output has shape {:?}, the reference's {:?}",
                    c.shape(),
                    r.shape()
                )));
            }
            let (r, c) = (r.to_f64_vec()?, c.to_f64_vec()?);
            let width = match (self, pairs[0].0.shape().last()) {
                (Metric::Top1 | Metric::Cosine, Some(&w)) if w > 0 => w,
                _ => r.len().max(1),
            };
            for (rr, cr) in r.chunks(width).zip(c.chunks(width)) {
                rows += 1;
                match self {
                    Metric::Top1 => hits += f64::from(u8::from(argmax(rr) == argmax(cr))),
                    Metric::Cosine => cos_sum += cosine(rr, cr),
                    _ => {}
                }
            }
            for (a, b) in r.iter().zip(&c) {
                let d = if a.is_nan() && b.is_nan() {
                    0.0
                } else {
                    (a - b).abs()
                };
                // A NaN or inf where the reference is finite is the worst error there is.
                let d = if d.is_finite() { d } else { f64::INFINITY };
                abs_sum += d;
                max_abs = max_abs.max(d);
                if let Metric::Agree(t) = self {
                    hits += f64::from(u8::from((*a > *t) == (*b > *t)));
                }
                n += 1;
            }
        }
        if n == 0 {
            return Err(Error::input("the guarded output is empty"));
        }
        Ok(match self {
            Metric::Top1 => {
                if pairs[0].0.shape().last().is_none_or(|&w| w < 2) {
                    return Err(Error::input(
                        "top1 needs a last axis of 2 or more classes: use agree@T for a score",
                    ));
                }
                1.0 - hits / rows as f64
            }
            Metric::Cosine => 1.0 - cos_sum / rows as f64,
            Metric::Mae => abs_sum / n as f64,
            Metric::MaxAbs => max_abs,
            Metric::Agree(_) => 1.0 - hits / n as f64,
        })
    }
}

fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    if na == 0.0 && nb == 0.0 {
        1.0
    } else if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

/// What the guard checks: the metric on one output, over input sets.
pub struct GuardOptions {
    pub metric: Metric,
    pub tolerance: f64,
    /// The output the metric reads; the model's first output if None.
    pub output: Option<String>,
    /// The load options of the models compared (the backend the candidate will run on).
    pub load: LoadOptions,
}

/// The float model's outputs on the data, computed once.
pub struct Evaluator {
    sets: Vec<Vec<(String, Tensor)>>,
    output: String,
    reference: Vec<Tensor>,
    opts: GuardOptions,
}

impl Evaluator {
    pub fn new(
        float: &ModelProto,
        sets: Vec<Vec<(String, Tensor)>>,
        opts: GuardOptions,
    ) -> Result<Evaluator> {
        if sets.is_empty() {
            return Err(Error::input("the guard needs at least one input set"));
        }
        let model = Model::load_with(&encode_model(float), &opts.load)?;
        let output = match &opts.output {
            Some(o) => {
                if !model.outputs().iter().any(|i| &i.name == o) {
                    return Err(Error::input(format!("the model has no output '{o}'")));
                }
                o.clone()
            }
            None => model
                .outputs()
                .first()
                .ok_or_else(|| Error::invalid_model("the model has no outputs"))?
                .name
                .clone(),
        };
        let reference = sets
            .iter()
            .map(|s| run_one(&model, s, &output))
            .collect::<Result<_>>()?;
        Ok(Evaluator {
            sets,
            output,
            reference,
            opts,
        })
    }

    pub fn output(&self) -> &str {
        &self.output
    }

    /// The deviation of `candidate` from the float model.
    pub fn deviation(&self, candidate: &ModelProto) -> Result<f64> {
        let model = Model::load_with(&encode_model(candidate), &self.opts.load)?;
        let outs = self
            .sets
            .iter()
            .map(|s| run_one(&model, s, &self.output))
            .collect::<Result<Vec<_>>>()?;
        let pairs: Vec<_> = self.reference.iter().zip(&outs).collect();
        self.opts.metric.deviation(&pairs)
    }

    pub fn passes(&self, deviation: f64) -> bool {
        deviation <= self.opts.tolerance
    }
}

fn run_one(m: &Model, set: &[(String, Tensor)], output: &str) -> Result<Tensor> {
    let feeds: Vec<(&str, Tensor)> = set.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    m.run(&feeds)?
        .into_iter()
        .find(|(n, _)| n == output)
        .map(|(_, t)| t)
        .ok_or_else(|| Error::input(format!("no output '{output}'")))
}

/// A node the guard backed off, with its deviation when it alone was compressed.
#[derive(Debug, Clone)]
pub struct BackedOff {
    pub node: String,
    pub op: String,
    /// Each step that had changed it, with the milder setting it got there, or None
    /// where it was left as it was.
    pub grades: Vec<(String, Option<String>)>,
    pub alone: f64,
}

/// The compressed model and what happened on the way.
pub struct Outcome {
    pub model: ModelProto,
    pub reports: Vec<StepReport>,
    /// The final deviation and whether it meets the tolerance; None without a guard.
    pub deviation: Option<f64>,
    pub passed: bool,
    /// The deviation before any back-off.
    pub first_deviation: Option<f64>,
    pub backed_off: Vec<BackedOff>,
    /// Evaluations made (each loads and runs one candidate on all the data).
    pub evaluations: usize,
}

/// Applies `steps` in order to a copy of `float`, each with its grades.
fn build(
    float: &ModelProto,
    steps: &[Step],
    grades: &[Grades],
) -> Result<(ModelProto, Vec<StepReport>)> {
    let mut m = float.clone();
    let reports = steps
        .iter()
        .zip(grades)
        .map(|(s, g)| (s.apply)(&mut m, g))
        .collect::<Result<Vec<_>>>()?;
    Ok((m, reports))
}

/// A candidate and its measure.
struct Trial {
    model: ModelProto,
    reports: Vec<StepReport>,
    deviation: f64,
}

/// Runs the steps on `float`; with an evaluator, backs off the most sensitive nodes until
/// the tolerance holds.
pub fn compress(float: &ModelProto, steps: &[Step], eval: Option<&Evaluator>) -> Result<Outcome> {
    let mut float = float.clone();
    // Every node gets a name first: the steps report and skip nodes by name.
    name_nodes(&mut float);
    let none = vec![Grades::default(); steps.len()];
    let (model, reports) = build(&float, steps, &none)?;
    let Some(eval) = eval else {
        return Ok(Outcome {
            model,
            reports,
            deviation: None,
            passed: true,
            first_deviation: None,
            backed_off: Vec::new(),
            evaluations: 0,
        });
    };
    let first = eval.deviation(&model)?;
    let mut evaluations = 1;
    if eval.passes(first) {
        return Ok(Outcome {
            model,
            reports,
            deviation: Some(first),
            passed: true,
            first_deviation: Some(first),
            backed_off: Vec::new(),
            evaluations,
        });
    }
    // The changed nodes, each with the indices of the steps that changed it.
    let mut changed: Vec<(String, String, Vec<usize>, f64)> = Vec::new();
    for (si, r) in reports.iter().enumerate() {
        for (name, op) in &r.changed {
            match changed.iter_mut().find(|c| &c.0 == name) {
                Some(c) => c.2.push(si),
                None => changed.push((name.clone(), op.clone(), vec![si], 0.0)),
            }
        }
    }
    let keeping = |nodes: &[&str]| -> Vec<Grades> {
        let mut g = none.clone();
        for n in nodes {
            for s in &mut g {
                s.set(n, Some(Grade::Keep));
            }
        }
        g
    };
    let mut measure = |grades: &[Grades]| -> Result<Trial> {
        let (model, reports) = build(&float, steps, grades)?;
        evaluations += 1;
        let deviation = eval.deviation(&model)?;
        Ok(Trial {
            model,
            reports,
            deviation,
        })
    };
    // Sensitivity: each node compressed alone.
    let all: Vec<&str> = changed.iter().map(|c| c.0.as_str()).collect();
    let mut alone = Vec::with_capacity(changed.len());
    for c in &changed {
        let others: Vec<&str> = all.iter().copied().filter(|n| *n != c.0).collect();
        alone.push(measure(&keeping(&others))?.deviation);
    }
    for (c, a) in changed.iter_mut().zip(alone) {
        c.3 = a;
    }
    changed.sort_by(|a, b| b.3.total_cmp(&a.3));
    // The smallest prefix of the sensitivity order whose restoration meets the tolerance
    // (restoring every node gives the float model back, which meets any tolerance ≥ 0).
    let prefix = |k: usize| -> Vec<Grades> {
        let nodes: Vec<&str> = changed[..k].iter().map(|c| c.0.as_str()).collect();
        keeping(&nodes)
    };
    let (mut lo, mut hi) = (1usize, changed.len());
    let mut best = None;
    while lo <= hi {
        let mid = (lo + hi) / 2;
        let t = measure(&prefix(mid))?;
        if eval.passes(t.deviation) {
            best = Some((mid, t));
            hi = mid - 1;
        } else {
            lo = mid + 1;
        }
    }
    let (k, mut current, passed) = match best {
        Some((k, t)) => (k, t, true),
        // Not even the float graph passed: the tolerance or the data cannot be met.
        None => (changed.len(), measure(&prefix(changed.len()))?, false),
    };
    let mut grades = prefix(k);
    changed.truncate(k);
    // Graded back-off: each restored node, the least sensitive first, gets the strongest
    // setting that still passes: as asked (where it might: in one of several steps, or
    // when it passed alone — bisection puts a prefix back, not each node), or a milder one.
    if passed {
        for (node, _, sis, alone) in changed.iter().rev() {
            for &si in sis {
                let as_asked = (sis.len() > 1 || eval.passes(*alone)).then_some(None);
                let milder = (0..steps[si].milder.len()).map(|i| Some(Grade::Milder(i)));
                for g in as_asked.into_iter().chain(milder) {
                    let mut trial = grades.clone();
                    trial[si].set(node, g);
                    // Unless the step really changes the node that way, it is kept.
                    let (model, reports) = build(&float, steps, &trial)?;
                    if !reports[si].changed.iter().any(|(n, _)| n == node) {
                        continue;
                    }
                    evaluations += 1;
                    let deviation = eval.deviation(&model)?;
                    if eval.passes(deviation) {
                        grades = trial;
                        current = Trial {
                            model,
                            reports,
                            deviation,
                        };
                        break;
                    }
                }
            }
        }
    }
    let label = |si: usize, g: Option<Grade>| match g {
        Some(Grade::Milder(i)) => Some(steps[si].milder[i].clone()),
        None => Some("as asked".to_string()),
        Some(Grade::Keep) => None,
    };
    // A node the graded pass put back as asked in every step was not backed off at all.
    let backed_off: Vec<BackedOff> = changed
        .iter()
        .filter(|(node, _, sis, _)| sis.iter().any(|&si| grades[si].get(node).is_some()))
        .map(|(node, op, sis, alone)| BackedOff {
            node: node.clone(),
            op: op.clone(),
            grades: sis
                .iter()
                .map(|&si| (steps[si].label.clone(), label(si, grades[si].get(node))))
                .collect(),
            alone: *alone,
        })
        .collect();
    // The steps saw the guard's choices as grades; say who made them.
    let mut reports = current.reports;
    for (si, r) in reports.iter_mut().enumerate() {
        for (name, _, why) in &mut r.kept {
            if let Some(b) = backed_off.iter().find(|b| &b.node == name) {
                if grades[si].get(name) == Some(Grade::Keep) {
                    *why = format!(
                        "backed off by the accuracy guard (compressed alone it deviates {:.5})",
                        b.alone
                    );
                }
            }
        }
        for b in &backed_off {
            if let Some(Grade::Milder(i)) = grades[si].get(&b.node) {
                r.notes.push(format!(
                    "{} '{}': {} (the accuracy guard's back-off: compressed alone as asked \
                     it deviates {:.5})",
                    b.op, b.node, steps[si].milder[i], b.alone
                ));
            }
        }
    }
    Ok(Outcome {
        model: current.model,
        reports,
        deviation: Some(current.deviation),
        passed: eval.passes(current.deviation),
        first_deviation: Some(first),
        backed_off,
        evaluations,
    })
}

impl Outcome {
    /// The guard's account: the deviations, and each node backed off with why.
    pub fn guard_summary(&self, metric: Metric, tolerance: f64, output: &str) -> String {
        let mut s = String::new();
        let (Some(first), Some(last)) = (self.first_deviation, self.deviation) else {
            return s;
        };
        let _ = fmt::Write::write_fmt(
            &mut s,
            format_args!(
                "guard: {metric} on '{output}', tolerance {tolerance}: all steps {first:.5}, \
                 final {last:.5} ({}), {} evaluation(s)\n",
                if self.passed { "passes" } else { "FAILS" },
                self.evaluations
            ),
        );
        for b in &self.backed_off {
            let to: Vec<String> = (b.grades.iter())
                .map(|(step, g)| match g {
                    Some(g) => format!("{step}: {g}"),
                    None => format!("{step}: kept as it was"),
                })
                .collect();
            let _ = fmt::Write::write_fmt(
                &mut s,
                format_args!(
                    "  backed off {} '{}' ({}): compressed alone it deviates {:.5}\n",
                    b.op,
                    b.node,
                    to.join("; "),
                    b.alone
                ),
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: Vec<usize>, v: Vec<f32>) -> Tensor {
        Tensor::from_vec(shape, v).unwrap()
    }

    #[test]
    fn metrics_measure_what_they_say() {
        let r = t(vec![2, 3], vec![0.1, 0.9, 0.0, 0.5, 0.2, 0.3]);
        let c = t(vec![2, 3], vec![0.1, 0.8, 0.0, 0.1, 0.2, 0.3]);
        let p = [(&r, &c)];
        // Row 2's argmax moves from 0 to 2.
        assert!((Metric::Top1.deviation(&p).unwrap() - 0.5).abs() < 1e-12);
        assert!((Metric::MaxAbs.deviation(&p).unwrap() - 0.4).abs() < 1e-6);
        assert!((Metric::Mae.deviation(&p).unwrap() - 0.5 / 6.0).abs() < 1e-6);
        // Only 0.5 → 0.1 crosses 0.4.
        let a = Metric::Agree(0.4).deviation(&p).unwrap();
        assert!((a - 1.0 / 6.0).abs() < 1e-12);
        assert!(Metric::Cosine.deviation(&[(&r, &r)]).unwrap().abs() < 1e-12);
        let one = t(vec![4, 1], vec![0.1, 0.9, 0.2, 0.7]);
        assert!(Metric::Top1.deviation(&[(&one, &one)]).is_err());
    }

    #[test]
    fn metric_names_parse() {
        assert_eq!("agree@0.3".parse::<Metric>(), Ok(Metric::Agree(0.3)));
        assert_eq!("cosine".parse::<Metric>(), Ok(Metric::Cosine));
        assert!("accuracy".parse::<Metric>().is_err());
    }
}
