//! The tiled 8-bit GEMM shared by the integer matmuls (`qgemm.rs`) and convolutions
//! (`qconv.rs`, as an implicit GEMM): Y[z][row][col] = epilogue(Σₖ (a − a_zp)(b − b_zp[col])).
//!
//! A workgroup of 256 threads computes a BM×BN block of outputs, each thread a TM×TN
//! block in registers. Both operands sit in workgroup memory packed four 8-bit values per
//! u32, in "i8 form": uint8 values are moved to int8 by subtracting 128 (a xor of the top
//! bit), so one signed packed dot product serves every mix of signednesses. With
//! a' = a − oa, b' = b − ob (oa, ob: 128 for uint8, 0 for int8), az' = a_zp − oa and
//! bz' = b_zp − ob:
//!
//!   Σₖ (a − a_zp)(b − b_zp) = Σ a'b' − az'·Σ b' − bz'·Σ a' + K·az'·bz'
//!
//! exactly (i32 arithmetic wraps, and the identity holds modulo 2³², so the result is
//! exact whenever the true accumulator fits, as the CPU's does). Σ b' per column is
//! precomputed at load for constant B (packed once, uploaded once); Σ a' per row is
//! accumulated in the kernel only when some bz' is non-zero. Positions past K hold 0 in
//! both operands; a convolution tap in the padding holds az' (so a − a_zp = 0 there, as
//! the CPU's padding with the zero point).
//!
//! The products use WGSL `dot4I8Packed` (language extension
//! `packed_4x8_integer_dot_product`) where the context offers it, and otherwise unpack
//! the words into `vec4<i32>` and use `dot`: the same integers either way.

use super::record::Recorder;
use super::{GpuContext, GpuTensor};
use crate::error::{Error, Result};
use crate::tensor::DType;
use std::sync::Mutex;

/// k values per word, words per K step of a tile.
const KW: usize = 8;

/// The i8-form byte of an 8-bit value.
fn i8_form(v: i32, signed: bool) -> u32 {
    (if signed { v } else { v - 128 }) as u8 as u32
}

/// Constant B (weights) as `rows` rows of `k` values, in i8 form, four per word, each row
/// padded with zeros to whole words; with each row's sum of i8-form values.
#[derive(Debug)]
pub(super) struct PackedQ {
    pub words: Vec<u32>,
    pub sums: Vec<i32>,
    pub rows: usize,
    pub k: usize,
    /// The original dtype was int8.
    pub signed: bool,
    dev: Mutex<Option<GpuTensor>>,
}

impl PackedQ {
    /// Packs `vals` (row-major `rows × k`, the 8-bit values as i32).
    pub(super) fn new(vals: &[i32], rows: usize, k: usize, signed: bool) -> Result<PackedQ> {
        if vals.len() != rows * k {
            return Err(Error::shape(format!(
                "{} weights for {rows} rows of {k}",
                vals.len()
            )));
        }
        let kw = k.div_ceil(4);
        let mut words = vec![0u32; rows * kw];
        let mut sums = vec![0i32; rows];
        for r in 0..rows {
            for j in 0..k {
                let b = i8_form(vals[r * k + j], signed);
                words[r * kw + j / 4] |= b << (8 * (j % 4));
                sums[r] += b as u8 as i8 as i32;
            }
        }
        Ok(PackedQ {
            words,
            sums,
            rows,
            k,
            signed,
            dev: Mutex::new(None),
        })
    }
    pub(super) fn upload(&self, r: &mut Recorder) -> Result<GpuTensor> {
        super::quant::cached(r, &self.dev, || Ok(self.words.clone()))
    }
}

/// Whether kernels lowered now use the packed dot product.
pub(super) fn use_dot4(cx: &GpuContext) -> bool {
    cx.packed_dot()
}

/// How A's elements are addressed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum AMode {
    /// A[aoff(z) + row·sam + k·sak].
    Strided,
    /// An implicit im2col of a convolution input (rows: output positions, k: taps of
    /// one group's channels).
    Conv,
}

