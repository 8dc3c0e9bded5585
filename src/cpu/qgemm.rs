//! Integer matrix multiply for the quantized ops: 8-bit operands with zero points,
//! exact i32 accumulation.
//!
//! C (m×n, i32, row-major) = (A − a_zp) · (B − b_zp), where A's zero points are per row
//! (one or m values) and B's per column (one or n values). Either operand may be a
//! [`QPacked`] made once at load from a constant (weights), so that runs skip the
//! packing. The result is exact: 8-bit values minus zero points fit in i16 and every
//! product sum is accumulated in i32, so all code paths agree bit for bit.

use crate::error::{Error, Result};

/// A raw 8-bit operand: row-major data and its zero points.
#[derive(Clone, Copy, Debug)]
pub enum QMat<'a> {
    U8(&'a [u8], &'a [i32]),
    I8(&'a [i8], &'a [i32]),
}

impl QMat<'_> {
    fn len(&self) -> usize {
        match self {
            QMat::U8(d, _) => d.len(),
            QMat::I8(d, _) => d.len(),
        }
    }
    fn zps(&self) -> &[i32] {
        match self {
            QMat::U8(_, z) | QMat::I8(_, z) => z,
        }
    }
    /// Element i minus the zero point `zp`.
    #[inline(always)]
    fn centered(&self, i: usize, zp: i32) -> i16 {
        let v = match self {
            QMat::U8(d, _) => d[i] as i32,
            QMat::I8(d, _) => d[i] as i32,
        };
        (v - zp) as i16
    }
}

/// Which side of the product a packed operand is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Left operand, m×k.
    A,
    /// Right operand, k×n.
    B,
}

/// A constant operand with its zero points removed, in the kernel's layout.
#[derive(Clone, Debug)]
pub struct QPacked {
    pub side: Side,
    pub rows: usize,
    pub cols: usize,
    /// Centered values, row-major (the layout is private to this module).
    data: Vec<i16>,
}

impl QPacked {
    /// Packs a rows×cols operand for `side`. Zero points are per row for A and per
    /// column for B (one value broadcasts).
    pub fn new(side: Side, rows: usize, cols: usize, m: QMat) -> Result<Self> {
        let n = rows
            .checked_mul(cols)
            .ok_or_else(|| Error::shape("qgemm: operand too large"))?;
        if m.len() < n {
            return Err(Error::shape(format!(
                "qgemm: operand has {} values, {rows}x{cols} needs {n}",
                m.len()
            )));
        }
        let per = if side == Side::A { rows } else { cols };
        let zps = m.zps();
        if zps.len() != 1 && zps.len() != per {
            return Err(Error::shape(format!(
                "qgemm: {} zero points for {per} {}",
                zps.len(),
                if side == Side::A { "rows" } else { "columns" }
            )));
        }
        let mut data = crate::tensor::alloc_vec::<i16>(n)?;
        for r in 0..rows {
            for c in 0..cols {
                let zi = if zps.len() == 1 {
                    0
                } else if side == Side::A {
                    r
                } else {
                    c
                };
                data[r * cols + c] = m.centered(r * cols + c, zps[zi]);
            }
        }
        Ok(QPacked {
            side,
            rows,
            cols,
            data,
        })
    }
}

/// An operand of [`qgemm`].
#[derive(Clone, Copy, Debug)]
pub enum QOperand<'a> {
    Raw(QMat<'a>),
    Packed(&'a QPacked),
}

fn centered<'a>(
    op: QOperand<'a>,
    side: Side,
    rows: usize,
    cols: usize,
) -> Result<std::borrow::Cow<'a, [i16]>> {
    match op {
        QOperand::Packed(p) => {
            if p.side != side || p.rows != rows || p.cols != cols {
                return Err(Error::shape(format!(
                    "qgemm: packed operand is {:?} {}x{}, expected {side:?} {rows}x{cols}",
                    p.side, p.rows, p.cols
                )));
            }
            Ok(std::borrow::Cow::Borrowed(&p.data))
        }
        QOperand::Raw(m) => Ok(std::borrow::Cow::Owned(
            QPacked::new(side, rows, cols, m)?.data,
        )),
    }
}

/// C (m×n) = (A − a_zp)(B − b_zp), overwriting C.
pub fn qgemm(m: usize, k: usize, n: usize, a: QOperand, b: QOperand, c: &mut [i32]) -> Result<()> {
    let a = centered(a, Side::A, m, k)?;
    let b = centered(b, Side::B, k, n)?;
    let need = m
        .checked_mul(n)
        .ok_or_else(|| Error::shape("qgemm: output too large"))?;
    if c.len() < need {
        return Err(Error::shape("qgemm: output slice too short"));
    }
    for i in 0..m {
        let row = &mut c[i * n..(i + 1) * n];
        row.fill(0);
        for p in 0..k {
            let av = a[i * k + p] as i32;
            if av == 0 {
                continue;
            }
            for (cv, &bv) in row.iter_mut().zip(&b[p * n..(p + 1) * n]) {
                *cv += av * bv as i32;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, k: usize, n: usize, a: &[u8], az: i32, b: &[i8], bz: &[i32]) -> Vec<i32> {
        let mut c = vec![0; m * n];
        for i in 0..m {
            for j in 0..n {
                let z = if bz.len() == 1 { bz[0] } else { bz[j] };
                c[i * n + j] = (0..k)
                    .map(|p| (a[i * k + p] as i32 - az) * (b[p * n + j] as i32 - z))
                    .sum();
            }
        }
        c
    }

    #[test]
    fn raw_and_packed_agree_with_naive() {
        let (m, k, n) = (5, 37, 19);
        let a: Vec<u8> = (0..m * k).map(|i| (i * 37 % 256) as u8).collect();
        let b: Vec<i8> = (0..k * n).map(|i| (i * 91 % 256) as u8 as i8).collect();
        let bz: Vec<i32> = (0..n as i32).map(|j| j - 9).collect();
        let want = naive(m, k, n, &a, 128, &b, &bz);
        let mut c = vec![0; m * n];
        let am = QMat::U8(&a, &[128]);
        let bm = QMat::I8(&b, &bz);
        qgemm(m, k, n, QOperand::Raw(am), QOperand::Raw(bm), &mut c).unwrap();
        assert_eq!(c, want);
        let pb = QPacked::new(Side::B, k, n, bm).unwrap();
        let pa = QPacked::new(Side::A, m, k, am).unwrap();
        qgemm(
            m,
            k,
            n,
            QOperand::Packed(&pa),
            QOperand::Packed(&pb),
            &mut c,
        )
        .unwrap();
        assert_eq!(c, want);
        assert!(qgemm(m, k, n, QOperand::Packed(&pb), QOperand::Raw(bm), &mut c).is_err());
    }
}
