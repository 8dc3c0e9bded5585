//! Graph rewrites, one small named pass per file, each tested on its own.
//! `optimize` runs them in order after shape inference.

pub mod const_fold;
pub mod dce;
pub mod inline_functions;

use super::Graph;
use crate::error::Result;

/// Runs the standard pipeline on a graph (not its subgraphs).
pub fn optimize(g: &mut Graph) -> Result<()> {
    const_fold::run(g)?;
    dce::run(g);
    Ok(())
}
