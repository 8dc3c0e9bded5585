//! `edgepredict batch` and `lookup` end to end on real models (issue #7): stacked batch
//! predictions equal one-by-one runs, a re-run skips what is stored, a job killed midway
//! resumes without losing or duplicating a row, shards split a job, a changed model drops
//! its predecessor's rows, and a bad input fails alone.

mod support;

use edgepredict::api::io::{read_npy, write_npy};
use edgepredict::{Model, Tensor};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("edgepredict-batch-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn cli(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgepredict"))
        .args(args.iter().map(|a| a.as_ref()))
        .current_dir(root())
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {err}",
        o.status,
        String::from_utf8_lossy(&o.stdout)
    );
    err
}

fn count(store: &Path, table: &str) -> usize {
    let db = rusqlite::Connection::open(store).unwrap();
    db.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
        r.get::<_, i64>(0)
    })
    .unwrap() as usize
}

fn ids(store: &Path) -> Vec<String> {
    let db = rusqlite::Connection::open(store).unwrap();
    let mut q = db
        .prepare("SELECT input_id FROM predictions ORDER BY input_id")
        .unwrap();
    let v = q
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<Vec<String>, _>>()
        .unwrap();
    v
}

/// One stored prediction: (output name, shape, values) per output.
type Stored = Vec<(String, Vec<usize>, Vec<f64>)>;

/// `lookup`'s JSON lines, in the order of `ids`.
fn lookup(model: &Path, store: &Path, ids: &[String]) -> Vec<Stored> {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"lookup", &model, &"--store", &store];
    for id in ids {
        args.push(id);
    }
    let o = cli(&args);
    ok(&o);
    let text = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), ids.len());
    lines
        .iter()
        .zip(ids)
        .map(|(l, id)| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["id"].as_str(), Some(id.as_str()));
            v["outputs"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(n, t)| {
                    let shape = t["shape"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|d| d.as_u64().unwrap() as usize)
                        .collect();
                    let data = t["data"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_f64().unwrap_or(f64::NAN))
                        .collect();
                    (n.clone(), shape, data)
                })
                .collect()
        })
        .collect()
}

/// A stored prediction against a one-by-one run of the same inputs in this process.
fn assert_matches_single(
    model: &Model,
    feeds: &[(String, Tensor)],
    got: &[(String, Vec<usize>, Vec<f64>)],
    what: &str,
) {
    let refs: Vec<(&str, Tensor)> = feeds.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let want = model.run(&refs).unwrap();
    assert_eq!(want.len(), got.len(), "{what}: outputs");
    for (name, t) in &want {
        let (_, shape, data) = got
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("{what}: no output {name}"));
        assert_eq!(shape.as_slice(), t.shape(), "{what}: {name} shape");
        for (x, y) in data.iter().zip(t.to_f64_vec().unwrap()) {
            assert!(
                (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                "{what}: {name}: stored {x}, one-by-one {y}"
            );
        }
    }
}

fn load(p: &Path) -> Model {
    Model::load(&std::fs::read(p).unwrap()).unwrap()
}