/// What the accumulator becomes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Epi {
    /// The i32 accumulator (MatMulInteger, ConvInteger).
    Int,
    /// Requantized to 8 bits: clamp(round(acc · mult) + yz, lo, hi).
    Requant,
    /// acc · mult (+ float bias), f32.
    Float,
}

/// Where B comes from.
pub(super) enum BSrc<'a> {
    Packed(&'a PackedQ),
    /// One value per word, B[boff(z) + k·sbk + col·sbn].
    Raw {
        t: &'a GpuTensor,
        sbk: usize,
        sbn: usize,
    },
}

/// Convolution geometry for [`AMode::Conv`] (3-D, missing dims are 1).
pub(super) struct ConvGeo {
    pub input: [usize; 3],
    pub output: [usize; 3],
    pub kernel: [usize; 3],
    pub stride: [usize; 3],
    pub dilation: [usize; 3],
    pub pad: [usize; 3],
    /// Input strides: channel, spatial element.
    pub sxc: usize,
    pub sxsp: usize,
}

/// One tiled GEMM dispatch.
pub(super) struct Gemm<'a> {
    pub a: &'a GpuTensor,
    pub a_signed: bool,
    /// A's zero point on the device (absent: 0).
    pub az: Option<&'a GpuTensor>,
    pub amode: AMode,
    pub sam: usize,
    pub sak: usize,
    pub conv: Option<ConvGeo>,
    pub b: BSrc<'a>,
    pub b_signed: bool,
    /// Rows per z, columns per group, K.
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// Groups (z = batch · groups + group); column `col` of group g is channel g·n + col.
    pub groups: usize,
    /// A and B element offsets per z.
    pub ao: Vec<usize>,
    pub bo: Vec<usize>,
    /// Per channel (groups · n): B zero point (original values), multiplier, integer bias
    /// (added to the accumulator), float bias.
    pub bz: Vec<i32>,
    pub mult: Vec<f32>,
    pub ibias: Vec<i32>,
    pub fbias: Option<Vec<f32>>,
    pub epi: Epi,
    pub lo: i32,
    pub hi: i32,
    pub yz: i32,
    /// QGemm's C (int32), with its row and column strides.
    pub c: Option<(&'a GpuTensor, usize, usize)>,
    pub y: &'a GpuTensor,
    /// Output strides: per batch (z / groups), per row, per channel.
    pub ysb: usize,
    pub ysr: usize,
    pub ysc: usize,
    pub dot4: bool,
    /// A's scale on the device (DynamicQuantizeMatMul): the multiplier is
    /// a_scale · mult[col], formed in that order.
    pub a_scale: Option<&'a GpuTensor>,
}

const HEAD: usize = 48;

/// Tile shape: threads along columns and rows, outputs per thread along each.
#[derive(Clone, Copy)]
struct Tile {
    wx: usize,
    wy: usize,
    tn: usize,
    tm: usize,
}

impl Tile {
    fn pick(m: usize, n: usize) -> Tile {
        if m <= 16 && n > 64 {
            Tile {
                wx: 64,
                wy: 4,
                tn: 4,
                tm: 4,
            }
        } else if n <= 16 {
            Tile {
                wx: 4,
                wy: 64,
                tn: 4,
                tm: 2,
            }
        } else if n <= 32 {
            Tile {
                wx: 8,
                wy: 32,
                tn: 4,
                tm: 4,
            }
        } else {
            Tile {
                wx: 16,
                wy: 16,
                tn: 4,
                tm: 4,
            }
        }
    }
    fn bm(self) -> usize {
        self.wy * self.tm
    }
    fn bn(self) -> usize {
        self.wx * self.tn
    }
}

struct Variant {
    tile: Tile,
    amode: AMode,
    b_packed: bool,
    need_sa: bool,
    az: bool,
    c: bool,
    epi: Epi,
    dot4: bool,
    dscale: bool,
}

