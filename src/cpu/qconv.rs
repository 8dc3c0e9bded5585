//! Direct int8 depthwise convolution: exact i32 accumulators for the quantized conv ops
//! (ConvInteger, QLinearConv, fused QDQ Conv) when every group holds one input channel.
//!
//! Each input plane is centered (value − zero point, so padding is 0, as ORT pads with
//! the zero point), widened to i16 and laid out with padding and, for stride s, each
//! padded row split into its s column phases; then every kernel tap reads a contiguous
//! run and the inner loop is a multiply-add over i32 lanes that LLVM vectorizes (with
//! AVX2 on x86-64 when the CPU has it, with simd128 on wasm when the module is built
//! with it).

use crate::cpu::nn::Geom;
use crate::cpu::qgemm::QMat;
use crate::cpu::simd::{self, Isa};
use crate::error::{Error, Result};

/// Depthwise int8 convolution, NCHW (or NCW/NCDHW: `g` covers up to 3 spatial dims with
/// leading unit dims, as [`crate::cpu::nn::Window::resolve`] returns it).
///
/// - `x`: input [n, c, *g.input] with one (per-tensor) zero point;
/// - `w`: weights [m, 1, *g.kernel] with one zero point or one per output channel; `m`
///   must be a multiple of `c` (group = c; output channel `o` reads input channel
///   `o / (m / c)`);
/// - `y`: output [n, m, *g.output], overwritten with Σ (x − x_zp)(w − w_zp) over the
///   taps inside the input (padding contributes 0). Exact: wrapping i32 like every
///   other integer path.
pub fn qdepthwise(
    x: QMat,
    n: usize,
    c: usize,
    w: QMat,
    m: usize,
    g: &Geom,
    y: &mut [i32],
) -> Result<()> {
    qdepthwise_with(simd::isa(), x, n, c, w, m, g, y)
}

/// [`qdepthwise`] with an explicit kernel family (tests; all give the same bits).
#[allow(clippy::too_many_arguments)]
pub fn qdepthwise_with(
    isa: Isa,
    x: QMat,
    n: usize,
    c: usize,
    w: QMat,
    m: usize,
    g: &Geom,
    y: &mut [i32],
) -> Result<()> {
    let isa = simd::f32k::usable(isa);
    if c == 0 || !m.is_multiple_of(c) {
        return Err(Error::shape(format!(
            "qdepthwise: {m} output channels for {c} input channels"
        )));
    }
    let (isz, osz, ksz) = (g.in_size(), g.out_size(), g.k_size());
    let mul = |a: usize, b: usize| {
        a.checked_mul(b)
            .ok_or_else(|| Error::shape("qdepthwise: sizes overflow"))
    };
    let (xlen, wlen, ylen) = (mul(mul(n, c)?, isz)?, mul(m, ksz)?, mul(mul(n, m)?, osz)?);
    if x.len() < xlen || w.len() < wlen || y.len() < ylen {
        return Err(Error::shape(format!(
            "qdepthwise: data shorter than x [{n}, {c}, {:?}], w [{m}, 1, {:?}], y [{n}, {m}, {:?}]",
            g.input, g.kernel, g.output
        )));
    }
    if x.zps().len() != 1 {
        return Err(Error::shape("qdepthwise: input needs one zero point"));
    }
    let wz = w.zps();
    if wz.len() != 1 && wz.len() != m {
        return Err(Error::shape(format!(
            "qdepthwise: {} weight zero points for {m} channels",
            wz.len()
        )));
    }
    if x.zps().iter().chain(wz).any(|z| !(-255..=255).contains(z)) {
        return Err(Error::shape(
            "qdepthwise: zero point outside the 8-bit range",
        ));
    }
    // Every output tap must land inside the padded input (Window::resolve guarantees
    // it; checked here because indexing below relies on it).
    for d in 0..3 {
        let span =
            (g.output[d].max(1) - 1) * g.stride[d] + (g.kernel[d].max(1) - 1) * g.dilation[d];
        if g.stride[d] == 0 || span >= g.input[d] + g.pad_begin[d] + g.pad_end[d] {
            if g.output[d] == 0 {
                y[..ylen].fill(0);
                return Ok(());
            }
            return Err(Error::shape("qdepthwise: geometry does not fit the input"));
        }
    }
    let lay = Layout::new(g);
    if f32_exact(ksz) {
        // Centred 8-bit values times centred 8-bit weights, summed over at most 64 taps,
        // stay below 2^22: f32 holds every partial sum exactly, and a float multiply-add
        // is cheaper than a widening i32 multiply on every SIMD target.
        channels::<f32>(
            isa,
            &lay,
            &x,
            n,
            c,
            &w,
            m,
            g,
            y,
            f32::from,
            exact_f32_to_i32,
        )
    } else {
        channels::<i16>(isa, &lay, &x, n, c, &w, m, g, y, i32::from, |v| v)
    }
}

