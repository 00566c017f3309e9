//! The runtime on synthetic bundles: backends agree, truncated and two-speed modes act,
//! and every kind of bad bundle is refused with its own error while a loaded policy
//! keeps working.

use anyhow::Result;
use controller::runtime::{
    Backend, GraphRows, Networks, Policy, PolicyOptions, TwoSpeedPolicy, backend_differences,
    load_networks, reload,
};
use shared_model::VerifiedBundle;
use shared_model::manifest::{
    BundleError, MANIFEST_FILE, SIGNATURE_FILE, SigningKey, Trust, load_bundle, sha256_hex,
};
use shared_model::onnx::{ModelProto, TensorProto};
use shared_model::synthetic::SyntheticSpec;
use std::fs;
use std::path::Path;

/// A bundle format newer than this code reads.
const NEWER: i64 = shared_model::manifest::FORMAT_VERSION as i64 + 1;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn trust(seed: u8) -> Trust {
    Trust::Key(key(seed).verifying_key())
}

fn options(backend: Backend, seed: u64) -> PolicyOptions {
    PolicyOptions {
        backend,
        executed_steps: None,
        seed,
    }
}

fn obs(i: usize) -> Vec<f32> {
    (0..10).map(|j| ((i * 7 + j) as f32 * 0.37).sin()).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Networks whose critic is off by `off` (a kernel bug, a weight read otherwise) where
/// member 5 is asked for: neither the first nor the last of the synthetic ensemble.
struct OffCritic {
    inner: Box<dyn Networks>,
    off: f32,
}

impl Networks for OffCritic {
    fn denoise(&mut self, obs: &[f32], noisy: &[f32], t: f32, eps: &mut [f32]) -> Result<()> {
        self.inner.denoise(obs, noisy, t, eps)
    }
    fn edit(
        &mut self,
        obs: &[f32],
        base: &[f32],
        mean: &mut [f32],
        log_std: &mut [f32],
    ) -> Result<()> {
        self.inner.edit(obs, base, mean, log_std)
    }
    fn critic(
        &mut self,
        obs: &[f32],
        actions: &[f32],
        members: &[i64],
        q: &mut [f32],
    ) -> Result<()> {
        self.inner.critic(obs, actions, members, q)?;
        if let Some(j) = members.iter().position(|&m| m == 5) {
            // Member j's rows are `q[j * rows..(j + 1) * rows]`.
            q[(j + 1) * (q.len() / members.len()) - 1] += self.off;
        }
        Ok(())
    }
}

/// `controller check`'s comparison of backends: tract and native agree on every graph
/// of the synthetic bundle, well within the tolerance; a backend whose critic member 5
/// of 10 is off by 1 is found, by graph and backend (before, two orders of the members
/// reached only 0, 1 and 9), and one whose critic is NaN is refused by name (before,
/// each backend was only loaded and probed, so a kernel computing otherwise on the
/// robot's CPU passed the check).
#[test]
fn controller_check_compares_the_backends_graph_by_graph() {
    let dir = tempfile::tempdir().unwrap();
    SyntheticSpec::cpu()
        .write(dir.path(), 11, Some(&key(1)))
        .unwrap();
    let b = load_bundle(dir.path(), &trust(1)).unwrap();
    let rows = GraphRows::for_manifest(&b.manifest);
    let load = |backend| load_networks(backend, &b, rows).unwrap();
    let mut nets = vec![
        ("tract".to_string(), load(Backend::Tract)),
        ("native".to_string(), load(Backend::Native)),
    ];
    let d = backend_differences(&mut nets, &b.manifest, rows).unwrap();
    let graphs: Vec<&str> = d.iter().map(|d| d.graph).collect();
    assert_eq!(graphs, ["denoiser", "edit mean", "edit log_std", "critic"]);
    for d in &d {
        assert_eq!(d.backend, "native");
        assert!(d.within_tolerance() && d.max_abs < 1e-4, "{d:?}");
        assert!(d.scale >= 1.0, "{d:?}");
    }
    // At the paper's sizes (wider layers, longer sums) too.
    let paper = tempfile::tempdir().unwrap();
    SyntheticSpec::paper()
        .write(paper.path(), 12, None)
        .unwrap();
    let p = load_bundle(paper.path(), &Trust::AllowUnsigned).unwrap();
    let prows = GraphRows::for_manifest(&p.manifest);
    let mut wide = vec![
        (
            "tract".to_string(),
            load_networks(Backend::Tract, &p, prows).unwrap(),
        ),
        (
            "native".to_string(),
            load_networks(Backend::Native, &p, prows).unwrap(),
        ),
    ];
    for d in backend_differences(&mut wide, &p.manifest, prows).unwrap() {
        assert!(d.within_tolerance() && d.max_abs < 1e-4, "paper: {d:?}");
    }
    let off_by = |name: &str, off| {
        let nets: (String, Box<dyn Networks>) = (
            name.to_string(),
            Box::new(OffCritic {
                inner: load(Backend::Native),
                off,
            }),
        );
        nets
    };
    nets.push(off_by("off", 1.0));
    let d = backend_differences(&mut nets, &b.manifest, rows).unwrap();
    let off: Vec<_> = d.iter().filter(|d| !d.within_tolerance()).collect();
    assert_eq!(off.len(), 1, "{d:?}");
    assert_eq!((off[0].graph, off[0].backend.as_str()), ("critic", "off"));
    assert!((off[0].max_abs - 1.0).abs() < 1e-3, "{:?}", off[0]);
    // A NaN compares with nothing: refused, naming its backend (not the reference).
    nets.push(off_by("nan", f32::NAN));
    let e = backend_differences(&mut nets, &b.manifest, rows).unwrap_err();
    assert!(
        format!("{e:#}").starts_with("the nan backend's critic output ["),
        "{e:#}"
    );
}

#[test]
fn tract_and_native_agree_per_graph_and_per_action() {
    for (name, spec) in [
        ("cpu", SyntheticSpec::cpu()),
        ("paper", SyntheticSpec::paper()),
        ("cpu, clipped log-std", {
            let mut spec = SyntheticSpec::cpu();
            spec.networks.edit_log_std = shared_model::graphs::LogStdHead::Clip;
            spec
        }),
    ] {
        let dir = tempfile::tempdir().unwrap();
        spec.write(dir.path(), 11, Some(&key(1))).unwrap();
        let b = load_bundle(dir.path(), &trust(1)).unwrap();
        let rows = GraphRows::for_manifest(&b.manifest);
        let mut tract = load_networks(Backend::Tract, &b, rows).unwrap();
        let mut native = load_networks(Backend::Native, &b, rows).unwrap();
        let o: Vec<f32> = obs(1);
        let x: Vec<f32> = (0..rows.denoise * 2)
            .map(|i| (i as f32 * 0.3).cos())
            .collect();
        let (mut e1, mut e2) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        for t in [0.0, 4.0, 9.0] {
            tract.denoise(&o, &x, t, &mut e1).unwrap();
            native.denoise(&o, &x, t, &mut e2).unwrap();
            assert!(
                max_diff(&e1, &e2) < 1e-4,
                "{name} denoiser t={t}: {}",
                max_diff(&e1, &e2)
            );
        }
        let base = &x[..rows.edit * 2];
        let (mut m1, mut l1, mut m2, mut l2) = (
            vec![0.0; base.len()],
            vec![0.0; base.len()],
            vec![0.0; base.len()],
            vec![0.0; base.len()],
        );
        tract.edit(&o, base, &mut m1, &mut l1).unwrap();
        native.edit(&o, base, &mut m2, &mut l2).unwrap();
        assert!(
            max_diff(&m1, &m2) < 1e-4 && max_diff(&l1, &l2) < 1e-4,
            "{name} edit"
        );
        let acts: Vec<f32> = (0..rows.score * 2)
            .map(|i| (i as f32 * 0.11).sin())
            .collect();
        let members = [9i64, 0];
        let (mut q1, mut q2) = (vec![0.0; 2 * rows.score], vec![0.0; 2 * rows.score]);
        tract.critic(&o, &acts, &members, &mut q1).unwrap();
        native.critic(&o, &acts, &members, &mut q2).unwrap();
        assert!(
            max_diff(&q1, &q2) < 1e-4,
            "{name} critic: {}",
            max_diff(&q1, &q2)
        );
        // One member (a critic subset of 1; tract's plan is fixed at the manifest's
        // subset size, so native alone): `[1, rows]`, the first row of members 3 and 0.
        native.critic(&o, &acts, &[3, 0], &mut q2).unwrap();
        let mut one = vec![0.0; rows.score];
        native.critic(&o, &acts, &[3], &mut one).unwrap();
        assert_eq!(one[..], q2[..rows.score], "{name} critic, one member");

        // Wrong sizes are refused by both backends: native used to truncate a long
        // observation, panic in a kernel on a short one, and leave a long output's tail
        // stale (and squash its log_std tail).
        let long_obs: Vec<f32> = obs(1).into_iter().chain([0.5]).collect();
        for (backend, nets) in [("tract", &mut tract), ("native", &mut native)] {
            let mut long = vec![0.0; base.len() + 2];
            let mut l = vec![0.0; base.len()];
            assert!(
                nets.edit(&o, base, &mut long, &mut l).is_err(),
                "{name} {backend}: edit with a long mean"
            );
            let mut m = vec![0.0; base.len()];
            assert!(
                nets.edit(&long_obs, base, &mut m, &mut l).is_err(),
                "{name} {backend}: edit with a long observation"
            );
            assert!(
                nets.edit(&o[..o.len() - 1], base, &mut m, &mut l).is_err(),
                "{name} {backend}: edit with a short observation"
            );
            let mut q = vec![0.0; 2 * rows.score + 1];
            assert!(
                nets.critic(&o, &acts, &members, &mut q).is_err(),
                "{name} {backend}: critic with a long q"
            );
            let mut e = vec![0.0; x.len() + 2];
            assert!(
                nets.denoise(&o, &x, 0.0, &mut e).is_err(),
                "{name} {backend}: denoise with a long eps"
            );
        }

        // Whole actions with the same seed: same candidate, same action.
        let mut p1 = Policy::new(&b, &options(Backend::Tract, 5)).unwrap();
        let mut p2 = Policy::new(&b, &options(Backend::Native, 5)).unwrap();
        for i in 0..30 {
            let (mut a1, mut a2) = ([0.0; 2], [0.0; 2]);
            let c1 = p1.act(&obs(i), &mut a1).unwrap();
            let c2 = p2.act(&obs(i), &mut a2).unwrap();
            assert_eq!(c1.index, c2.index, "{name} action {i}");
            assert!(
                max_diff(&a1, &a2) < 1e-4,
                "{name} action {i}: {a1:?} vs {a2:?}"
            );
            assert!(a1.iter().all(|v| (-1.0..=1.0).contains(v)));
        }
    }
}

#[test]
fn truncated_chain_and_two_speed_mode_act() {
    let dir = tempfile::tempdir().unwrap();
    SyntheticSpec::cpu().write(dir.path(), 3, None).unwrap();
    let b = load_bundle(dir.path(), &Trust::AllowUnsigned).unwrap();
    for backend in [Backend::Tract, Backend::Native] {
        let mut p = Policy::new(
            &b,
            &PolicyOptions {
                executed_steps: Some(3),
                ..options(backend, 1)
            },
        )
        .unwrap();
        assert_eq!(p.executed_steps(), 3);
        let mut a = [0.0; 2];
        p.act(&obs(0), &mut a).unwrap();
        assert!(a.iter().all(|v| v.is_finite() && (-1.0..=1.0).contains(v)));
        assert!(
            Policy::new(
                &b,
                &PolicyOptions {
                    executed_steps: Some(6),
                    ..options(backend, 1)
                }
            )
            .is_err(),
            "more executed steps than trained must be refused"
        );

        let mut two = TwoSpeedPolicy::new(&b, &options(backend, 2)).unwrap();
        let n = b.manifest.selection.num_samples;
        for i in 0..50 {
            let c = two.act(&obs(i), &mut a).unwrap();
            assert!(c.index < n + b.manifest.selection.num_edit);
            assert!(a.iter().all(|v| (-1.0..=1.0).contains(v)));
        }
        // A bad observation is refused without disturbing the worker.
        let mut bad = obs(0);
        bad[3] = f32::NAN;
        let e = two.act(&bad, &mut a).unwrap_err().to_string();
        assert!(e.contains("observation[3]"), "{e}");
        two.act(&obs(1), &mut a).unwrap();
        // Ticks acted on by someone else (a teleop device) still feed the worker.
        let before = two.published();
        two.observe(&obs(2)).unwrap();
        two.observe(&obs(3)).unwrap();
        assert!(two.observe(&bad).is_err());
        assert_eq!(two.published(), before + 2);
        two.act(&obs(4), &mut a).unwrap();
        assert_eq!(two.published(), before + 3);
        // A new episode: the first tick edits candidates sampled for its own
        // observation, never the previous episode's.
        for _ in 0..5 {
            two.restart();
            two.act(&obs(5), &mut a).unwrap();
            assert_eq!(two.candidate_age(), 0);
        }
    }
}

/// `reload` checks what the uplink's swaps check (one function for both): a bundle of
/// another task or with other observation names is refused, and the new policy draws
/// from its own random stream (it took the caller's seed as it was and replayed the
/// first policy's noise; the uplink's swaps did not).
#[test]
fn a_reloaded_policy_draws_its_own_noise_and_must_fine_tune_the_running_one() {
    let root = tempfile::tempdir().unwrap();
    let first = root.path().join("first");
    SyntheticSpec::cpu().write(&first, 1, None).unwrap();
    let b = load_bundle(&first, &Trust::AllowUnsigned).unwrap();
    let opts = options(Backend::Native, 9);
    let mut current = Policy::new(&b, &opts).unwrap();
    let mut reference = Policy::new(&b, &opts).unwrap();
    let second = variant_of(&first, root.path(), "second", &|_| {});
    reload(&mut current, &second, &Trust::AllowUnsigned, &opts).unwrap();
    let mut a = [0.0; 2];
    current.act(&obs(0), &mut a).unwrap();
    reference.act(&obs(0), &mut a).unwrap();
    assert_ne!(
        current.candidates(),
        reference.candidates(),
        "the reloaded policy replayed the first one's noise"
    );
    let other_task = |t: &mut toml::Table| {
        t.insert("task".into(), toml::Value::String("maze".into()));
    };
    let other_names = |t: &mut toml::Table| {
        let o = t["observation"].as_table_mut().unwrap();
        o["names"].as_array_mut().unwrap()[0] = toml::Value::String("renamed".into());
    };
    type Edit<'a> = &'a dyn Fn(&mut toml::Table);
    let edits: [(&str, Edit); 2] = [("other-task", &other_task), ("other-names", &other_names)];
    for (name, edit) in edits {
        let dir = variant_of(&first, root.path(), name, &|d| {
            edit_manifest(d, |t| edit(t))
        });
        let e = reload(&mut current, &dir, &Trust::AllowUnsigned, &opts).unwrap_err();
        let text = format!("{e:#}");
        assert!(text.contains("the running bundle"), "{name}: {text}");
    }
    // Bundles that say their rate (format 5): another rate is refused too (`reload`
    // took a 10 Hz bundle in place of a 20 Hz one).
    let at = |hz: i64| {
        move |t: &mut toml::Table| {
            t.insert("format_version".into(), toml::Value::Integer(5));
            let a = t["action"].as_table_mut().unwrap();
            a.insert("control_hz".into(), toml::Value::Integer(hz));
        }
    };
    let at_20 = variant_of(&first, root.path(), "at-20", &|d| edit_manifest(d, at(20)));
    let b20 = load_bundle(&at_20, &Trust::AllowUnsigned).unwrap();
    let mut current = Policy::new(&b20, &opts).unwrap();
    let also_20 = variant_of(&first, root.path(), "also-20", &|d| {
        edit_manifest(d, at(20))
    });
    reload(&mut current, &also_20, &Trust::AllowUnsigned, &opts).unwrap();
    let at_10 = variant_of(&first, root.path(), "at-10", &|d| edit_manifest(d, at(10)));
    let e = reload(&mut current, &at_10, &Trust::AllowUnsigned, &opts).unwrap_err();
    let text = format!("{e:#}");
    assert!(
        text.contains("trained on steps at 10 Hz, the running bundle at 20 Hz"),
        "{text}"
    );
    // Bundles that name their actions (format 6): other names are refused; a bundle
    // that names none may follow one that does.
    let acting = |names: &'static [&'static str]| {
        move |t: &mut toml::Table| {
            t.insert("format_version".into(), toml::Value::Integer(6));
            let a = t["action"].as_table_mut().unwrap();
            let names = names.iter().map(|n| toml::Value::String(n.to_string()));
            a.insert("names".into(), toml::Value::Array(names.collect()));
        }
    };
    let xy = variant_of(&first, root.path(), "xy", &|d| {
        edit_manifest(d, acting(&["x", "y"]))
    });
    let mut current =
        Policy::new(&load_bundle(&xy, &Trust::AllowUnsigned).unwrap(), &opts).unwrap();
    let yx = variant_of(&first, root.path(), "yx", &|d| {
        edit_manifest(d, acting(&["y", "x"]))
    });
    let e = reload(&mut current, &yx, &Trust::AllowUnsigned, &opts).unwrap_err();
    let text = format!("{e:#}");
    assert!(
        text.contains("its action names (y, x) name the running bundle's (x, y) in another order"),
        "{text}"
    );
    // Other spellings (older recordings named actions after joints) are the robot
    // file's check; none at all may follow names.
    let vxy = variant_of(&first, root.path(), "vxy", &|d| {
        edit_manifest(d, acting(&["vx", "vy"]))
    });
    reload(&mut current, &vxy, &Trust::AllowUnsigned, &opts).unwrap();
    reload(&mut current, &first, &Trust::AllowUnsigned, &opts).unwrap();
    // Bundles that record the action mapping their data was recorded with (format 7):
    // another one is refused (`reload` has no robot file to check it against); a bundle
    // that records none may follow one that does.
    let mapped = |offset: f32| {
        move |t: &mut toml::Table| {
            t.insert("format_version".into(), toml::Value::Integer(7));
            let a = t["action"].as_table_mut().unwrap();
            let floats =
                |v: [f32; 2]| toml::Value::Array(v.map(|x| toml::Value::Float(x.into())).to_vec());
            a.insert("robot_scale".into(), floats([0.5, 0.5]));
            a.insert("robot_offset".into(), floats([0.0, offset]));
        }
    };
    let at_0 = variant_of(&first, root.path(), "offset-0", &|d| {
        edit_manifest(d, mapped(0.0))
    });
    let mut current =
        Policy::new(&load_bundle(&at_0, &Trust::AllowUnsigned).unwrap(), &opts).unwrap();
    let same = variant_of(&first, root.path(), "offset-0-again", &|d| {
        edit_manifest(d, mapped(0.0))
    });
    reload(&mut current, &same, &Trust::AllowUnsigned, &opts).unwrap();
    let moved = variant_of(&first, root.path(), "offset-1", &|d| {
        edit_manifest(d, mapped(1.0))
    });
    let e = reload(&mut current, &moved, &Trust::AllowUnsigned, &opts).unwrap_err();
    let text = format!("{e:#}");
    assert!(
        text.contains(
            "its data was recorded with another action mapping: action [1] as 1 + 0.5 × a in \
             robot units, the running bundle's as 0 + 0.5 × a"
        ),
        "{text}"
    );
    // Nor by one that records none, which nothing could check; the other way is
    // allowed (a bundle from older data followed by one that records its mapping).
    let e = reload(&mut current, &first, &Trust::AllowUnsigned, &opts).unwrap_err();
    let text = format!("{e:#}");
    assert!(
        text.contains("the running bundle records the action mapping its data was recorded with, this one records none"),
        "{text}"
    );
    let mut current =
        Policy::new(&load_bundle(&first, &Trust::AllowUnsigned).unwrap(), &opts).unwrap();
    reload(&mut current, &same, &Trust::AllowUnsigned, &opts).unwrap();
    // The new policy's chain runs as many steps as the running one's, whatever its
    // manifest says (a live trainer's bundles say their whole trained chain); one
    // trained on fewer steps is refused.
    let executing = |n: i64| {
        move |t: &mut toml::Table| {
            let d = t["diffusion"].as_table_mut().unwrap();
            d.insert("executed_steps".into(), toml::Value::Integer(n));
        }
    };
    let truncated = variant_of(&first, root.path(), "truncated", &|d| {
        edit_manifest(d, executing(2))
    });
    let mut current = Policy::new(
        &load_bundle(&truncated, &Trust::AllowUnsigned).unwrap(),
        &opts,
    )
    .unwrap();
    let trained = b.manifest.diffusion.trained_steps;
    assert_eq!(b.manifest.diffusion.executed_steps, trained);
    assert!(trained > 2);
    reload(&mut current, &first, &Trust::AllowUnsigned, &opts).unwrap();
    assert_eq!(current.executed_steps(), 2);
    let shorter = variant_of(&first, root.path(), "shorter", &|d| {
        edit_manifest(d, |t| {
            let d = t["diffusion"].as_table_mut().unwrap();
            d.insert("trained_steps".into(), toml::Value::Integer(1));
            d.insert("executed_steps".into(), toml::Value::Integer(1));
        })
    });
    let e = reload(&mut current, &shorter, &Trust::AllowUnsigned, &opts).unwrap_err();
    let text = format!("{e:#}");
    assert!(
        text.contains("trained in 1 steps, fewer than the 2 the running policy executes"),
        "{text}"
    );
}

