//! The streaming API on silero VAD's 17 s clip: pushed in chunks of odd sizes, run whole,
//! the per-window probabilities are identical, and they match onnxruntime's frame by frame.

use edgepredict::api::io::read_npy;
use edgepredict::api::stream::{predict_windows, Stream, StreamSpec};
use edgepredict::{Model, Tensor};
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn npy(p: &Path) -> Tensor {
    read_npy(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

fn silero() -> Option<(Model, PathBuf)> {
    let model = root().join(".cache/models/silero_vad.onnx");
    let dir = root().join(".cache/reference/silero_vad");
    if !model.exists() || !dir.join("clip.npy").exists() {
        assert!(
            std::env::var_os("EDGEPREDICT_REQUIRE_MODELS").is_none(),
            "silero_vad or its clip missing: run tools/setup.sh"
        );
        eprintln!("skip: silero_vad not fetched");
        return None;
    }
    Some((Model::load(&std::fs::read(model).unwrap()).unwrap(), dir))
}

fn spec(model: &Model) -> StreamSpec {
    StreamSpec {
        input: "input".into(),
        hop: 512,
        context: 64,
        state: StreamSpec::detect_state(model),
        fixed: vec![("sr".into(), Tensor::scalar(16000i64))],
    }
}

fn probs(windows: &[Vec<(String, Tensor)>]) -> Vec<f32> {
    windows
        .iter()
        .map(|w| {
            assert_eq!(w.len(), 1, "the state output is fed back, not returned");
            assert_eq!(w[0].0, "output");
            w[0].1.to_f32_vec().unwrap()[0]
        })
        .collect()
}

#[test]
fn silero_streamed_equals_batch_and_onnxruntime() {
    let Some((model, dir)) = silero() else {
        return;
    };
    assert_eq!(
        StreamSpec::detect_state(&model),
        [("state".to_string(), "stateN".to_string())]
    );
    let clip = npy(&dir.join("clip.npy")).to_f32_vec().unwrap();
    let want = npy(&dir.join("probs.npy")).to_f32_vec().unwrap();
    // onnxruntime's reference stops at the last whole chunk.
    let clip = &clip[..want.len() * 512];

    let batch = probs(&predict_windows(&model, spec(&model), clip).unwrap());
    assert_eq!(batch.len(), want.len());

    let mut stream = Stream::new(&model, spec(&model)).unwrap();
    let mut streamed = Vec::new();
    let sizes = [1usize, 7, 100, 512, 1000, 333, 2048];
    let (mut at, mut k) = (0, 0);
    while at < clip.len() {
        let n = sizes[k % sizes.len()].min(clip.len() - at);
        streamed.extend(probs(&stream.push(&clip[at..at + n]).unwrap()));
        at += n;
        k += 1;
    }
    streamed.extend(probs(&stream.finish().unwrap()));
    assert_eq!(
        streamed, batch,
        "streamed and batch windows must be identical"
    );

    let max_d = batch
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!(
        "{} windows, max difference from onnxruntime {max_d:.2e}",
        batch.len()
    );
    assert!(max_d <= 1e-4, "{max_d}");

    // After a reset the stream starts over.
    stream.reset().unwrap();
    let again = probs(&stream.push(&clip[..512 * 4]).unwrap());
    assert_eq!(again, batch[..4]);
}

#[test]
fn a_partial_last_window_is_padded_and_bad_specs_are_errors() {
    let Some((model, _)) = silero() else {
        return;
    };
    let mut s = Stream::new(&model, spec(&model)).unwrap();
    assert!(s.push(&[0.0; 300]).unwrap().is_empty());
    assert_eq!(s.finish().unwrap().len(), 1);
    assert!(s.finish().unwrap().is_empty());
    for bad in [
        StreamSpec {
            input: "nope".into(),
            ..spec(&model)
        },
        StreamSpec {
            hop: 0,
            ..spec(&model)
        },
        StreamSpec {
            state: vec![("state".into(), "missing".into())],
            ..spec(&model)
        },
    ] {
        assert!(Stream::new(&model, bad).is_err());
    }
}
