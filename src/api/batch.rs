//! Batch prediction (issue #7): many independent inputs through one model, stacked along
//! the model's batch dim where it has one, so one run serves several inputs. The CLI's
//! `batch` command and the JS `runBatch` both go through [`BatchRunner`].

use super::{Model, Named};
use crate::cpu::{common::concat, layout::split};
use crate::error::{Error, Result};
use crate::graph::{Dim, Fact};
use crate::tensor::Tensor;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether a model's inputs can be stacked along their first dim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stacking {
    /// Every input and output leads with the same free dim (named here when it is named).
    Batch(Option<String>),
    /// Inputs run one by one; the reason says why.
    OneByOne(String),
}

/// The batch dim a model declares: the first dim of every input, symbolic (the same symbol
/// in every input) or unknown, and a free first dim on every output (exporters often give
/// outputs symbols of their own; a run checks that outputs split back). A fixed first
/// dim or a scalar means no stacking.
pub fn stacking(model: &Model) -> Stacking {
    let lead =
        |what: &str, name: &str, fact: &Fact| -> std::result::Result<Option<String>, String> {
            // No declared rank: stacking is tried and checked at run time.
            let Some(shape) = &fact.shape else {
                return Ok(None);
            };
            match shape.first() {
                None => Err(format!("{what} '{name}' is a scalar")),
                Some(Dim::Known(n)) => Err(format!("{what} '{name}' has a fixed first dim of {n}")),
                Some(Dim::Unknown) => Ok(None),
                Some(Dim::Sym(s)) => Ok(Some(s.clone())),
            }
        };
    let mut symbol: Option<String> = None;
    let required: Vec<_> = model.inputs().iter().filter(|i| !i.optional).collect();
    if required.is_empty() {
        return Stacking::OneByOne("the model has no inputs".into());
    }
    for i in required {
        match lead("input", &i.name, &i.fact) {
            Err(why) => return Stacking::OneByOne(why),
            Ok(Some(s)) => match &symbol {
                Some(t) if *t != s => {
                    return Stacking::OneByOne(format!(
                        "input '{}' leads with '{s}', another input with '{t}'",
                        i.name
                    ))
                }
                _ => symbol = Some(s),
            },
            Ok(None) => {}
        }
    }
    for o in model.outputs() {
        if let Err(why) = lead("output", &o.name, &o.fact) {
            return Stacking::OneByOne(why);
        }
    }
    Stacking::Batch(symbol)
}

/// Runs lists of inputs, stacked where the model allows. Shared by threads (`&self`).
pub struct BatchRunner<'m> {
    model: &'m Model,
    stacking: Stacking,
    /// Cleared when a stacked run's outputs did not have the stacked length (an output
    /// that mixes the batch): from then on inputs run one by one.
    stack_ok: AtomicBool,
}