/// A copy of the bundle `good` as `root/name`, changed by `f`.
fn variant_of(good: &Path, root: &Path, name: &str, f: &dyn Fn(&Path)) -> std::path::PathBuf {
    let d = root.join(name);
    fs::create_dir_all(&d).unwrap();
    for e in fs::read_dir(good).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), d.join(e.file_name())).unwrap();
    }
    f(&d);
    d
}

/// Rewrites a manifest field and, when `fix_hash`, keeps the graph hashes consistent.
fn edit_manifest(dir: &Path, f: impl FnOnce(&mut toml::Table)) {
    let p = dir.join(MANIFEST_FILE);
    let mut t: toml::Table = toml::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut t);
    fs::write(&p, toml::to_string(&t).unwrap()).unwrap();
}

/// Rewrites the critic graph's first initializer that `pick` chooses with `edit`, and
/// the graph's hash in the manifest, so that the bundle still loads.
fn edit_critic_initializer(
    dir: &Path,
    pick: impl Fn(&TensorProto) -> bool,
    edit: impl FnOnce(&mut TensorProto),
) {
    let p = dir.join("critic.onnx");
    let mut m = ModelProto::from_bytes(&fs::read(&p).unwrap()).unwrap();
    let g = m.graph.as_mut().unwrap();
    edit(g.initializer.iter_mut().find(|t| pick(t)).unwrap());
    let bytes = m.to_bytes();
    fs::write(&p, &bytes).unwrap();
    edit_manifest(dir, |t| set_hash(t, "critic", sha256_hex(&bytes)));
}

