//! Integer matrix multiply for the quantized ops: 8-bit operands with zero points,
//! exact i32 accumulation.
//!
//! C (m×n, i32, row-major) = (A − a_zp) · (B − b_zp), where A's zero points are per row
//! (one or m values) and B's per column (one or n values). Either operand may be a
//! [`QPacked`] made once at load from a constant (weights), so that runs skip the
//! packing. The result is exact: 8-bit values minus zero points fit in i16 and every
//! product sum is accumulated in i32, so all code paths agree bit for bit.

use crate::cpu::simd::f32k::{MR, NR};
use crate::cpu::simd::{self, i16k, Isa};
use crate::error::{Error, Result};

/// A raw 8-bit operand: row-major data and its zero points.
#[derive(Clone, Copy, Debug)]
pub enum QMat<'a> {
    U8(&'a [u8], &'a [i32]),
    I8(&'a [i8], &'a [i32]),
}

impl QMat<'_> {
    pub(crate) fn len(&self) -> usize {
        match self {
            QMat::U8(d, _) => d.len(),
            QMat::I8(d, _) => d.len(),
        }
    }
    pub(crate) fn zps(&self) -> &[i32] {
        match self {
            QMat::U8(_, z) | QMat::I8(_, z) => z,
        }
    }
    /// Element i minus the zero point `zp`.
    #[inline(always)]
    pub(crate) fn centered(&self, i: usize, zp: i32) -> i16 {
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

/// Depth steps per packed block (even; a B panel of KC·NR i16 stays in L1).
const KC: usize = 512;
/// Rows of A per packed block.
const MC: usize = MR * 16;
/// Columns of B per packed block (a multiple of NR).
const NC: usize = 1024;

/// A constant operand with its zero points removed, in the kernel's layout.
#[derive(Clone, Debug)]
pub struct QPacked {
    pub side: Side,
    pub rows: usize,
    pub cols: usize,
    /// Centered values in panels (private layout; see [`pack_block`]).
    data: Vec<i16>,
}

impl QPacked {
    /// Packs a rows×cols operand for `side`. Zero points are per row for A and per
    /// column for B (one value broadcasts).
    pub fn new(side: Side, rows: usize, cols: usize, m: QMat) -> Result<Self> {
        check(side, rows, cols, &m)?;
        let (depth, width, w) = dims(side, rows, cols);
        let len = padded(width, w)
            .checked_mul(depth.div_ceil(2) * 2)
            .ok_or_else(|| Error::shape("qgemm: operand too large"))?;
        let mut data = crate::tensor::alloc_vec::<i16>(len)?;
        for p0 in (0..depth).step_by(KC) {
            let kc = KC.min(depth - p0);
            let off = p0 * padded(width, w);
            let end = off + padded(width, w) * kc.div_ceil(2) * 2;
            pack_block(side, rows, cols, &m, p0, kc, 0, width, &mut data[off..end]);
        }
        Ok(QPacked {
            side,
            rows,
            cols,
            data,
        })
    }

    /// Panels of depth block `p0..p0+kc` over rows (A) / columns (B) `x0..x0+len`;
    /// `p0` is a multiple of KC and `x0` of the panel width.
    fn block(&self, p0: usize, kc: usize, x0: usize, len: usize) -> &[i16] {
        let (_, width, w) = dims(self.side, self.rows, self.cols);
        let kp = kc.div_ceil(2) * 2;
        let off = p0 * padded(width, w) + x0 * kp;
        &self.data[off..off + padded(len, w) * kp]
    }
}

/// (depth, width, panel width) of an operand: A is m×k in MR-row panels, B is k×n in
/// NR-column panels.
fn dims(side: Side, rows: usize, cols: usize) -> (usize, usize, usize) {
    match side {
        Side::A => (cols, rows, MR),
        Side::B => (rows, cols, NR),
    }
}

fn padded(x: usize, w: usize) -> usize {
    x.div_ceil(w) * w
}

fn check(side: Side, rows: usize, cols: usize, m: &QMat) -> Result<()> {
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
    // Centered values must fit i16 (they do for 8-bit data and 8-bit zero points).
    if zps.iter().any(|&z| !(-255..=255).contains(&z)) {
        return Err(Error::shape("qgemm: zero point outside the 8-bit range"));
    }
    Ok(())
}

/// Packs depth `p0..p0+kc` and rows (A) / columns (B) `x0..x0+len` of a raw operand
/// into `out`: panel by panel (width w = MR or NR, zero-padded), and within a panel, for
/// each depth pair q, the w pairs (v[2q], v[2q+1]) of centered values (an odd depth is
/// padded with a zero step).
#[allow(clippy::too_many_arguments)]
fn pack_block(
    side: Side,
    rows: usize,
    cols: usize,
    m: &QMat,
    p0: usize,
    kc: usize,
    x0: usize,
    len: usize,
    out: &mut [i16],
) {
    let (_, _, w) = dims(side, rows, cols);
    let kq = kc.div_ceil(2);
    let zps = m.zps();
    let zp = |x: usize| if zps.len() == 1 { zps[0] } else { zps[x] };
    for (pi, panel) in out.chunks_exact_mut(kq * w * 2).enumerate() {
        let xb = x0 + pi * w;
        let live = w.min((x0 + len).saturating_sub(xb));
        for (q, dst) in panel.chunks_exact_mut(w * 2).enumerate() {
            let p = p0 + 2 * q;
            let two = p + 1 < p0 + kc;
            for (t, d) in dst.chunks_exact_mut(2).enumerate() {
                if t >= live {
                    d[0] = 0;
                    d[1] = 0;
                    continue;
                }
                let x = xb + t;
                let z = zp(x);
                // Element (depth p, index x) of the operand.
                let at = |p: usize| match side {
                    Side::A => x * cols + p,
                    Side::B => p * cols + x,
                };
                d[0] = m.centered(at(p), z);
                d[1] = if two { m.centered(at(p + 1), z) } else { 0 };
            }
        }
    }
}

/// An operand of [`qgemm`].
#[derive(Clone, Copy, Debug)]
pub enum QOperand<'a> {
    Raw(QMat<'a>),
    Packed(&'a QPacked),
}

fn check_operand(op: &QOperand, side: Side, rows: usize, cols: usize) -> Result<()> {
    match op {
        QOperand::Packed(p) => {
            if p.side != side || p.rows != rows || p.cols != cols {
                return Err(Error::shape(format!(
                    "qgemm: packed operand is {:?} {}x{}, expected {side:?} {rows}x{cols}",
                    p.side, p.rows, p.cols
                )));
            }
            Ok(())
        }
        QOperand::Raw(m) => check(side, rows, cols, m),
    }
}

/// C (m×n) = (A − a_zp)(B − b_zp), overwriting C.
pub fn qgemm(m: usize, k: usize, n: usize, a: QOperand, b: QOperand, c: &mut [i32]) -> Result<()> {
    qgemm_with(simd::isa(), m, k, n, a, b, c)
}

/// [`qgemm`] with an explicit kernel family (tests and benchmarks; a family this
/// machine lacks runs the portable kernel). All families give identical results.
pub fn qgemm_with(
    isa: Isa,
    m: usize,
    k: usize,
    n: usize,
    a: QOperand,
    b: QOperand,
    c: &mut [i32],
) -> Result<()> {
    check_operand(&a, Side::A, m, k)?;
    check_operand(&b, Side::B, k, n)?;
    let need = m
        .checked_mul(n)
        .ok_or_else(|| Error::shape("qgemm: output too large"))?;
    if c.len() < need {
        return Err(Error::shape("qgemm: output slice too short"));
    }
    c[..need].fill(0);
    if m == 0 || n == 0 || k == 0 {
        return Ok(());
    }
    let mut bbuf = Vec::new();
    let mut abuf = Vec::new();
    for j0 in (0..n).step_by(NC) {
        let nc = NC.min(n - j0);
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            let kq = kc.div_ceil(2);
            let bblock: &[i16] = match &b {
                QOperand::Packed(pb) => pb.block(p0, kc, j0, nc),
                QOperand::Raw(bm) => {
                    bbuf.clear();
                    bbuf.resize(padded(nc, NR) * kq * 2, 0);
                    pack_block(Side::B, k, n, bm, p0, kc, j0, nc, &mut bbuf);
                    &bbuf
                }
            };
            for i0 in (0..m).step_by(MC) {
                let mc = MC.min(m - i0);
                let ablock: &[i16] = match &a {
                    QOperand::Packed(pa) => pa.block(p0, kc, i0, mc),
                    QOperand::Raw(am) => {
                        abuf.clear();
                        abuf.resize(padded(mc, MR) * kq * 2, 0);
                        pack_block(Side::A, m, k, am, p0, kc, i0, mc, &mut abuf);
                        &abuf
                    }
                };
                for (jr, bp) in bblock.chunks_exact(NR * kq * 2).enumerate() {
                    let jj = j0 + jr * NR;
                    let cols = NR.min(n - jj);
                    for (ir, ap) in ablock.chunks_exact(MR * kq * 2).enumerate() {
                        let ii = i0 + ir * MR;
                        let rows = MR.min(m - ii);
                        let acc = i16k::tile(isa, kq, ap, bp);
                        for (r, accr) in acc.iter().enumerate().take(rows) {
                            let off = (ii + r) * n + jj;
                            for (cv, &v) in c[off..off + cols].iter_mut().zip(accr) {
                                *cv = cv.wrapping_add(v);
                            }
                        }
                    }
                }
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

    /// Deterministic pseudo-random bytes.
    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed.wrapping_mul(6364136223846793005) ^ 0x9e37_79b9_7f4a_7c15;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 56) as u8
            })
            .collect()
    }

    fn naive_any(m: usize, k: usize, n: usize, a: &QMat, b: &QMat) -> Vec<i32> {
        let az = |i: usize| {
            if a.zps().len() == 1 {
                a.zps()[0]
            } else {
                a.zps()[i]
            }
        };
        let bz = |j: usize| {
            if b.zps().len() == 1 {
                b.zps()[0]
            } else {
                b.zps()[j]
            }
        };
        let mut c = vec![0i32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).fold(0i32, |s, p| {
                    s.wrapping_add(
                        a.centered(i * k + p, az(i)) as i32 * b.centered(p * n + j, bz(j)) as i32,
                    )
                });
            }
        }
        c
    }

    #[test]
    fn every_path_matches_naive_on_odd_sizes() {
        let sizes = [
            (1, 1, 1),
            (1, 384, 1536),
            (3, 1, 5),
            (7, 3, 1),
            (MR + 1, 2 * KC + 3, NR + 1),
            (2 * MR - 1, KC - 1, 3 * NR - 5),
            (MC + 5, 70, NC + 13),
            (17, 1153, 9),
            (64, 64, 64),
        ];
        for (t, &(m, k, n)) in sizes.iter().enumerate() {
            let a8 = bytes(m * k, t as u64);
            let b8 = bytes(k * n, 100 + t as u64);
            let ai: Vec<i8> = a8.iter().map(|&v| v as i8).collect();
            let bi: Vec<i8> = b8.iter().map(|&v| v as i8).collect();
            let azs: Vec<i32> = (0..m as i32).map(|i| (i * 37) % 256).collect();
            let bzs: Vec<i32> = (0..n as i32).map(|j| (j * 53) % 256 - 128).collect();
            let a_ops = [
                QMat::U8(&a8, &[0]),
                QMat::U8(&a8, &[255]),
                QMat::U8(&a8, &azs),
                QMat::I8(&ai, &[-128]),
            ];
            let bz_u8: Vec<i32> = bzs.iter().map(|z| z + 128).collect();
            let b_ops = [
                QMat::I8(&bi, &[0]),
                QMat::I8(&bi, &bzs),
                QMat::U8(&b8, &bz_u8),
                QMat::U8(&b8, &[255]),
            ];
            for (x, am) in a_ops.iter().enumerate() {
                let bm = &b_ops[(x + t) % b_ops.len()];
                let want = naive_any(m, k, n, am, bm);
                let pa = QPacked::new(Side::A, m, k, *am).unwrap();
                let pb = QPacked::new(Side::B, k, n, *bm).unwrap();
                for isa in simd::available() {
                    for (ua, ub) in [(false, false), (true, true), (false, true), (true, false)] {
                        let oa = if ua {
                            QOperand::Packed(&pa)
                        } else {
                            QOperand::Raw(*am)
                        };
                        let ob = if ub {
                            QOperand::Packed(&pb)
                        } else {
                            QOperand::Raw(*bm)
                        };
                        let mut c = vec![7i32; m * n];
                        qgemm_with(isa, m, k, n, oa, ob, &mut c).unwrap();
                        assert_eq!(c, want, "{isa:?} {m}x{k}x{n} a{x} packed {ua}/{ub}");
                    }
                }
            }
        }
    }

    #[test]
    fn extreme_values_do_not_saturate() {
        // Every product is 255·255 (or −255·255): the largest a pair dot can see.
        let (m, k, n) = (MR + 2, 301, NR + 3);
        for (av, bv, az, bz, sign) in [
            (255u8, 0u8, 0, 255, -1i32),
            (0, 255, 255, 0, -1),
            (0, 0, 255, 255, 1),
            (255, 255, 0, 0, 1),
        ] {
            let a = vec![av; m * k];
            let b = vec![bv; k * n];
            let (am, bm) = (QMat::U8(&a, &[az]), QMat::U8(&b, &[bz]));
            for isa in simd::available() {
                let mut c = vec![0; m * n];
                qgemm_with(isa, m, k, n, QOperand::Raw(am), QOperand::Raw(bm), &mut c).unwrap();
                let want = sign * 255 * 255 * k as i32;
                assert!(c.iter().all(|&v| v == want), "{isa:?}");
            }
        }
    }

    #[test]
    fn bad_operands_are_errors() {
        let a = [1u8; 6];
        let mut c = [0; 4];
        let am = QMat::U8(&a, &[0]);
        assert!(qgemm(
            2,
            3,
            2,
            QOperand::Raw(am),
            QOperand::Raw(QMat::U8(&a[..5], &[0])),
            &mut c
        )
        .is_err());
        assert!(qgemm(
            2,
            3,
            2,
            QOperand::Raw(QMat::U8(&a, &[0, 1, 2])),
            QOperand::Raw(am),
            &mut c
        )
        .is_err());
        assert!(qgemm(2, 3, 2, QOperand::Raw(am), QOperand::Raw(am), &mut c[..3]).is_err());
    }
}