impl<'m> BatchRunner<'m> {
    pub fn new(model: &'m Model) -> BatchRunner<'m> {
        let stacking = stacking(model);
        let stack_ok = AtomicBool::new(matches!(stacking, Stacking::Batch(_)));
        BatchRunner {
            model,
            stacking,
            stack_ok,
        }
    }

    pub fn stacking(&self) -> Stacking {
        if !self.stack_ok.load(Ordering::Relaxed) && matches!(self.stacking, Stacking::Batch(_)) {
            return Stacking::OneByOne(
                "a stacked run's outputs did not split back into its inputs".into(),
            );
        }
        self.stacking.clone()
    }

    /// Runs every item and returns one result per item, in order. Consecutive items with
    /// the same shapes (apart from the batch dim) run as one stacked run; an item that
    /// fails gets its own error, and the others still run. Items are taken by value, so
    /// no input is copied on its way to the model except into a stacked batch.
    pub fn run(&self, items: Vec<Named<Tensor>>) -> Vec<Result<Named<Tensor>>> {
        let mut fed = items.into_iter().map(|item| self.feeds(item)).peekable();
        let mut out = Vec::new();
        while let Some(first) = fed.next() {
            let first = match first {
                Ok(f) => f,
                Err(e) => {
                    out.push(Err(e));
                    continue;
                }
            };
            let mut group = vec![first];
            while self.stack_ok.load(Ordering::Relaxed)
                && fed
                    .peek()
                    .is_some_and(|f| f.as_ref().is_ok_and(|f| same_tail(f, &group[0])))
            {
                if let Some(Ok(f)) = fed.next() {
                    group.push(f);
                }
            }
            out.extend(self.run_group(group));
        }
        out
    }

    fn run_group(&self, group: Vec<Named<Tensor>>) -> Vec<Result<Named<Tensor>>> {
        if group.len() > 1 {
            if let Ok(outs) = self.run_stacked(&group) {
                return outs.into_iter().map(Ok).collect();
            }
            // A failed stacked run is retried item by item, so a bad item names itself
            // and does not take the others down with it.
        }
        group
            .into_iter()
            .map(|feeds| self.model.run_owned(feeds))
            .collect()
    }

    fn run_stacked(&self, group: &[Named<Tensor>]) -> Result<Vec<Named<Tensor>>> {
        let rows: Vec<usize> = group.iter().map(|f| f[0].1.shape()[0]).collect();
        let total: usize = rows.iter().sum();
        let mut stacked: Named<Tensor> = Vec::new();
        for (k, (name, _)) in group[0].iter().enumerate() {
            let parts: Vec<&Tensor> = group.iter().map(|f| &f[k].1).collect();
            stacked.push((name.clone(), concat(&parts, 0)?));
        }
        let outs = self.model.run_owned(stacked)?;
        if outs.iter().any(|(_, t)| t.shape().first() != Some(&total)) {
            self.stack_ok.store(false, Ordering::Relaxed);
            return Err(Error::shape("outputs do not have the stacked batch length"));
        }
        let mut per_item: Vec<Named<Tensor>> = vec![Vec::new(); group.len()];
        for (name, t) in outs {
            for (i, piece) in split(&t, 0, &rows)?.into_iter().enumerate() {
                per_item[i].push((name.clone(), piece));
            }
        }
        Ok(per_item)
    }

    /// An item's tensors in the model's input order, each with the batch dim: an item may
    /// leave it out (rank one less than declared), and then it is one row.
    fn feeds(&self, mut item: Named<Tensor>) -> Result<Named<Tensor>> {
        for (n, _) in &item {
            if !self.model.inputs().iter().any(|i| &i.name == n) {
                return Err(Error::input(format!("the model has no input '{n}'")));
            }
        }
        let mut feeds = Vec::new();
        for info in self.model.inputs() {
            let Some(at) = item.iter().position(|(n, _)| *n == info.name) else {
                if info.optional {
                    continue;
                }
                return Err(Error::input(format!("missing input '{}'", info.name)));
            };
            let (name, t) = item.swap_remove(at);
            let declared = info.fact.shape.as_ref().map(|s| s.len());
            let t = if declared == Some(t.rank() + 1) {
                let mut shape = vec![1];
                shape.extend_from_slice(t.shape());
                t.reshape(shape)?
            } else {
                t
            };
            feeds.push((name, t));
        }
        if matches!(self.stacking, Stacking::Batch(_)) {
            let rows: Vec<Option<usize>> = feeds
                .iter()
                .map(|(_, t)| t.shape().first().copied())
                .collect();
            if rows.iter().any(|r| r.is_none() || *r != rows[0]) {
                return Err(Error::shape(
                    "the inputs of one item must have the same first (batch) dim",
                ));
            }
        }
        Ok(feeds)
    }
}

/// Whether two items' feeds (model input order, batch dim first) can stack: the same
/// inputs, dtypes and every dim but the first.
fn same_tail(a: &Named<Tensor>, b: &Named<Tensor>) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((n1, t1), (n2, t2))| {
            n1 == n2 && t1.dtype() == t2.dtype() && t1.shape().get(1..) == t2.shape().get(1..)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits() -> Model {
        Model::load(include_bytes!("../../models/digits_mlp.onnx")).unwrap()
    }

    fn rows() -> Vec<Named<Tensor>> {
        let x = crate::api::io::read_npy(include_bytes!("../../models/digits_test.npy")).unwrap();
        let cols = x.shape()[1];
        let v = x.to_f32_vec().unwrap();
        v.chunks(cols)
            .take(23)
            .enumerate()
            .map(|(i, r)| {
                // Mixed forms: with the batch dim of 1, and without it.
                let t = if i % 2 == 0 {
                    Tensor::from_vec(vec![1, cols], r.to_vec()).unwrap()
                } else {
                    Tensor::from_vec(vec![cols], r.to_vec()).unwrap()
                };
                vec![(x_name(), t)]
            })
            .collect()
    }

    fn x_name() -> String {
        digits().inputs()[0].name.clone()
    }

    #[test]
    fn stacked_equals_one_by_one() {
        let m = digits();
        assert!(
            matches!(stacking(&m), Stacking::Batch(_)),
            "{:?}",
            stacking(&m)
        );
        let items = rows();
        let r = BatchRunner::new(&m);
        let stacked = r.run(items.clone());
        assert_eq!(stacked.len(), items.len());
        for (item, got) in items.iter().zip(stacked) {
            // A list of one is never stacked.
            let single = r.run(vec![item.clone()]).remove(0).unwrap();
            let got = got.unwrap();
            assert_eq!(got.len(), single.len());
            for ((n1, a), (n2, b)) in got.iter().zip(&single) {
                assert_eq!(n1, n2);
                assert_eq!(a.shape(), b.shape());
                assert_eq!(a.shape()[0], 1);
                let (a, b) = (a.to_f32_vec().unwrap(), b.to_f32_vec().unwrap());
                for (x, y) in a.iter().zip(&b) {
                    assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{x} vs {y}");
                }
            }
        }
        assert!(matches!(r.stacking(), Stacking::Batch(_)));
    }

    #[test]
    fn a_bad_item_fails_alone() {
        let m = digits();
        let mut items = rows();
        items[3] = vec![(
            x_name(),
            Tensor::from_vec(vec![1, 5], vec![0f32; 5]).unwrap(),
        )];
        items[7] = vec![(
            "nope".into(),
            Tensor::from_vec(vec![1, 64], vec![0f32; 64]).unwrap(),
        )];
        let out = BatchRunner::new(&m).run(items);
        for (i, r) in out.iter().enumerate() {
            match i {
                3 => assert!(r.is_err()),
                7 => assert!(r.as_ref().unwrap_err().to_string().contains("nope")),
                _ => assert!(r.is_ok(), "item {i}: {:?}", r.as_ref().err()),
            }
        }
    }
}
