//! f32 matrix multiply used by MatMul, Gemm, Conv (im2col) and the RNNs.
//! `sgemm` is the one entry point; the blocking/packing strategy lives behind it.

/// C (m×n) = A (m×k) · B (k×n) [+ C if `accumulate`], all row-major and contiguous.
/// Slices must have at least m*k, k*n and m*n elements (checked by callers' shape logic;
/// debug-asserted here).
pub fn sgemm(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32], accumulate: bool) {
    debug_assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    if !accumulate {
        c[..m * n].iter_mut().for_each(|x| *x = 0.0);
    }
    for i in 0..m {
        let crow = &mut c[i * n..(i + 1) * n];
        for p in 0..k {
            let av = a[i * k + p];
            if av == 0.0 {
                continue;
            }
            let brow = &b[p * n..(p + 1) * n];
            for (cv, bv) in crow.iter_mut().zip(brow) {
                *cv += av * bv;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn small() {
        let a = [1., 2., 3., 4., 5., 6.]; // 2x3
        let b = [1., 0., 0., 1., 1., 1.]; // 3x2
        let mut c = [0f32; 4];
        super::sgemm(2, 3, 2, &a, &b, &mut c, false);
        assert_eq!(c, [4., 5., 10., 11.]);
    }
}
