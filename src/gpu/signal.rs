//! Signal ops on the GPU: DFT, STFT, HannWindow / HammingWindow / BlackmanWindow and
//! MelWeightMatrix.
//!
//! DFT and STFT are direct O(n^2) sums, one thread per complex output value. The twiddle
//! factors come from a table made on the host in f64 (as the CPU's direct transform
//! does), indexed by `(j * k) mod n` kept incrementally, so no angle ever grows with the
//! length and the GPU's sin/cos precision does not matter. Windows reduce their angle
//! to [-pi, pi] before calling sin/cos. MelWeightMatrix computes its triangle edges on
//! the host (checked as the CPU checks them) and the GPU fills the matrix.

use super::record::{Recorder, LINEAR};
use super::{In, Kernel, Lowered, NodeFacts, Out};
use crate::cpu::sampling::WindowKind;
use crate::error::{Error, Result};
use crate::graph::attrs::norm_axis;
use crate::graph::ops::sampling::{Dft, MelWeightMatrix, Stft, Window};
use crate::graph::{Fact, InferCx, Value};
use crate::tensor::{DType, Tensor};

/// Twiddle table: entry m is exp(-2 pi i m / n) as (cos, sin), computed in f64.
fn twiddles(n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(2 * n);
    for m in 0..n {
        let a = -2.0 * std::f64::consts::PI * m as f64 / n as f64;
        v.push(a.cos() as f32);
        v.push(a.sin() as f32);
    }
    v
}

const DFT: &str = "
@group(0) @binding(0) var<storage, read> X: array<f32>;
@group(0) @binding(1) var<storage, read> TW: array<f32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
@group(0) @binding(3) var<storage, read> P: array<u32>;
// P: count out_len inner len n comp out_comp irfft inverse norm(f32)
fn at(o: u32, j: u32, i: u32) -> vec2<f32> {
    let base = ((o * P[3] + j) * P[2] + i) * P[5];
    if (P[5] == 2u) { return vec2<f32>(X[base], X[base + 1u]); }
    return vec2<f32>(X[base], 0.0);
}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = linear_id(gid, nwg);
    if (t >= P[0]) { return; }
    let out_len = P[1];
    let inner = P[2];
    let len = P[3];
    let n = P[4];
    let irfft = P[7] != 0u;
    var sgn = 1.0;
    if (P[8] != 0u) { sgn = -1.0; }
    let i = t % inner;
    let k = (t / inner) % out_len;
    let o = t / (inner * out_len);
    var re = 0.0;
    var im = 0.0;
    var m = 0u;
    var stop = min(len, n);
    if (irfft) { stop = n; }
    for (var j = 0u; j < stop; j++) {
        var x = vec2<f32>(0.0, 0.0);
        if (!irfft) {
            x = at(o, j, i);
        } else if (j <= n / 2u) {
            if (j < len) { x = at(o, j, i); }
        } else if (n - j < len) {
            x = at(o, n - j, i);
            x.y = -x.y;
        }
        let wr = TW[2u * m];
        let wi = TW[2u * m + 1u] * sgn;
        re += x.x * wr - x.y * wi;
        im += x.x * wi + x.y * wr;
        m += k;
        if (m >= n) { m -= n; }
    }
    let norm = bitcast<f32>(P[9]);
    let ob = ((o * out_len + k) * inner + i) * P[6];
    Y[ob] = re * norm;
    if (P[6] == 2u) { Y[ob + 1u] = im * norm; }
}
";

#[derive(Debug)]
struct DftKernel {
    axis: Option<i64>,
    inverse: bool,
    onesided: bool,
}

/// A positive length from an optional host scalar (empty tensors count as absent).
fn opt_len(t: Option<&Tensor>, what: &str) -> Result<Option<usize>> {
    match t.filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) => {
            let v = t.scalar_i64()?;
            usize::try_from(v)
                .ok()
                .filter(|&u| u > 0)
                .map(Some)
                .ok_or_else(|| Error::runtime(format!("{what} must be positive, got {v}")))
        }
    }
}

