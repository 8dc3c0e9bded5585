//! The native CLI: `info` describes a model, `run` predicts on .npy/.pb inputs, `bench`
//! times a model single-threaded on given or synthesized inputs, `evaluate` compares a
//! compressed or distilled model with its reference, `compress` makes a model smaller,
//! `batch` precomputes predictions into a SQLite store.

mod batch;
mod store;

use clap::{Args, Parser, Subcommand};
use edgepredict::api::io::{json_str, read_npy, read_pb, write_npy};
use edgepredict::compress::evaluate::SplitMix64;
use edgepredict::graph::{ops, Dim};
use edgepredict::{DType, Model, Tensor};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// Edge inference for ONNX models.
#[derive(Parser)]
#[command(name = "edgepredict", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Backend: cpu, webgpu (Vulkan/GL; nodes without a GPU kernel run on the CPU), or
    /// auto (the GPU only where it should be faster; prints why not).
    #[arg(long, global = true, default_value = "cpu")]
    backend: String,
}

static BACKEND: std::sync::OnceLock<edgepredict::api::Backend> = std::sync::OnceLock::new();

fn load(bytes: &[u8]) -> Result<Model, String> {
    let opts = edgepredict::LoadOptions {
        backend: BACKEND.get().copied().unwrap_or_default(),
        ..Default::default()
    };
    Model::load_with(bytes, &opts).map_err(|e| e.to_string())
}

