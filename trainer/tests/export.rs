//! Export parity: the bundle's graphs, run by the controller's runtime (tract, native),
//! compute what the burn networks compute, and the whole selected action matches
//! `Agent::act` for the same seed. (onnxruntime and `onnx.checker` are run on synthetic
//! bundles built by the same graph builders, in controller/tests/interop.rs, not on these.)

use burn::module::AutodiffModule;
use burn::tensor::Tensor;
use controller::runtime::{Backend, Policy, PolicyOptions};
use shared_model::Trust;
use sim::rng::Rng;
use std::path::Path;
use trainer::agent::Agent;
use trainer::config::Config;
use trainer::export::{ExportInfo, check_parity, export_bundle};
use trainer::nets::tensor2;
use trainer::replay::{Batch, Normalizer, Replay, sample_mixed};

const TOL: f32 = 1e-4;

fn agent(preset: &str, overrides: &[&str]) -> Agent {
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    let c = Config::resolve(preset, None, &overrides).unwrap();
    let spec = c.task.sim().unwrap().spec();
    let (od, ad) = (spec.obs_dim(), spec.action_dim());
    let mut rng = Rng::new(5);
    // A non-trivial normalization, so the test covers it.
    let normalizer = Normalizer {
        mean: (0..od).map(|_| rng.range(-0.5, 0.5)).collect(),
        std: (0..od).map(|_| rng.range(0.5, 2.0)).collect(),
    };
    let device = trainer::run::device(&c).unwrap();
    Agent::new(c, od, ad, normalizer, &device)
}

