//! MatMulNBits (com.microsoft, 2/4/8-bit block-quantized weights) on the GPU. B stays
//! packed as the model stores it (its bytes four per u32: eight 4-bit weights a word)
//! and is uploaded once; per (column, block) the scale s and the offset −(s·zp) are
//! formed on the host at load exactly as `cpu::quant::dequantize_nbits` forms them, and
//! each weight is dequantized in the kernel as q·s + (−(s·zp)), then accumulated in f32
//! against A, plus the bias. The CPU multiplies the same weights with its f32 GEMM, so
//! the two agree to float rounding (summation order). Weights, scales or zero points
//! computed at run time, g_idx reorderings, and non-f32 A stay on the CPU.

use super::quant::{bits, cached, dev, host, out0};
use super::record::{Recorder, LINEAR};
use super::{GpuTensor, In, Kernel, Lowered, NodeFacts, Out};
use crate::cpu::quant as k;
use crate::error::{Error, Result};
use crate::graph::ops::quant::MatMulNBits;
use crate::tensor::{DType, Tensor};
use std::sync::Mutex;

#[derive(Debug)]
struct NBitsKernel {
    at: k::NBitsAttrs,
    /// B's bytes, four per word.
    words: Vec<u32>,
    /// Per (column, block): scale and offset bits.
    scale: Vec<u32>,
    offset: Vec<u32>,
    dev: Mutex<Option<[GpuTensor; 3]>>,
}

const SRC: &str = "
@group(0) @binding(0) var<storage, read> A: array<f32>;
@group(0) @binding(1) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read> S: array<f32>;
@group(0) @binding(3) var<storage, read> O: array<f32>;
@group(0) @binding(4) var<storage, read_write> Y: array<f32>;
@group(0) @binding(5) var<storage, read> P: array<u32>;
// P: total N K bits block_size blocks blob has_bias | bias[N]
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= P[0]) { return; }
    let N = P[1];
    let K = P[2];
    let nb = P[3];
    let bs = P[4];
    let blocks = P[5];
    let blob = P[6];
    let col = i % N;
    let row = i / N;
    let mask = (1u << nb) - 1u;
    let abase = row * K;
    var acc = 0.0;
    for (var bl = 0u; bl < blocks; bl++) {
        let s = S[col * blocks + bl];
        let o = O[col * blocks + bl];
        let base = (col * blocks + bl) * blob * 8u;
        let k0 = bl * bs;
        let kn = min(bs, K - k0);
        for (var j = 0u; j < kn; j++) {
            let bit = base + j * nb;
            let q = (W[bit >> 5u] >> (bit & 31u)) & mask;
            acc += A[abase + k0 + j] * (f32(q) * s + o);
        }
    }
    if (P[7] != 0u) {
        acc += bitcast<f32>(P[8u + col]);
    }
    Y[i] = acc;
}
";

impl Kernel for NBitsKernel {
    fn host_inputs(&self) -> &[usize] {
        &[1, 2, 3, 4, 5]
    }
    fn encode(
        &self,
        r: &mut Recorder,
        ins: &[In],
        outs: &[(DType, Vec<usize>)],
    ) -> Result<Vec<Out>> {
        let a = dev(ins, 0, "A")?;
        let (odt, oshape) = out0(outs)?;
        let k::NBitsAttrs {
            k: kk,
            n,
            bits: nb,
            block_size,
        } = self.at;
        if a.dtype != DType::F32 || odt != DType::F32 {
            return Err(Error::unsupported_dtype(
                "MatMulNBits on the GPU needs f32 A",
            ));
        }
        if a.shape.last() != Some(&kk) {
            return Err(Error::shape(format!(
                "MatMulNBits A is {:?}, its last dim must be K = {kk}",
                a.shape
            )));
        }
        let y = r.alloc(odt, oshape)?;
        let rows = a.len() / kk.max(1);
        if y.len() != rows * n {
            return Err(Error::shape("MatMulNBits output size"));
        }
        if y.is_empty() {
            return Ok(vec![Out::Dev(y)]);
        }
        let bufs = {
            let mut c = self
                .dev
                .lock()
                .map_err(|_| Error::runtime("a GPU constant cache was poisoned"))?;
            match c.as_ref() {
                Some(b) => b.clone(),
                None => {
                    let up = |r: &mut Recorder, v: &[u32]| {
                        cached(r, &Mutex::new(None), || Ok(v.to_vec()))
                    };
                    let b = [
                        up(r, &self.words)?,
                        up(r, &self.scale)?,
                        up(r, &self.offset)?,
                    ];
                    *c = Some(b.clone());
                    b
                }
            }
        };
        let blocks = kk.div_ceil(block_size);
        let mut p: Vec<u32> = [
            y.len(),
            n,
            kk,
            nb,
            block_size,
            blocks,
            block_size * nb / 8,
            0,
        ]
        .iter()
        .map(|&v| v as u32)
        .collect();
        if let Some(b) = host(ins, 5) {
            let v = k::scales(b, "bias")?;
            if v.len() != n {
                return Err(Error::shape(format!(
                    "MatMulNBits bias has {} values for N = {n}",
                    v.len()
                )));
            }
            p[7] = 1;
            p.extend(v.iter().map(|&x| bits(x)));
        }
        let src = format!("{LINEAR}{SRC}");
        let grid = r.grid(y.len());
        r.dispatch(
            &src,
            &[
                a.buffer(),
                bufs[0].buffer(),
                bufs[1].buffer(),
                bufs[2].buffer(),
                y.buffer(),
            ],
            &p,
            grid,
        )?;
        Ok(vec![Out::Dev(y)])
    }
}

