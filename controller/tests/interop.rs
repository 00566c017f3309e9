//! The exported graphs pass `onnx.checker` and onnxruntime (Python) reproduces what the
//! Rust runtime computes. Needs `python3` with onnx and onnxruntime
//! (requirements-test.txt; `.ci/run` installs them).

use controller::runtime::{Backend, GraphRows, load_networks};
use serde_json::json;
use shared_model::graphs::LogStdHead;
use shared_model::manifest::{Trust, load_bundle};
use shared_model::synthetic::SyntheticSpec;
use std::process::Command;

fn tensor(shape: &[usize], data: &[f32]) -> serde_json::Value {
    json!({"shape": shape, "dtype": "f32", "data": data})
}

#[test]
fn onnx_checker_and_onnxruntime_agree_with_the_runtime() {
    for log_std in [LogStdHead::Tanh, LogStdHead::Clip] {
        let mut spec = SyntheticSpec::cpu();
        spec.networks.edit_log_std = log_std;
        check_against_onnxruntime(spec);
    }
}

fn check_against_onnxruntime(spec: SyntheticSpec) {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    spec.write(&bundle, 21, None).unwrap();
    let b = load_bundle(&bundle, &Trust::AllowUnsigned).unwrap();
    let rows = GraphRows::for_manifest(&b.manifest);
    let mut nets = load_networks(Backend::Tract, &b, rows).unwrap();
    let (od, ad) = (b.manifest.observation.dim, b.manifest.action.dim);
    let obs: Vec<f32> = (0..od).map(|i| (i as f32 * 0.7).sin()).collect();
    let x: Vec<f32> = (0..rows.denoise * ad)
        .map(|i| (i as f32 * 0.3).cos())
        .collect();
    let mut eps = vec![0.0; x.len()];
    nets.denoise(&obs, &x, 3.0, &mut eps).unwrap();
    let base = &x[..rows.edit * ad];
    let (mut mean, mut log_std) = (vec![0.0; base.len()], vec![0.0; base.len()]);
    nets.edit(&obs, base, &mut mean, &mut log_std).unwrap();
    let acts: Vec<f32> = (0..rows.score * ad)
        .map(|i| (i as f32 * 0.2).sin())
        .collect();
    let members = [4i64, 1];
    let mut q = vec![0.0; 2 * rows.score];
    nets.critic(&obs, &acts, &members, &mut q).unwrap();
    let fixture = json!({
        "denoiser": {
            "inputs": {
                "obs": tensor(&[1, od], &obs),
                "noisy_action": tensor(&[rows.denoise, ad], &x),
                "t": tensor(&[1, 1], &[3.0]),
            },
            "outputs": {"eps": tensor(&[rows.denoise, ad], &eps)},
        },
        "edit": {
            "inputs": {
                "obs": tensor(&[1, od], &obs),
                "base_action": tensor(&[rows.edit, ad], base),
            },
            "outputs": {
                "mean": tensor(&[rows.edit, ad], &mean),
                "log_std": tensor(&[rows.edit, ad], &log_std),
            },
        },
        "critic": {
            "inputs": {
                "obs": tensor(&[1, od], &obs),
                "action": tensor(&[rows.score, ad], &acts),
                "members": {"shape": [2], "dtype": "i64", "data": members},
            },
            "outputs": {"q": tensor(&[2, rows.score], &q)},
        },
    });
    let fixture_path = dir.path().join("fixture.json");
    std::fs::write(&fixture_path, fixture.to_string()).unwrap();
    let script = crate_dir().join("tests/interop/check_bundle.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&bundle)
        .arg(&fixture_path)
        .output()
        .expect("python3 (with onnx and onnxruntime, see requirements-test.txt)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "check_bundle.py failed:\n{text}");
    assert_eq!(text.matches("onnx.checker ok").count(), 4, "{text}");
    eprintln!("{text}");
}

/// This crate's directory as cargo sets it at run time: `env!` keeps the checkout the
/// test was compiled in, and cargo reuses a shared target directory's tests after a move.
fn crate_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
        .into()
}