/// Rewrites graph `graph`'s (`denoiser`, `edit`, `critic`) initializers with `edit`,
/// and the graph's hash in the manifest, so that only the graph's check can refuse it.
fn edit_initializers(dir: &Path, graph: &str, edit: impl FnOnce(&mut Vec<TensorProto>)) {
    let p = dir.join(format!("{graph}.onnx"));
    let mut m = ModelProto::from_bytes(&fs::read(&p).unwrap()).unwrap();
    edit(&mut m.graph.as_mut().unwrap().initializer);
    let bytes = m.to_bytes();
    fs::write(&p, &bytes).unwrap();
    edit_manifest(dir, |t| set_hash(t, graph, sha256_hex(&bytes)));
}

/// `values` as the initializer's data (raw little-endian bytes).
fn set_floats(w: &mut TensorProto, values: &[f32]) {
    w.float_data.clear();
    w.raw_data = values.iter().flat_map(|x| x.to_le_bytes()).collect();
}

fn set_hash(t: &mut toml::Table, graph: &str, hash: String) {
    t["graphs"][graph]
        .as_table_mut()
        .unwrap()
        .insert("sha256".into(), toml::Value::String(hash));
}

#[test]
fn bad_bundles_get_their_own_errors_and_the_loaded_policy_keeps_running() {
    let root = tempfile::tempdir().unwrap();
    let good = root.path().join("good");
    SyntheticSpec::cpu().write(&good, 1, Some(&key(1))).unwrap();
    let b = load_bundle(&good, &trust(1)).unwrap();
    let fingerprint = shared_model::manifest::key_fingerprint(key(1).verifying_key().as_bytes());
    assert_eq!(b.signed_by, Some(fingerprint));
    let mut current = Policy::new(&b, &options(Backend::Tract, 9)).unwrap();
    let mut reference = Policy::new(&b, &options(Backend::Tract, 9)).unwrap();

    let variant = |name: &str, f: &dyn Fn(&Path)| variant_of(&good, root.path(), name, f);

    type Check = fn(&BundleError) -> bool;
    let cases: Vec<(&str, std::path::PathBuf, Trust, Check, &str)> = vec![
        (
            "corrupted graph file",
            variant("corrupt", &|d| {
                let p = d.join("critic.onnx");
                let mut bytes = fs::read(&p).unwrap();
                bytes.truncate(bytes.len() / 2);
                fs::write(&p, &bytes).unwrap();
            }),
            trust(1),
            |e| matches!(e, BundleError::HashMismatch { .. }),
            "sha256 mismatch",
        ),
        (
            "corrupted graph with a matching (unsigned) manifest hash",
            variant("corrupt-rehashed", &|d| {
                let p = d.join("edit.onnx");
                let bytes = vec![0xff; 100];
                fs::write(&p, &bytes).unwrap();
                edit_manifest(d, |t| set_hash(t, "edit", sha256_hex(&bytes)));
            }),
            Trust::AllowUnsigned,
            |e| matches!(e, BundleError::Onnx { .. }),
            "not a valid ONNX model",
        ),
        (
            "manifest edited after signing",
            variant("tampered", &|d| {
                edit_manifest(d, |t| {
                    t["selection"]
                        .as_table_mut()
                        .unwrap()
                        .insert("edit_scale".into(), toml::Value::Float(0.5));
                })
            }),
            trust(1),
            |e| matches!(e, BundleError::BadSignature { .. }),
            "signature does not verify",
        ),
        (
            // The signature is checked before anything in the manifest is believed (it
            // said "newer format: update the controller").
            "format version edited after signing",
            variant("tampered-version", &|d| {
                edit_manifest(d, |t| {
                    t.insert("format_version".into(), toml::Value::Integer(NEWER));
                })
            }),
            trust(1),
            |e| matches!(e, BundleError::BadSignature { .. }),
            "signature does not verify",
        ),
        (
            // Named as no signature, not as tampering ("modified or signed by another
            // key" sent the operator after the wrong cause).
            "signature file cut short",
            variant("short-signature", &|d| {
                fs::write(d.join(SIGNATURE_FILE), "abc\n").unwrap()
            }),
            trust(1),
            |e| matches!(e, BundleError::Key { .. }),
            "not a signature: expected 128 hex digits, found 3 characters",
        ),
        (
            "signed by another key",
            good.clone(),
            trust(2),
            |e| matches!(e, BundleError::BadSignature { .. }),
            "signature does not verify",
        ),
        (
            "unsigned bundle with a trusted key required",
            variant("unsigned", &|d| {
                fs::remove_file(d.join(SIGNATURE_FILE)).unwrap()
            }),
            trust(1),
            |e| matches!(e, BundleError::Unsigned { .. }),
            "not signed",
        ),
        (
            "observation size disagrees with the graphs",
            variant("shapes", &|d| {
                edit_manifest(d, |t| {
                    let o = t["observation"].as_table_mut().unwrap();
                    o.insert("dim".into(), toml::Value::Integer(9));
                    for k in ["names", "low", "high", "mean", "std"] {
                        let v = o[k].as_array_mut().unwrap();
                        v.pop();
                    }
                })
            }),
            Trust::AllowUnsigned,
            |e| matches!(e, BundleError::Shape { .. }),
            "shape mismatch: input `obs`: expected f32[?, 9], found f32[?, 10]",
        ),
        (
            // tract ran it at the runtime's own row count without a word.
            "a graph that fixes its batch size",
            variant("fixed-batch", &|d| {
                let p = d.join("denoiser.onnx");
                let mut m = ModelProto::from_bytes(&fs::read(&p).unwrap()).unwrap();
                let g = m.graph.as_mut().unwrap();
                let input = g
                    .input
                    .iter_mut()
                    .find(|v| v.name == "noisy_action")
                    .unwrap();
                let shape = input.r#type.as_mut().unwrap().tensor_type.as_mut().unwrap();
                shape.shape.as_mut().unwrap().dim[0].value =
                    Some(shared_model::onnx::DimensionValue::Fixed(8));
                let bytes = m.to_bytes();
                fs::write(&p, &bytes).unwrap();
                edit_manifest(d, |t| set_hash(t, "denoiser", sha256_hex(&bytes)));
            }),
            Trust::AllowUnsigned,
            |e| matches!(e, BundleError::Shape { .. }),
            "input `noisy_action`: expected f32[?, 2], found f32[8, 2]",
        ),
        (
            // tract ran the graph's tanh head, the native backend refused the graph for
            // its missing clip constants: one bundle, two behaviours.
            "a manifest naming a log-std head the edit graph does not have",
            variant("log-std-head", &|d| {
                edit_manifest(d, |t| {
                    t.insert("format_version".into(), toml::Value::Integer(4));
                    t["networks"]
                        .as_table_mut()
                        .unwrap()
                        .insert("edit_log_std".into(), toml::Value::String("clip".into()));
                })
            }),
            Trust::AllowUnsigned,
            |e| matches!(e, BundleError::Shape { .. }),
            "the edit policy's log-std head (manifest `networks.edit_log_std`): expected clip, \
             found tanh (`log_std` made by `Add`)",
        ),
        (
            // A `Tanh` somewhere in the graph is not a tanh head: the head's own nodes are
            // followed back from `log_std` (here its last `Add` made a `Sub`).
            "an edit graph whose log-std head is neither head",
            variant("log-std-sub", &|d| {
                let p = d.join("edit.onnx");
                let mut m = ModelProto::from_bytes(&fs::read(&p).unwrap()).unwrap();
                let g = m.graph.as_mut().unwrap();
                let last = g
                    .node
                    .iter_mut()
                    .find(|n| n.output.iter().any(|o| o == "log_std"))
                    .unwrap();
                last.op_type = "Sub".into();
                let bytes = m.to_bytes();
                fs::write(&p, &bytes).unwrap();
                edit_manifest(d, |t| set_hash(t, "edit", sha256_hex(&bytes)));
            }),
            Trust::AllowUnsigned,
            |e| matches!(e, BundleError::Shape { .. }),
            "expected tanh, found `log_std` made by `Sub`",
        ),
        (
            "NaN weights",
            variant("nan", &|d| {
                // Overwrite the first float of the first initializer with NaN, rehash.
                let p = d.join("denoiser.onnx");
                let mut bytes = fs::read(&p).unwrap();
                let m = shared_model::onnx::ModelProto::from_bytes(&bytes).unwrap();
                let first = &m.graph.unwrap().initializer[0].raw_data[..8];
                let at = bytes.windows(8).position(|w| w == first).unwrap();
                bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
                fs::write(&p, &bytes).unwrap();
                edit_manifest(d, |t| set_hash(t, "denoiser", sha256_hex(&bytes)));
            }),
            Trust::AllowUnsigned,
            |e| matches!(e, BundleError::NonFinite { .. }),
            "weight `fourier` has a non-finite value at element 0",
        ),
        // Every weight and constant is checked against the manifest, not only the
        // weight matrices: tract ran each of these (a broadcast scalar bias, a wrong
        // constant, an extra tensor) where the native backend refused it.
        (
            "a bias of another size than its layer's",
            variant("bias-dims", &|d| {
                edit_initializers(d, "denoiser", |ws| {
                    let b = ws.iter_mut().find(|t| t.name == "output.bias").unwrap();
                    b.dims = vec![1];
                    set_floats(b, &[0.3]);
                })
            }),
            Trust::AllowUnsigned,
            |e| matches!(e, BundleError::Shape { .. }),
            "weight `output.bias` (manifest `networks`): expected [2], found dims [1]",
        ),
        (
            "a constant of another value",
            variant("two-pi", &|d| {
                edit_initializers(d, "denoiser", |ws| {
                    set_floats(ws.iter_mut().find(|t| t.name == "two_pi").unwrap(), &[1.0])
                })
            }),
            Trust::AllowUnsigned,
            |e| matches!(e, BundleError::Onnx { .. }),
            "constant `two_pi` is not 6.2831855 throughout",
        ),
        (
            "a critic squeezing another axis",
            variant("squeeze", &|d| {
                edit_initializers(d, "critic", |ws| {
                    ws.iter_mut()
                        .find(|t| t.name == "squeeze_axes")
                        .unwrap()
                        .int64_data = vec![1];
                })
            }),
            Trust::AllowUnsigned,
            |e| matches!(e, BundleError::Onnx { .. }),
            "constant `squeeze_axes` is not 2 throughout",
        ),
        (
            "a tensor given twice",
            variant("twice", &|d| {
                edit_initializers(d, "denoiser", |ws| {
                    let mut second = ws.iter().find(|t| t.name == "output.bias").unwrap().clone();
                    second.dims = vec![1];
                    set_floats(&mut second, &[0.3]);
                    ws.push(second);
                })
            }),
            Trust::AllowUnsigned,
            |e| matches!(e, BundleError::Onnx { .. }),
            "weight `output.bias` is given twice",
        ),
        (
            "a tensor the network does not have",
            variant("extra", &|d| {
                edit_initializers(d, "edit", |ws| {
                    let mut extra = ws[0].clone();
                    extra.name = "extra".into();
                    ws.push(extra);
                })
            }),
            Trust::AllowUnsigned,
            |e| matches!(e, BundleError::Onnx { .. }),
            "weight `extra` is not part of the network the manifest describes",
        ),
        (
            // (One past the newest this code reads: 7 was, until it came to be read.)
            "newer format version",
            variant("newer", &|d| {
                edit_manifest(d, |t| {
                    t.insert("format_version".into(), toml::Value::Integer(NEWER));
                    t.insert("something_new".into(), toml::Value::Boolean(true));
                })
            }),
            Trust::AllowUnsigned,
            |e| matches!(e, BundleError::NewerFormat { found, .. } if *found == NEWER),
            "is newer",
        ),
    ];
    for (what, dir, trust, check, text) in cases {
        let err = load_bundle(&dir, &trust).expect_err(what);
        assert!(check(&err), "{what}: wrong error kind: {err}");
        assert!(
            err.to_string().contains(text),
            "{what}: message `{err}` lacks `{text}`"
        );
        // Swapping to the bad bundle fails and leaves the running policy untouched.
        let e = reload(&mut current, &dir, &trust, &options(Backend::Tract, 9)).unwrap_err();
        assert!(format!("{e:#}").contains(text), "{what}: {e:#}");
        let (mut a, mut r) = ([0.0; 2], [0.0; 2]);
        current.act(&obs(0), &mut a).unwrap();
        reference.act(&obs(0), &mut r).unwrap();
        assert_eq!(a, r, "{what}: the running policy changed");
    }
}