impl Kernel for DftKernel {
    fn host_inputs(&self) -> &[usize] {
        &[1, 2]
    }
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = ins
            .first()
            .ok_or_else(|| Error::runtime("DFT: missing input"))?
            .dev()?;
        let xs = &x.shape;
        let rank = xs.len();
        if rank < 2 {
            return Err(Error::shape(format!(
                "DFT: input rank must be at least 2, got {xs:?}"
            )));
        }
        let n_in = opt_len(ins.get(1).and_then(|t| t.host()), "DFT: dft_length")?;
        let axis = match self.axis {
            Some(a) => a,
            None => match ins.get(2).and_then(|t| t.host()).filter(|t| !t.is_empty()) {
                Some(t) => t.scalar_i64()?,
                None => -2,
            },
        };
        let axis = norm_axis(axis, rank)?;
        if axis >= rank - 1 {
            return Err(Error::shape(format!(
                "DFT: axis {axis} must not be the last (component) axis of {xs:?}"
            )));
        }
        let comp = xs[rank - 1];
        if comp != 1 && comp != 2 {
            return Err(Error::shape(format!(
                "DFT: last dim must be 1 (real) or 2 (complex), got {comp}"
            )));
        }
        let len = xs[axis];
        let irfft = self.inverse && self.onesided;
        let n = match n_in {
            Some(v) => v,
            None if irfft => 2 * len.saturating_sub(1),
            None => len,
        };
        if n == 0 {
            return Err(Error::runtime("DFT: dft_length must be positive"));
        }
        let out_len = if self.onesided && !self.inverse {
            n / 2 + 1
        } else {
            n
        };
        let out_comp = if irfft { 1 } else { 2 };
        let (dt, oshape) = outs
            .first()
            .ok_or_else(|| Error::runtime("DFT: missing output"))?;
        let mut want = xs.clone();
        want[axis] = out_len;
        want[rank - 1] = out_comp;
        if *oshape != want {
            return Err(Error::shape(format!(
                "DFT: output shape {oshape:?} does not match {want:?}"
            )));
        }
        let outer: usize = xs[..axis].iter().product();
        let inner: usize = xs[axis + 1..rank - 1].iter().product();
        let y = r.alloc(*dt, oshape.clone())?;
        let count = outer * out_len * inner;
        if count > 0 {
            let tw = r.upload(&Tensor::from_vec(vec![n, 2], twiddles(n))?)?;
            let norm = if self.inverse { 1.0 / n as f32 } else { 1.0 };
            let words = [
                count,
                out_len,
                inner,
                len,
                n,
                comp,
                out_comp,
                irfft as usize,
                self.inverse as usize,
            ];
            let mut p: Vec<u32> = words.iter().map(|&w| w as u32).collect();
            p.push(norm.to_bits());
            let grid = r.grid(count);
            r.dispatch(
                &format!("{LINEAR}{DFT}"),
                &[x.buffer(), tw.buffer(), y.buffer()],
                &p,
                grid,
            )?;
        }
        Ok(vec![Out::Dev(y)])
    }
}

/// STFT; the `W` binding exists only in the windowed variant.
fn stft_source(window: bool) -> String {
    let (decl, wj, p) = if window {
        (
            "@group(0) @binding(3) var<storage, read> W: array<f32>;",
            "W[j]",
            4,
        )
    } else {
        ("", "1.0", 3)
    };
    format!(
        "{LINEAR}
@group(0) @binding(0) var<storage, read> X: array<f32>;
@group(0) @binding(1) var<storage, read> TW: array<f32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
{decl}
@group(0) @binding({p}) var<storage, read> P: array<u32>;
// P: count frames bins len fl step comp
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{
    let t = linear_id(gid, nwg);
    if (t >= P[0]) {{ return; }}
    let frames = P[1];
    let bins = P[2];
    let fl = P[4];
    let comp = P[6];
    let k = t % bins;
    let f = (t / bins) % frames;
    let b = t / (bins * frames);
    var re = 0.0;
    var im = 0.0;
    var m = 0u;
    for (var j = 0u; j < fl; j++) {{
        let base = (b * P[3] + f * P[5] + j) * comp;
        let w = {wj};
        let xr = X[base] * w;
        var xi = 0.0;
        if (comp == 2u) {{ xi = X[base + 1u] * w; }}
        let wr = TW[2u * m];
        let wi = TW[2u * m + 1u];
        re += xr * wr - xi * wi;
        im += xr * wi + xi * wr;
        m += k;
        if (m >= fl) {{ m -= fl; }}
    }}
    Y[2u * t] = re;
    Y[2u * t + 1u] = im;
}}
"
    )
}

#[derive(Debug)]
struct StftKernel {
    onesided: bool,
}

