//! `edgepredict batch`: predictions computed ahead of time for a whole set of inputs and kept
//! in a SQLite store, keyed by input id and the model's SHA-256 (issue #7). Workers on every
//! core take chunks of inputs and run them stacked along the model's batch dim
//! ([`BatchRunner`]); the main thread writes finished chunks and draws the progress line.

use crate::store::{Row, Store};
use clap::Args;
use edgepredict::api::batch::{BatchRunner, Stacking};
use edgepredict::api::io::{json_str, tensor_json};
use edgepredict::api::Named;
use edgepredict::{DType, Model, Tensor};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct BatchArgs {
    model: PathBuf,
    /// A folder (one .npy/.pb file per input for a one-input model, id = file name without
    /// extension; or one subfolder per input, id = folder name, in `evaluate --data`'s set
    /// layouts: NAME.npy or input_NAME.npy per model input, or input_K.pb), or a .jsonl file: one JSON object per line, `{"id": …, "inputs":
    /// {NAME: TENSOR}}` where TENSOR is a nested array (dtype from the model) or
    /// `{"dtype", "shape", "data"}`; without "inputs" every key but "id" is an input, and
    /// without "id" the line number is.
    #[arg(long)]
    inputs: PathBuf,
    /// The SQLite file the predictions go to (made when missing). Re-running skips what is
    /// stored for this model; a changed model drops its predecessor's rows.
    #[arg(long)]
    store: PathBuf,
    /// Worker threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Most inputs stacked into one run along the model's batch dim (1: never stack).
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Run only this job's share I of N (0-based), chosen by a hash of each input's id, so
    /// N machines with the same inputs split a job without talking to each other.
    #[arg(long, value_name = "I/N")]
    shard: Option<String>,
    /// The job's name in the store, which a changed model is recognised by (default: the
    /// model's file name).
    #[arg(long)]
    name: Option<String>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

/// Where one input's tensors come from; read by the worker that runs it.
enum Source {
    /// The one required input's tensor, in a .npy/.pb file.
    File(String, PathBuf),
    /// A folder holding one input set (`read_set_dir`).
    Set(PathBuf),
    /// One JSONL line: where it is in the file. Lines are read again by the worker that
    /// runs them, so a job of millions of lines holds only ids and offsets.
    Line(Arc<Path>, u64, usize),
}

struct Item {
    id: String,
    source: Source,
}

impl BatchArgs {
    pub fn model(&self) -> &Path {
        &self.model
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// FNV-1a: a stable hash of the id, the same on every machine and in every run.
fn shard_of(id: &str, n: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % n as u64) as usize
}

fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("--shard '{s}' is not I/N with 0 <= I < N");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

pub fn batch(a: &BatchArgs, model_bytes: &[u8], model: &Model) -> Result<(), String> {
    let sha = sha256_hex(model_bytes);
    let name = a.name.clone().unwrap_or_else(|| {
        a.model
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    });
    let shard = a.shard.as_deref().map(parse_shard).transpose()?;
    let mut items = list_inputs(&a.inputs, model)?;
    let listed = items.len();
    if let Some((i, n)) = shard {
        items.retain(|it| shard_of(&it.id, n) == i);
    }
    let mut store = Store::open(&a.store)?;
    let dropped = store.begin(&name, &sha)?;
    let done = store.stored_ids(&sha)?;
    let in_shard = items.len();
    items.retain(|it| !done.contains(&it.id));
    let skipped = in_shard - items.len();

    let runner = BatchRunner::new(model);
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let chunk = match runner.stacking() {
        Stacking::Batch(_) => a.batch_size.max(1),
        Stacking::OneByOne(_) => 1,
    };
    eprintln!(
        "model {name} sha256 {}…; {listed} inputs{}; {skipped} already stored{}",
        &sha[..16],
        shard.map_or(String::new(), |(i, n)| format!(
            ", {in_shard} in shard {i}/{n}"
        )),
        if dropped > 0 {
            format!("; the model changed: {dropped} stale predictions dropped")
        } else {
            String::new()
        }
    );
    eprintln!(
        "{} to run on {threads} thread(s), {}",
        items.len(),
        match runner.stacking() {
            Stacking::Batch(_) => format!("up to {chunk} stacked per run"),
            Stacking::OneByOne(why) => format!("one per run ({why})"),
        }
    );

    let next = AtomicUsize::new(0);
    let chunks: Vec<&[Item]> = items.chunks(chunk).collect();
    let (tx, rx) = mpsc::channel::<Vec<Row>>();
    let started = Instant::now();
    let mut progress = Progress::new(items.len(), a.quiet);
    let (mut ok, mut failed) = (0usize, 0usize);
    let mut first_error: Option<String> = None;
    let write_result = std::thread::scope(|s| {
        for _ in 0..threads {
            let tx = tx.clone();
            let (next, chunks, runner) = (&next, &chunks, &runner);
            s.spawn(move || loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(part) = chunks.get(k) else { break };
                if tx.send(run_chunk(runner, model, part)).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        // Finished chunks are written as they come, a transaction per flush; a crash
        // loses only what was not yet flushed, and the re-run redoes exactly that.
        let mut pending: Vec<Row> = Vec::new();
        let mut last_flush = Instant::now();
        for rows in rx.iter() {
            for (id, r) in &rows {
                match r {
                    Ok(_) => ok += 1,
                    Err(e) => {
                        failed += 1;
                        first_error.get_or_insert_with(|| format!("{id}: {e}"));
                    }
                }
            }
            pending.extend(rows);
            if last_flush.elapsed() >= Duration::from_millis(200) {
                if let Err(e) = store.write(&sha, &pending) {
                    // Stop the workers: nothing more can be kept.
                    next.store(usize::MAX / 2, Ordering::Relaxed);
                    return Err(e);
                }
                pending.clear();
                last_flush = Instant::now();
            }
            progress.update(ok + failed);
        }
        store.write(&sha, &pending)
    });
    progress.finish(ok + failed);
    write_result?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{ok} predicted, {failed} failed, {skipped} skipped in {secs:.2} s ({:.1} predictions/s)",
        if secs > 0.0 { ok as f64 / secs } else { 0.0 }
    );
    if failed > 0 {
        return Err(format!(
            "{failed} input(s) failed (kept in the store's failures table, retried next run); first: {}",
            first_error.unwrap_or_default()
        ));
    }
    Ok(())
}

/// `edgepredict lookup`: stored predictions of this model, as JSON lines on stdout.
pub fn lookup(model_bytes: &[u8], store: &Path, ids: &[String]) -> Result<(), String> {
    if !store.exists() {
        return Err(format!("no store at {}", store.display()));
    }
    let sha = sha256_hex(model_bytes);
    let store = Store::open(store)?;
    let mut missing = Vec::new();
    let mut out = std::io::stdout().lock();
    for id in ids {
        match store.get(&sha, id)? {
            Some(json) => {
                let _ = writeln!(out, "{{\"id\":{},\"outputs\":{json}}}", json_str(id));
            }
            None => missing.push(id.as_str()),
        }
    }
    if !missing.is_empty() {
        return Err(format!(
            "no prediction of this model (sha256 {}…) stored for: {}",
            &sha[..16],
            missing.join(", ")
        ));
    }
    Ok(())
}

/// Reads a chunk's inputs and runs them; one row per input, in order.
fn run_chunk(runner: &BatchRunner, model: &Model, part: &[Item]) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::with_capacity(part.len());
    let mut loaded: Vec<Named<Tensor>> = Vec::new();
    let mut at: Vec<usize> = Vec::new();
    for it in part {
        match read_item(&it.source, model) {
            Ok(t) => {
                at.push(rows.len());
                rows.push((it.id.clone(), Err(String::new())));
                loaded.push(t);
            }
            Err(e) => rows.push((it.id.clone(), Err(e))),
        }
    }
    for (k, r) in at.into_iter().zip(runner.run(loaded)) {
        rows[k].1 = r.map_err(|e| e.to_string()).and_then(|o| outputs_json(&o));
    }
    rows
}

fn outputs_json(outs: &Named<Tensor>) -> Result<String, String> {
    let mut s = String::from("{");
    for (i, (n, t)) in outs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&json_str(n));
        s.push(':');
        s.push_str(&tensor_json(t).map_err(|e| e.to_string())?);
    }
    s.push('}');
    Ok(s)
}