/// A `cpu`-sized synthetic bundle planning chunks of `horizon` (seed 5), and its
/// directory.
fn chunk_bundle(horizon: usize) -> (tempfile::TempDir, VerifiedBundle) {
    let dir = tempfile::tempdir().unwrap();
    SyntheticSpec {
        horizon,
        ..SyntheticSpec::cpu()
    }
    .write(dir.path(), 5, None)
    .unwrap();
    let b = load_bundle(dir.path(), &Trust::AllowUnsigned).unwrap();
    (dir, b)
}

#[test]
fn chunk_bundles_act_in_chunks_and_the_player_plays_them_by_step() {
    use controller::robot_loop::ChunkPlayer;
    use shared_model::ChunkPlay;
    let (_dir, b) = chunk_bundle(3);
    assert_eq!(b.manifest.format_version, 2);
    let (ad, cw) = (2, 6);
    // Reference: the policy's chunks, one per plan, from an identically seeded policy.
    let mut reference = Policy::new(&b, &options(Backend::Native, 3)).unwrap();
    assert_eq!(
        (
            reference.act_dim(),
            reference.horizon(),
            reference.chunk_dim()
        ),
        (ad, 3, cw)
    );
    let mut short = vec![0.0; ad];
    let e = reference.act(&obs(0), &mut short).unwrap_err().to_string();
    assert!(e.contains("chunk"), "{e}");
    let plan = |p: &mut Policy, i: usize| {
        let mut c = vec![0.0; cw];
        p.act(&obs(i), &mut c).unwrap();
        assert!(c.iter().all(|v| (-1.0..=1.0).contains(v)));
        c
    };

    let mut policy = Policy::new(&b, &options(Backend::Native, 3)).unwrap();
    let whole = ChunkPlay::new(3, 0).unwrap();
    assert!(ChunkPlayer::new(&policy, ChunkPlay::SINGLE).is_err());
    let mut player = ChunkPlayer::new(&policy, whole).unwrap();
    let mut a = vec![0.0; ad];
    let mut play = |player: &mut ChunkPlayer, policy: &mut Policy, step: u64| {
        player
            .act(policy, step, &obs(step as usize), &mut a)
            .unwrap();
        a.clone()
    };
    // Planned on step 0 (observation 0), played out on steps 1 and 2 whatever they see.
    let c0 = plan(&mut reference, 0);
    for s in 0..3 {
        assert_eq!(
            play(&mut player, &mut policy, s),
            c0[s as usize * ad..][..ad]
        );
    }
    // Step 3 plans again, on observation 3; step 4 is skipped (no fresh frame) and
    // step 5 plays the chunk's third action, not its second.
    let c3 = plan(&mut reference, 3);
    assert_eq!(play(&mut player, &mut policy, 3), c3[..ad]);
    assert_eq!(play(&mut player, &mut policy, 5), c3[2 * ad..]);
    // A new episode (steps from 0 again) or a restart plans on the next step.
    let c0b = plan(&mut reference, 0);
    assert_eq!(play(&mut player, &mut policy, 0), c0b[..ad]);
    player.restart();
    let c1 = plan(&mut reference, 1);
    assert_eq!(play(&mut player, &mut policy, 1), c1[..ad]);
    assert_eq!(play(&mut player, &mut policy, 2), c1[ad..2 * ad]);

    // Receding horizon: two actions of each chunk, then a new plan.
    let mut player = ChunkPlayer::new(&policy, ChunkPlay::new(3, 2).unwrap()).unwrap();
    for start in [0, 2, 4] {
        let c = plan(&mut reference, start as usize);
        assert_eq!(play(&mut player, &mut policy, start), c[..ad]);
        assert_eq!(play(&mut player, &mut policy, start + 1), c[ad..2 * ad]);
    }

    // Temporal ensembling, replanning every step: each action is the weighted mean of
    // the actions the last 3 plans hold for the step (oldest weighted 1, then e^−m,
    // e^−2m); a restart forgets them.
    let m = 0.3f32;
    let ensemble = ChunkPlay::new(3, 1)
        .unwrap()
        .with_ensemble(Some(m))
        .unwrap();
    let mut player = ChunkPlayer::new(&policy, ensemble).unwrap();
    let mut chunks: Vec<Vec<f32>> = vec![];
    for step in 0..6u64 {
        chunks.push(plan(&mut reference, step as usize));
        let got = play(&mut player, &mut policy, step);
        let mut want = vec![0.0f32; ad];
        let mut total = 0.0f32;
        for (i, p) in (step.saturating_sub(2)..=step).enumerate() {
            let w = (-m * i as f32).exp();
            let k = (step - p) as usize;
            for (o, v) in want
                .iter_mut()
                .zip(&chunks[p as usize][k * ad..(k + 1) * ad])
            {
                *o += w * v;
            }
            total += w;
        }
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w / total).abs() < 1e-6,
                "step {step}: {got:?} vs {want:?}"
            );
        }
    }
    assert_ne!(
        play(&mut player, &mut policy, 6),
        plan(&mut reference, 6)[..ad],
        "a blend, not the newest plan's action"
    );
    player.restart();
    assert_eq!(
        play(&mut player, &mut policy, 7),
        plan(&mut reference, 7)[..ad],
        "after a restart only the new plan"
    );

    // A one-step bundle cannot replace a chunked one.
    let one = tempfile::tempdir().unwrap();
    SyntheticSpec::cpu().write(one.path(), 5, None).unwrap();
    let e = reload(
        &mut policy,
        one.path(),
        &Trust::AllowUnsigned,
        &options(Backend::Native, 3),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("it plans chunks of 1 actions, the running bundle chunks of 3"),
        "{e}"
    );
}