#[derive(Subcommand)]
enum Cmd {
    /// Inputs/outputs with dims, opsets, op histogram, size, and which ops are supported.
    Info {
        model: PathBuf,
        /// Also print the execution plan (order, placement, buffer slots).
        #[arg(long)]
        plan: bool,
    },
    /// Runs a model on inputs given as NAME=FILE (.npy or TensorProto .pb).
    Run {
        model: PathBuf,
        #[arg(long = "input", short = 'i', value_name = "NAME=FILE")]
        inputs: Vec<String>,
        /// Write each output to DIR/<name>.npy.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Run N times and report latency median/min.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
    },
    /// Times a model: load, warm up, then N timed runs on one thread; prints median/min ms
    /// and peak RSS. Inputs come from NAME=FILE or are synthesized (seeded) from the
    /// model's declared input types, with --dim/--shape for symbolic dims.
    Bench(BenchArgs),
    /// Compares a candidate model (quantized, pruned, a distilled student…) with its
    /// reference on the same inputs: per output top-1 agreement, cosine, max/mean abs and
    /// relative error (exact match for integer outputs); latency on both; size on disk and
    /// gzipped.
    Evaluate {
        reference: PathBuf,
        candidate: PathBuf,
        /// test_data_set_*/input_K.pb folders (the ONNX test layout), or .npy files named
        /// after the inputs (NAME.npy or input_NAME.npy), one set per subfolder or one set
        /// at the top. Without it: one set of random inputs, symbolic dims set to 1.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Timed runs of each input set per model (0: no timing).
        #[arg(long, default_value_t = 5)]
        repeat: usize,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Also the accuracy guard's metric (as `compress --metric`): top1, cosine, mae,
        /// maxabs, agree@T.
        #[arg(long)]
        metric: Option<String>,
        /// The output that metric reads (default: the first).
        #[arg(long)]
        metric_output: Option<String>,
    },
    /// Writes a smaller model: the steps given, in the order prune → low-rank → quantize,
    /// as standard ONNX that onnxruntime runs too. With --eval, the accuracy guard measures
    /// the result against the float model and backs off the nodes that break the
    /// tolerance; it never writes a failing model unless --force is given. Prints what it
    /// kept and why.
    Compress(Box<CompressArgs>),
    /// Batch prediction: runs the model over every input of a folder or JSONL file on all
    /// cores, stacked along the model's batch dim where it has one, and keeps each
    /// prediction in a SQLite store keyed by input id and the model's SHA-256. Re-running
    /// skips what is stored and resumes after a crash; --shard splits a job across machines.
    Batch(Box<batch::BatchArgs>),
    /// Reads stored predictions back: one JSON line per id, `{"id", "outputs"}`, from the
    /// rows of this very model (its SHA-256); ids without one are reported and fail.
    Lookup {
        model: PathBuf,
        #[arg(long)]
        store: PathBuf,
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Lists every supported operator.
    Ops,
    /// Predicts handwritten digits with the embedded default model (a scikit-learn MLP
    /// exported to ONNX) on held-out 8x8 images.
    Demo {
        /// How many samples to draw.
        #[arg(long, default_value_t = 3)]
        show: usize,
    },
}

const DEMO_MODEL: &[u8] = include_bytes!("../../../models/digits_mlp.onnx");
const DEMO_X: &[u8] = include_bytes!("../../../models/digits_test.npy");
const DEMO_Y: &[u8] = include_bytes!("../../../models/digits_test_labels.npy");

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.backend.parse() {
        Ok(b) => {
            let _ = BACKEND.set(b);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    let r = match cli.cmd {
        Cmd::Info { model, plan } => info(&model, plan),
        Cmd::Run {
            model,
            inputs,
            output,
            repeat,
        } => run(&model, &inputs, output.as_deref(), repeat),
        Cmd::Bench(a) => bench(&a),
        Cmd::Evaluate {
            reference,
            candidate,
            data,
            repeat,
            json,
            metric,
            metric_output,
        } => evaluate(
            &reference,
            &candidate,
            data.as_deref(),
            repeat,
            json,
            metric.as_deref().map(|m| (m, metric_output.as_deref())),
        ),
        Cmd::Compress(a) => compress(&a),
        Cmd::Lookup { model, store, ids } => {
            read(&model).and_then(|bytes| batch::lookup(&bytes, &store, &ids))
        }
        Cmd::Batch(a) => read(a.model())
            .and_then(|bytes| Ok((load(&bytes)?, bytes)))
            .and_then(|(model, bytes)| batch::batch(&a, &bytes, &model)),
        Cmd::Demo { show } => demo(show),
        Cmd::Ops => {
            for d in ops::all() {
                println!(
                    "{}{}",
                    if d.domain.is_empty() {
                        String::new()
                    } else {
                        format!("{}.", d.domain)
                    },
                    d.name
                );
            }
            Ok(())
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Lists ops of the model that the op table lacks, without building the graph.
fn unsupported_ops(bytes: &[u8]) -> Vec<String> {
    let Ok(m) = edgepredict::onnx::decode_model(bytes) else {
        return Vec::new();
    };
    let mut out = std::collections::BTreeSet::new();
    fn walk(
        g: &edgepredict::onnx::proto::GraphProto,
        out: &mut std::collections::BTreeSet<String>,
        fns: &[String],
    ) {
        for n in &g.node {
            let d = if n.domain == "ai.onnx" {
                ""
            } else {
                n.domain.as_str()
            };
            if ops::lookup(d, &n.op_type).is_none() && !fns.contains(&n.op_type) {
                out.insert(if d.is_empty() {
                    n.op_type.clone()
                } else {
                    format!("{d}.{}", n.op_type)
                });
            }
            for a in &n.attribute {
                if let Some(sg) = &a.g {
                    walk(sg, out, fns);
                }
                for sg in &a.graphs {
                    walk(sg, out, fns);
                }
            }
        }
    }
    let fns: Vec<String> = m.functions.iter().map(|f| f.name.clone()).collect();
    if let Some(g) = &m.graph {
        walk(g, &mut out, &fns);
    }
    out.into_iter().collect()
}

fn info(path: &Path, show_plan: bool) -> Result<(), String> {
    let bytes = read(path)?;
    println!("model: {} ({} bytes)", path.display(), bytes.len());
    let missing = unsupported_ops(&bytes);
    let model = match load(&bytes) {
        Ok(m) => m,
        Err(e) => {
            if !missing.is_empty() {
                println!("unsupported ops: {}", missing.join(", "));
            }
            return Err(e.to_string());
        }
    };
    let meta = model.meta();
    println!(
        "ir_version: {}  producer: {}",
        meta.ir_version, meta.producer
    );
    println!(
        "opsets: {}",
        meta.opsets
            .iter()
            .map(|(d, v)| format!("{}={v}", if d.is_empty() { "ai.onnx" } else { d }))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("inputs:");
    for i in model.inputs() {
        println!("  {:<24} {}", i.name, i.fact);
    }
    println!("outputs:");
    for o in model.outputs() {
        println!("  {:<24} {}", o.name, o.fact);
    }
    let total: usize = meta.op_histogram.values().sum();
    println!("ops ({total} nodes, all supported):");
    for (op, n) in &meta.op_histogram {
        println!("  {op:<28} {n}");
    }
    let g = model.graph();
    let weights: usize = g
        .consts
        .iter()
        .flatten()
        .filter_map(|v| v.tensor().ok())
        .map(|t| t.nbytes())
        .sum();
    println!(
        "after optimisation: {} nodes, {} bytes of constants",
        g.nodes.len(),
        weights
    );
    for (k, v) in &meta.metadata {
        let short: String = v.chars().take(60).collect();
        println!(
            "metadata {k}: {short}{}",
            if v.chars().count() > 60 { "…" } else { "" }
        );
    }
    let b = model.backend();
    println!(
        "backend: {} (requested {:?}){}",
        b.active,
        b.requested,
        b.adapter
            .as_ref()
            .map(|a| format!(", adapter {a}"))
            .unwrap_or_default()
    );
    if b.active == "webgpu" {
        println!("  {} of {} nodes on the GPU", b.gpu_nodes, b.nodes);
    }
    if let Some(why) = &b.fallback_reason {
        println!("  CPU because: {why}");
    }
    if show_plan {
        print!("{}", model.plan().describe(g));
    }
    Ok(())
}

fn load_input(spec: &str) -> Result<(String, Tensor), String> {
    let (name, file) = spec
        .split_once('=')
        .ok_or_else(|| format!("--input '{spec}' is not NAME=FILE"))?;
    Ok((name.to_string(), read_tensor_file(Path::new(file))?))
}

/// A tensor from a `.npy` file, or from a TensorProto `.pb` (any other name).
fn read_tensor_file(path: &Path) -> Result<Tensor, String> {
    let bytes = read(path)?;
    if path.extension().is_some_and(|e| e == "npy") {
        read_npy(&bytes)
    } else {
        read_pb(&bytes)
    }
    .map_err(|e| format!("{}: {e}", path.display()))
}

fn summary(t: &Tensor) -> String {
    let mut s = format!("{} {:?}", t.dtype(), t.shape());
    if let Ok(v) = t.to_f64_vec() {
        if !v.is_empty() {
            let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
            let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let head: Vec<String> = v.iter().take(6).map(|x| format!("{x:.5}")).collect();
            s.push_str(&format!(
                " min {min:.5} max {max:.5} mean {mean:.5} [{}{}]",
                head.join(", "),
                if v.len() > 6 { ", …" } else { "" }
            ));
        }
    }
    s
}

fn run(path: &Path, specs: &[String], out_dir: Option<&Path>, repeat: usize) -> Result<(), String> {
    let bytes = read(path)?;
    let t0 = Instant::now();
    let model = load(&bytes)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let inputs: Vec<(String, Tensor)> = specs
        .iter()
        .map(|s| load_input(s))
        .collect::<Result<_, _>>()?;
    let refs: Vec<(&str, Tensor)> = inputs
        .iter()
        .map(|(n, t)| (n.as_str(), t.clone()))
        .collect();
    let mut times = Vec::new();
    let mut outs = Vec::new();
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        outs = model.run(&refs).map_err(|e| e.to_string())?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    for (name, t) in &outs {
        println!("{name}: {}", summary(t));
    }
    if let Some(dir) = out_dir {
        write_outputs(dir, &outs)?;
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!(
        "load {load_ms:.2} ms; run x{}: median {:.3} ms, min {:.3} ms",
        times.len(),
        times[times.len() / 2],
        times[0]
    );
    Ok(())
}

/// A tensor name as a file name: characters other than alphanumerics, '_' and '-' become '_'.
fn safe_file_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes each output to DIR/<name>.npy, with characters unsafe in file names replaced.
fn write_outputs(dir: &Path, outs: &[(String, Tensor)]) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    for (name, t) in outs {
        let safe = safe_file_name(name);
        let p = dir.join(format!("{safe}.npy"));
        std::fs::write(&p, write_npy(t).map_err(|e| e.to_string())?)
            .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    }
    Ok(())
}

#[derive(Args)]
struct BenchArgs {
    model: PathBuf,
    /// An input from a file (.npy or TensorProto .pb); other inputs are synthesized.
    #[arg(long = "input", short = 'i', value_name = "NAME=FILE")]
    inputs: Vec<String>,
    #[command(flatten)]
    synth: SynthArgs,
    /// Seed of the synthesized inputs.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Untimed runs before timing.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Timed runs.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Write the outputs of the last run to DIR/<name>.npy.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Print one JSON object (every run time included) instead of text.
    #[arg(long)]
    json: bool,
    /// Also time every node and print where the time goes: per op type and the
    /// slowest nodes (medians over the timed runs).
    #[arg(long)]
    profile: bool,
}

/// How inputs are made up from the model's declared types (bench, and `compress --calib
/// random:N`).
#[derive(Args, Default)]
struct SynthArgs {
    /// Size of a symbolic dim of the declared inputs, e.g. `--dim batch_size=1`.
    #[arg(long = "dim", value_name = "SYMBOL=N")]
    dims: Vec<String>,
    /// Full shape of a synthesized input (for unnamed dims), e.g. `--shape x=1,3,48,320`.
    #[arg(long = "shape", value_name = "NAME=D0,D1,..")]
    shapes: Vec<String>,
    /// Value range of a synthesized input, uniform in [LO, HI) (default [0,1) for
    /// floats, [0,100) for integers).
    #[arg(long = "range", value_name = "NAME=LO,HI")]
    ranges: Vec<String>,
    /// Fills a synthesized input with one value, e.g. `--fill sr=16000`.
    #[arg(long = "fill", value_name = "NAME=V")]
    fills: Vec<String>,
}

/// Splits `NAME=VALUE` as given to `flag`.
fn split_kv<'a>(flag: &str, spec: &'a str) -> Result<(&'a str, &'a str), String> {
    spec.split_once('=')
        .ok_or_else(|| format!("--{flag} '{spec}' is not NAME=VALUE"))
}

fn parse_num<T: std::str::FromStr>(flag: &str, s: &str) -> Result<T, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("--{flag}: '{s}' is not a number"))
}

/// Makes a tensor for a declared input: its shape from --shape, or from the declared dims
/// with symbols resolved by --dim; values from --fill or uniform in the --range.
fn synthesize(
    info: &edgepredict::api::IoInfo,
    a: &SynthArgs,
    rng: &mut SplitMix64,
) -> Result<Tensor, String> {
    let name = info.name.as_str();
    let find = |flag: &str, list: &[String]| -> Result<Option<String>, String> {
        for spec in list {
            let (k, v) = split_kv(flag, spec)?;
            if k == name {
                return Ok(Some(v.to_string()));
            }
        }
        Ok(None)
    };
    let dtype = info
        .fact
        .dtype
        .ok_or_else(|| format!("input '{name}' has no declared type: give it with -i"))?;
    let shape: Vec<usize> = match find("shape", &a.shapes)? {
        Some(s) if s.trim().is_empty() => Vec::new(),
        Some(s) => s
            .split(',')
            .map(|d| parse_num("shape", d))
            .collect::<Result<_, _>>()?,
        None => {
            let dims = info.fact.shape.as_ref().ok_or_else(|| {
                format!("input '{name}' has no declared rank: give --shape {name}=D0,D1,..")
            })?;
            let mut out = Vec::with_capacity(dims.len());
            for (k, d) in dims.iter().enumerate() {
                out.push(match d {
                    Dim::Known(n) => *n,
                    Dim::Sym(sym) => {
                        let mut size = None;
                        for spec in &a.dims {
                            let (s, v) = split_kv("dim", spec)?;
                            if s == sym {
                                size = Some(parse_num("dim", v)?);
                            }
                        }
                        size.ok_or_else(|| {
                            format!("input '{name}' dim {k} is '{sym}': give --dim {sym}=N")
                        })?
                    }
                    Dim::Unknown => {
                        return Err(format!(
                            "input '{name}' dim {k} is unnamed: give --shape {name}=D0,D1,.."
                        ))
                    }
                });
            }
            out
        }
    };
    let n = edgepredict::tensor::numel(&shape, dtype).map_err(|e| e.to_string())?;
    let values: Vec<f64> = match find("fill", &a.fills)? {
        Some(v) => vec![parse_num("fill", &v)?; n],
        None => {
            let (lo, hi) = match find("range", &a.ranges)? {
                Some(r) => {
                    let (lo, hi) = r
                        .split_once(',')
                        .ok_or_else(|| format!("--range {name}={r} is not LO,HI"))?;
                    (
                        parse_num::<f64>("range", lo)?,
                        parse_num::<f64>("range", hi)?,
                    )
                }
                None if dtype.is_float() => (0.0, 1.0),
                None => (0.0, 100.0),
            };
            if hi < lo {
                return Err(format!("--range for '{name}': HI < LO"));
            }
            let mut v = edgepredict::tensor::alloc_vec::<f64>(n).map_err(|e| e.to_string())?;
            for x in v.iter_mut() {
                let u = lo + (hi - lo) * rng.next_f64();
                // Integers take the floor so that [0,N) never yields N.
                *x = if dtype.is_float() { u } else { u.floor() };
            }
            v
        }
    };
    let t = Tensor::from_vec(shape, values).map_err(|e| e.to_string())?;
    if dtype == DType::F64 {
        Ok(t)
    } else {
        t.cast(dtype).map_err(|e| format!("input '{name}': {e}"))
    }
}

/// Peak resident set size of this process in bytes (Linux `VmHWM`), if the OS tells.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn bench(a: &BenchArgs) -> Result<(), String> {
    let bytes = read(&a.model)?;
    let t0 = Instant::now();
    let model = load(&bytes)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut given: Vec<(String, Tensor)> = a
        .inputs
        .iter()
        .map(|s| load_input(s))
        .collect::<Result<_, _>>()?;
    let mut rng = SplitMix64(a.seed);
    let mut feeds: Vec<(String, Tensor)> = Vec::new();
    for info in model.inputs() {
        if let Some(k) = given.iter().position(|(n, _)| *n == info.name) {
            feeds.push(given.swap_remove(k));
        } else if !info.optional {
            feeds.push((info.name.clone(), synthesize(info, &a.synth, &mut rng)?));
        }
    }
    if let Some((n, _)) = given.first() {
        return Err(format!("the model has no input named '{n}'"));
    }
    let refs: Vec<(&str, Tensor)> = feeds.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let t1 = Instant::now();
    let mut outs = model.run(&refs).map_err(|e| e.to_string())?;
    let first_ms = t1.elapsed().as_secs_f64() * 1e3;
    for _ in 1..a.warmup {
        outs = model.run(&refs).map_err(|e| e.to_string())?;
    }
    let mut times = Vec::with_capacity(a.runs.max(1));
    let mut profiles = Vec::new();
    for _ in 0..a.runs.max(1) {
        let t = Instant::now();
        if a.profile {
            let (o, p) = model.run_profiled(&refs).map_err(|e| e.to_string())?;
            outs = o;
            profiles.push(p);
        } else {
            outs = model.run(&refs).map_err(|e| e.to_string())?;
        }
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    if let Some(dir) = &a.output {
        write_outputs(dir, &outs)?;
    }
    let mut sorted = times.clone();
    sorted.sort_by(|x, y| x.total_cmp(y));
    let median = if sorted.len() % 2 == 1 {
        sorted[sorted.len() / 2]
    } else {
        (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
    };
    let min = sorted[0];
    let rss = peak_rss_bytes();
    if a.json {
        let list = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.4}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let shapes = feeds
            .iter()
            .map(|(n, t)| {
                format!(
                    "{}:{}",
                    json_str(n),
                    json_str(&format!("{} {:?}", t.dtype(), t.shape()))
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let b = model.backend();
        println!(
            "{{\"load_ms\":{load_ms:.4},\"first_ms\":{first_ms:.4},\"median_ms\":{median:.4},\"min_ms\":{min:.4},\"runs_ms\":[{}],\"peak_rss_bytes\":{},\"inputs\":{{{shapes}}},\"backend\":{},\"gpu_nodes\":{},\"nodes\":{},\"adapter\":{}}}",
            list(&times),
            rss.map_or("null".to_string(), |r| r.to_string()),
            json_str(b.active),
            b.gpu_nodes,
            b.nodes,
            b.adapter.as_deref().map_or("null".to_string(), json_str)
        );
    } else {
        for (n, t) in &feeds {
            println!("input {n}: {} {:?}", t.dtype(), t.shape());
        }
        for (n, t) in &outs {
            println!("{n}: {}", summary(t));
        }
        println!(
            "load {load_ms:.2} ms, first run {first_ms:.2} ms; run x{} (after {} warm-up): median {median:.3} ms, min {min:.3} ms; peak RSS {}",
            times.len(),
            a.warmup.max(1),
            rss.map_or("n/a".to_string(), |r| format!("{:.1} MiB", r as f64 / 1048576.0))
        );
        if !profiles.is_empty() {
            print_profile(&profiles);
        }
    }
    Ok(())
}

fn median_of(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Where the time goes: the median of each node over the runs, summed per op type, then
/// the slowest nodes.
fn print_profile(runs: &[Vec<edgepredict::plan::NodeTime>]) {
    let first = &runs[0];
    let node_ms: Vec<f64> = (0..first.len())
        .map(|k| median_of(runs.iter().filter_map(|r| r.get(k)).map(|t| t.ms).collect()))
        .collect();
    let total: f64 = node_ms.iter().sum();
    let mut by_op: Vec<(String, usize, f64)> = Vec::new();
    for (t, &ms) in first.iter().zip(&node_ms) {
        match by_op.iter_mut().find(|(op, _, _)| *op == t.op_type) {
            Some(e) => {
                e.1 += 1;
                e.2 += ms;
            }
            None => by_op.push((t.op_type.clone(), 1, ms)),
        }
    }
    by_op.sort_by(|x, y| y.2.total_cmp(&x.2));
    println!(
        "profile: {} nodes, {total:.3} ms in nodes (median per node)",
        first.len()
    );
    println!("  {:<28} {:>5} {:>10} {:>6}", "op type", "nodes", "ms", "%");
    for (op, n, ms) in &by_op {
        println!(
            "  {op:<28} {n:>5} {ms:>10.3} {:>5.1}%",
            100.0 * ms / total.max(1e-9)
        );
    }
    let mut order: Vec<usize> = (0..first.len()).collect();
    order.sort_by(|&x, &y| node_ms[y].total_cmp(&node_ms[x]));
    println!("  slowest nodes:");
    for &k in order.iter().take(15) {
        let t = &first[k];
        println!(
            "  {:>5} {:<24} {:>9.3} ms  {} -> {}",
            t.index, t.op_type, node_ms[k], t.name, t.outputs
        );
    }
}

/// Input sets for `evaluate`, with a line saying where they came from.
type InputSets = Vec<Vec<(String, Tensor)>>;

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    Ok(v)
}

fn file_name(p: &Path) -> &str {
    p.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

/// The number after `prefix` in a file name, e.g. 10 in `test_data_set_10`.
fn index_after(p: &Path, prefix: &str, suffix: &str) -> Option<usize> {
    file_name(p)
        .strip_prefix(prefix)?
        .strip_suffix(suffix)?
        .parse()
        .ok()
}

/// One ONNX test-layout set: input_K.pb is the model's K-th input unless the TensorProto
/// names one.
fn read_pb_set(dir: &Path, model: &Model) -> Result<Vec<(String, Tensor)>, String> {
    let mut files: Vec<(usize, PathBuf)> = sorted_entries(dir)?
        .into_iter()
        .filter_map(|p| index_after(&p, "input_", ".pb").map(|k| (k, p)))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("{}: no input_K.pb files", dir.display()));
    }
    let inputs = model.inputs();
    files
        .iter()
        .map(|(k, p)| {
            let proto = edgepredict::onnx::proto::decode_tensor_file(&read(p)?)
                .map_err(|e| format!("{}: {e}", p.display()))?;
            let t = edgepredict::onnx::tensor_from_proto(&proto)
                .map_err(|e| format!("{}: {e}", p.display()))?;
            let name = if inputs.iter().any(|i| i.name == proto.name) {
                proto.name.clone()
            } else {
                inputs
                    .get(*k)
                    .ok_or_else(|| {
                        format!(
                            "{}: the model has {} input(s), no input {k}",
                            p.display(),
                            inputs.len()
                        )
                    })?
                    .name
                    .clone()
            };
            Ok((name, t))
        })
        .collect()
}

/// Names a .npy file for an input may have: NAME.npy or input_NAME.npy, with characters
/// unsafe in file names replaced by '_' as `run --output` writes them.
fn npy_names(input: &str) -> Vec<String> {
    let safe = safe_file_name(input);
    let mut v = vec![
        format!("{input}.npy"),
        format!("input_{input}.npy"),
        format!("{safe}.npy"),
        format!("input_{safe}.npy"),
    ];
    v.dedup();
    v
}

fn find_npy(dir: &Path, input: &str) -> Option<PathBuf> {
    npy_names(input)
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

fn read_npy_set(dir: &Path, model: &Model) -> Result<Vec<(String, Tensor)>, String> {
    let mut set = Vec::new();
    for info in model.inputs() {
        match find_npy(dir, &info.name) {
            Some(p) => {
                let t = read_npy(&read(&p)?).map_err(|e| format!("{}: {e}", p.display()))?;
                set.push((info.name.clone(), t));
            }
            None if info.optional => {}
            None => {
                return Err(format!(
                    "{}: no file for input '{}' (expected {})",
                    dir.display(),
                    info.name,
                    npy_names(&info.name).join(" or ")
                ))
            }
        }
    }
    Ok(set)
}

/// One input set in a folder, in either layout: input_K.pb (the ONNX test layout) or a
/// .npy per input (NAME.npy or input_NAME.npy).
fn read_set_dir(dir: &Path, model: &Model) -> Result<Vec<(String, Tensor)>, String> {
    let onnx_layout = sorted_entries(dir)?
        .iter()
        .any(|p| index_after(p, "input_", ".pb").is_some());
    if onnx_layout {
        read_pb_set(dir, model)
    } else {
        read_npy_set(dir, model)
    }
}

/// Reads DIR in either layout (see `evaluate --help`), inputs named after the reference's.
fn read_input_sets(dir: &Path, model: &Model) -> Result<(InputSets, String), String> {
    let entries = sorted_entries(dir)?;
    let mut onnx_sets: Vec<(usize, &PathBuf)> = entries
        .iter()
        .filter(|p| p.is_dir())
        .filter_map(|p| index_after(p, "test_data_set_", "").map(|k| (k, p)))
        .collect();
    onnx_sets.sort();
    if !onnx_sets.is_empty() {
        let sets = onnx_sets
            .iter()
            .map(|(_, d)| read_pb_set(d, model))
            .collect::<Result<_, _>>()?;
        return Ok((sets, "test_data_set_*/input_K.pb".into()));
    }
    let top_level = model
        .inputs()
        .iter()
        .any(|i| find_npy(dir, &i.name).is_some());
    let subdirs: Vec<&PathBuf> = entries.iter().filter(|p| p.is_dir()).collect();
    if top_level || subdirs.is_empty() {
        return Ok((vec![read_npy_set(dir, model)?], ".npy".into()));
    }
    let sets = subdirs
        .iter()
        .map(|d| read_npy_set(d, model))
        .collect::<Result<_, _>>()?;
    Ok((sets, ".npy, one set per subfolder".into()))
}

fn describe_set(set: &[(String, Tensor)]) -> String {
    set.iter()
        .map(|(n, t)| format!("{n} {} {:?}", t.dtype(), t.shape()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Args)]
struct CompressArgs {
    model: PathBuf,
    #[arg(long, short = 'o')]
    output: PathBuf,
    /// Quantization, one or more of (comma-separated): "dynamic" (int8 weights,
    /// activations quantized at run time), "static" (QDQ int8: weights and activations,
    /// activation ranges calibrated on --calib), "int4" (4-bit blockwise MatMul weights,
    /// com.microsoft MatMulNBits), "fp16" (float16 weight storage; always applied last,
    /// to what the others left float).
    #[arg(long)]
    quantize: Option<String>,
    /// static: calibration input sets, laid out as for `evaluate --data`, or
    /// `random:N`: N sets made up from the declared input types, shaped and ranged by
    /// --dim/--shape/--range/--fill as for `bench`.
    #[arg(long)]
    calib: Option<String>,
    #[command(flatten)]
    synth: SynthArgs,
    /// static: how activation ranges are chosen: minmax, percentile[@P] (default P 99.99)
    /// or entropy (least KL divergence).
    #[arg(long, default_value = "minmax")]
    calibrate: String,
    /// static: op types to quantize (comma-separated; "all" quantizes every op's float
    /// activations, a recipe that breaks some models and is kept for the guard).
    #[arg(long, default_value = "Conv,MatMul,Gemm")]
    op_types: String,
    /// int4: values per block along K (a power of two ≥ 16).
    #[arg(long, default_value_t = 32)]
    block_size: usize,
    /// int4: symmetric blocks (no zero points).
    #[arg(long)]
    symmetric: bool,
    /// One scale per weight tensor instead of per output channel (wrecks models whose
    /// channels differ in range, such as PP-OCR rec).
    #[arg(long)]
    per_tensor: bool,
    /// MatMul/Gemm weights as uint8 with a zero point instead of symmetric int8.
    #[arg(long)]
    uint8: bool,
    /// Node names or op types every step leaves alone (repeatable).
    #[arg(long)]
    exclude: Vec<String>,
    /// Weights with fewer values are left alone (default: each step's own, 256 for the
    /// quantizers and pruning, 64 for fp16, 4096 for low-rank).
    #[arg(long)]
    min_elements: Option<usize>,
    /// Magnitude pruning to this sparsity in [0, 1): the smallest weights are zeroed (the
    /// file stays dense; the gain shows gzipped), or with --structured whole output
    /// channels are removed and their consumers shrunk.
    #[arg(long, value_name = "SPARSITY")]
    prune: Option<f32>,
    /// Prune whole output channels of Conv/Gemm/MatMul.
    #[arg(long)]
    structured: bool,
    /// Low-rank factorization of MatMul/Gemm/1×1 Conv weights by truncated SVD, keeping
    /// this fraction of the energy (sum of squared singular values), where it saves size.
    #[arg(long, value_name = "ENERGY")]
    low_rank: Option<f64>,
    /// Low-rank with a fixed rank instead of an energy.
    #[arg(long, value_name = "RANK")]
    rank: Option<usize>,
    /// Also write OUTPUT.gz (gzip, what the JS loader's fetchModel reads).
    #[arg(long, value_name = "gzip")]
    pack: Option<String>,
    /// The accuracy guard's data: input sets as for `evaluate --data`.
    #[arg(long)]
    eval: Option<PathBuf>,
    /// The guard's metric: top1, cosine, mae, maxabs, agree@T (fraction of elements on
    /// the same side of T).
    #[arg(long, default_value = "cosine")]
    metric: String,
    /// The largest deviation allowed: 1 − agreement for top1/agree, 1 − mean cosine for
    /// cosine, the error itself for mae/maxabs.
    #[arg(long, default_value_t = 0.01)]
    tolerance: f64,
    /// The output the guard measures (default: the first).
    #[arg(long)]
    metric_output: Option<String>,
    /// Write the model even when the guard cannot meet the tolerance (it still says so and
    /// exits with an error).
    #[arg(long)]
    force: bool,
}

/// The steps asked for, in pipeline order, each honouring `--exclude` and the guard's
/// back-offs: a node kept as it was, or given the step's milder setting (per-channel for
/// per-tensor weights, half the sparsity, a higher rank, a smaller int4 block).
fn compress_steps(a: &CompressArgs) -> Result<Vec<edgepredict::compress::guard::Step>, String> {
    use edgepredict::compress::guard::Step;
    use edgepredict::compress::quantize::{quantize_dynamic, QuantizeOptions, WeightType};
    use std::collections::HashMap;
    let mut steps = Vec::new();
    let user_exclude = a.exclude.clone();
    let with = move |kept: Vec<String>| -> Vec<String> {
        user_exclude.iter().cloned().chain(kept).collect()
    };
    // The nodes the guard gave the first milder setting, each with `value`.
    fn first_milder<T: Copy>(
        g: &edgepredict::compress::guard::Grades,
        value: T,
    ) -> HashMap<String, T> {
        g.milder(0).into_iter().map(|n| (n, value)).collect()
    }
    if let Some(sparsity) = a.prune {
        use edgepredict::compress::prune::{prune, PruneOptions};
        let opts = PruneOptions {
            sparsity,
            structured: a.structured,
            min_elements: a
                .min_elements
                .unwrap_or(PruneOptions::default().min_elements),
            ..Default::default()
        };
        let with = with.clone();
        let label = format!(
            "prune {:.0} %{}",
            sparsity * 100.0,
            if a.structured { " structured" } else { "" }
        );
        let half = sparsity / 2.0;
        let step = Step::new(label, move |m, g| {
            let opts = PruneOptions {
                exclude: with(g.kept()),
                overrides: first_milder(g, half),
                ..opts.clone()
            };
            prune(m, &opts)
        });
        steps.push(step.with_milder(vec![format!("sparsity {:.1} %", half * 100.0)]));
    }
    let rank = match (a.low_rank, a.rank) {
        (Some(_), Some(_)) => return Err("give --low-rank ENERGY or --rank N, not both".into()),
        (Some(e), None) => Some(edgepredict::compress::lowrank::Rank::Energy(e)),
        (None, Some(r)) => Some(edgepredict::compress::lowrank::Rank::Fixed(r)),
        (None, None) => None,
    };
    if let Some(rank) = rank {
        use edgepredict::compress::lowrank::{low_rank, LowRankOptions, Rank};
        let opts = LowRankOptions {
            rank,
            min_elements: a
                .min_elements
                .unwrap_or(LowRankOptions::default().min_elements),
            ..Default::default()
        };
        let with = with.clone();
        // A quarter of the energy left out, or twice the rank.
        let (higher, label) = match rank {
            Rank::Energy(e) => {
                let h = 1.0 - (1.0 - e) / 4.0;
                (Rank::Energy(h), format!("energy {:.2} %", h * 100.0))
            }
            Rank::Fixed(r) => (Rank::Fixed(2 * r), format!("rank {}", 2 * r)),
        };
        let step = Step::new("low-rank", move |m, g| {
            let opts = LowRankOptions {
                exclude: with(g.kept()),
                overrides: first_milder(g, higher),
                ..opts.clone()
            };
            low_rank(m, &opts)
        });
        steps.push(step.with_milder(vec![label]));
    }
    let mut kinds: Vec<&str> = a
        .quantize
        .as_deref()
        .map(|q| q.split(',').map(str::trim).collect())
        .unwrap_or_default();
    // fp16 stores what the other kinds left float, so it runs last.
    kinds.sort_by_key(|k| *k == "fp16");
    for kind in kinds {
        let with = with.clone();
        match kind {
            "dynamic" => {
                let opts = QuantizeOptions {
                    per_channel: !a.per_tensor,
                    weight_type: if a.uint8 {
                        WeightType::UInt8
                    } else {
                        WeightType::Int8
                    },
                    min_elements: a
                        .min_elements
                        .unwrap_or(QuantizeOptions::default().min_elements),
                    ..Default::default()
                };
                let milder = if a.per_tensor {
                    vec!["per-channel weights".to_string()]
                } else {
                    Vec::new()
                };
                let step = Step::new("int8 dynamic", move |m, g| {
                    let opts = QuantizeOptions {
                        exclude: with(g.kept()),
                        overrides: first_milder(g, true),
                        ..opts.clone()
                    };
                    quantize_dynamic(m, &opts)
                });
                steps.push(step.with_milder(milder));
            }
            "static" => {
                use edgepredict::compress::calibrate::Calibration;
                use edgepredict::compress::qdq::{quantize_static, StaticOptions, StaticOverride};
                let calib = a.calib.as_deref().ok_or(
                    "--quantize static needs --calib DIR or --calib random:N (calibration inputs)",
                )?;
                let float =
                    load(&read(&a.model)?).map_err(|e| format!("{}: {e}", a.model.display()))?;
                let sets = calibration_sets(calib, &float, &a.synth)?;
                let calibration = match a.calibrate.as_str() {
                    "minmax" => Calibration::MinMax,
                    "entropy" => Calibration::Entropy,
                    "percentile" => Calibration::Percentile(99.99),
                    c => match c.strip_prefix("percentile@").map(str::parse::<f64>) {
                        Some(Ok(p)) if p > 0.0 && p <= 100.0 => Calibration::Percentile(p),
                        _ => {
                            return Err(format!(
                                "--calibrate {c}: expected minmax, percentile[@P] or entropy"
                            ))
                        }
                    },
                };
                let opts = StaticOptions {
                    calibration,
                    per_channel: !a.per_tensor,
                    op_types: a
                        .op_types
                        .split(',')
                        .map(|t| t.trim().to_string())
                        .collect(),
                    min_elements: a
                        .min_elements
                        .unwrap_or(StaticOptions::default().min_elements),
                    ..Default::default()
                };
                // Milder, strongest first: per-channel weights, then float activations.
                let mut milder = vec![(StaticOverride::WeightsOnly, "int8 weights only")];
                if a.per_tensor {
                    milder.insert(0, (StaticOverride::PerChannel, "per-channel weights"));
                }
                let labels = milder.iter().map(|(_, l)| l.to_string()).collect();
                let step = Step::new("int8 static QDQ", move |m, g| {
                    let overrides = (milder.iter().enumerate())
                        .flat_map(|(i, (o, _))| g.milder(i).into_iter().map(|n| (n, *o)))
                        .collect();
                    let opts = StaticOptions {
                        exclude: with(g.kept()),
                        overrides,
                        ..opts.clone()
                    };
                    quantize_static(m, &sets, &opts)
                });
                steps.push(step.with_milder(labels));
            }
            "int4" => {
                use edgepredict::compress::int4::{quantize_int4, Int4Options};
                let opts = Int4Options {
                    block_size: a.block_size,
                    symmetric: a.symmetric,
                    min_elements: a
                        .min_elements
                        .unwrap_or(Int4Options::default().min_elements),
                    ..Default::default()
                };
                // Smaller blocks (more scales) down to onnxruntime's 16.
                let half = a.block_size / 2;
                let milder = if half >= 16 {
                    vec![format!("block {half}")]
                } else {
                    Vec::new()
                };
                let step = Step::new("int4 MatMulNBits", move |m, g| {
                    let opts = Int4Options {
                        exclude: with(g.kept()),
                        overrides: first_milder(g, half),
                        ..opts.clone()
                    };
                    quantize_int4(m, &opts)
                });
                steps.push(step.with_milder(milder));
            }
            "fp16" => {
                use edgepredict::compress::fp16::{weights_to_fp16, Fp16Options};
                let min_elements = a
                    .min_elements
                    .unwrap_or(Fp16Options::default().min_elements);
                steps.push(Step::new("fp16 weights", move |m, g| {
                    let opts = Fp16Options {
                        exclude: with(g.kept()),
                        min_elements,
                    };
                    weights_to_fp16(m, &opts)
                }));
            }
            other => {
                return Err(format!(
                    "--quantize {other}: expected dynamic, static, int4 or fp16"
                ))
            }
        }
    }
    if steps.is_empty() {
        return Err("no step given: --prune, --low-rank/--rank or --quantize".into());
    }
    Ok(steps)
}

fn compress(a: &CompressArgs) -> Result<(), String> {
    use edgepredict::compress::guard::{self, Evaluator, GuardOptions, Metric};
    let bytes = read(&a.model)?;
    let float = edgepredict::onnx::decode_model(&bytes)
        .map_err(|e| format!("{}: {e}", a.model.display()))?;
    let steps = compress_steps(a)?;
    let metric: Metric = a.metric.parse()?;
    let evaluator = match &a.eval {
        Some(dir) => {
            let reference = load(&bytes).map_err(|e| format!("{}: {e}", a.model.display()))?;
            let (sets, _) = read_input_sets(dir, &reference)?;
            let opts = GuardOptions {
                metric,
                tolerance: a.tolerance,
                output: a.metric_output.clone(),
                load: edgepredict::LoadOptions {
                    backend: BACKEND.get().copied().unwrap_or_default(),
                    ..Default::default()
                },
            };
            Some(Evaluator::new(&float, sets, opts).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    let outcome = guard::compress(&float, &steps, evaluator.as_ref()).map_err(|e| e.to_string())?;
    for r in &outcome.reports {
        print!("{r}");
    }
    if let Some(e) = &evaluator {
        print!("{}", outcome.guard_summary(metric, a.tolerance, e.output()));
    }
    let out = edgepredict::onnx::encode_model(&outcome.model);
    // The written model must load here before it is kept.
    load(&out).map_err(|e| format!("the compressed model does not load: {e}"))?;
    if !outcome.passed && !a.force {
        return Err(format!(
            "the guard could not meet {} ≤ {}: nothing written (--force writes it anyway)",
            metric, a.tolerance
        ));
    }
    std::fs::write(&a.output, &out).map_err(|e| format!("{}: {e}", a.output.display()))?;
    println!(
        "{}: {:.2} MB -> {}: {:.2} MB (x{:.3})",
        a.model.display(),
        bytes.len() as f64 / 1e6,
        a.output.display(),
        out.len() as f64 / 1e6,
        out.len() as f64 / bytes.len() as f64
    );
    match a.pack.as_deref() {
        None => {}
        Some("gzip") => {
            let gz = gzip(&out)?;
            let mut path = a.output.clone().into_os_string();
            path.push(".gz");
            std::fs::write(&path, &gz).map_err(|e| format!("{}: {e}", path.to_string_lossy()))?;
            println!(
                "packed: {}: {:.2} MB (x{:.3} of the float model)",
                path.to_string_lossy(),
                gz.len() as f64 / 1e6,
                gz.len() as f64 / bytes.len() as f64
            );
        }
        Some(other) => return Err(format!("--pack {other}: expected gzip")),
    }
    if !outcome.passed {
        return Err(format!(
            "the guard could not meet {} ≤ {}: written anyway (--force)",
            metric, a.tolerance
        ));
    }
    Ok(())
}

/// The calibration sets named by `--calib`: a folder, or `random:N` made up from the
/// declared inputs (seeded: the same command gives the same model).
fn calibration_sets(calib: &str, model: &Model, synth: &SynthArgs) -> Result<InputSets, String> {
    let Some(n) = calib.strip_prefix("random:") else {
        return Ok(read_input_sets(Path::new(calib), model)?.0);
    };
    let n: usize = parse_num("calib", n)?;
    if n == 0 {
        return Err("--calib random:N needs N ≥ 1".into());
    }
    let mut rng = SplitMix64(42);
    (0..n)
        .map(|_| {
            model
                .inputs()
                .iter()
                .filter(|i| !i.optional)
                .map(|i| Ok((i.name.clone(), synthesize(i, synth, &mut rng)?)))
                .collect()
        })
        .collect()
}

/// Best compression: the model is downloaded many times and packed once.
fn gzip(bytes: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(bytes).map_err(|e| e.to_string())?;
    e.finish().map_err(|e| e.to_string())
}

fn evaluate(
    reference: &Path,
    candidate: &Path,
    data: Option<&Path>,
    repeat: usize,
    json: bool,
    metric: Option<(&str, Option<&str>)>,
) -> Result<(), String> {
    use edgepredict::compress::evaluate::{compare, random_inputs, EvalOptions, ModelSize};
    let (rb, cb) = (read(reference)?, read(candidate)?);
    let r = load(&rb).map_err(|e| format!("{}: {e}", reference.display()))?;
    let c = load(&cb).map_err(|e| format!("{}: {e}", candidate.display()))?;
    let (sets, note) = match data {
        Some(dir) => {
            let (sets, layout) = read_input_sets(dir, &r)?;
            let note = format!(
                "inputs: {} set(s) from {} ({layout}); first: {}",
                sets.len(),
                dir.display(),
                describe_set(&sets[0])
            );
            (sets, note)
        }
        None => {
            let set = random_inputs(&r, 42).map_err(|e| e.to_string())?;
            let note = format!(
                "inputs: no --data, so one set of random inputs from the declared input types, \
                 symbolic dims set to 1: {}; agreement on such inputs says little about the task",
                describe_set(&set)
            );
            (vec![set], note)
        }
    };
    let opts = EvalOptions { repeat };
    let report = compare(&r, &c, &sets, &opts).map_err(|e| match data {
        Some(_) => e.to_string(),
        None => format!(
            "{e}\n(on random inputs with symbolic dims set to 1: give real ones with --data DIR)"
        ),
    })?;
    let mut report = report.sizes(
        ModelSize::of(reference.display().to_string(), &rb).map_err(|e| e.to_string())?,
        ModelSize::of(candidate.display().to_string(), &cb).map_err(|e| e.to_string())?,
    );
    report.notes.insert(0, note);
    if let Some((metric, output)) = metric {
        use edgepredict::compress::guard::{Evaluator, GuardOptions, Metric};
        use edgepredict::onnx::decode_model;
        let m: Metric = metric.parse()?;
        let decode =
            |b: &[u8], p: &Path| decode_model(b).map_err(|e| format!("{}: {e}", p.display()));
        let opts = GuardOptions {
            metric: m,
            tolerance: 0.0,
            output: output.map(str::to_string),
            load: edgepredict::LoadOptions {
                backend: BACKEND.get().copied().unwrap_or_default(),
                ..Default::default()
            },
        };
        let ev = Evaluator::new(&decode(&rb, reference)?, sets.clone(), opts)
            .map_err(|e| e.to_string())?;
        let deviation = ev
            .deviation(&decode(&cb, candidate)?)
            .map_err(|e| e.to_string())?;
        report.task = Some(edgepredict::compress::evaluate::TaskMetric {
            metric: m.to_string(),
            output: ev.output().to_string(),
            deviation,
        });
    }
    for (which, m) in [("reference", &r), ("candidate", &c)] {
        let b = m.backend();
        if b.active != "cpu" {
            report.notes.push(format!(
                "{which} ran on {} ({} of {} nodes on the GPU), not the CPU path",
                b.active, b.gpu_nodes, b.nodes
            ));
        }
    }
    if json {
        println!("{}", report.to_json());
    } else {
        println!("reference: {}", reference.display());
        println!("candidate: {}", candidate.display());
        print!("{report}");
    }
    Ok(())
}

fn demo(show: usize) -> Result<(), String> {
    let t0 = Instant::now();
    let model = load(DEMO_MODEL)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let x = read_npy(DEMO_X).map_err(|e| e.to_string())?;
    let y = read_npy(DEMO_Y)
        .and_then(|t| t.to_i64_vec())
        .map_err(|e| e.to_string())?;
    let n = x.shape()[0];
    let t1 = Instant::now();
    let outs = model.run(&[("X", x.clone())]).map_err(|e| e.to_string())?;
    let batch_ms = t1.elapsed().as_secs_f64() * 1e3;
    let labels = outs[0].1.to_i64_vec().map_err(|e| e.to_string())?;
    let probs = outs[1].1.to_f32_vec().map_err(|e| e.to_string())?;
    let pixels = x.to_f32_vec().map_err(|e| e.to_string())?;
    for i in 0..show.min(n) {
        println!(
            "sample {i}: predicted {} (p={:.3}), true {}",
            labels[i],
            probs[i * 10 + labels[i] as usize],
            y[i]
        );
        for row in pixels[i * 64..(i + 1) * 64].chunks(8) {
            let line: String = row
                .iter()
                .map(|&v| [' ', '.', ':', 'o', '#'][((v / 16.0 * 4.0).round() as usize).min(4)])
                .collect();
            println!("    |{line}|");
        }
    }
    let correct = labels.iter().zip(&y).filter(|(a, b)| a == b).count();
    println!(
        "digits_mlp (embedded, {} bytes): {correct}/{n} correct ({:.1}%), load {load_ms:.2} ms, batch of {n} in {batch_ms:.2} ms",
        DEMO_MODEL.len(),
        100.0 * correct as f64 / n as f64
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgepredict::api::IoInfo;
    use edgepredict::graph::Fact;

    fn args(dims: &[&str], shapes: &[&str], ranges: &[&str], fills: &[&str]) -> SynthArgs {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
        SynthArgs {
            dims: v(dims),
            shapes: v(shapes),
            ranges: v(ranges),
            fills: v(fills),
        }
    }

    fn input(dt: DType, dims: Vec<Dim>) -> IoInfo {
        IoInfo {
            name: "x".into(),
            fact: Fact::new(Some(dt), Some(dims)),
            optional: false,
        }
    }

    #[test]
    fn synthesize_sizes_symbols_and_keeps_ints_in_range() {
        let info = input(DType::I64, vec![Dim::Sym("batch".into()), Dim::Known(50)]);
        let a = args(&["batch=2"], &[], &["x=3,7"], &[]);
        let t = synthesize(&info, &a, &mut SplitMix64(7)).unwrap();
        assert_eq!(t.shape(), &[2, 50]);
        assert_eq!(t.dtype(), DType::I64);
        let v = t.to_i64_vec().unwrap();
        assert!(v.iter().all(|&x| (3..7).contains(&x)), "{v:?}");
        assert!(v.iter().any(|&x| x != v[0]), "values should vary");
        // Same seed, same tensor.
        let again = synthesize(&info, &a, &mut SplitMix64(7)).unwrap();
        assert_eq!(again.to_i64_vec().unwrap(), v);
    }

    #[test]
    fn synthesize_fill_and_scalar_shape() {
        let info = input(DType::I64, vec![Dim::Unknown]);
        let a = args(&[], &["x="], &[], &["x=16000"]);
        let t = synthesize(&info, &a, &mut SplitMix64(1)).unwrap();
        assert_eq!(t.shape(), &[] as &[usize]);
        assert_eq!(t.to_i64_vec().unwrap(), vec![16000]);
    }

    #[test]
    fn synthesize_names_what_is_missing() {
        let sym = input(DType::F32, vec![Dim::Sym("seq".into())]);
        let e = synthesize(&sym, &args(&[], &[], &[], &[]), &mut SplitMix64(1)).unwrap_err();
        assert!(e.contains("--dim seq=N"), "{e}");
        let unknown = input(DType::F32, vec![Dim::Known(1), Dim::Unknown]);
        let e = synthesize(&unknown, &args(&[], &[], &[], &[]), &mut SplitMix64(1)).unwrap_err();
        assert!(e.contains("--shape x="), "{e}");
        let bad = synthesize(
            &unknown,
            &args(&[], &["x=1,a"], &[], &[]),
            &mut SplitMix64(1),
        );
        assert!(bad.unwrap_err().contains("not a number"));
        let inverted = args(&[], &["x=1,2"], &["x=5,1"], &[]);
        let e = synthesize(&unknown, &inverted, &mut SplitMix64(1)).unwrap_err();
        assert!(e.contains("HI < LO"), "{e}");
    }
}
