//! The op table: one entry per (domain, op type), grouped in one file per op family.
//! Each family file defines the op structs (attributes, shape rule) and lists them in
//! its `OPS`; the CPU kernels live in the matching `crate::cpu::<family>` module.
//! See docs/adding-an-op.md.

use super::{NodeCx, Op};
use crate::error::Result;
use std::collections::HashMap;
use std::sync::OnceLock;

pub mod attention;
pub mod control;
pub mod elementwise;
pub mod layout;
pub mod ml;
pub mod nn;
pub mod norm;
pub mod quant;
pub mod reduce;
pub mod rnn;
pub mod sampling;
pub mod text;

/// Parses a node's attributes into an op.
pub type ParseFn = fn(&mut NodeCx) -> Result<Box<dyn Op>>;

/// One row of the op table.
pub struct OpDef {
    /// "" for the default ONNX domain, else e.g. "ai.onnx.ml", "com.microsoft".
    pub domain: &'static str,
    pub name: &'static str,
    pub parse: ParseFn,
}

/// Shorthand for a table row.
pub const fn def(domain: &'static str, name: &'static str, parse: ParseFn) -> OpDef {
    OpDef {
        domain,
        name,
        parse,
    }
}

fn families() -> [&'static [OpDef]; 12] {
    [
        attention::OPS,
        control::OPS,
        elementwise::OPS,
        layout::OPS,
        ml::OPS,
        nn::OPS,
        norm::OPS,
        quant::OPS,
        reduce::OPS,
        rnn::OPS,
        sampling::OPS,
        text::OPS,
    ]
}

fn table() -> &'static HashMap<(&'static str, &'static str), &'static OpDef> {
    static TABLE: OnceLock<HashMap<(&'static str, &'static str), &'static OpDef>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut m = HashMap::new();
        for fam in families() {
            for d in fam {
                m.insert((d.domain, d.name), d);
            }
        }
        m
    })
}

/// Finds the op for a node's (domain, op type).
pub fn lookup(domain: &str, name: &str) -> Option<&'static OpDef> {
    table().get(&(domain, name)).copied()
}

/// Every supported op, sorted by domain and name.
pub fn all() -> Vec<&'static OpDef> {
    let mut v: Vec<_> = families().into_iter().flatten().collect();
    v.sort_by_key(|d| (d.domain, d.name));
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn no_duplicate_rows() {
        let all = super::all();
        for w in all.windows(2) {
            assert!(
                (w[0].domain, w[0].name) != (w[1].domain, w[1].name),
                "{}.{} is registered twice",
                w[0].domain,
                w[0].name
            );
        }
    }
}