fn host(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Per-graph outputs of burn and of a runtime backend on random inputs, as every export
/// checks them before writing (`check_parity`), here on the bundle as written and on
/// other inputs than the export's.
fn check_graphs(agent: &Agent, bundle: &Path, backend: Backend) {
    let b = shared_model::load_bundle(bundle, &Trust::AllowUnsigned).unwrap();
    let worst = check_parity(agent, &b, backend, 77).unwrap();
    // (`check_parity` refuses anything past its tolerance.) On the CPU in f32 the
    // graphs agree far inside it: 0.1% to 0.24% of it measured (2026-12-06, the
    // denoiser on N(0, 1) actions); a twentieth leaves room for other CPUs' rounding
    // and catches a drift toward it.
    assert!(worst < 0.05, "{backend:?}: {worst} of the tolerance");
}

/// Whole EXPO actions: the runtime and `Agent::act` with the same seed draw the same
/// noise and subsets, so they must pick the same candidate.
fn check_actions(agent: &mut Agent, bundle: &Path, backend: Backend) {
    let b = shared_model::load_bundle(bundle, &Trust::AllowUnsigned).unwrap();
    let seed = 99;
    let mut policy = Policy::new(
        &b,
        &PolicyOptions {
            backend,
            executed_steps: None,
            seed,
        },
    )
    .unwrap();
    agent.act_rng = Rng::new(seed);
    let task = agent.config.task.sim().unwrap();
    let mut env = sim::make_env(task, sim::EnvConfig::default());
    let mut obs = vec![0.0; agent.obs_dim];
    env.reset(3, &mut obs);
    let mut worst = 0.0f32;
    for step in 0..20 {
        let want = agent.act(&obs);
        let mut got = vec![0.0; agent.act_dim];
        policy.act(&obs, &mut got).unwrap();
        // The runtime clamps to the action bounds; an edited candidate may overshoot.
        let want: Vec<f32> = want.iter().map(|v| v.clamp(-1.0, 1.0)).collect();
        let d = max_diff(&want, &got);
        assert!(
            d < TOL,
            "{backend:?} action {step}: burn {want:?} vs runtime {got:?}"
        );
        worst = worst.max(d);
        let mut next = obs.clone();
        // (With an action chunk, its first action.)
        env.step(&got[..policy.act_dim()], &mut next);
        obs = next;
    }
    eprintln!("{backend:?}: 20 actions, max |diff| {worst:e}");
}

/// A few updates on scripted demonstrations, with copies that follow fast: the EMA
/// denoiser and the target critics then differ from the online networks, and the layer
/// norms' scales and shifts are no longer 1 and 0 (a fresh agent exported with the wrong
/// copies, or without the norms' parameters, would still match).
fn train(agent: &mut Agent, updates: usize) {
    let offline = trainer::run::offline_data(&agent.config).unwrap().replay;
    let empty = Replay::new(agent.obs_dim, agent.act_dim, 1);
    let (utd, batch_size) = (agent.config.optim.utd, agent.config.optim.batch_size);
    let mut batch = Batch::default();
    let mut rng = Rng::new(11);
    for _ in 0..updates {
        sample_mixed(&mut rng, &offline, &empty, 1.0, utd, batch_size, &mut batch);
        agent.update(&batch).unwrap();
    }
    let dev = trainer::run::device(&agent.config).unwrap();
    let (od, ad, n) = (agent.obs_dim, agent.act_dim, 8);
    let (x, obs) = (&batch.act[..n * ad], &batch.obs[..n * od]);
    let denoised = |d: &trainer::nets::Denoiser| {
        host(d.forward(
            tensor2(x.to_vec(), n, ad, &dev),
            tensor2(obs.to_vec(), n, od, &dev),
            tensor2(vec![1.0; n], n, 1, &dev),
        ))
    };
    let online = denoised(&agent.denoiser().valid());
    let d = max_diff(&online, &denoised(agent.denoiser_ema()));
    assert!(d > 100.0 * TOL, "EMA denoiser only {d} from the online one");
    let input: Vec<f32> = (0..n)
        .flat_map(|i| [&obs[i * od..(i + 1) * od], &x[i * ad..(i + 1) * ad]].concat())
        .collect();
    let q = |c: &trainer::nets::CriticEnsemble| {
        host(c.forward_members(tensor2(input.clone(), n, od + ad, &dev), None))
    };
    let online = q(&agent.critic().unwrap().valid());
    let d = max_diff(&online, &q(agent.critic_target().unwrap()));
    assert!(
        d > 100.0 * TOL,
        "target critics only {d} from the online ones"
    );
}

/// A simulated task's bundle names its actions (format 6), and is stamped no earlier
/// than `not_before_unix` (a live session's bundles stay in order when the trainer's
/// clock steps back).
#[test]
fn a_bundle_names_its_actions_and_is_stamped_in_order() {
    let agent = agent("tiny", &["task=push"]);
    let dir = tempfile::tempdir().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let m = export_bundle(&agent, &dir.path().join("a"), &ExportInfo::default(), None).unwrap();
    assert_eq!(m.action.names, ["vx_command", "vy_command"]);
    assert_eq!(m.format_version, 6);
    assert!(m.provenance.created_unix >= now);
    let later = now + 3600;
    let info = ExportInfo {
        not_before_unix: later,
        ..ExportInfo::default()
    };
    let m = export_bundle(&agent, &dir.path().join("b"), &info, None).unwrap();
    assert_eq!(m.provenance.created_unix, later);
}

#[test]
fn exported_bundle_matches_burn() {
    for head in ["tanh", "clip"] {
        let mut agent = agent(
            "cpu",
            &[
                "task=push",
                "diffusion.ema_rate=0.5",
                "optim.tau=0.5",
                &format!("expo.log_std=\"{head}\""),
            ],
        );
        train(&mut agent, 3);
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle");
        let m = export_bundle(&agent, &bundle, &ExportInfo::default(), None).unwrap();
        for backend in [Backend::Tract, Backend::Native] {
            check_graphs(&agent, &bundle, backend);
            check_actions(&mut agent, &bundle, backend);
        }
        if head == "tanh" {
            // Networks that are not the bundle's fail the check, by graph: the one every
            // export runs before writing.
            let mut moved = self::agent(
                "cpu",
                &["task=push", "diffusion.ema_rate=0.5", "optim.tau=0.5"],
            );
            train(&mut moved, 1);
            let b = shared_model::load_bundle(&bundle, &Trust::AllowUnsigned).unwrap();
            let e = format!(
                "{:#}",
                check_parity(&moved, &b, Backend::Tract, 77).unwrap_err()
            );
            assert!(
                e.contains("Tract runs the exported denoiser at step 0 differently from burn"),
                "{e}"
            );
        }
        // Every export says the rate it was trained at (push: 20 Hz), format 5, and a
        // simulated task's its action names, format 6. Without them, a clipped head is
        // format 4: a controller that knows only the tanh head refuses the bundle by its
        // version instead of running another function.
        let manifest = bundle.join("manifest.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        assert_eq!((m.format_version, m.action.control_hz), (6, Some(20)));
        assert!(text.contains("control_hz = 20\n"), "{text}");
        let mut without_rate = m.clone();
        without_rate.action.control_hz = None;
        without_rate.action.names.clear();
        if head == "clip" {
            assert_eq!(without_rate.required_format(), 4);
            assert!(text.contains("edit_log_std = \"clip\""), "{text}");
            let mut t: toml::Table = toml::from_str(&text).unwrap();
            t.insert("format_version".into(), toml::Value::Integer(3));
            let action = t["action"].as_table_mut().unwrap();
            action.remove("control_hz").unwrap();
            action.remove("names").unwrap();
            std::fs::write(&manifest, toml::to_string(&t).unwrap()).unwrap();
            let e = shared_model::load_bundle(&bundle, &shared_model::Trust::AllowUnsigned)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("edit_log_std = \"clip\" needs format_version 4"),
                "{e}"
            );
        } else {
            assert_eq!(without_rate.required_format(), 1);
            assert!(!text.contains("edit_log_std"), "{text}");
        }
    }
}

#[test]
fn exported_chunk_bundle_matches_burn() {
    // Action chunks of 3: the networks act on 3 × 2 values; the manifest says so
    // (format 2), and the runtime's chunk is the agent's.
    let one = agent("cpu", &["task=push"]);
    let mut agent = agent("cpu", &["task=push", "action_horizon=3"]);
    assert_eq!(agent.act_dim, 6);
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    let m = export_bundle(&agent, &bundle, &ExportInfo::default(), None).unwrap();
    // Without the rate every export carries (format 5) and a simulated task's action
    // names (format 6), each of these is the oldest format that holds what it uses.
    let format_without_rate = |m: &shared_model::Manifest| {
        let mut m = m.clone();
        m.action.control_hz = None;
        m.action.names.clear();
        m.required_format()
    };
    assert_eq!(
        (format_without_rate(&m), m.action.dim, m.action.horizon),
        (2, 2, 3)
    );
    let text = std::fs::read_to_string(bundle.join("manifest.toml")).unwrap();
    assert!(text.contains("horizon = 3"), "{text}");
    for backend in [Backend::Tract, Backend::Native] {
        check_graphs(&agent, &bundle, backend);
        check_actions(&mut agent, &bundle, backend);
    }
    // A run that replanned every 2 actions says so (format 3): the controller and
    // `trainer eval --bundle` play the bundle that way unless told otherwise.
    agent.config.replan_every = 2;
    let m = export_bundle(&agent, &dir.path().join("k2"), &ExportInfo::default(), None).unwrap();
    assert_eq!((format_without_rate(&m), m.action.replan_every), (3, 2));
    // Replanning every H actions is whole chunks: no field, format 2 as before.
    agent.config.replan_every = 3;
    let m = export_bundle(&agent, &dir.path().join("k3"), &ExportInfo::default(), None).unwrap();
    assert_eq!((format_without_rate(&m), m.action.replan_every), (2, 0));
    agent.config.replan_every = 0;
    // A one-step bundle stays format 1 (6 with the rate and names), without the field.
    let m = export_bundle(&one, &dir.path().join("one"), &ExportInfo::default(), None).unwrap();
    assert_eq!((format_without_rate(&m), m.action.horizon), (1, 1));
    assert_eq!(m.format_version, 6);
    let text = std::fs::read_to_string(dir.path().join("one/manifest.toml")).unwrap();
    assert!(!text.contains("horizon"), "{text}");
}