/// The loop over planes shared by both accumulators: fills each input plane, centres each
/// output channel's weights (`weight`), runs the plane and stores its row (`store`).
#[allow(clippy::too_many_arguments)]
fn channels<T: Tap + crate::tensor::Elem + From<i16>>(
    isa: Isa,
    lay: &Layout,
    x: &QMat,
    n: usize,
    c: usize,
    w: &QMat,
    m: usize,
    g: &Geom,
    y: &mut [i32],
    weight: impl Fn(i16) -> T::Acc,
    store: impl Fn(T::Acc) -> i32,
) -> Result<()> {
    let (isz, osz, ksz) = (g.in_size(), g.out_size(), g.k_size());
    let (mult, xz, wz) = (m / c, x.zps()[0], w.zps());
    let mut plane = crate::tensor::alloc_vec::<T>(lay.len)?;
    let mut acc = vec![T::Acc::default(); osz];
    let mut wc = vec![T::Acc::default(); ksz];
    for b in 0..n {
        for ci in 0..c {
            lay.fill(x, (b * c + ci) * isz, xz, g, &mut plane);
            for mo in 0..mult {
                let o = ci * mult + mo;
                let z = if wz.len() == 1 { wz[0] } else { wz[o] };
                for (t, v) in wc.iter_mut().enumerate() {
                    *v = weight(w.centered(o * ksz + t, z));
                }
                run_plane(isa, lay, &plane, &wc, g, &mut acc);
                let yp = &mut y[(b * m + o) * osz..(b * m + o + 1) * osz];
                for (d, &v) in yp.iter_mut().zip(&acc) {
                    *d = store(v);
                }
            }
        }
    }
    Ok(())
}

/// The padded, phase-split input plane: element (zd, zh, zw) of the padded input lives
/// at `(zd·hp + zh)·row + (zw % s)·ph + zw / s`.
struct Layout {
    hp: usize,
    s: usize,
    ph: usize,
    row: usize,
    len: usize,
}

impl Layout {
    fn new(g: &Geom) -> Layout {
        let dp = g.input[0] + g.pad_begin[0] + g.pad_end[0];
        let hp = g.input[1] + g.pad_begin[1] + g.pad_end[1];
        let wp = g.input[2] + g.pad_begin[2] + g.pad_end[2];
        let s = g.stride[2];
        let ph = wp.div_ceil(s);
        Layout {
            hp,
            s,
            ph,
            row: s * ph,
            len: dp * hp * s * ph,
        }
    }

    /// Centers one input plane (starting at `x[off]`) into `out`, zeros elsewhere.
    fn fill<P: From<i16> + Default + Copy>(
        &self,
        x: &QMat,
        off: usize,
        zp: i32,
        g: &Geom,
        out: &mut [P],
    ) {
        match *x {
            QMat::U8(d, _) => self.fill_as(d, off, zp, g, out),
            QMat::I8(d, _) => self.fill_as(d, off, zp, g, out),
        }
    }