#[test]
fn two_speed_mode_plans_chunks_from_the_workers_candidates() {
    use controller::robot_loop::{Brain, PlayOptions};
    let (_dir, b) = chunk_bundle(3);
    let (ad, cw) = (2, 6);
    let m = &b.manifest;
    let rows = m.selection.num_samples + m.selection.num_edit;
    // The chunk the tick selected: its candidate row, clamped to the bounds.
    let selected = |brain: &Brain, index: usize| -> Vec<f32> {
        let c = brain.policy().unwrap().candidates();
        assert_eq!(c.len(), rows * cw, "candidates are whole chunks");
        c[index * cw..(index + 1) * cw]
            .iter()
            .enumerate()
            .map(|(j, v)| v.clamp(m.action.low[j % ad], m.action.high[j % ad]))
            .collect()
    };
    let published = |brain: &Brain| match brain {
        Brain::TwoSpeed { policy, .. } => policy.published(),
        _ => unreachable!("a two-speed brain"),
    };
    let age = |brain: &Brain| match brain {
        Brain::TwoSpeed { policy, .. } => policy.candidate_age(),
        _ => unreachable!("a two-speed brain"),
    };
    let play = |replan_every: usize, ensemble: Option<f32>| PlayOptions {
        replan_every: Some(replan_every),
        ensemble,
    };
    for replan_every in [0, 1, 2] {
        let mut brain = Brain::with_play(
            &b,
            &options(Backend::Native, 4),
            true,
            play(replan_every, None),
        )
        .unwrap();
        let k = if replan_every == 0 { 3 } else { replan_every };
        let mut a = vec![0.0; ad];
        // The loop does not wait for the worker: until it has sampled for this episode,
        // a planning step holds (zeros, no candidate) and the next step plans again.
        let mut held = 0;
        while brain.act(0, &obs(0), &mut a).unwrap().is_none() {
            assert_eq!(a, [0.0; 2]);
            assert_eq!(brain.chunk_index(), 0);
            held += 1;
            assert!(held < 100_000, "the worker never delivered");
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        // The age of each plan's candidates, as the report's summary must count them.
        let mut plan_ages = vec![age(&brain)];
        brain.replan();
        let first = published(&brain);
        let mut chunk = Vec::new();
        let mut plans = 0;
        for step in 0..9u64 {
            // Every step of a chunk names the selection that planned it.
            let choice = brain
                .act(step, &obs(step as usize), &mut a)
                .unwrap()
                .unwrap();
            let i = (step % k as u64) as usize;
            if i == 0 {
                // A planning tick: the chunk is the selected candidate.
                assert!(choice.index < rows);
                chunk = selected(&brain, choice.index);
                plans += 1;
                plan_ages.push(age(&brain));
            }
            assert_eq!(
                brain.chunk_index(),
                i,
                "replan_every {replan_every} step {step}"
            );
            assert_eq!(
                a,
                chunk[i * ad..(i + 1) * ad],
                "replan_every {replan_every} step {step}"
            );
            // Every tick feeds the worker, planning or not.
            assert_eq!(published(&brain), first + step + 1);
        }
        assert_eq!(plans, 9usize.div_ceil(k));
        // Every plan's candidate age is counted (the first, after the holds, too): the
        // run report's `two_speed`.
        let ages = brain.candidate_ages().unwrap();
        assert_eq!(ages.plans, plans as u64 + 1, "replan_every {replan_every}");
        assert_eq!(ages.max_age, *plan_ages.iter().max().unwrap(), "{ages:?}");
        let mean = plan_ages.iter().sum::<u64>() as f64 / plan_ages.len() as f64;
        assert_eq!(ages.mean_age, mean, "{ages:?} {plan_ages:?}");
        // A replan (new episode, intervention) plans on the next step, mid-chunk.
        if k == 3 {
            brain.act(9, &obs(9), &mut a).unwrap();
            brain.act(10, &obs(10), &mut a).unwrap();
            assert_eq!(brain.chunk_index(), 1);
            brain.replan();
            brain.act(11, &obs(11), &mut a).unwrap();
            assert_eq!(brain.chunk_index(), 0, "replanned");
            brain.act(12, &obs(12), &mut a).unwrap();
            assert_eq!(brain.chunk_index(), 1);
            // A new episode: its first plan holds or uses candidates sampled for it,
            // never the previous episode's.
            for _ in 0..5 {
                brain.new_episode();
                let c = brain.act(0, &obs(13), &mut a).unwrap();
                let age = match &brain {
                    Brain::TwoSpeed { policy, .. } => policy.candidate_age(),
                    _ => unreachable!(),
                };
                assert!(c.is_none() || age == 0, "candidates {age} old");
            }
        }
    }
    let e = Brain::with_play(&b, &options(Backend::Native, 4), true, play(4, None))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("replan-every") && e.contains("1..=3"), "{e}");
    // Without --replan-every: as the bundle's training run played (action.replan_every),
    // whole chunks (K = H = 3) for a bundle that does not say.
    let default_play = |b: &shared_model::VerifiedBundle| {
        Brain::with_play(
            b,
            &options(Backend::Native, 4),
            false,
            PlayOptions::default(),
        )
        .unwrap()
        .chunk_play()
        .unwrap()
        .replan_every()
    };
    assert_eq!(default_play(&b), 3);
    let mut replanning = b.clone();
    replanning.manifest.action.replan_every = 2;
    assert_eq!(default_play(&replanning), 2);
    let e = Brain::with_play(
        &b,
        &options(Backend::Native, 4),
        true,
        play(1, Some(f32::NAN)),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("--temporal-ensemble") && e.contains("finite"),
        "{e}"
    );
}