fn list_inputs(path: &Path, model: &Model) -> Result<Vec<Item>, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let items = if meta.is_dir() {
        list_dir(path, model)?
    } else {
        list_jsonl(path)?
    };
    let mut seen = std::collections::HashSet::new();
    for it in &items {
        if !seen.insert(it.id.as_str()) {
            return Err(format!("input id '{}' appears twice", it.id));
        }
    }
    Ok(items)
}

fn is_tensor_file(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()), Some("npy" | "pb"))
}

fn list_dir(dir: &Path, model: &Model) -> Result<Vec<Item>, String> {
    let required: Vec<&str> = model
        .inputs()
        .iter()
        .filter(|i| !i.optional)
        .map(|i| i.name.as_str())
        .collect();
    let name_of = |p: &Path, stem: bool| {
        let n = if stem { p.file_stem() } else { p.file_name() };
        n.map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let mut items = Vec::new();
    for p in crate::sorted_entries(dir)? {
        if p.is_dir() {
            items.push(Item {
                id: name_of(&p, false),
                source: Source::Set(p),
            });
        } else if is_tensor_file(&p) {
            let [input] = required[..] else {
                return Err(format!(
                    "{}: a file per input serves one-input models; this one reads {} \
                     (use a subfolder per input with NAME.npy files, or JSONL)",
                    dir.display(),
                    required.join(", ")
                ));
            };
            items.push(Item {
                id: name_of(&p, true),
                source: Source::File(input.to_string(), p),
            });
        }
    }
    if items.is_empty() {
        return Err(format!("no .npy/.pb inputs in {}", dir.display()));
    }
    Ok(items)
}

fn list_jsonl(path: &Path) -> Result<Vec<Item>, String> {
    let f =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let shared: Arc<Path> = Arc::from(path);
    let mut reader = std::io::BufReader::new(f);
    let mut items = Vec::new();
    let (mut offset, mut line, mut k) = (0u64, String::new(), 0usize);
    loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        k += 1;
        let start = offset;
        offset += n as u64;
        if line.trim().is_empty() {
            continue;
        }
        // Parsed here for the id only (and to reject a bad line before any work starts).
        let v: Json =
            serde_json::from_str(&line).map_err(|e| format!("{} line {k}: {e}", path.display()))?;
        let id = match v.get("id") {
            Some(Json::String(s)) => s.clone(),
            Some(Json::Number(n)) => n.to_string(),
            None => k.to_string(),
            Some(other) => {
                return Err(format!(
                    "{} line {k}: the id must be a string or a number, not {other}",
                    path.display()
                ))
            }
        };
        items.push(Item {
            id,
            source: Source::Line(shared.clone(), start, n),
        });
    }
    Ok(items)
}

