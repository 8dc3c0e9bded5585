//! Model compression (issue #6): steps that rewrite an ONNX model to make it smaller or
//! faster, working on the decoded protobuf (`crate::onnx::proto`) and written back with
//! `crate::onnx::encode`, and the measure of a compressed or distilled model against its
//! reference. Library code, usable from wasm; file handling stays in the CLI.

pub mod calibrate;
pub mod edit;
pub mod evaluate;
pub mod fp16;
pub mod guard;
pub mod int4;
pub mod lowrank;
pub mod prune;
pub mod qdq;
pub mod quantize;

/// What one step changed and what it left alone, and why: every step returns one, and
/// the accuracy guard reads `changed` to know which nodes it can back off.
#[derive(Debug, Clone, Default)]
pub struct StepReport {
    /// The step, as the CLI prints it ("int8 dynamic", "prune 50 %"…).
    pub step: String,
    /// (node name, op type) of each node the step rewrote.
    pub changed: Vec<(String, String)>,
    /// (node name, op type, reason) of each candidate the step left as it was.
    pub kept: Vec<(String, String, String)>,
    /// Anything else worth printing (sizes, ranks, sparsity reached…).
    pub notes: Vec<String>,
}

impl StepReport {
    pub fn new(step: impl Into<String>) -> Self {
        StepReport {
            step: step.into(),
            ..Default::default()
        }
    }
}

impl std::fmt::Display for StepReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}: changed {} node(s)", self.step, self.changed.len())?;
        // The guard's back-offs are always listed; other reasons (an untaken If branch
        // holds hundreds of nodes) up to a screenful, then counted.
        const SHOWN: usize = 24;
        let (guard, other): (Vec<_>, Vec<_>) = self
            .kept
            .iter()
            .partition(|(_, _, why)| why.starts_with("backed off by the accuracy guard"));
        for (name, op, why) in other.iter().take(SHOWN).chain(&guard) {
            writeln!(f, "  kept: {op} '{name}': {why}")?;
        }
        if other.len() > SHOWN {
            writeln!(
                f,
                "  kept: {} more node(s) for reasons like those above",
                other.len() - SHOWN
            )?;
        }
        for n in &self.notes {
            writeln!(f, "  {n}")?;
        }
        Ok(())
    }
}