impl Kernel for StftKernel {
    fn host_inputs(&self) -> &[usize] {
        &[1, 3]
    }
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let x = ins
            .first()
            .ok_or_else(|| Error::runtime("STFT: missing signal"))?
            .dev()?;
        let ss = &x.shape;
        let step = ins
            .get(1)
            .and_then(|t| t.host())
            .ok_or_else(|| Error::runtime("STFT: missing frame_step"))?
            .scalar_i64()?;
        let win = match ins.get(2) {
            Some(In::Dev(w)) if !w.is_empty() => Some(*w),
            _ => None,
        };
        let frame_length = ins
            .get(3)
            .and_then(|t| t.host())
            .filter(|t| !t.is_empty())
            .map(|t| t.scalar_i64())
            .transpose()?;
        let [nb, len, comp, step, fl, frames, bins] = crate::cpu::sampling::stft_geometry(
            ss,
            step,
            win.map(|w| w.shape.as_slice()),
            frame_length,
            self.onesided,
        )?;
        let (dt, oshape) = outs
            .first()
            .ok_or_else(|| Error::runtime("STFT: missing output"))?;
        if *oshape != [nb, frames, bins, 2] {
            return Err(Error::shape(format!(
                "STFT: output shape {oshape:?} does not match {:?}",
                [nb, frames, bins, 2]
            )));
        }
        let y = r.alloc(*dt, oshape.clone())?;
        let count = nb * frames * bins;
        if count > 0 {
            let tw = r.upload(&Tensor::from_vec(vec![fl, 2], twiddles(fl))?)?;
            let p: Vec<u32> = [count, frames, bins, len, fl, step, comp]
                .iter()
                .map(|&w| w as u32)
                .collect();
            let grid = r.grid(count);
            let mut bufs = vec![x.buffer(), tw.buffer(), y.buffer()];
            if let Some(w) = win {
                bufs.push(w.buffer());
            }
            r.dispatch(&stft_source(win.is_some()), &bufs, &p, grid)?;
        }
        Ok(vec![Out::Dev(y)])
    }
}

const WINDOW: &str = "
@group(0) @binding(0) var<storage, read_write> Y: array<f32>;
@group(0) @binding(1) var<storage, read> P: array<u32>;
// P: n kind(0 hann, 1 hamming, 2 blackman) n1(f32)
const PI: f32 = 3.14159265358979;
// cos(2 pi q) with the angle reduced to [-pi, pi].
fn cos_turns(q: f32) -> f32 {
    return cos(2.0 * PI * (q - round(q)));
}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = linear_id(gid, nwg);
    if (t >= P[0]) { return; }
    let n1 = bitcast<f32>(P[2]);
    var v = 1.0;
    if (n1 > 0.0) {
        let q = f32(t) / n1;
        if (P[1] == 0u) {
            // sin(pi q)^2 = (1 - cos(2 pi q)) / 2
            v = 0.5 - 0.5 * cos_turns(q);
        } else if (P[1] == 1u) {
            let a = 25.0 / 46.0;
            v = a - (1.0 - a) * cos_turns(q);
        } else {
            v = 0.42 - 0.5 * cos_turns(q) + 0.08 * cos_turns(2.0 * q);
        }
    }
    Y[t] = v;
}
";

#[derive(Debug)]
struct WindowKernel {
    kind: WindowKind,
    periodic: bool,
}

impl Kernel for WindowKernel {
    fn host_inputs(&self) -> &[usize] {
        &[0]
    }
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let size = ins
            .first()
            .and_then(|t| t.host())
            .ok_or_else(|| Error::runtime("window: missing size"))?
            .scalar_i64()?;
        let n = usize::try_from(size)
            .map_err(|_| Error::runtime(format!("window size {size} must not be negative")))?;
        let (dt, oshape) = outs
            .first()
            .ok_or_else(|| Error::runtime("window: missing output"))?;
        if *oshape != [n] {
            return Err(Error::shape(format!(
                "window: output shape {oshape:?} does not match [{n}]"
            )));
        }
        let y = r.alloc(*dt, oshape.clone())?;
        let n1 = if self.periodic {
            n as f64
        } else {
            n as f64 - 1.0
        };
        let kind = match self.kind {
            WindowKind::Hann => 0u32,
            WindowKind::Hamming => 1,
            WindowKind::Blackman => 2,
        };
        let grid = r.grid(n);
        r.dispatch(
            &format!("{LINEAR}{WINDOW}"),
            &[y.buffer()],
            &[n as u32, kind, (n1 as f32).to_bits()],
            grid,
        )?;
        Ok(vec![Out::Dev(y)])
    }
}