fn read_line_at(path: &Path, offset: u64, len: usize) -> Result<Json, String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut buf = vec![0u8; len];
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.read_exact(&mut buf))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&buf).map_err(|e| format!("{}: {e}", path.display()))
}

fn read_item(src: &Source, model: &Model) -> Result<Named<Tensor>, String> {
    match src {
        Source::File(input, p) => Ok(vec![(input.clone(), crate::read_tensor_file(p)?)]),
        Source::Set(dir) => crate::read_set_dir(dir, model),
        Source::Line(path, offset, len) => {
            let v = read_line_at(path, *offset, *len)?;
            let obj = v.as_object().ok_or("a JSONL line must be an object")?;
            let fields: Vec<(&String, &Json)> = match obj.get("inputs") {
                Some(Json::Object(m)) => m.iter().collect(),
                Some(_) => return Err("\"inputs\" must be an object".into()),
                None => obj.iter().filter(|(k, _)| *k != "id").collect(),
            };
            fields
                .into_iter()
                .map(|(name, v)| {
                    let dtype = model
                        .inputs()
                        .iter()
                        .find(|i| &i.name == name)
                        .and_then(|i| i.fact.dtype)
                        .unwrap_or(DType::F32);
                    Ok((
                        name.clone(),
                        json_tensor(v, dtype).map_err(|e| format!("input '{name}': {e}"))?,
                    ))
                })
                .collect()
        }
    }
}