#[test]
fn a_chunk_manifest_must_say_format_2_and_a_sane_horizon() {
    let dir = tempfile::tempdir().unwrap();
    SyntheticSpec {
        horizon: 4,
        ..SyntheticSpec::cpu()
    }
    .write(dir.path(), 5, None)
    .unwrap();
    let path = dir.path().join(MANIFEST_FILE);
    let text = fs::read_to_string(&path).unwrap();
    for (from, to, want) in [
        (
            "format_version = 2",
            "format_version = 1",
            "needs format_version 2",
        ),
        (
            "horizon = 4",
            "horizon = 0",
            "action.horizon = 0 must be in 1..=64",
        ),
        (
            "horizon = 4",
            "horizon = 65",
            "action.horizon = 65 must be in 1..=64",
        ),
        // The graphs act on chunks of 4: a manifest claiming 2 does not match them.
        ("horizon = 4", "horizon = 2", "noisy_action"),
    ] {
        assert!(text.contains(from), "{text}");
        fs::write(&path, text.replace(from, to)).unwrap();
        let e = load_bundle(dir.path(), &Trust::AllowUnsigned)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(want), "{to}: {e}");
    }
    // How the training run played the chunks (format 3): in 1..=horizon.
    let with_replan = |k: usize, version: u32| {
        text.replace("format_version = 2", &format!("format_version = {version}"))
            .replace("horizon = 4", &format!("horizon = 4\nreplan_every = {k}"))
    };
    fs::write(&path, with_replan(2, 3)).unwrap();
    let b = load_bundle(dir.path(), &Trust::AllowUnsigned).unwrap();
    assert_eq!(b.manifest.action.replan_every, 2);
    for (k, version, want) in [
        (2, 2, "action.replan_every = 2 needs format_version 3"),
        (5, 3, "action.replan_every: replan_every must be 0"),
    ] {
        fs::write(&path, with_replan(k, version)).unwrap();
        let e = load_bundle(dir.path(), &Trust::AllowUnsigned)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(want), "{k}, {version}: {e}");
    }
    // The rate it was trained at (format 5), above zero.
    let with_rate = |hz: u32, version: u32| {
        text.replace("format_version = 2", &format!("format_version = {version}"))
            .replace("horizon = 4", &format!("horizon = 4\ncontrol_hz = {hz}"))
    };
    fs::write(&path, with_rate(50, 5)).unwrap();
    let b = load_bundle(dir.path(), &Trust::AllowUnsigned).unwrap();
    assert_eq!(b.manifest.action.control_hz, Some(50));
    for (hz, version, want) in [
        (50, 4, "action.control_hz = 50 needs format_version 5"),
        (0, 5, "action.control_hz = 0: a rate must be above zero"),
    ] {
        fs::write(&path, with_rate(hz, version)).unwrap();
        let e = load_bundle(dir.path(), &Trust::AllowUnsigned)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(want), "{hz}, {version}: {e}");
    }
    // The action names (format 6): one per action of a step, none empty.
    let with_names = |names: &str, version: u32| {
        text.replace("format_version = 2", &format!("format_version = {version}"))
            .replace("horizon = 4", &format!("horizon = 4\nnames = {names}"))
    };
    fs::write(&path, with_names(r#"["vx", "vy"]"#, 6)).unwrap();
    let b = load_bundle(dir.path(), &Trust::AllowUnsigned).unwrap();
    assert_eq!(b.manifest.action.names, ["vx", "vy"]);
    for (names, version, want) in [
        (
            r#"["vx", "vy"]"#,
            5,
            "action.names needs format_version 6 (found 5)",
        ),
        (
            r#"["vx", "vy", "vz"]"#,
            6,
            "action.names has 3 entries, action.dim is 2",
        ),
        (r#"["vx", ""]"#, 6, "action.names[1] is empty"),
    ] {
        fs::write(&path, with_names(names, version)).unwrap();
        let e = load_bundle(dir.path(), &Trust::AllowUnsigned)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(want), "{names}, {version}: {e}");
    }
    // The action mapping the data was recorded with (format 7): both lists, one value
    // per action of a step, finite, no scale of 0.
    let with_mapping = |scale: &str, offset: &str, version: u32| {
        text.replace("format_version = 2", &format!("format_version = {version}"))
            .replace(
                "horizon = 4",
                &format!("horizon = 4\nrobot_scale = {scale}\nrobot_offset = {offset}"),
            )
    };
    fs::write(&path, with_mapping("[0.5, 2.0]", "[0.0, -1.0]", 7)).unwrap();
    let b = load_bundle(dir.path(), &Trust::AllowUnsigned).unwrap();
    assert_eq!(
        (
            b.manifest.action.robot_scale,
            b.manifest.action.robot_offset
        ),
        (vec![0.5, 2.0], vec![0.0, -1.0])
    );
    for (scale, offset, version, want) in [
        (
            "[0.5, 2.0]",
            "[0.0, -1.0]",
            6,
            "action.robot_scale and action.robot_offset need format_version 7 (found 6)",
        ),
        (
            "[0.5, 2.0]",
            "[]",
            7,
            "action.robot_offset has 0 entries, action.dim is 2",
        ),
        (
            "[0.5]",
            "[0.0, -1.0]",
            7,
            "action.robot_scale has 1 entries, action.dim is 2",
        ),
        (
            "[0.5, nan]",
            "[0.0, -1.0]",
            7,
            "action.robot_scale[1] = NaN is not finite",
        ),
        ("[0.0, 2.0]", "[0.0, -1.0]", 7, "action.robot_scale[0] is 0"),
    ] {
        fs::write(&path, with_mapping(scale, offset, version)).unwrap();
        let e = load_bundle(dir.path(), &Trust::AllowUnsigned)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(want), "{scale}, {offset}, {version}: {e}");
    }
}

