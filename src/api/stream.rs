//! Streaming prediction (issue #7): a model that reads a sliding window of a signal and
//! carries state from one call to the next (silero VAD: 64 samples of context + 512 new
//! ones per window, `state` fed back from `stateN`). Samples arrive in chunks of any size;
//! each completed window yields one prediction. A whole recording goes through the very
//! same code ([`predict_windows`]), so streamed and batch results are identical.

use super::{Model, Named};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use std::borrow::Borrow;

/// How a stream turns samples into model inputs.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    /// The input that receives each window, shaped [1, context + hop] (or rank 1).
    pub input: String,
    /// New samples per window.
    pub hop: usize,
    /// Samples of the previous window put in front of each window (zeros before the first).
    pub context: usize,
    /// (input, output) pairs: the output of one window is the input of the next; zeros at
    /// the start.
    pub state: Vec<(String, String)>,
    /// Inputs that stay the same for every window (silero: `sr`).
    pub fixed: Vec<(String, Tensor)>,
}

impl StreamSpec {
    /// State pairs found by name: an input `x` with an output `xN`, `x_out`, `next_x`,
    /// `new_x` or `x_new` of the same dtype.
    pub fn detect_state(model: &Model) -> Vec<(String, String)> {
        let mut pairs = Vec::new();
        for i in model.inputs() {
            let x = &i.name;
            let names = [
                format!("{x}N"),
                format!("{x}_out"),
                format!("next_{x}"),
                format!("new_{x}"),
                format!("{x}_new"),
            ];
            if let Some(o) = model
                .outputs()
                .iter()
                .find(|o| names.contains(&o.name) && o.fact.dtype == i.fact.dtype)
            {
                pairs.push((x.clone(), o.name.clone()));
            }
        }
        pairs
    }
}

/// One prediction per window: the model's outputs except the state it feeds back.
pub type WindowOutputs = Vec<(String, Tensor)>;

/// A live stream over one model: `&Model`, or an `Rc`/`Arc` of one where the stream must
/// own it (the wasm binding).
pub struct Stream<M: Borrow<Model>> {
    model: M,
    spec: StreamSpec,
    /// Samples not yet in a window.
    pending: Vec<f32>,
    /// The last `context` samples of the previous window.
    context: Vec<f32>,
    /// The state inputs' current values, in `spec.state` order.
    state: Vec<Tensor>,
    rank1: bool,
    /// The context after the window in flight, committed by `absorb`.
    next_context: Option<Vec<f32>>,
}

impl<M: Borrow<Model>> Stream<M> {
    pub fn new(model: M, spec: StreamSpec) -> Result<Stream<M>> {
        let m = model.borrow();
        if spec.hop == 0 {
            return Err(Error::input("a stream needs a hop of at least one sample"));
        }
        let find = |name: &str| m.inputs().iter().find(|i| i.name == name);
        let input = find(&spec.input)
            .ok_or_else(|| Error::input(format!("the model has no input '{}'", spec.input)))?;
        if input.fact.dtype.is_some_and(|d| d != DType::F32) {
            return Err(Error::input(format!(
                "the stream input '{}' is not float32",
                spec.input
            )));
        }
        let rank1 = input.fact.shape.as_ref().is_some_and(|s| s.len() == 1);
        let mut state = Vec::new();
        for (i, o) in &spec.state {
            let info = find(i)
                .ok_or_else(|| Error::input(format!("the model has no state input '{i}'")))?;
            if !m.outputs().iter().any(|x| &x.name == o) {
                return Err(Error::input(format!("the model has no state output '{o}'")));
            }
            // Symbolic dims (the batch) are 1 in a stream.
            let shape = info
                .shape_with_ones()
                .ok_or_else(|| Error::input(format!("state input '{i}' has no declared shape")))?;
            state.push(Tensor::zeros(info.fact.dtype.unwrap_or(DType::F32), shape)?);
        }
        for (n, _) in &spec.fixed {
            if find(n).is_none() {
                return Err(Error::input(format!("the model has no input '{n}'")));
            }
        }
        Ok(Stream {
            model,
            context: vec![0.0; spec.context],
            spec,
            pending: Vec::new(),
            state,
            rank1,
            next_context: None,
        })
    }

