//! Layout helpers shared by CPU kernels of every family: strides, axis slicing, stacking
//! and concatenation for tensors of any dtype.

use crate::error::{Error, Result};
use crate::tensor::{numel, Tensor};

/// Row-major strides of a shape.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// (outer, axis length, inner) sizes around `axis`.
pub fn split_at_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    (outer, shape[axis], inner)
}

/// The `i`-th slice along `axis`, with that axis removed.
pub fn index_axis(t: &Tensor, axis: usize, i: usize) -> Result<Tensor> {
    if axis >= t.rank() || i >= t.shape()[axis] {
        return Err(Error::shape(format!(
            "index {i} on axis {axis} is out of range for {:?}",
            t.shape()
        )));
    }
    let (outer, len, inner) = split_at_axis(t.shape(), axis);
    let mut shape = t.shape().to_vec();
    shape.remove(axis);
    crate::dispatch!(all t.dtype(), "index_axis", T => {
        let src = t.as_slice::<T>()?;
        let mut out = Vec::with_capacity(outer * inner);
        for o in 0..outer {
            let base = (o * len + i) * inner;
            out.extend_from_slice(&src[base..base + inner]);
        }
        Tensor::from_vec(shape, out)
    })
}

/// Stacks equally shaped tensors along a new axis.
pub fn stack(ts: &[&Tensor], axis: usize) -> Result<Tensor> {
    let first = ts
        .first()
        .ok_or_else(|| Error::shape("stack of no tensors"))?;
    if axis > first.rank() {
        return Err(Error::shape(format!("stack axis {axis} out of range")));
    }
    let mut unsqueezed = Vec::with_capacity(ts.len());
    for t in ts {
        if t.shape() != first.shape() || t.dtype() != first.dtype() {
            return Err(Error::shape(format!(
                "cannot stack {} {:?} with {} {:?}",
                first.dtype(),
                first.shape(),
                t.dtype(),
                t.shape()
            )));
        }
        let mut s = t.shape().to_vec();
        s.insert(axis, 1);
        unsqueezed.push(s);
    }
    let refs: Vec<(&Tensor, &[usize])> = ts
        .iter()
        .zip(&unsqueezed)
        .map(|(t, s)| (*t, s.as_slice()))
        .collect();
    concat_shaped(&refs, axis)
}

/// Concatenates tensors along an existing axis.
pub fn concat(ts: &[&Tensor], axis: usize) -> Result<Tensor> {
    let refs: Vec<(&Tensor, &[usize])> = ts.iter().map(|t| (*t, t.shape())).collect();
    concat_shaped(&refs, axis)
}

/// Concatenation where each tensor is viewed with the given shape (same element count).
fn concat_shaped(ts: &[(&Tensor, &[usize])], axis: usize) -> Result<Tensor> {
    let (first, fshape) = *ts
        .first()
        .ok_or_else(|| Error::shape("concat of no tensors"))?;
    let rank = fshape.len();
    if axis >= rank {
        return Err(Error::shape(format!(
            "concat axis {axis} out of range for rank {rank}"
        )));
    }
    let mut out_shape = fshape.to_vec();
    out_shape[axis] = 0;
    for (t, s) in ts {
        if t.dtype() != first.dtype() {
            return Err(Error::dtype(format!(
                "concat of {} and {}",
                first.dtype(),
                t.dtype()
            )));
        }
        if s.len() != rank
            || s.iter()
                .enumerate()
                .any(|(k, &d)| k != axis && d != fshape[k])
        {
            return Err(Error::shape(format!(
                "concat of shapes {fshape:?} and {s:?} on axis {axis}"
            )));
        }
        out_shape[axis] += s[axis];
    }
    let n = numel(&out_shape, first.dtype())?;
    let outer: usize = fshape[..axis].iter().product();
    crate::dispatch!(all first.dtype(), "concat", T => {
        let mut out: Vec<T> = Vec::with_capacity(n);
        for o in 0..outer {
            for (t, s) in ts {
                let block = s[axis..].iter().product::<usize>();
                let src = t.as_slice::<T>()?;
                out.extend_from_slice(&src[o * block..(o + 1) * block]);
            }
        }
        Tensor::from_vec(out_shape, out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_concat_index() {
        let a = Tensor::from_vec(vec![2, 2], vec![1, 2, 3, 4]).unwrap();
        let b = Tensor::from_vec(vec![2, 2], vec![5, 6, 7, 8]).unwrap();
        let c = concat(&[&a, &b], 1).unwrap();
        assert_eq!(c.shape(), &[2, 4]);
        assert_eq!(c.as_slice::<i32>().unwrap(), &[1, 2, 5, 6, 3, 4, 7, 8]);
        let s = stack(&[&a, &b], 1).unwrap();
        assert_eq!(s.shape(), &[2, 2, 2]);
        assert_eq!(s.as_slice::<i32>().unwrap(), &[1, 2, 5, 6, 3, 4, 7, 8]);
        let r = index_axis(&s, 1, 1).unwrap();
        assert_eq!(r.as_slice::<i32>().unwrap(), &[5, 6, 7, 8]);
    }
}