/// Bundles whose hashes and declared inputs check out but whose networks would not run
/// as the manifest says: refused when the policy is built, on both backends, with the
/// part named (tract's own panics on such graphs come back as errors), and a running
/// policy keeps acting. Nonsense manifest values are refused when the bundle loads.
#[test]
fn bundles_that_do_not_run_as_their_manifest_says_are_refused_at_load() {
    // As in a robot run: a panic on the run's threads raises the flag that stops the
    // robot. tract's panics on these bundles are caught and must not.
    use controller::robot_loop::realtime;
    let _run = realtime::RunScope::enter();
    let root = tempfile::tempdir().unwrap();
    let good = root.path().join("good");
    SyntheticSpec::cpu().write(&good, 1, None).unwrap();
    let b = load_bundle(&good, &Trust::AllowUnsigned).unwrap();
    let mut current = Policy::new(&b, &options(Backend::Tract, 9)).unwrap();
    let variant = |name: &str, f: &dyn Fn(&Path)| variant_of(&good, root.path(), name, f);
    let ensemble = b.manifest.selection.ensemble_size;
    // (what, bundle, the native backend's message, tract's)
    // A critic weight edited in the graph: `edit` changes `layers.0.<part>`'s dims and
    // keeps as many of its values as they hold.
    let critic_weight = |name: &'static str, part: &'static str, dims: [i64; 3]| {
        variant(name, &move |d| {
            let name = format!("layers.0.{part}");
            edit_critic_initializer(
                d,
                |t| t.name == name,
                |w| {
                    let n = dims.iter().product::<i64>() as usize;
                    let values = w.floats().unwrap()[..n].to_vec();
                    w.dims = dims.to_vec();
                    set_floats(w, &values);
                },
            )
        })
    };
    // [E, 10, 64] → [E, 20, 32]: as many values, layers that do not chain; the sizes the
    // manifest names are checked when the bundle loads.
    let e = load_bundle(
        &critic_weight("reshaped", "obs.weight", [10, 20, 32]),
        &Trust::AllowUnsigned,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("weight `layers.0.obs.weight` (manifest `networks`): expected [10, 10, 64], found dims [10, 20, 32]"),
        "{e}"
    );
    // A bias half as wide as its layer: refused when the bundle loads (biases are
    // checked against the manifest's sizes too), and by each backend when the policy is
    // built (given the graph past the load's checks, as a bundle built by hand).
    let narrow = critic_weight("narrow bias", "bias", [10, 1, 32]);
    let e = load_bundle(&narrow, &Trust::AllowUnsigned)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("weight `layers.0.bias` (manifest `networks`): expected [10, 1, 64], found dims [10, 1, 32]"),
        "{e}"
    );
    let cases = [(
        "a critic bias narrower than its layer",
        narrow,
        "critic.onnx: `layers.0.bias` is 320 wide, expected 640".to_string(),
        "critic.onnx".to_string(),
    )];
    for (what, dir, native_text, tract_text) in cases {
        let mut bundle = b.clone();
        bundle.critic = Some(fs::read(dir.join("critic.onnx")).unwrap());
        for (backend, text) in [
            (Backend::Native, &native_text),
            (Backend::Tract, &tract_text),
        ] {
            let e = Policy::new(&bundle, &options(backend, 9))
                .err()
                .expect(what);
            assert!(
                format!("{e:#}").contains(text.as_str()),
                "{what}, {backend:?}: {e:#}"
            );
        }
        // A swap to it is refused by the load, and the running policy goes on.
        let e = reload(
            &mut current,
            &dir,
            &Trust::AllowUnsigned,
            &options(Backend::Tract, 9),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("layers.0.bias"), "{what}: {e:#}");
        let mut a = [0.0; 2];
        current.act(&obs(0), &mut a).unwrap();
    }
    // Member 7 overflows to inf at the load-time probe: the error names the member and
    // the bundle (it named neither).
    let dir = variant("member 7 overflows", &|d| {
        // The output layer: [E, d, 1] weights.
        let output =
            |t: &TensorProto| t.name.ends_with(".weight") && t.dims.len() == 3 && t.dims[2] == 1;
        edit_critic_initializer(d, output, |w| {
            let width = w.dims[1] as usize;
            let mut values = w.floats().unwrap();
            values[7 * width..8 * width].fill(f32::MAX);
            set_floats(w, &values);
        })
    });
    let bundle = load_bundle(&dir, &Trust::AllowUnsigned).unwrap();
    for backend in [Backend::Native, Backend::Tract] {
        let e = Policy::new(&bundle, &options(backend, 9)).err().unwrap();
        let e = format!("{e:#}");
        assert!(
            e.contains(&dir.display().to_string())
                && e.contains("critic member 7 (")
                && e.contains("is inf for a neutral input"),
            "{backend:?}: {e}"
        );
    }
    assert!(
        !realtime::panicked(),
        "a caught panic would have stopped the robot"
    );
    // Values no trainer writes: refused by load_bundle, by field.
    for (what, edit, text) in [
        (
            "beta_min NaN",
            ("diffusion", "beta_min", toml::Value::Float(f64::NAN)),
            "need 0 < beta_min <= beta_max",
        ),
        (
            "beta_min above beta_max",
            ("diffusion", "beta_min", toml::Value::Float(50.0)),
            "need 0 < beta_min <= beta_max",
        ),
        (
            "a signal that rounds to none in f32",
            ("diffusion", "beta_max", toml::Value::Float(1e5)),
            "rounds to zero in f32 (alpha",
        ),
        (
            "an edit policy without a hidden layer",
            ("networks", "edit_widths", toml::Value::Array(vec![])),
            "networks.edit_widths is empty",
        ),
        (
            "negative edit scale",
            ("selection", "edit_scale", toml::Value::Float(-3.0)),
            "selection.edit_scale = -3 must be finite and not negative",
        ),
        (
            "an edit scale past every bound",
            ("selection", "edit_scale", toml::Value::Float(1e30)),
            "selection.edit_scale = 1000000000000000000000000000000 must be at most 2",
        ),
        (
            "an infinite action bound",
            (
                "action",
                "high",
                toml::Value::Array(vec![
                    toml::Value::Float(f64::INFINITY),
                    toml::Value::Float(1.0),
                ]),
            ),
            "action.low[0] = -1 and action.high[0] = inf must be within [-1, 1]",
        ),
        (
            // Taken for raw bounds, it loaded: the policy never commands past about 1.
            "an action bound past the policy's range",
            (
                "action",
                "high",
                toml::Value::Array(vec![toml::Value::Float(2.0), toml::Value::Float(1.0)]),
            ),
            "action.low[0] = -1 and action.high[0] = 2 must be within [-1, 1] (policy units",
        ),
        (
            "a format version written as a string",
            ("", "format_version", toml::Value::String("2".into())),
            "`format_version` must be an integer, found string \"2\"",
        ),
        (
            "unknown algorithm",
            ("", "algo", toml::Value::String("bogus".into())),
            "algo `bogus` is not one this controller acts for",
        ),
        // Sizes that would abort the process on an allocation (no panic guard catches
        // that) once the policy is built.
        (
            "2^40 critics",
            ("selection", "ensemble_size", toml::Value::Integer(1 << 40)),
            "ensemble_size = 1099511627776 must be at most",
        ),
        (
            "2^40 candidates",
            ("selection", "num_samples", toml::Value::Integer(1 << 40)),
            "num_samples = 1099511627776 and ensemble_size",
        ),
        (
            "2^40 observation values",
            ("observation", "dim", toml::Value::Integer(1 << 40)),
            "observation.dim = 1099511627776 exceeds 65536",
        ),
        (
            "2^40 action values",
            ("action", "dim", toml::Value::Integer(1 << 40)),
            "action.dim = 1099511627776 exceeds 65536",
        ),
        // The critic graph's members, on the leading axis of every weight it gathers
        // by member id: tract ran a manifest of fewer members on the first of them
        // (the native backend refused it), and crashed inside the graph on more.
        (
            "fewer critic members in the manifest than in the graph",
            (
                "selection",
                "ensemble_size",
                toml::Value::Integer(ensemble as i64 / 2),
            ),
            "expected 5 (selection.ensemble_size), found dims [10,",
        ),
        (
            "more critic members in the manifest than in the graph",
            (
                "selection",
                "ensemble_size",
                toml::Value::Integer(2 * ensemble as i64),
            ),
            "expected 20 (selection.ensemble_size), found dims [10,",
        ),
        // Edits the controller would load and never use, or use as copies.
        (
            "edits without a critic to score them",
            ("selection", "critic_subset", toml::Value::Integer(0)),
            "selection.num_edit = 4 but critic_subset = 0",
        ),
        (
            "edits of scale 0",
            ("selection", "edit_scale", toml::Value::Float(0.0)),
            "selection.num_edit = 4 but edit_scale = 0",
        ),
        (
            "no observation values",
            ("observation", "dim", toml::Value::Integer(0)),
            "observation.dim = 0: a policy needs at least one value",
        ),
        (
            "no action values",
            ("action", "dim", toml::Value::Integer(0)),
            "action.dim = 0: a policy needs at least one value",
        ),
        (
            "2^40 diffusion steps",
            ("diffusion", "trained_steps", toml::Value::Integer(1 << 40)),
            "diffusion.trained_steps = 1099511627776 exceeds",
        ),
    ] {
        let dir = variant(what, &|d| {
            edit_manifest(d, |t| {
                let (table, key, value) = edit.clone();
                let t = if table.is_empty() {
                    t
                } else {
                    t[table].as_table_mut().unwrap()
                };
                t.insert(key.into(), value);
            })
        });
        let e = load_bundle(&dir, &Trust::AllowUnsigned)
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        assert!(e.to_string().contains(text), "{what}: {e}");
    }
    let dir = variant("inverted", &|d| {
        edit_manifest(d, |t| {
            let o = t["observation"].as_table_mut().unwrap();
            o["low"].as_array_mut().unwrap()[3] = toml::Value::Float(5.0);
            o["high"].as_array_mut().unwrap()[3] = toml::Value::Float(-5.0);
        })
    });
    let e = load_bundle(&dir, &Trust::AllowUnsigned).unwrap_err();
    assert!(e.to_string().contains("observation.low[3] = 5"), "{e}");
    // A std below the trainer's floor: the load-time probe's all-zero observation
    // passed it, and the first reading 0.03 from the mean gave a NaN action.
    let dir = variant("tiny std", &|d| {
        edit_manifest(d, |t| {
            let o = t["observation"].as_table_mut().unwrap();
            o["std"].as_array_mut().unwrap()[2] = toml::Value::Float(1e-40);
        })
    });
    let e = load_bundle(&dir, &Trust::AllowUnsigned).unwrap_err();
    let e = e.to_string();
    assert!(
        e.contains("observation.std[2] = 0.000000")
            && e.contains("must be finite and at least 0.001 (the trainer's floor)"),
        "{e}"
    );
    // At the floor a finite reading far from the mean overflows once normalised: it is
    // refused by name, not turned into a NaN action.
    let dir = variant("std at the floor", &|d| {
        edit_manifest(d, |t| {
            let o = t["observation"].as_table_mut().unwrap();
            o["std"].as_array_mut().unwrap()[2] = toml::Value::Float(1e-3);
        })
    });
    let b = load_bundle(&dir, &Trust::AllowUnsigned).unwrap();
    for backend in [Backend::Tract, Backend::Native] {
        let mut p = Policy::new(&b, &options(backend, 1)).unwrap();
        let mut a = [0.0; 2];
        let mut far = obs(0);
        far[2] = 1e36;
        let e = p.act(&far, &mut a).unwrap_err().to_string();
        assert!(
            e.contains("observation[2] = ") && e.contains("overflows the bundle's normal"),
            "{backend:?}: {e}"
        );
        // A reading merely huge (1e22 σ) does not overflow, but past ~1e18 the layer
        // norms answer the same for every observation and the chain clips to a
        // full-scale command: refused by name too (it acted at ±1 before).
        far[2] = 1e19;
        let e = match p.act(&far, &mut a) {
            Ok(_) => panic!("{backend:?}: acted {a:?} on a reading 1e22 σ out"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains("observation[2] = ") && e.contains("standard deviations"),
            "{backend:?}: {e}"
        );
        // At the bound itself it still acts.
        far[2] = b.manifest.observation.mean[2] + 9e5 * 1e-3;
        p.act(&far, &mut a).unwrap();
        p.act(&obs(0), &mut a).unwrap();
    }
    // Weights whose dims overflow a usize, or are negative, or whose bytes are not
    // whole f32s: refused by name when the bundle loads (the first used to panic on
    // the overflow, the last skipped the size and NaN checks).
    for (what, edit, text) in [
        (
            "overflowing dims",
            (&|w: &mut shared_model::onnx::TensorProto| w.dims = vec![1 << 32, 1 << 32])
                as &dyn Fn(&mut shared_model::onnx::TensorProto),
            "more elements than memory holds",
        ),
        (
            "a negative dim",
            &|w| w.dims[0] = -10,
            "more elements than memory holds",
        ),
        (
            "a torn f32",
            &|w| {
                let mut bytes = w
                    .floats()
                    .unwrap()
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect::<Vec<u8>>();
                bytes.pop();
                w.float_data.clear();
                w.raw_data = bytes;
            },
            "not a multiple of 4",
        ),
    ] {
        let dir = variant(what, &|d| edit_critic_initializer(d, |_| true, edit));
        let e = load_bundle(&dir, &Trust::AllowUnsigned)
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        assert!(e.to_string().contains(text), "{what}: {e}");
        assert!(e.to_string().contains("critic.onnx"), "{what}: {e}");
    }
    // tract and ort pass tensors by position: outputs declared in another order are
    // refused when the bundle loads (they would be swapped without a word).
    let dir = variant("outputs swapped", &|d| {
        let p = d.join("edit.onnx");
        let mut m = shared_model::onnx::ModelProto::from_bytes(&fs::read(&p).unwrap()).unwrap();
        m.graph.as_mut().unwrap().output.reverse();
        let bytes = m.to_bytes();
        fs::write(&p, &bytes).unwrap();
        edit_manifest(d, |t| set_hash(t, "edit", sha256_hex(&bytes)));
    });
    let e = load_bundle(&dir, &Trust::AllowUnsigned).unwrap_err();
    assert!(
        e.to_string()
            .contains("outputs, in order: expected mean, log_std"),
        "{e}"
    );
    // Network sizes that disagree with the graphs: tract ran them (only the native
    // backend refused a shorter denoiser), and the FLOP and weight figures computed
    // from the manifest were wrong. Refused by load_bundle, naming the weight.
    let blocks = b.manifest.networks.denoiser_blocks;
    assert_eq!(blocks, 2);
    let int = |v: i64| toml::Value::Integer(v);
    let widths = |w: &[i64]| toml::Value::Array(w.iter().map(|&x| int(x)).collect());
    for (what, key, value, text) in [
        (
            "fewer denoiser blocks",
            "denoiser_blocks",
            int(1),
            "weight `blocks.1.up.weight` (manifest `networks`): expected no such weight, found dims [64, 256]",
        ),
        (
            "more denoiser blocks",
            "denoiser_blocks",
            int(3),
            "weight `blocks.2.up.weight` (manifest `networks`): expected [64, 256], found no such weight",
        ),
        (
            "a wider expansion",
            "denoiser_expanded",
            int(512),
            "weight `blocks.0.up.weight` (manifest `networks`): expected [64, 512], found dims [64, 256]",
        ),
        (
            "a deeper critic",
            "critic_widths",
            widths(&[64, 64, 64]),
            "weight `layers.2.weight` (manifest `networks`): expected [10, 64, 64], found dims [10, 64, 1]",
        ),
        (
            "a narrower edit policy",
            "edit_widths",
            widths(&[64, 32]),
            "weight `head.mean.weight` (manifest `networks`): expected [32, 2], found dims [64, 2]",
        ),
    ] {
        let dir = variant(what, &|d| {
            edit_manifest(d, |t| {
                t["networks"]
                    .as_table_mut()
                    .unwrap()
                    .insert(key.into(), value.clone());
            })
        });
        let e = load_bundle(&dir, &Trust::AllowUnsigned)
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"))
            .to_string();
        assert!(e.contains(text), "{what}: {e}");
    }
}

