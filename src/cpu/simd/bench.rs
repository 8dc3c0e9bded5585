//! GEMM micro-benchmark shared by `examples/gemm_micro.rs` (native) and the wasm export
//! `gemm_microbench()`: f32 sgemm GFLOP/s and int8 qgemm GOP/s on shapes from the real
//! models, for every kernel family available, against a register-only peak loop of the
//! same instructions. Not a test; nothing here checks results.

use super::{available, isa, peak_f32, peak_i8};
use crate::cpu::gemm::{sgemm_with, Mat, Operand, Packed, Side};
use crate::cpu::qgemm::{qgemm_with, QMat, QOperand, QPacked, Side as QSide};
use std::fmt::Write;

use crate::plan::now_ms;

/// Median seconds per call of `f`, repeated until about `budget_ms` has passed.
fn time(budget_ms: f64, mut f: impl FnMut()) -> f64 {
    f();
    let mut v = Vec::new();
    let start = now_ms();
    while v.len() < 3 || (now_ms() - start < budget_ms && v.len() < 200) {
        let t = now_ms();
        f();
        v.push(now_ms() - t);
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2] / 1e3
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

/// (label, m, k, n, which operand is the constant weight)
const SHAPES: &[(&str, usize, usize, usize, Side)] = &[
    ("conv 3x3 256ch @56x56 (im2col)", 256, 1152, 3136, Side::A),
    ("PP-OCR rec conv 3x3 @48x80", 96, 864, 960, Side::A),
    ("MiniLM MatMul 128x384x384", 128, 384, 384, Side::B),
    ("MiniLM FFN MatMul 1x384x1536", 1, 384, 1536, Side::B),
];

/// Runs the benchmark and returns the printed table. `budget_ms` bounds the time spent
/// per measurement.
pub fn report(budget_ms: f64) -> String {
    let mut out = String::new();
    match self_check() {
        Ok(()) => out.push_str("self-check: every kernel family matches the portable one\n"),
        Err(e) => {
            let _ = writeln!(out, "SELF-CHECK FAILED: {e}");
        }
    }
    let best = isa();
    let _ = writeln!(
        out,
        "kernel families: {:?}, dispatched: {}",
        available(),
        best.name()
    );
    let mut peaks = Vec::new();
    for &k in &available() {
        let iters = 2_000_000;
        let mut sink = 0f32;
        let tf = time(budget_ms / 4.0, || sink += peak_f32(k, iters).1);
        let mut isink = 0i32;
        let ti = time(budget_ms / 4.0, || isink ^= peak_i8(k, iters).1);
        let (pf, pi) = (
            peak_f32(k, iters).0 / tf / 1e9,
            peak_i8(k, iters).0 / ti / 1e9,
        );
        std::hint::black_box((sink, isink));
        let _ = writeln!(
            out,
            "peak {:<18} f32 {pf:7.1} GFLOP/s   int8 {pi:7.1} GOP/s (register-only loop)",
            k.name()
        );
        peaks.push((k, pf, pi));
    }
    let _ = writeln!(
        out,
        "{:<32} {:<18} {:>9} {:>9} {:>7} {:>9} {:>9} {:>7}",
        "shape m x k x n",
        "kernels",
        "f32 GF/s",
        "+prepack",
        "%peak",
        "i8 GOP/s",
        "+prepack",
        "%peak"
    );
    for &(label, m, k, n, wside) in SHAPES {
        let a = values(m * k, 1);
        let b = values(k * n, 2);
        let mut c = vec![0f32; m * n];
        let a8: Vec<u8> = a.iter().map(|v| (v * 255.0 + 128.0) as u8).collect();
        let b8: Vec<i8> = b.iter().map(|v| (v * 250.0) as i8).collect();
        let mut ci = vec![0i32; m * n];
        let (am, bm) = (Mat::row_major(&a, k), Mat::row_major(&b, n));
        let (qa, qb) = (QMat::U8(&a8, &[128]), QMat::I8(&b8, &[0]));
        let Ok(pw) = (match wside {
            Side::A => Packed::new(Side::A, m, k, am),
            Side::B => Packed::new(Side::B, k, n, bm),
        }) else {
            continue;
        };
        let Ok(qw) = (match wside {
            Side::A => QPacked::new(QSide::A, m, k, qa),
            Side::B => QPacked::new(QSide::B, k, n, qb),
        }) else {
            continue;
        };
        let ops = 2.0 * (m * k * n) as f64;
        for &(kf, pf, pi) in &peaks {
            let raw = time(budget_ms, || {
                sgemm_with(
                    kf,
                    m,
                    k,
                    n,
                    1.0,
                    Operand::Mat(am),
                    Operand::Mat(bm),
                    0.0,
                    &mut c,
                    n,
                );
            });
            let (oa, ob) = match wside {
                Side::A => (Operand::Packed(&pw), Operand::Mat(bm)),
                Side::B => (Operand::Mat(am), Operand::Packed(&pw)),
            };
            let packed = time(budget_ms, || {
                sgemm_with(kf, m, k, n, 1.0, oa, ob, 0.0, &mut c, n);
            });
            let qraw = time(budget_ms, || {
                let _ = qgemm_with(kf, m, k, n, QOperand::Raw(qa), QOperand::Raw(qb), &mut ci);
            });
            let (qoa, qob) = match wside {
                Side::A => (QOperand::Packed(&qw), QOperand::Raw(qb)),
                Side::B => (QOperand::Raw(qa), QOperand::Packed(&qw)),
            };
            let qpacked = time(budget_ms, || {
                let _ = qgemm_with(kf, m, k, n, qoa, qob, &mut ci);
            });
            let (f1, f2) = (ops / raw / 1e9, ops / packed / 1e9);
            let (q1, q2) = (ops / qraw / 1e9, ops / qpacked / 1e9);
            let _ = writeln!(
                out,
                "{:<32} {:<18} {f1:9.2} {f2:9.2} {:6.1}% {q1:9.2} {q2:9.2} {:6.1}%",
                format!("{label} {m}x{k}x{n}"),
                kf.name(),
                100.0 * f2 / pf,
                100.0 * q2 / pi,
            );
        }
        std::hint::black_box((&c, &ci));
    }
    out
}

/// Compares every available kernel family with the portable one on odd sizes (the
/// unit tests do this natively; this runs the same comparison inside a wasm build):
/// int8 GEMM and depthwise exactly, f32 GEMM within rounding.
pub fn self_check() -> Result<(), String> {
    use crate::cpu::nn::Window;
    use crate::cpu::qconv::qdepthwise_with;
    for &(m, k, n) in &[
        (1, 1, 1),
        (7, 13, 5),
        (13, 515, 37),
        (1, 300, 33),
        (100, 64, 130),
    ] {
        let a = values(m * k, 3);
        let b = values(k * n, 4);
        let a8: Vec<u8> = a.iter().map(|v| (v * 255.0 + 128.0) as u8).collect();
        let b8: Vec<i8> = b.iter().map(|v| (v * 255.0) as i8).collect();
        let zs: Vec<i32> = (0..n as i32).map(|j| j % 7 - 3).collect();
        let (qa, qb) = (QMat::U8(&a8, &[3]), QMat::I8(&b8, &zs));
        let (am, bm) = (Mat::row_major(&a, k), Mat::row_major(&b, n));
        let mut want = vec![0i32; m * n];
        let mut fwant = vec![0f32; m * n];
        let raw = |x| QOperand::Raw(x);
        qgemm_with(super::Isa::Portable, m, k, n, raw(qa), raw(qb), &mut want)
            .map_err(|e| e.to_string())?;
        let (fa, fb) = (Operand::Mat(am), Operand::Mat(bm));
        sgemm_with(
            super::Isa::Portable,
            m,
            k,
            n,
            1.0,
            fa,
            fb,
            0.0,
            &mut fwant,
            n,
        );
        for &kf in &available() {
            let mut got = vec![0i32; m * n];
            qgemm_with(kf, m, k, n, raw(qa), raw(qb), &mut got).map_err(|e| e.to_string())?;
            if got != want {
                return Err(format!("qgemm {} {m}x{k}x{n}", kf.name()));
            }
            let mut fgot = vec![0f32; m * n];
            sgemm_with(kf, m, k, n, 1.0, fa, fb, 0.0, &mut fgot, n);
            let tol = 1e-5 * (k as f32 + 1.0);
            if fgot
                .iter()
                .zip(&fwant)
                .any(|(x, y)| (x - y).abs() > tol * (1.0 + y.abs()))
            {
                return Err(format!("sgemm {} {m}x{k}x{n}", kf.name()));
            }
        }
    }
    let win = Window {
        strides: Some(vec![2, 1]),
        pads: Some(vec![1, 0, 2, 1]),
        dilations: Some(vec![1, 2]),
        ..Window::default()
    };
    let g = win.resolve(&[11, 37], &[3, 3]).map_err(|e| e.to_string())?;
    let (n, c, m) = (2, 3, 6);
    let x: Vec<u8> = values(n * c * g.in_size(), 5)
        .iter()
        .map(|v| (v * 255.0 + 128.0) as u8)
        .collect();
    let w: Vec<i8> = values(m * g.k_size(), 6)
        .iter()
        .map(|v| (v * 255.0) as i8)
        .collect();
    let (xm, wm) = (QMat::U8(&x, &[120]), QMat::I8(&w, &[1, -2, 3, 0, 5, -6]));
    let mut want = vec![0i32; n * m * g.out_size()];
    qdepthwise_with(super::Isa::Portable, xm, n, c, wm, m, &g, &mut want)
        .map_err(|e| e.to_string())?;
    for &kf in &available() {
        let mut got = vec![0i32; want.len()];
        qdepthwise_with(kf, xm, n, c, wm, m, &g, &mut got).map_err(|e| e.to_string())?;
        if got != want {
            return Err(format!("qdepthwise {}", kf.name()));
        }
    }
    Ok(())
}