    fn fill_as<T: Copy + Into<i32>, P: From<i16> + Default + Copy>(
        &self,
        x: &[T],
        off: usize,
        zp: i32,
        g: &Geom,
        out: &mut [P],
    ) {
        out.fill(P::default());
        let [id, ih, iw] = g.input;
        let pw = g.pad_begin[2];
        for d in 0..id {
            for h in 0..ih {
                let r = ((d + g.pad_begin[0]) * self.hp + h + g.pad_begin[1]) * self.row;
                let src = &x[off + (d * ih + h) * iw..off + (d * ih + h + 1) * iw];
                if self.s == 1 {
                    // Unit stride: the row is contiguous (the common case, vectorized).
                    for (o, &v) in out[r + pw..r + pw + iw].iter_mut().zip(src) {
                        *o = P::from((v.into() - zp) as i16);
                    }
                } else {
                    for (wi, &v) in src.iter().enumerate() {
                        let zw = wi + pw;
                        out[r + (zw % self.s) * self.ph + zw / self.s] =
                            P::from((v.into() - zp) as i16);
                    }
                }
            }
        }
    }
}

/// Whether a depthwise kernel of `ksz` taps can accumulate in f32 exactly: every product
/// of centred 8-bit values is at most 255·255, and the sums must stay below 2^22 (where
/// [`exact_f32_to_i32`] is exact too).
fn f32_exact(ksz: usize) -> bool {
    ksz.saturating_mul(255 * 255) < 1 << 22
}

/// An integer-valued f32 below 2^22 in magnitude to i32, in integer ops only (so loops
/// over it vectorize; `as` saturates and stays scalar).
#[inline(always)]
fn exact_f32_to_i32(v: f32) -> i32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    (v + MAGIC).to_bits() as i32 - 0x4B40_0000
}

/// A plane element and its accumulator: i16 into wrapping i32, or f32 into f32 (exact
/// under [`f32_exact`]).
trait Tap: Copy {
    type Acc: Copy + Default + PartialEq;
    fn mac(acc: Self::Acc, w: Self::Acc, x: Self) -> Self::Acc;
}

impl Tap for i16 {
    type Acc = i32;
    #[inline(always)]
    fn mac(acc: i32, w: i32, x: i16) -> i32 {
        acc.wrapping_add(w * i32::from(x))
    }
}

impl Tap for f32 {
    type Acc = f32;
    #[inline(always)]
    fn mac(acc: f32, w: f32, x: f32) -> f32 {
        acc + w * x
    }
}

#[inline(always)]
fn plane_body<T: Tap>(lay: &Layout, plane: &[T], w: &[T::Acc], g: &Geom, y: &mut [T::Acc]) {
    let [od, oh, ow] = g.output;
    let [kd, kh, kw] = g.kernel;
    for a in 0..od {
        for b in 0..oh {
            let yr = &mut y[(a * oh + b) * ow..(a * oh + b + 1) * ow];
            yr.fill(T::Acc::default());
            for p in 0..kd {
                let zd = a * g.stride[0] + p * g.dilation[0];
                for q in 0..kh {
                    let zh = b * g.stride[1] + q * g.dilation[1];
                    let base = (zd * lay.hp + zh) * lay.row;
                    for e in 0..kw {
                        let wv = w[(p * kh + q) * kw + e];
                        if wv == T::Acc::default() {
                            continue;
                        }
                        let off = e * g.dilation[2];
                        let st = base + (off % lay.s) * lay.ph + off / lay.s;
                        for (yv, &xv) in yr.iter_mut().zip(&plane[st..st + ow]) {
                            *yv = T::mac(*yv, wv, xv);
                        }
                    }
                }
            }
        }
    }
}