/// The mel+2 frequency bins of MelWeightMatrix's triangles, with the CPU's checks:
/// every bin a triangle writes must be a row of the (dft_length / 2 + 1)-row matrix.
fn mel_bins(
    num_mel_bins: i64,
    dft_length: i64,
    sample_rate: i64,
    lower_hz: f64,
    upper_hz: f64,
) -> Result<(usize, usize, Vec<i32>)> {
    let mel = usize::try_from(num_mel_bins)
        .map_err(|_| Error::runtime("MelWeightMatrix: num_mel_bins must not be negative"))?;
    let dl = usize::try_from(dft_length)
        .ok()
        .filter(|&d| d > 0)
        .ok_or_else(|| Error::runtime("MelWeightMatrix: dft_length must be positive"))?;
    if sample_rate <= 0 {
        return Err(Error::runtime(
            "MelWeightMatrix: sample_rate must be positive",
        ));
    }
    let nspec = dl / 2 + 1;
    let lo = 2595.0 * (1.0 + lower_hz / 700.0).log10();
    let hi = 2595.0 * (1.0 + upper_hz / 700.0).log10();
    let step = (hi - lo) / (mel + 2) as f64;
    let bins: Vec<i64> = (0..mel + 2)
        .map(|i| {
            let m = i as f64 * step + lo;
            let f = 700.0 * (10f64.powf(m / 2595.0) - 1.0);
            (((dl + 1) as f64 * f) / sample_rate as f64).floor() as i64
        })
        .collect();
    let check = |j: i64| -> Result<()> {
        if usize::try_from(j).is_ok_and(|u| u < nspec) {
            Ok(())
        } else {
            Err(Error::runtime(format!(
                "MelWeightMatrix: frequency bin {j} out of range"
            )))
        }
    };
    for i in 0..mel {
        let (l, c, h) = (bins[i], bins[i + 1], bins[i + 2]);
        if c == l {
            check(c)?;
        } else if l < c {
            check(l)?;
            check(c)?;
        }
        if h > c {
            check(c)?;
            check(h - 1)?;
        }
    }
    let out = bins
        .iter()
        .map(|&b| i32::try_from(b).map_err(|_| Error::runtime("MelWeightMatrix: bin too large")))
        .collect::<Result<Vec<i32>>>()?;
    Ok((nspec, mel, out))
}

/// Element (j, i) of the mel matrix from its bins (the CPU writes the rising edge, then
/// the falling edge over it).
const MEL_VALUE: &str = "
fn mel_value(l: i32, c: i32, h: i32, j: i32) -> f32 {
    if (h > c && j >= c && j < h) { return f32(h - j) / f32(h - c); }
    if (c == l) { return select(0.0, 1.0, j == c); }
    if (j >= l && j <= c) { return f32(j - l) / f32(c - l); }
    return 0.0;
}
";

const MEL: &str = "
@group(0) @binding(0) var<storage, read> BINS: array<i32>;
@group(0) @binding(1) var<storage, read_write> Y: array<f32>;
@group(0) @binding(2) var<storage, read> P: array<u32>;
// P: count mel
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = linear_id(gid, nwg);
    if (t >= P[0]) { return; }
    let i = t % P[1];
    let j = i32(t / P[1]);
    Y[t] = mel_value(BINS[i], BINS[i + 1u], BINS[i + 2u], j);
}
";

#[derive(Debug)]
struct MelKernel;

impl Kernel for MelKernel {
    fn host_inputs(&self) -> &[usize] {
        &[0, 1, 2, 3, 4]
    }
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let h = |i: usize| -> Result<&Tensor> {
            ins.get(i)
                .and_then(|t| t.host())
                .ok_or_else(|| Error::runtime(format!("MelWeightMatrix: missing input {i}")))
        };
        let (nspec, mel, bins) = mel_bins(
            h(0)?.scalar_i64()?,
            h(1)?.scalar_i64()?,
            h(2)?.scalar_i64()?,
            h(3)?.scalar_f64()?,
            h(4)?.scalar_f64()?,
        )?;
        let (dt, oshape) = outs
            .first()
            .ok_or_else(|| Error::runtime("MelWeightMatrix: missing output"))?;
        if *oshape != [nspec, mel] {
            return Err(Error::shape(format!(
                "MelWeightMatrix: output shape {oshape:?} does not match [{nspec}, {mel}]"
            )));
        }
        let y = r.alloc(*dt, oshape.clone())?;
        let count = nspec * mel;
        if count > 0 {
            let nb = bins.len();
            let b = r.upload(&Tensor::from_vec(vec![nb], bins)?)?;
            let grid = r.grid(count);
            r.dispatch(
                &format!("{LINEAR}{MEL_VALUE}{MEL}"),
                &[b.buffer(), y.buffer()],
                &[count as u32, mel as u32],
                grid,
            )?;
        }
        Ok(vec![Out::Dev(y)])
    }
}