/// A tensor from JSON: a number, a nested array, or `{"dtype"?, "shape"?, "data"}`.
fn json_tensor(v: &Json, declared: DType) -> Result<Tensor, String> {
    let (dtype, shape, data) = match v {
        Json::Object(m) => {
            let dtype = match m.get("dtype") {
                Some(Json::String(s)) => {
                    DType::from_name(s).ok_or_else(|| format!("unknown dtype '{s}'"))?
                }
                None => declared,
                Some(_) => return Err("\"dtype\" must be a string".into()),
            };
            let data = m.get("data").ok_or("a tensor object needs \"data\"")?;
            let shape = match m.get("shape") {
                Some(Json::Array(a)) => Some(
                    a.iter()
                        .map(|d| d.as_u64().map(|d| d as usize).ok_or("bad shape"))
                        .collect::<Result<Vec<_>, _>>()?,
                ),
                None => None,
                Some(_) => return Err("\"shape\" must be an array".into()),
            };
            (dtype, shape, data)
        }
        _ => (declared, None, v),
    };
    let mut flat = Vec::new();
    let nested = nested_shape(data, &mut flat)?;
    let shape = match shape {
        Some(s) => {
            let n: usize = s.iter().product();
            if n != flat.len() {
                return Err(format!(
                    "shape {s:?} holds {n} values, data has {}",
                    flat.len()
                ));
            }
            s
        }
        None => nested,
    };
    let bad = |what: &str| format!("a {dtype} tensor cannot hold {what}");
    let t = match dtype {
        DType::Str => Tensor::from_vec(
            shape,
            flat.iter()
                .map(|x| {
                    x.as_str()
                        .map(String::from)
                        .ok_or_else(|| bad("a non-string"))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        DType::Bool => Tensor::from_vec(
            shape,
            flat.iter()
                .map(|x| x.as_bool().ok_or_else(|| bad("a non-boolean")))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        d if d.is_int() => Tensor::from_vec(
            shape,
            flat.iter()
                .map(|x| x.as_i64().ok_or_else(|| bad(&format!("{x}"))))
                .collect::<Result<Vec<_>, _>>()?,
        )
        .and_then(|t| t.cast(d)),
        d => Tensor::from_vec(
            shape,
            flat.iter()
                .map(|x| match x {
                    Json::Null => Ok(f64::NAN),
                    _ => x.as_f64().ok_or_else(|| bad(&format!("{x}"))),
                })
                .collect::<Result<Vec<_>, _>>()?,
        )
        .and_then(|t| t.cast(d)),
    };
    t.map_err(|e| e.to_string())
}

/// Flattens a nested array, checking that it is rectangular; returns its shape.
fn nested_shape<'a>(v: &'a Json, flat: &mut Vec<&'a Json>) -> Result<Vec<usize>, String> {
    let Json::Array(a) = v else {
        flat.push(v);
        return Ok(Vec::new());
    };
    let mut inner: Option<Vec<usize>> = None;
    for x in a {
        let s = nested_shape(x, flat)?;
        match &inner {
            Some(i) if *i != s => return Err("a ragged nested array".into()),
            _ => inner = Some(s),
        }
    }
    let mut shape = vec![a.len()];
    shape.extend(inner.unwrap_or_default());
    Ok(shape)
}

/// The progress line: a bar with rate and ETA on a terminal, a line every few seconds
/// otherwise (logs).
struct Progress {
    total: usize,
    quiet: bool,
    tty: bool,
    started: Instant,
    last: Instant,
}

impl Progress {
    fn new(total: usize, quiet: bool) -> Progress {
        let now = Instant::now();
        Progress {
            total,
            quiet,
            tty: std::io::stderr().is_terminal(),
            started: now,
            last: now,
        }
    }

    fn line(&self, done: usize) -> String {
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        let left = self.total.saturating_sub(done);
        let eta = if rate > 0.0 {
            format!("ETA {}", clock(left as f64 / rate))
        } else {
            "ETA ?".into()
        };
        let frac = if self.total == 0 {
            1.0
        } else {
            done as f64 / self.total as f64
        };
        let filled = (frac * 30.0).round() as usize;
        format!(
            "[{}{}] {:>3.0}% {done}/{} {rate:.1}/s {eta}",
            "#".repeat(filled),
            "-".repeat(30 - filled.min(30)),
            frac * 100.0,
            self.total
        )
    }

    fn update(&mut self, done: usize) {
        let every = if self.tty {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(5)
        };
        if self.quiet || self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        let mut e = std::io::stderr().lock();
        if self.tty {
            let _ = write!(e, "\r{}", self.line(done));
        } else {
            let _ = writeln!(e, "{}", self.line(done));
        }
    }

    fn finish(&mut self, done: usize) {
        if self.quiet || self.total == 0 {
            return;
        }
        let line = self.line(done);
        let mut e = std::io::stderr().lock();
        let _ = writeln!(e, "{}{line}", if self.tty { "\r" } else { "" });
    }
}

fn clock(secs: f64) -> String {
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_ids_stably() {
        let ids: Vec<String> = (0..1000).map(|i| format!("img-{i}")).collect();
        let counts = (0..4)
            .map(|s| ids.iter().filter(|id| shard_of(id, 4) == s).count())
            .collect::<Vec<_>>();
        assert_eq!(counts.iter().sum::<usize>(), 1000);
        assert!(counts.iter().all(|&c| c > 200), "{counts:?}");
        assert_eq!(parse_shard("1/3"), Ok((1, 3)));
        assert!(parse_shard("3/3").is_err() && parse_shard("1").is_err());
    }

    #[test]
    fn json_tensors() {
        let v: Json = serde_json::from_str("[[1, 2], [3, 4]]").unwrap();
        let t = json_tensor(&v, DType::F32).unwrap();
        assert_eq!(t.shape(), &[2, 2]);
        assert_eq!(t.to_f32_vec().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
        let v: Json =
            serde_json::from_str(r#"{"dtype": "int64", "shape": [1, 3], "data": [1, 2, 3]}"#)
                .unwrap();
        let t = json_tensor(&v, DType::F32).unwrap();
        assert_eq!((t.dtype(), t.shape()), (DType::I64, &[1usize, 3][..]));
        let ragged: Json = serde_json::from_str("[[1, 2], [3]]").unwrap();
        assert!(json_tensor(&ragged, DType::F32).is_err());
        let wrong: Json = serde_json::from_str("[1.5]").unwrap();
        assert!(json_tensor(&wrong, DType::I64).is_err());
        assert_eq!(sha256_hex(b"abc")[..16], *"ba7816bf8f01cfea");
    }
}