/// Per (column, block) scale and offset −(s·zp), as `dequantize_nbits` forms them.
fn scale_offset(
    at: &k::NBitsAttrs,
    scales: &Tensor,
    zp: Option<&Tensor>,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let blocks = at.k.div_ceil(at.block_size);
    let sv = k::scales(scales, "scales")?;
    if sv.len() != at.n * blocks {
        return Err(Error::shape("MatMulNBits scales size"));
    }
    let mask = (1u32 << at.bits) - 1;
    let zp_row = (blocks * at.bits).div_ceil(8);
    let zps: Vec<f32> = match zp {
        None => vec![(1u32 << (at.bits - 1)) as f32; at.n * blocks],
        Some(z) if z.dtype() == DType::U8 => {
            let zv = z.as_slice::<u8>()?;
            if zv.len() != at.n * zp_row {
                return Err(Error::shape("MatMulNBits packed zero points size"));
            }
            let mut v = Vec::with_capacity(at.n * blocks);
            for r in 0..at.n {
                for bl in 0..blocks {
                    let bit = bl * at.bits;
                    let byte = u32::from(zv[r * zp_row + bit / 8]);
                    v.push(((byte >> (bit % 8)) & mask) as f32);
                }
            }
            v
        }
        Some(z) => {
            let v = k::scales(z, "zero_points")?;
            if v.len() != at.n * blocks {
                return Err(Error::shape("MatMulNBits zero points size"));
            }
            v
        }
    };
    let off = sv.iter().zip(&zps).map(|(&s, &z)| -(s * z)).collect();
    Ok((sv, off))
}

pub(super) fn lower(f: &NodeFacts, _cx: &super::GpuContext) -> Lowered {
    let Some(op) = f.node.op.as_any().downcast_ref::<MatMulNBits>() else {
        return Lowered::NotMine;
    };
    let at = op.attrs;
    if f.in_dtype(0) != Some(DType::F32) {
        return Lowered::Cpu("MatMulNBits with non-f32 A stays on the CPU".into());
    }
    if f.has_input(4) {
        return Lowered::Cpu("MatMulNBits with g_idx stays on the CPU".into());
    }
    let konst = |i: usize| f.consts.get(i).copied().flatten();
    let (Some(b), Some(s)) = (konst(1), konst(2)) else {
        return Lowered::Cpu("MatMulNBits with computed weights stays on the CPU".into());
    };
    if f.has_input(3) && konst(3).is_none() {
        return Lowered::Cpu("MatMulNBits with computed zero points stays on the CPU".into());
    }
    if f.has_input(5) && konst(5).is_none() {
        return Lowered::Cpu("MatMulNBits with a computed bias stays on the CPU".into());
    }
    let blocks = at.k.div_ceil(at.block_size);
    let blob = at.block_size * at.bits / 8;
    let made = (|| -> Result<NBitsKernel> {
        if b.dtype() != DType::U8 || b.shape() != [at.n, blocks, blob] {
            return Err(Error::shape(format!(
                "B is {} {:?}, expected uint8 [{}, {blocks}, {blob}]",
                b.dtype(),
                b.shape(),
                at.n
            )));
        }
        let bytes = b.as_slice::<u8>()?;
        let words = bytes
            .chunks(4)
            .map(|c| {
                c.iter()
                    .enumerate()
                    .fold(0u32, |w, (j, &x)| w | (u32::from(x) << (8 * j)))
            })
            .collect();
        let (sv, off) = scale_offset(&at, s, konst(3))?;
        Ok(NBitsKernel {
            at,
            words,
            scale: sv.iter().map(|&x| bits(x)).collect(),
            offset: off.iter().map(|&x| bits(x)).collect(),
            dev: Mutex::new(None),
        })
    })();
    match made {
        Ok(kn) => Lowered::Kernel(Box::new(kn)),
        Err(e) => Lowered::Cpu(format!("MatMulNBits: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_as_the_cpu_forms_them() {
        let at = k::NBitsAttrs {
            k: 32,
            n: 2,
            bits: 4,
            block_size: 16,
        };
        let s = Tensor::from_vec(vec![4], vec![0.5f32, 0.25, 2.0, 1.0]).unwrap();
        // zero points packed two per byte: column 0 (3, 9), column 1 (8, 0)
        let z = Tensor::from_vec(vec![2], vec![0x93u8, 0x08]).unwrap();
        let (sv, off) = scale_offset(&at, &s, Some(&z)).unwrap();
        assert_eq!(sv, vec![0.5, 0.25, 2.0, 1.0]);
        assert_eq!(off, vec![-1.5, -2.25, -16.0, -0.0]);
        let (_, off) = scale_offset(&at, &s, None).unwrap();
        assert_eq!(off, vec![-4.0, -2.0, -16.0, -8.0]);
    }
}