fn source(v: &Variant) -> String {
    let Tile { wx, tn, tm, .. } = v.tile;
    let (bm, bn) = (v.tile.bm(), v.tile.bn());
    let mut binds = String::new();
    let mut next = 3;
    if v.az {
        binds += &format!("@group(0) @binding({next}) var<storage, read> AZ: array<u32>;\n");
        next += 1;
    }
    if v.c {
        binds += &format!("@group(0) @binding({next}) var<storage, read> C: array<u32>;\n");
        next += 1;
    }
    if v.dscale {
        binds += &format!("@group(0) @binding({next}) var<storage, read> DS: array<f32>;\n");
        next += 1;
    }
    binds += &format!("@group(0) @binding({next}) var<storage, read> P: array<u32>;\n");
    let ybind = if v.epi == Epi::Float { "f32" } else { "u32" };
    let az_val = if v.az { "bitcast<i32>(AZ[0])" } else { "0" };
    // One i8-form byte of A at (row, kk), kk < K, row < M.
    let a_elem = match v.amode {
        AMode::Strided => "let av = bitcast<i32>(A[aoff + row * sam + kk * sak]) - oa;".to_string(),
        AMode::Conv => "var av = azp;
                        let tb = TO + kk * 4u;
                        let z = rp.z + bitcast<i32>(P[tb + 1u]);
                        let y = rp.y + bitcast<i32>(P[tb + 2u]);
                        let x = rp.x + bitcast<i32>(P[tb + 3u]);
                        if (z >= 0 && z < idd && y >= 0 && y < ihh && x >= 0 && x < iww) {
                            av = bitcast<i32>(A[aoff + P[tb] + ((u32(z) * u32(ihh) + u32(y)) * u32(iww) + u32(x)) * sxsp]) - oa;
                        }"
        .to_string(),
    };
    // Conv: each tile row's window origin, computed once per workgroup (the divisions
    // stay out of the K loop: vector integer division is slow on CPU-based adapters).
    let (conv_pre, conv_row, conv_wg) = match v.amode {
        AMode::Strided => (String::new(), String::new(), String::new()),
        AMode::Conv => (
            format!(
                "if (lid < {bm}u) {{
        let row = r0 + lid;
        let ox = row % P[22];
        let t = row / P[22];
        let oy = t % P[23];
        let oz = t / P[23];
        Rp[lid] = vec4<i32>(i32(ox * P[32]) - i32(P[42]), i32(oy * P[33]) - i32(P[41]),
                            i32(oz * P[34]) - i32(P[40]), 0);
    }}
    workgroupBarrier();
    let iww = i32(P[29]);
    let ihh = i32(P[30]);
    let idd = i32(P[31]);
    let sxsp = P[28];
    let TO = BO + P[5];"
            ),
            format!("let rp = Rp[q / {KW}u];"),
            format!("var<workgroup> Rp: array<vec4<i32>, {bm}>;"),
        ),
    };
    let b_load = if v.b_packed {
        "if (col < N && kw0 + w < Kw) { word = W[colg * Kw + kw0 + w]; }"
    } else {
        "if (col < N) {
                for (var j = 0u; j < 4u; j++) {
                    let kk = (kw0 + w) * 4u + j;
                    if (kk < K) {
                        let bv = bitcast<i32>(W[boff + kk * sbk + col * sbn]) - ob;
                        word |= (u32(bv) & 255u) << (8u * j);
                    }
                }
            }"
    };
    let dot = if v.dot4 {
        "fn d4(a: u32, b: u32) -> i32 { return dot4I8Packed(a, b); }
fn s4(a: u32) -> i32 { return dot4I8Packed(a, 0x01010101u); }"
    } else {
        "fn unp(a: u32) -> vec4<i32> {
    let s = bitcast<i32>(a);
    return vec4<i32>(extractBits(s, 0u, 8u), extractBits(s, 8u, 8u), extractBits(s, 16u, 8u), extractBits(s, 24u, 8u));
}"
    };
    // The inner product over four words (16 k), unrolled over the thread's block: one
    // vec4 load per row and column (workgroup loads are gathers on CPU-based adapters).
    let kv = KW / 4;
    let mut inner = String::new();
    for i in 0..tm {
        inner += &format!("            let a{i} = As[(ty * {tm}u + {i}u) * {kv}u + w];\n");
    }
    for j in 0..tn {
        inner += &format!("            let b{j} = Bs[(tx * {tn}u + {j}u) * {kv}u + w];\n");
    }
    for comp in ["x", "y", "z", "w"] {
        if !v.dot4 {
            for i in 0..tm {
                inner += &format!("            let va{i}{comp} = unp(a{i}.{comp});\n");
            }
            for j in 0..tn {
                inner += &format!("            let vb{j}{comp} = unp(b{j}.{comp});\n");
            }
        }
        for i in 0..tm {
            for j in 0..tn {
                inner += &if v.dot4 {
                    format!("            acc{i}_{j} += d4(a{i}.{comp}, b{j}.{comp});\n")
                } else {
                    format!("            acc{i}_{j} += dot(va{i}{comp}, vb{j}{comp});\n")
                };
            }
        }
        if v.need_sa {
            for i in 0..tm {
                inner += &if v.dot4 {
                    format!("            sa{i} += s4(a{i}.{comp});\n")
                } else {
                    format!("            sa{i} += dot(va{i}{comp}, vec4<i32>(1));\n")
                };
            }
        }
        if !v.b_packed {
            for j in 0..tn {
                inner += &if v.dot4 {
                    format!("            sb{j} += s4(b{j}.{comp});\n")
                } else {
                    format!("            sb{j} += dot(vb{j}{comp}, vec4<i32>(1));\n")
                };
            }
        }
    }
    let mut decl = String::new();
    for i in 0..tm {
        for j in 0..tn {
            decl += &format!("    var acc{i}_{j} = 0;\n");
        }
        decl += &format!("    var sa{i} = 0;\n");
    }
    for j in 0..tn {
        decl += &format!("    var sb{j} = 0;\n");
    }
    let c_add = if v.c {
        "acc += bitcast<i32>(C[row * P[16] + col * P[17]]);"
    } else {
        ""
    };
    let out = match v.epi {
        Epi::Int => "Y[yi] = bitcast<u32>(acc);",
        Epi::Requant => {
            "let q = clamp(round_i(f32(acc) * bitcast<f32>(P[MU + colg])) + bitcast<i32>(P[15]),
                          bitcast<i32>(P[13]), bitcast<i32>(P[14]));
            Y[yi] = bitcast<u32>(q);"
        }
        Epi::Float => {
            "let fv = f32(acc) * (MS * bitcast<f32>(P[MU + colg]));
            Y[yi] = select(fv, fv + bitcast<f32>(P[FB + colg]), P[18] != 0u);"
        }
    };
    let sb_val = if v.b_packed {
        "bitcast<i32>(P[SB + colg])"
    } else {
        "sbv"
    };
    let mut epilogue = String::new();
    for i in 0..tm {
        for j in 0..tn {
            let sbv = if v.b_packed {
                String::new()
            } else {
                format!("let sbv = sb{j};")
            };
            epilogue += &format!(
                "    {{
        let row = r0 + ty * {tm}u + {i}u;
        let col = c0 + tx * {tn}u + {j}u;
        if (row < M && col < N) {{
            let colg = g * N + col;
            let bz = bitcast<i32>(P[BZ + colg]);
            {sbv}
            var acc = acc{i}_{j} - azp * {sb_val} - bz * sa{i} + ki * azp * bz + bitcast<i32>(P[IB + colg]);
            {c_add}
            let yi = ybase + row * P[20] + colg * P[21];
            {out}
        }}
    }}
"
            );
        }
    }
    let aload_words = bm * KW;
    let bload_words = bn * KW;
    let (av, bv) = (aload_words / 4, bload_words / 4);
    format!(
        "{helpers}
@group(0) @binding(0) var<storage, read> A: array<u32>;
@group(0) @binding(1) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read_write> Y: array<{ybind}>;
{binds}
var<workgroup> As: array<vec4<u32>, {av}>;
var<workgroup> Bs: array<vec4<u32>, {bv}>;
{conv_wg}
{dot}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {{
    let M = P[0];
    let N = P[1];
    let K = P[2];
    let Kw = P[3];
    let NT = P[4];
    let G = P[6];
    let sam = P[7];
    let sak = P[8];
    let sbk = P[9];
    let sbn = P[10];
    let oa = bitcast<i32>(P[11]);
    let ob = bitcast<i32>(P[12]);
    let BZ = {HEAD}u;
    let MU = BZ + NT;
    let IB = MU + NT;
    let FB = IB + NT;
    let SB = FB + NT;
    let AO = SB + NT;
    let BO = AO + P[5];
    let zi = wid.z;
    let g = zi % G;
    let aoff = P[AO + zi];
    let boff = P[BO + zi];
    let ybase = (zi / G) * P[19];
    let azp = {az_val} - oa;
    let MS = {ms};
    let ki = bitcast<i32>(K);
    let tx = lid % {wx}u;
    let ty = lid / {wx}u;
    let r0 = wid.y * {bm}u;
    let c0 = wid.x * {bn}u;
{decl}
    {conv_pre}
    for (var kw0 = 0u; kw0 < Kw; kw0 += {KW}u) {{
        for (var q = lid; q < {aload_words}u; q += 256u) {{
            let row = r0 + q / {KW}u;
            let w = q % {KW}u;
            var word = 0u;
            if (row < M) {{
                {conv_row}
                for (var j = 0u; j < 4u; j++) {{
                    let kk = (kw0 + w) * 4u + j;
                    if (kk < K) {{
                        {a_elem}
                        word |= (u32(av) & 255u) << (8u * j);
                    }}
                }}
            }}
            As[q / 4u][q % 4u] = word;
        }}
        for (var q = lid; q < {bload_words}u; q += 256u) {{
            let col = c0 + q / {KW}u;
            let colg = g * N + col;
            let w = q % {KW}u;
            var word = 0u;
            {b_load}
            Bs[q / 4u][q % 4u] = word;
        }}
        workgroupBarrier();
        for (var w = 0u; w < {kv}u; w++) {{
{inner}        }}
        workgroupBarrier();
    }}
{epilogue}}}
",
        helpers = super::quant::QHELPERS,
        ms = if v.dscale { "DS[0]" } else { "1.0" },
    )
}