/// Whether STFT's shape rule gives a concrete output shape from concrete inputs (the
/// frame and bin counts): the GPU path needs it at run time.
fn stft_shape_known(op: &dyn crate::graph::Op, opset: i64) -> bool {
    let scalar = |v: i64| Fact::from_value(&Value::from(Tensor::scalar(v)));
    let facts = [
        Fact::known(DType::F32, &[1, 16, 1]),
        scalar(4),
        Fact::absent(),
        scalar(8),
    ];
    op.infer(&InferCx {
        inputs: &facts,
        opset,
    })
    .ok()
    .and_then(|f| f.first().and_then(|f| f.concrete_shape()))
    .is_some()
}

pub(super) fn lower(f: &NodeFacts, _cx: &super::GpuContext) -> Lowered {
    let any = f.node.op.as_any();
    let name = &f.node.op_type;
    if let Some(d) = any.downcast_ref::<Dft>() {
        if !super::gpu_float(f.in_dtype(0)) {
            return Lowered::Cpu(format!("{name} on {:?} stays on the CPU", f.in_dtype(0)));
        }
        return Lowered::Kernel(Box::new(DftKernel {
            axis: d.axis,
            inverse: d.inverse,
            onesided: d.onesided,
        }));
    }
    if let Some(s) = any.downcast_ref::<Stft>() {
        if !super::gpu_float(f.in_dtype(0)) || (f.has_input(2) && !super::gpu_float(f.in_dtype(2)))
        {
            return Lowered::Cpu(format!("{name} on non-f32 inputs stays on the CPU"));
        }
        if !stft_shape_known(f.node.op.as_ref(), f.node.opset) {
            return Lowered::Cpu(
                "STFT's shape rule leaves the frame and bin counts unknown, which the GPU path needs"
                    .into(),
            );
        }
        return Lowered::Kernel(Box::new(StftKernel {
            onesided: s.onesided,
        }));
    }
    if let Some(w) = any.downcast_ref::<Window>() {
        if !super::gpu_float(Some(w.dtype)) {
            return Lowered::Cpu(format!("{name} with {} output stays on the CPU", w.dtype));
        }
        return Lowered::Kernel(Box::new(WindowKernel {
            kind: w.kind,
            periodic: w.periodic,
        }));
    }
    if let Some(m) = any.downcast_ref::<MelWeightMatrix>() {
        if !super::gpu_float(Some(m.dtype)) {
            return Lowered::Cpu(format!("{name} with {} output stays on the CPU", m.dtype));
        }
        return Lowered::Kernel(Box::new(MelKernel));
    }
    Lowered::NotMine
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The WGSL `mel_value`, in Rust.
    fn mel_value(l: i32, c: i32, h: i32, j: i32) -> f64 {
        if h > c && j >= c && j < h {
            return (h - j) as f64 / (h - c) as f64;
        }
        if c == l {
            return if j == c { 1.0 } else { 0.0 };
        }
        if j >= l && j <= c {
            return (j - l) as f64 / (c - l) as f64;
        }
        0.0
    }

    #[test]
    fn mel_matrix_matches_cpu() {
        for &(mel, dl, sr, lo, hi) in &[
            (8i64, 16i64, 8192i64, 0.0, 4096.0),
            (10, 64, 16000, 20.0, 8000.0),
            (3, 8, 100, 0.0, 50.0),
            (40, 512, 16000, 300.0, 7600.0),
        ] {
            let cpu =
                crate::cpu::sampling::mel_weight_matrix(mel, dl, sr, lo, hi, DType::F64).unwrap();
            let want = cpu.to_f64_vec().unwrap();
            let (nspec, m, bins) = mel_bins(mel, dl, sr, lo, hi).unwrap();
            assert_eq!(cpu.shape(), &[nspec, m]);
            for j in 0..nspec {
                for i in 0..m {
                    let v = mel_value(bins[i], bins[i + 1], bins[i + 2], j as i32);
                    assert_eq!(v, want[j * m + i], "({j}, {i}) of {mel} {dl}");
                }
            }
        }
        // Out-of-range bins fail as on the CPU.
        assert!(
            crate::cpu::sampling::mel_weight_matrix(8, 16, 100, 0.0, 400.0, DType::F32).is_err()
        );
        assert!(mel_bins(8, 16, 100, 0.0, 400.0).is_err());
        assert!(mel_bins(8, 0, 100, 0.0, 40.0).is_err());
    }

    #[test]
    fn twiddle_table() {
        let t = twiddles(4);
        let want = [1.0, 0.0, 0.0, -1.0, -1.0, 0.0, 0.0, 1.0];
        for (a, b) in t.iter().zip(want) {
            assert!((a - b).abs() < 1e-7, "{t:?}");
        }
    }
}