/// One plane on the best loop build for `isa`.
fn run_plane<T: Tap>(
    isa: Isa,
    lay: &Layout,
    plane: &[T],
    w: &[T::Acc],
    g: &Geom,
    y: &mut [T::Acc],
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: callers pass an `isa` from `usable`, so Avx2 means AVX2 was detected.
        Isa::Avx2 => unsafe { plane_avx2(lay, plane, w, g, y) },
        _ => plane_body(lay, plane, w, g, y),
    }
}

/// The same loops compiled for AVX2 (8 lanes instead of SSE2's 4).
///
/// # Safety
/// AVX2 must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn plane_avx2<T: Tap>(lay: &Layout, plane: &[T], w: &[T::Acc], g: &Geom, y: &mut [T::Acc]) {
    plane_body(lay, plane, w, g, y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::nn::Window;

    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 24) as u8
            })
            .collect()
    }

    /// The definition, tap by tap.
    fn naive(x: &QMat, n: usize, c: usize, w: &QMat, m: usize, g: &Geom) -> Vec<i32> {
        let mult = m / c;
        let [id, ih, iw] = g.input;
        let [kd, kh, kw] = g.kernel;
        let [od, oh, ow] = g.output;
        let mut y = vec![0i32; n * m * g.out_size()];
        for b in 0..n {
            for o in 0..m {
                let ci = o / mult;
                let wz = if w.zps().len() == 1 {
                    w.zps()[0]
                } else {
                    w.zps()[o]
                };
                for (a, bb, e) in (0..od)
                    .flat_map(|a| (0..oh).flat_map(move |bb| (0..ow).map(move |e| (a, bb, e))))
                {
                    let mut s = 0i32;
                    for p in 0..kd {
                        for q in 0..kh {
                            for r in 0..kw {
                                let zd = (a * g.stride[0] + p * g.dilation[0]) as isize
                                    - g.pad_begin[0] as isize;
                                let zh = (bb * g.stride[1] + q * g.dilation[1]) as isize
                                    - g.pad_begin[1] as isize;
                                let zw = (e * g.stride[2] + r * g.dilation[2]) as isize
                                    - g.pad_begin[2] as isize;
                                if zd < 0
                                    || zh < 0
                                    || zw < 0
                                    || zd >= id as isize
                                    || zh >= ih as isize
                                    || zw >= iw as isize
                                {
                                    continue;
                                }
                                let xi = ((b * c + ci) * id + zd as usize) * ih * iw
                                    + zh as usize * iw
                                    + zw as usize;
                                let wi = o * kd * kh * kw + (p * kh + q) * kw + r;
                                s = s.wrapping_add(
                                    x.centered(xi, x.zps()[0]) as i32 * w.centered(wi, wz) as i32,
                                );
                            }
                        }
                    }
                    y[((b * m + o) * od + a) * oh * ow + bb * ow + e] = s;
                }
            }
        }
        y
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn matches_naive() {
        // (input spatial, kernel, strides, pads [begin.., end..], dilations, n, c, mult)
        let cases: &[(
            &[usize],
            &[usize],
            &[usize],
            &[usize],
            &[usize],
            usize,
            usize,
            usize,
        )] = &[
            (&[7, 9], &[3, 3], &[1, 1], &[1, 1, 1, 1], &[1, 1], 2, 3, 1),
            (&[8, 11], &[3, 3], &[2, 2], &[1, 1, 1, 1], &[1, 1], 1, 5, 1),
            (&[10, 10], &[5, 5], &[2, 1], &[2, 1, 2, 3], &[1, 1], 1, 2, 2),
            (&[9, 13], &[3, 3], &[1, 3], &[0, 0, 0, 0], &[2, 2], 1, 4, 1),
            (&[1, 1], &[1, 1], &[1, 1], &[0, 0, 0, 0], &[1, 1], 3, 1, 3),
            (&[17], &[4], &[3], &[2, 1], &[1], 2, 3, 1),
            (
                &[4, 5, 6],
                &[2, 3, 3],
                &[1, 2, 1],
                &[1, 0, 1, 0, 1, 1],
                &[1, 1, 2],
                1,
                2,
                1,
            ),
            (&[6, 40], &[3, 3], &[1, 1], &[1, 1, 1, 1], &[1, 1], 1, 2, 1),
            // 81 taps: beyond the exact-f32 bound, so the i16/i32 loops run.
            (&[12, 14], &[9, 9], &[1, 1], &[4, 4, 4, 4], &[1, 1], 1, 2, 1),
            // 64 taps: the largest f32 kernel, with extreme values.
            (&[10, 10], &[8, 8], &[1, 1], &[3, 3, 4, 4], &[1, 1], 1, 2, 1),
        ];
        for (t, &(sp, k, s, p, dl, n, c, mult)) in cases.iter().enumerate() {
            let win = Window {
                kernel_shape: Some(k.to_vec()),
                strides: Some(s.to_vec()),
                pads: Some(p.to_vec()),
                dilations: Some(dl.to_vec()),
                ..Window::default()
            };
            let g = win.resolve(sp, k).unwrap();
            let m = c * mult;
            let xb = bytes(n * c * g.in_size(), t as u64 + 1);
            let wb = bytes(m * g.k_size(), t as u64 + 50);
            let xi: Vec<i8> = xb.iter().map(|&v| v as i8).collect();
            let wi: Vec<i8> = wb.iter().map(|&v| v as i8).collect();
            let wzs: Vec<i32> = (0..m as i32).map(|o| o * 29 % 255 - 127).collect();
            let xs = [
                QMat::U8(&xb, &[0]),
                QMat::U8(&xb, &[131]),
                QMat::I8(&xi, &[-128]),
            ];
            let ws = [
                QMat::I8(&wi, &wzs),
                QMat::U8(&wb, &[255]),
                QMat::I8(&wi, &[0]),
            ];
            for (xm, wm) in xs.iter().zip(&ws) {
                let want = naive(xm, n, c, wm, m, &g);
                for isa in simd::available() {
                    let mut y = vec![9i32; want.len()];
                    qdepthwise_with(isa, *xm, n, c, *wm, m, &g, &mut y).unwrap();
                    assert_eq!(y, want, "case {t} {isa:?}");
                }
            }
        }
    }

    #[test]
    fn largest_f32_sums_stay_exact() {
        // 64 taps of (0 − 255)·(−128 − 127): the largest sum the f32 path accepts.
        let g = Window::default().resolve(&[8, 8], &[8, 8]).unwrap();
        assert!(f32_exact(g.k_size()) && !f32_exact(g.k_size() + 1));
        let x = [0u8; 64];
        let w = [-128i8; 64];
        for isa in simd::available() {
            let mut y = [0i32; 1];
            qdepthwise_with(
                isa,
                QMat::U8(&x, &[255]),
                1,
                1,
                QMat::I8(&w, &[127]),
                1,
                &g,
                &mut y,
            )
            .unwrap();
            assert_eq!(y[0], 64 * 255 * 255, "{isa:?}");
        }
    }

    #[test]
    fn bad_arguments_are_errors() {
        let g = Window::default().resolve(&[3, 3], &[3, 3]).unwrap();
        let x = [0u8; 18];
        let w = [0i8; 18];
        let mut y = [0i32; 2];
        let (xm, wm) = (QMat::U8(&x, &[0]), QMat::I8(&w, &[0]));
        assert!(qdepthwise(xm, 1, 2, wm, 2, &g, &mut y).is_ok());
        assert!(qdepthwise(xm, 1, 2, wm, 3, &g, &mut y).is_err());
        assert!(qdepthwise(xm, 1, 2, wm, 2, &g, &mut y[..1]).is_err());
        assert!(qdepthwise(xm, 1, 2, QMat::I8(&w, &[0, 0, 0]), 2, &g, &mut y).is_err());
        assert!(qdepthwise(QMat::U8(&x[..17], &[0]), 1, 2, wm, 2, &g, &mut y).is_err());
    }
}