/// Records the GEMM.
pub(super) fn encode(r: &mut Recorder, g: &Gemm) -> Result<()> {
    let nt = g.groups * g.n;
    let z = g.ao.len();
    if g.m == 0 || g.n == 0 || z == 0 {
        return Ok(());
    }
    if g.bz.len() != nt || g.mult.len() != nt || g.ibias.len() != nt {
        return Err(Error::runtime(
            "tiled GEMM: per-channel arrays of the wrong size",
        ));
    }
    if g.bo.len() != z {
        return Err(Error::runtime("tiled GEMM: batch offsets differ"));
    }
    let ob = if g.b_signed { 0 } else { 128 };
    let oa = if g.a_signed { 0 } else { 128 };
    let bzp: Vec<i32> = g.bz.iter().map(|&b| b - ob).collect();
    let need_sa = bzp.iter().any(|&b| b != 0);
    let (w, b_packed, sb, sbk, sbn) = match &g.b {
        BSrc::Packed(p) => {
            if p.rows != nt || p.k != g.k {
                return Err(Error::shape(format!(
                    "packed weights of {} rows of {} for {nt} channels of {}",
                    p.rows, p.k, g.k
                )));
            }
            (p.upload(r)?, true, p.sums.clone(), 0, 0)
        }
        BSrc::Raw { t, sbk, sbn } => ((*t).clone(), false, vec![0; nt], *sbk, *sbn),
    };
    let tile = Tile::pick(g.m, g.n);
    let mut p = vec![0u32; HEAD];
    let cv = g.conv.as_ref();
    let get = |f: &dyn Fn(&ConvGeo) -> usize| cv.map(f).unwrap_or(1);
    let head: [(usize, usize); 30] = [
        (0, g.m),
        (1, g.n),
        (2, g.k),
        (3, g.k.div_ceil(4)),
        (4, nt),
        (5, z),
        (6, g.groups),
        (7, g.sam),
        (8, g.sak),
        (9, sbk),
        (10, sbn),
        (18, g.fbias.is_some() as usize),
        (19, g.ysb),
        (20, g.ysr),
        (21, g.ysc),
        (22, get(&|c| c.output[2])),
        (23, get(&|c| c.output[1])),
        (24, get(&|c| c.kernel.iter().product())),
        (25, get(&|c| c.kernel[2])),
        (26, get(&|c| c.kernel[1])),
        (27, get(&|c| c.sxc)),
        (28, get(&|c| c.sxsp)),
        (29, get(&|c| c.input[2])),
        (30, get(&|c| c.input[1])),
        (31, get(&|c| c.input[0])),
        (32, get(&|c| c.stride[2])),
        (33, get(&|c| c.stride[1])),
        (34, get(&|c| c.stride[0])),
        (36, get(&|c| c.dilation[2])),
        (37, get(&|c| c.dilation[1])),
    ];
    for (i, v) in head {
        p[i] = v as u32;
    }
    p[11] = oa as u32;
    p[12] = ob as u32;
    p[13] = g.lo as u32;
    p[14] = g.hi as u32;
    p[15] = g.yz as u32;
    if let Some((_, csm, csn)) = g.c {
        p[16] = csm as u32;
        p[17] = csn as u32;
    }
    if let Some(c) = cv {
        p[38] = c.dilation[0] as u32;
        p[40] = c.pad[0] as u32;
        p[41] = c.pad[1] as u32;
        p[42] = c.pad[2] as u32;
    }
    p.extend(bzp.iter().map(|&v| v as u32));
    p.extend(g.mult.iter().map(|v| v.to_bits()));
    p.extend(g.ibias.iter().map(|&v| v as u32));
    match &g.fbias {
        Some(b) if b.len() == nt => p.extend(b.iter().map(|v| v.to_bits())),
        Some(_) => return Err(Error::shape("float bias of the wrong size")),
        None => p.extend(std::iter::repeat_n(0u32, nt)),
    }
    p.extend(sb.iter().map(|&v| v as u32));
    p.extend(g.ao.iter().map(|&v| v as u32));
    p.extend(g.bo.iter().map(|&v| v as u32));
    if let Some(c) = cv {
        // Per tap k = (channel, kd, kh, kw): channel offset and dilated window offsets.
        let ksz: usize = c.kernel.iter().product();
        for kk in 0..g.k {
            let (ch, r) = (kk / ksz, kk % ksz);
            let (e, r2) = (r % c.kernel[2], r / c.kernel[2]);
            let (b, a) = (r2 % c.kernel[1], r2 / c.kernel[1]);
            p.push((ch * c.sxc) as u32);
            p.push((a * c.dilation[0]) as u32);
            p.push((b * c.dilation[1]) as u32);
            p.push((e * c.dilation[2]) as u32);
        }
    }
    let v = Variant {
        tile,
        amode: g.amode,
        b_packed,
        need_sa,
        az: g.az.is_some(),
        c: g.c.is_some(),
        epi: g.epi,
        dot4: g.dot4,
        dscale: g.a_scale.is_some(),
    };
    if (g.epi == Epi::Float) != (g.y.dtype == DType::F32) {
        return Err(Error::runtime(
            "tiled GEMM: output dtype and epilogue differ",
        ));
    }
    let src = source(&v);
    let mut bufs = vec![g.a.buffer(), w.buffer(), g.y.buffer()];
    if let Some(t) = g.az {
        bufs.push(t.buffer());
    }
    if let Some((c, _, _)) = g.c {
        bufs.push(c.buffer());
    }
    if let Some(s) = g.a_scale {
        bufs.push(s.buffer());
    }
    let grid = [
        g.n.div_ceil(tile.bn()) as u32,
        g.m.div_ceil(tile.bm()) as u32,
        z as u32,
    ];
    r.dispatch(&src, &bufs, &p, grid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_in_i8_form_with_row_sums() {
        let p = PackedQ::new(&[0, 255, 128, 1, 2], 1, 5, false).unwrap();
        // 0 → -128 (0x80), 255 → 127, 128 → 0, 1 → -127 (0x81); 2 → -126 (0x82), padding 0
        assert_eq!(p.words, vec![0x81_00_7f_80, 0x82]);
        assert_eq!(p.sums, vec![-128 + 127 - 127 - 126]);
        let s = PackedQ::new(&[-1, 5, -128, 127], 2, 2, true).unwrap();
        assert_eq!(s.words, vec![0x05ff, 0x7f80]);
        assert_eq!(s.sums, vec![4, -1]);
    }
}