fn set_feeds(dir: &Path) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, read_npy(&std::fs::read(&p).unwrap()).unwrap())
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn minilm_sets_stack_match_single_runs_and_rerun_skips() {
    let Some(p) = support::require(
        "minilm",
        &[
            ".cache/models/minilm_l3.onnx",
            ".cache/compress-data/minilm_l3/eval",
        ],
    ) else {
        return;
    };
    let (model, data) = (&p[0], &p[1]);
    let dir = tmp("minilm");
    let store = dir.join("s.sqlite");
    let args: [&dyn AsRef<std::ffi::OsStr>; 9] = [
        &"batch",
        model,
        &"--inputs",
        data,
        &"--store",
        &store,
        &"--threads",
        &"2",
        &"--quiet",
    ];
    let err = ok(&cli(&args));
    assert!(err.contains("24 predicted, 0 failed, 0 skipped"), "{err}");
    assert!(err.contains("stacked per run"), "{err}");
    let stored = ids(&store);
    assert_eq!(stored.len(), 24);
    let m = load(model);
    for (id, got) in stored.iter().zip(lookup(model, &store, &stored)) {
        assert_matches_single(&m, &set_feeds(&data.join(id)), &got, id);
    }
    // Everything is stored for this model: a re-run runs nothing.
    let err = ok(&cli(&args));
    assert!(err.contains("0 predicted, 0 failed, 24 skipped"), "{err}");
    assert_eq!(count(&store, "predictions"), 24);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_killed_job_resumes_without_losing_or_duplicating_rows() {
    let Some(p) = support::require("ppocr_rec", &[".cache/models/ppocr_rec.onnx"]) else {
        return;
    };
    let model = &p[0];
    let dir = tmp("resume");
    let inputs = dir.join("in");
    std::fs::create_dir_all(&inputs).unwrap();
    // Text-line crops of two widths, so stacking groups them by shape.
    let n = 120;
    let mut s: u32 = 7;
    for i in 0..n {
        let w = if i % 3 == 0 { 160 } else { 320 };
        let v: Vec<f32> = (0..3 * 48 * w)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect();
        let t = Tensor::from_vec(vec![1, 3, 48, w], v).unwrap();
        std::fs::write(
            inputs.join(format!("line{i:03}.npy")),
            write_npy(&t).unwrap(),
        )
        .unwrap();
    }
    let store = dir.join("s.sqlite");
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgepredict"))
        .args(["batch".as_ref(), model.as_os_str()])
        .args([
            "--inputs".as_ref(),
            inputs.as_os_str(),
            "--store".as_ref(),
            store.as_os_str(),
        ])
        .args(["--threads", "1", "--batch-size", "4", "--quiet"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it (SIGKILL: no clean-up of any kind) once some rows are in.
    let t0 = Instant::now();
    let mut at_kill = 0;
    while t0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
        if store.exists() {
            let c = rusqlite::Connection::open(&store)
                .and_then(|db| {
                    db.query_row("SELECT count(*) FROM predictions", [], |r| {
                        r.get::<_, i64>(0)
                    })
                })
                .unwrap_or(0);
            if c > 0 {
                child.kill().unwrap();
                at_kill = c as usize;
                break;
            }
        }
    }
    child.wait().unwrap();
    let kept = count(&store, "predictions");
    assert!(
        at_kill > 0 && kept >= at_kill,
        "killed at {at_kill} rows, kept {kept}"
    );
    assert!(
        kept < n,
        "the job finished before it was killed; nothing was resumed"
    );
    let err = ok(&cli(&[
        &"batch",
        model,
        &"--inputs",
        &inputs,
        &"--store",
        &store,
        &"--threads",
        &"2",
    ]));
    assert!(
        err.contains(&format!("{} predicted, 0 failed, {kept} skipped", n - kept)),
        "{err}"
    );
    let stored = ids(&store);
    let want: Vec<String> = (0..n).map(|i| format!("line{i:03}")).collect();
    assert_eq!(stored, want, "every input exactly once");
    // Rows from before and after the kill are both right.
    let m = load(model);
    let probe = [want[0].clone(), want[n - 1].clone(), want[n / 2].clone()];
    for (id, got) in probe.iter().zip(lookup(model, &store, &probe)) {
        let x = read_npy(&std::fs::read(inputs.join(format!("{id}.npy"))).unwrap()).unwrap();
        assert_matches_single(&m, &[("x".into(), x)], &got, id);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn shards_split_a_job_and_a_changed_model_drops_old_rows() {
    let Some(p) = support::require(
        "ppocr_cls",
        &[
            ".cache/models/ppocr_cls.onnx",
            ".cache/models/int8/ppocr_cls_dyn.onnx",
            ".cache/compress-data/ppocr_cls/eval",
        ],
    ) else {
        return;
    };
    let (float, int8, data) = (&p[0], &p[1], &p[2]);
    let dir = tmp("shards");
    let store = dir.join("s.sqlite");
    let mut per_shard = Vec::new();
    for i in 0..3 {
        let shard = format!("{i}/3");
        let err = ok(&cli(&[
            &"batch",
            float,
            &"--inputs",
            data,
            &"--store",
            &store,
            &"--shard",
            &shard,
            &"--name",
            &"cls",
            &"--quiet",
        ]));
        let line = err
            .lines()
            .find(|l| l.contains(" predicted, "))
            .unwrap()
            .to_string();
        per_shard.push(line.split(' ').next().unwrap().parse::<usize>().unwrap());
    }
    assert_eq!(per_shard.iter().sum::<usize>(), 24, "{per_shard:?}");
    assert!(per_shard.iter().all(|&c| c > 0 && c < 24), "{per_shard:?}");
    assert_eq!(count(&store, "predictions"), 24);
    // Same job name, another model: the float model's rows are stale.
    let err = ok(&cli(&[
        &"batch",
        int8,
        &"--inputs",
        data,
        &"--store",
        &store,
        &"--name",
        &"cls",
        &"--quiet",
    ]));
    assert!(
        err.contains("the model changed: 24 stale predictions dropped"),
        "{err}"
    );
    assert!(err.contains("24 predicted"), "{err}");
    assert_eq!(count(&store, "predictions"), 24);
    // The float model has nothing stored any more.
    let o = cli(&[&"lookup", float, &"--store", &store, &"set_000"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no prediction of this model"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn jsonl_inputs_and_a_bad_line_that_fails_alone() {
    let model = root().join("models/digits_mlp.onnx");
    let x = read_npy(&std::fs::read(root().join("models/digits_test.npy")).unwrap()).unwrap();
    let labels = read_npy(&std::fs::read(root().join("models/digits_test_labels.npy")).unwrap())
        .unwrap()
        .to_i64_vec()
        .unwrap();
    let cols = x.shape()[1];
    let rows: Vec<Vec<f32>> = x
        .to_f32_vec()
        .unwrap()
        .chunks(cols)
        .map(|r| r.to_vec())
        .collect();
    let dir = tmp("jsonl");
    let mut jsonl = String::new();
    for (i, r) in rows.iter().enumerate() {
        let line = match i % 3 {
            // Three ways to write a tensor: a nested array with the batch dim, a flat array
            // without it, an object with dtype and shape.
            0 => serde_json::json!({"id": format!("d{i}"), "inputs": {"X": [r]}}),
            1 => serde_json::json!({"id": format!("d{i}"), "X": r}),
            _ => serde_json::json!({"id": format!("d{i}"), "inputs": {"X":
                {"dtype": "float32", "shape": [1, cols], "data": r}}}),
        };
        jsonl.push_str(&line.to_string());
        jsonl.push('\n');
    }
    jsonl.push_str(r#"{"id": "short", "X": [1, 2, 3]}"#);
    jsonl.push('\n');
    let file = dir.join("in.jsonl");
    std::fs::write(&file, jsonl).unwrap();
    let store = dir.join("s.sqlite");
    let o = cli(&[
        &"batch",
        &model,
        &"--inputs",
        &file,
        &"--store",
        &store,
        &"--quiet",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a failed input fails the job: {err}");
    assert!(
        err.contains("1 input(s) failed") && err.contains("short"),
        "{err}"
    );
    assert_eq!(count(&store, "predictions"), rows.len());
    assert_eq!(count(&store, "failures"), 1);
    let ids: Vec<String> = (0..rows.len()).map(|i| format!("d{i}")).collect();
    let m = load(&model);
    let mut right = 0;
    for (i, got) in lookup(&model, &store, &ids).iter().enumerate() {
        let t = Tensor::from_vec(vec![1, cols], rows[i].clone()).unwrap();
        assert_matches_single(&m, &[("X".into(), t)], got, &ids[i]);
        let label = got.iter().find(|(n, _, _)| n == "label").unwrap();
        right += usize::from(label.2[0] as i64 == labels[i]);
    }
    // The model's held-out accuracy, through the store.
    assert!(right * 100 >= rows.len() * 90, "{right}/{}", rows.len());
    // Files refused before anything runs: a line that is not JSON (named by its number),
    // and two lines with one id, which would collide in the store.
    let broken = dir.join("broken.jsonl");
    let refused = |text: &str, why: &str| {
        std::fs::write(&broken, text).unwrap();
        let store = dir.join("b.sqlite");
        let o = cli(&[&"batch", &model, &"--inputs", &broken, &"--store", &store]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(why), "{err}");
    };
    refused("{\"id\": 1, \"X\": [0]}\n{\"id\": 2, \"X\": [\n", "line 2");
    refused(
        "{\"id\": 1, \"X\": [0]}\n{\"id\": 1, \"X\": [1]}\n",
        "appears twice",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