/// The native backend computes layer norms with the exporter's epsilon. A graph whose
/// `LayerNormalization` nodes say another is refused by it, naming the node, and runs
/// on tract, which follows the attribute.
#[test]
fn the_native_backend_refuses_a_layer_norm_epsilon_it_does_not_compute_with() {
    let root = tempfile::tempdir().unwrap();
    let good = root.path().join("good");
    SyntheticSpec::cpu().write(&good, 1, None).unwrap();
    let changed = variant_of(&good, root.path(), "eps", &|d| {
        let p = d.join("denoiser.onnx");
        let mut m = shared_model::onnx::ModelProto::from_bytes(&fs::read(&p).unwrap()).unwrap();
        let mut n = 0;
        for node in m
            .graph
            .as_mut()
            .unwrap()
            .node
            .iter_mut()
            .filter(|n| n.op_type == "LayerNormalization")
        {
            for a in node.attribute.iter_mut().filter(|a| a.name == "epsilon") {
                a.f = 1e-3;
                n += 1;
            }
        }
        assert!(n > 0, "no layer norm in the denoiser");
        let bytes = m.to_bytes();
        fs::write(&p, &bytes).unwrap();
        edit_manifest(d, |t| set_hash(t, "denoiser", sha256_hex(&bytes)));
    });
    for (dir, native_ok) in [(&good, true), (&changed, false)] {
        let b = load_bundle(dir, &Trust::AllowUnsigned).unwrap();
        let rows = GraphRows::for_manifest(&b.manifest);
        load_networks(Backend::Tract, &b, rows).unwrap();
        match load_networks(Backend::Native, &b, rows) {
            Ok(_) => assert!(native_ok, "the native backend ran epsilon 1e-3"),
            Err(e) => {
                assert!(!native_ok, "{e:#}");
                let e = format!("{e:#}");
                assert!(
                    e.contains("has epsilon 1e-3") && e.contains("--backend tract"),
                    "{e}"
                );
            }
        }
    }
}

/// The real networks of a `cpu`-sized synthetic bundle (native backend), broken on
/// purpose: the denoiser answers `eps_fill` (NaN, or an infinity) for its first
/// `nan_rows` rows, and the critic answers `critic_fill` for its first `critic_rows`
/// candidates.
#[derive(Clone, Copy)]
struct Broken {
    nan_rows: usize,
    eps_fill: f32,
    critic_fill: f32,
    critic_rows: usize,
}

struct BrokenNets {
    inner: Box<dyn Networks>,
    how: Broken,
}

impl Networks for BrokenNets {
    fn denoise(&mut self, obs: &[f32], noisy: &[f32], t: f32, eps: &mut [f32]) -> Result<()> {
        self.inner.denoise(obs, noisy, t, eps)?;
        // Two action values per row (asserted in `Broken::policy`).
        let n = (self.how.nan_rows * 2).min(eps.len());
        eps[..n].fill(self.how.eps_fill);
        Ok(())
    }
    fn edit(&mut self, obs: &[f32], base: &[f32], mean: &mut [f32], ls: &mut [f32]) -> Result<()> {
        self.inner.edit(obs, base, mean, ls)
    }
    fn critic(&mut self, obs: &[f32], act: &[f32], members: &[i64], q: &mut [f32]) -> Result<()> {
        self.inner.critic(obs, act, members, q)?;
        let rows = q.len() / members.len();
        for member in q.chunks_mut(rows) {
            member[..self.how.critic_rows.min(rows)].fill(self.how.critic_fill);
        }
        Ok(())
    }
}

impl Broken {
    const NOTHING: Broken = Broken {
        nan_rows: 0,
        eps_fill: f32::NAN,
        critic_fill: 0.0,
        critic_rows: 0,
    };

    /// A policy acting with these networks, and the bundle's (N, N + n_edit).
    fn policy(self) -> (Policy, usize, usize) {
        let dir = tempfile::tempdir().unwrap();
        SyntheticSpec::cpu().write(dir.path(), 3, None).unwrap();
        let b = load_bundle(dir.path(), &Trust::AllowUnsigned).unwrap();
        // The NaN rows are two values wide: one action of two values per row.
        assert_eq!((b.manifest.action.dim, b.manifest.action.horizon), (2, 1));
        let rows = GraphRows::for_manifest(&b.manifest);
        let inner = load_networks(Backend::Native, &b, rows).unwrap();
        let nets = Box::new(BrokenNets { inner, how: self });
        let s = &b.manifest.selection;
        let (n, m) = (s.num_samples, s.num_samples + s.num_edit);
        let p =
            Policy::with_networks(b.manifest.clone(), nets, &options(Backend::Native, 4)).unwrap();
        (p, n, m)
    }
}

/// The native critic's ReLU turns a NaN candidate's activations into zeros, so its Q
/// looks finite: a NaN candidate must still lose to a finite one, and with none finite
/// the action is refused (it was returned as NaN, for the loop's action check to fault).
/// So must one the denoiser answered an infinity for (the clamp made it a full-scale ±1
/// action that passed every check).
#[test]
fn a_candidate_that_is_not_finite_is_never_picked() {
    let (_, n, m) = Broken::NOTHING.policy();
    let mut a = [0.0; 2];
    for eps_fill in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let nan_rows = |nan_rows| Broken {
            nan_rows,
            eps_fill,
            ..Broken::NOTHING
        };
        let e = nan_rows(n)
            .policy()
            .0
            .act(&obs(0), &mut a)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no candidate is finite"), "{eps_fill}: {e}");
        for seed_obs in 0..4 {
            let c = nan_rows(n - 1)
                .policy()
                .0
                .act(&obs(seed_obs), &mut a)
                .unwrap();
            // Rows 0..n-1 and their edited copies n..n+n_edit-1 are NaN; only base row n-1
            // (and its edited copy, when n_edit reaches it) is finite.
            assert!(a.iter().all(|v| v.is_finite()), "{a:?}");
            let last_base = n - 1;
            assert!(
                c.index == last_base || c.index == n + last_base,
                "{eps_fill}: picked {} of the NaN candidates",
                c.index
            );
        }
    }
    // Candidate 0 NaN, the others finite, and a critic that scores nothing finite: the
    // critic is named, not the denoiser.
    let both = Broken {
        nan_rows: 1,
        critic_fill: f32::NAN,
        critic_rows: m,
        ..Broken::NOTHING
    };
    let e = both
        .policy()
        .0
        .act(&obs(0), &mut a)
        .unwrap_err()
        .to_string();
    assert!(e.contains("the critic's best score"), "{e}");
}

/// A critic that scores no candidate finite (blown up on this observation) does not
/// drive the robot with an unscored candidate: the action is refused, and the loop
/// faults. One that scores some candidates finite picks among those.
#[test]
fn a_critic_that_scores_nothing_finite_is_refused() {
    let (_, _, m) = Broken::NOTHING.policy();
    let policy = |critic_fill: f32, critic_rows: usize| {
        let how = Broken {
            critic_fill,
            critic_rows,
            ..Broken::NOTHING
        };
        how.policy().0
    };
    let mut a = [0.0; 2];
    for fill in [f32::NAN, f32::NEG_INFINITY, f32::INFINITY] {
        let e = policy(fill, m)
            .act(&obs(0), &mut a)
            .unwrap_err()
            .to_string();
        let text = format!("the critic's best score over the {m} candidates is {fill}");
        assert!(e.contains(&text), "{fill}: {e}");
        let partly = policy(fill, m - 1).act(&obs(0), &mut a);
        if fill == f32::INFINITY {
            // An infinite Q is as broken as a NaN one.
            assert!(partly.unwrap_err().to_string().contains(&text));
        } else {
            let c = partly.unwrap();
            assert_eq!(c.index, m - 1, "{fill}: the only finite candidate");
            assert!(c.score.is_finite());
        }
    }
}