    /// Appends samples and runs every window they complete, in order.
    pub fn push(&mut self, samples: &[f32]) -> Result<Vec<WindowOutputs>> {
        self.feed(samples);
        let mut out = Vec::new();
        while let Some(feeds) = self.next_window(false)? {
            out.push(self.run(feeds)?);
        }
        Ok(out)
    }

    /// Runs the partial window left, padded with zeros; nothing when none is left.
    pub fn finish(&mut self) -> Result<Vec<WindowOutputs>> {
        match self.next_window(true)? {
            Some(feeds) => Ok(vec![self.run(feeds)?]),
            None => Ok(Vec::new()),
        }
    }

    fn run(&mut self, feeds: Named<Tensor>) -> Result<WindowOutputs> {
        let outs = self.model.borrow().run_owned(feeds)?;
        self.absorb(outs)
    }

    /// Buffers samples without running anything: for a caller that runs the windows
    /// itself (asynchronously, as the wasm binding does), with [`Stream::next_window`]
    /// and [`Stream::absorb`]. `push` and `finish` are these three in a loop.
    pub fn feed(&mut self, samples: &[f32]) {
        self.pending.extend_from_slice(samples);
    }

    /// The feeds of the next complete window (with `flush`, also of a last partial one,
    /// zero-padded), or None. Its outputs must go to [`Stream::absorb`] before the next
    /// window is taken, since they carry the state.
    pub fn next_window(&mut self, flush: bool) -> Result<Option<Named<Tensor>>> {
        let hop = if self.pending.len() >= self.spec.hop {
            self.pending.drain(..self.spec.hop).collect::<Vec<f32>>()
        } else if flush && !self.pending.is_empty() {
            let mut hop = std::mem::take(&mut self.pending);
            hop.resize(self.spec.hop, 0.0);
            hop
        } else {
            return Ok(None);
        };
        let mut x = Vec::with_capacity(self.context.len() + hop.len());
        x.extend_from_slice(&self.context);
        x.extend_from_slice(&hop);
        let shape = if self.rank1 {
            vec![x.len()]
        } else {
            vec![1, x.len()]
        };
        // The next window's context, kept only once this window has run (absorb).
        self.next_context = Some(x[x.len() - self.context.len()..].to_vec());
        let mut feeds: Named<Tensor> = vec![(self.spec.input.clone(), Tensor::from_vec(shape, x)?)];
        for ((i, _), t) in self.spec.state.iter().zip(&self.state) {
            feeds.push((i.clone(), t.clone()));
        }
        for (n, t) in &self.spec.fixed {
            feeds.push((n.clone(), t.clone()));
        }
        Ok(Some(feeds))
    }

    /// Takes a window's outputs: keeps its state for the next window and returns the rest.
    pub fn absorb(&mut self, mut outs: Named<Tensor>) -> Result<WindowOutputs> {
        for ((_, o), s) in self.spec.state.iter().zip(&mut self.state) {
            let at = outs
                .iter()
                .position(|(n, _)| n == o)
                .ok_or_else(|| Error::input(format!("no state output '{o}'")))?;
            *s = outs.remove(at).1;
        }
        if let Some(c) = self.next_context.take() {
            self.context = c;
        }
        Ok(outs)
    }

    /// Back to the start: no context, zero state, nothing pending.
    pub fn reset(&mut self) -> Result<()> {
        self.pending.clear();
        self.next_context = None;
        self.context.iter_mut().for_each(|v| *v = 0.0);
        for s in &mut self.state {
            *s = Tensor::zeros(s.dtype(), s.shape().to_vec())?;
        }
        Ok(())
    }

    /// The model the stream runs.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// Samples buffered toward the next window.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// A whole recording through the stream's windows: the same results as pushing it chunk by
/// chunk and finishing.
pub fn predict_windows(
    model: &Model,
    spec: StreamSpec,
    samples: &[f32],
) -> Result<Vec<WindowOutputs>> {
    let mut s = Stream::new(model, spec)?;
    let mut out = s.push(samples)?;
    out.extend(s.finish()?);
    Ok(out)
}
