//! The native CLI: `info` describes a model, `run` predicts on .npy/.pb inputs.

use clap::{Parser, Subcommand};
use edgepredict::api::io::{read_npy, read_pb, write_npy};
use edgepredict::graph::ops;
use edgepredict::{Model, Tensor};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// Edge inference for ONNX models.
#[derive(Parser)]
#[command(name = "edgepredict", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
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

const DEMO_MODEL: &[u8] = include_bytes!("../../models/digits_mlp.onnx");
const DEMO_X: &[u8] = include_bytes!("../../models/digits_test.npy");
const DEMO_Y: &[u8] = include_bytes!("../../models/digits_test_labels.npy");

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Info { model, plan } => info(&model, plan),
        Cmd::Run {
            model,
            inputs,
            output,
            repeat,
        } => run(&model, &inputs, output.as_deref(), repeat),
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
    let model = match Model::load(&bytes) {
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
    if show_plan {
        print!("{}", model.plan().describe(g));
    }
    Ok(())
}

fn load_input(spec: &str) -> Result<(String, Tensor), String> {
    let (name, file) = spec
        .split_once('=')
        .ok_or_else(|| format!("--input '{spec}' is not NAME=FILE"))?;
    let bytes = read(Path::new(file))?;
    let t = if file.ends_with(".npy") {
        read_npy(&bytes)
    } else {
        read_pb(&bytes)
    }
    .map_err(|e| format!("{file}: {e}"))?;
    Ok((name.to_string(), t))
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
    let model = Model::load(&bytes).map_err(|e| e.to_string())?;
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
        if let Some(dir) = out_dir {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            let safe: String = name
                .chars()
                .map(|c| {
                    if c.is_alphanumeric() || c == '_' || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let p = dir.join(format!("{safe}.npy"));
            std::fs::write(&p, write_npy(t).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
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

fn demo(show: usize) -> Result<(), String> {
    let t0 = Instant::now();
    let model = Model::load(DEMO_MODEL).map_err(|e| e.to_string())?;
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
