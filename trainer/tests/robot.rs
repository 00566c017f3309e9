//! Runs for a robot without a simulator (`task = "robot"`): everything comes from the
//! robot's dataset, and what needs an environment says so.

use dataset::{DatasetInfo, Episode};
use shared_model::Trust;
use sim::rng::Rng;
use sim::{EnvConfig, TaskId};
use std::path::{Path, PathBuf};
use trainer::config::{Config, Task};
use trainer::export::{ExportInfo, export_bundle};
use trainer::finetune::{FinetuneOptions, finetune};
use trainer::run::{TrainOptions, load_agent, train};

fn pretrain(c: &Config, out: &Path) {
    let mut c = c.clone();
    c.run.online_steps = 0;
    train(&c, out, &TrainOptions::default(), &mut ()).unwrap();
}

fn finetune_options(from: &Path, data: &Path, out: &Path, updates: usize) -> FinetuneOptions {
    FinetuneOptions {
        from: from.into(),
        data: vec![data.into()],
        out: out.into(),
        updates,
        with_offline: true,
        checkpoint_every: 0,
        log_every: 1,
        // The CLI's default; a robot run skips it (no simulator).
        eval_episodes: 50,
        resume: false,
        stop_after: None,
        keep_interventions: false,
        device: None,
        exports_bundle: false,
        listen: None,
    }
}

/// The error of a `train` that must fail, with its causes.
fn train_error(config: &Config, out: &Path) -> String {
    format!(
        "{:#}",
        train(config, out, &TrainOptions::default(), &mut ()).unwrap_err()
    )
}

/// Runs the `trainer` binary: its stdout, or its stderr when it fails.
fn trainer_cli(args: &[&str]) -> Result<String, String> {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

fn robot_config(dataset: &Path) -> Config {
    let mut c = Config::tiny();
    c.task = Task::Robot;
    c.run.dataset = Some(dataset.display().to_string());
    c.run.online_steps = 0;
    // Critics and edit policy too, as the `cpu` preset does.
    c.run.pretrain_critic = true;
    c
}

/// A robot `name` with 7 observations and 3 actions: a noisy point that the actions push
/// towards a goal, success when it gets close. Episodes are seeded from `seed`.
fn own_robot_dataset(dir: &Path, name: &str, episodes: usize, seed: u64) -> DatasetInfo {
    let info = DatasetInfo {
        robot_type: name.into(),
        fps: 50,
        task: "reach the marker".into(),
        observation_names: (0..7).map(|i| format!("q{i}")).collect(),
        action_names: vec!["dx".into(), "dy".into(), "dz".into()],
        // As `controller run` records it: the robot file's action.scale and offset.
        action_mapping: Some(dataset::ActionMapping {
            scale: vec![0.05, 0.05, 0.02],
            offset: vec![0.0, 0.0, 0.3],
        }),
    };
    let mut rng = Rng::new(seed);
    let mut eps = vec![];
    for _ in 0..episodes {
        let mut ep = Episode::default();
        let goal = [rng.uniform(), rng.uniform(), rng.uniform()];
        let mut p = [0.0f32; 3];
        for t in 0..30 {
            let obs: Vec<f32> = p
                .iter()
                .chain(&goal)
                .copied()
                .chain([t as f32 / 30.0])
                .collect();
            let act: Vec<f32> = (0..3)
                .map(|k| ((goal[k] - p[k]) * 4.0 + 0.3 * rng.normal()).clamp(-1.0, 1.0))
                .collect();
            for k in 0..3 {
                p[k] += 0.1 * act[k];
            }
            let dist: f32 = (0..3).map(|k| (goal[k] - p[k]).powi(2)).sum::<f32>().sqrt();
            let success = dist < 0.05;
            let next: Vec<f32> = p
                .iter()
                .chain(&goal)
                .copied()
                .chain([(t + 1) as f32 / 30.0])
                .collect();
            ep.observations.extend(&obs);
            ep.next_observations.extend(&next);
            ep.actions.extend(&act);
            ep.rewards.push(success as u8 as f32);
            ep.terminated.push(success);
            ep.truncated.push(!success && t == 29);
            ep.success.push(success);
            ep.intervention.push(false);
            ep.teleop.push(false);
            if success {
                break;
            }
        }
        eps.push(ep);
    }
    dataset::write_dataset(dir, &info, &eps).unwrap();
    info
}

fn graph_hashes(bundle: &Path) -> Vec<String> {
    let m = shared_model::load_bundle(bundle, &Trust::AllowUnsigned)
        .unwrap()
        .manifest;
    let g = &m.graphs;
    [Some(&g.denoiser), g.edit.as_ref(), g.critic.as_ref()]
        .into_iter()
        .flatten()
        .map(|f| f.sha256.clone())
        .collect()
}

/// The same demonstrations as a simulated task's dataset and as an unknown robot's
/// (another name, other feature names): the robot run learns exactly what the task run
/// learns, and its bundle differs only in what describes the robot.
#[test]
fn a_robot_run_learns_what_the_same_data_teaches_under_a_task_name() {
    let tmp = tempfile::tempdir().unwrap();
    let as_task = tmp.path().join("push-demos");
    tools::generate::generate(TaskId::Push, 12, 3, EnvConfig::default(), &as_task).unwrap();
    let mut ds = dataset::read_dataset(&as_task).unwrap();
    ds.info.robot_type = "lab-pusher".into();
    ds.info.observation_names = (0..10).map(|i| format!("sensor{i}")).collect();
    let as_robot = tmp.path().join("robot-demos");
    dataset::write_dataset(&as_robot, &ds.info, &ds.episodes).unwrap();

    let mut task_config = robot_config(&as_task);
    task_config.task = TaskId::Push.into();
    let (task_run, robot_run) = (tmp.path().join("task-run"), tmp.path().join("robot-run"));
    pretrain(&task_config, &task_run);
    pretrain(&robot_config(&as_robot), &robot_run);

    // No simulator, no evaluation: the robot run's eval.csv has its header only.
    let evals = std::fs::read_to_string(robot_run.join("eval.csv")).unwrap();
    assert_eq!(evals.lines().count(), 1, "{evals}");
    let task_evals = std::fs::read_to_string(task_run.join("eval.csv")).unwrap();
    assert_eq!(task_evals.lines().count(), 2, "{task_evals}");

    // A checkpoint written before runs knew robots (no `robot` key) still loads.
    let state = task_run.join("checkpoint/state.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert!(json.as_object_mut().unwrap().remove("robot").is_some());
    std::fs::write(&state, json.to_string()).unwrap();

    let (task_bundle, robot_bundle) = (tmp.path().join("task-b"), tmp.path().join("robot-b"));
    for (run, bundle) in [(&task_run, &task_bundle), (&robot_run, &robot_bundle)] {
        let agent = load_agent(run).unwrap();
        export_bundle(&agent, bundle, &ExportInfo::default(), None).unwrap();
    }
    let hashes = graph_hashes(&task_bundle);
    assert_eq!(hashes.len(), 3, "denoiser, edit policy and critic");
    assert_eq!(
        hashes,
        graph_hashes(&robot_bundle),
        "the same data must train the same networks"
    );
    // And the networks do depend on the data: other demonstrations, another denoiser.
    let (other, other_run) = (tmp.path().join("other"), tmp.path().join("other-run"));
    tools::generate::generate(TaskId::Push, 12, 4, EnvConfig::default(), &other).unwrap();
    pretrain(&robot_config(&other), &other_run);
    let other_bundle = tmp.path().join("other-b");
    export_bundle(
        &load_agent(&other_run).unwrap(),
        &other_bundle,
        &ExportInfo::default(),
        None,
    )
    .unwrap();
    assert_ne!(graph_hashes(&other_bundle)[0], hashes[0]);

    let m = shared_model::load_bundle(&robot_bundle, &Trust::AllowUnsigned)
        .unwrap()
        .manifest;
    assert_eq!(m.task, "lab-pusher");
    let e = trainer_cli(&[
        "eval",
        "--bundle",
        robot_bundle.to_str().unwrap(),
        "--allow-unsigned",
        "--episodes",
        "2",
    ])
    .unwrap_err();
    assert!(
        e.contains("the bundle is for 'lab-pusher', which is not a simulated task"),
        "{e}"
    );
    // A task's bundle that says another rate is refused, as `controller run --sim`
    // refuses it (`eval --bundle` played it at the task's rate).
    // `eval --bundle`'s refusal of a copy of the task's bundle (`name`) whose manifest
    // has `from` (once) replaced by `to`.
    let eval_edited = |name: &str, from: &str, to: &str| {
        let copy = tmp.path().join(name);
        std::fs::create_dir_all(&copy).unwrap();
        for f in std::fs::read_dir(&task_bundle).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, copy.join(f.file_name().unwrap())).unwrap();
        }
        let manifest = std::fs::read_to_string(copy.join("manifest.toml")).unwrap();
        assert_eq!(manifest.matches(from).count(), 1, "{manifest}");
        std::fs::write(copy.join("manifest.toml"), manifest.replace(from, to)).unwrap();
        trainer_cli(&[
            "eval",
            "--bundle",
            copy.to_str().unwrap(),
            "--allow-unsigned",
            "--episodes",
            "2",
        ])
        .unwrap_err()
    };
    let e = eval_edited("task-b-10hz", "control_hz = 20", "control_hz = 10");
    assert!(
        e.contains("the bundle was trained on data recorded at 10 Hz, task push steps at 20 Hz"),
        "{e}"
    );
    // One naming the task's observations in another order is refused, as `controller
    // run --sim` refuses it (`eval --bundle` compared only the name, sizes and rate).
    let e = eval_edited(
        "task-b-reordered",
        "\"pusher_x\",\n    \"pusher_y\",",
        "\"pusher_y\",\n    \"pusher_x\",",
    );
    assert!(
        e.contains(
            "observation `pusher_y` is at [0] in the bundle and at [1] in task push: the \
             policy would act on its inputs in another order"
        ),
        "{e}"
    );
    assert_eq!(m.observation.names, ds.info.observation_names);
    assert_eq!((m.observation.dim, m.action.dim), (10, 2));
    // The observation bounds are the data's range.
    for d in 0..10 {
        let column = ds
            .episodes
            .iter()
            .flat_map(|e| e.observations.iter().skip(d).step_by(10).copied());
        let (lo, hi) = column.fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), x| {
            (l.min(x), h.max(x))
        });
        assert_eq!((m.observation.low[d], m.observation.high[d]), (lo, hi));
        assert!(lo < hi, "dimension {d} is constant in the demonstrations");
    }
}

/// A robot of its own shape (7 observations, 3 actions): pretraining, a bundle the
/// controller's runtime runs, and fine-tuning on what the robot recorded, with no
/// simulator anywhere.
#[test]
fn a_robot_of_its_own_shape_pretrains_exports_and_finetunes() {
    let tmp = tempfile::tempdir().unwrap();
    let demos = tmp.path().join("demos");
    let info = own_robot_dataset(&demos, "lab-arm", 40, 1);
    let run = tmp.path().join("run");
    pretrain(&robot_config(&demos), &run);

    let mut agent = load_agent(&run).unwrap();
    assert_eq!((agent.obs_dim, agent.act_dim), (7, 3));
    let robot = agent.robot.clone().expect("the checkpoint keeps the robot");
    assert_eq!(robot.name, "lab-arm");
    assert_eq!(robot.fps, 50);
    assert_eq!(robot.action_names, info.action_names);

    let bundle = tmp.path().join("bundle");
    export_bundle(&agent, &bundle, &ExportInfo::default(), None).unwrap();
    let b = shared_model::load_bundle(&bundle, &Trust::AllowUnsigned).unwrap();
    assert_eq!(b.manifest.task, "lab-arm");
    // The data's action names, in order, for the controller to check against the
    // robot file's (format 6); names a reader made up are no names.
    assert_eq!(b.manifest.action.names, info.action_names);
    // And the robot file's action mapping the data was recorded with (format 7), for
    // the controller to refuse a robot file that maps the actions otherwise.
    let mapping = info.action_mapping.clone().unwrap();
    assert_eq!(robot.action_mapping.as_ref(), Some(&mapping));
    assert_eq!(
        (
            &b.manifest.action.robot_scale,
            &b.manifest.action.robot_offset
        ),
        (&mapping.scale, &mapping.offset)
    );
    assert_eq!(b.manifest.format_version, 7);
    // Data that named no actions and recorded no mapping: format 5, as before.
    let made_up: Vec<String> = (0..3).map(|i| format!("action.{i}")).collect();
    let named = std::mem::replace(&mut agent.robot.as_mut().unwrap().action_names, made_up);
    let mapped = agent.robot.as_mut().unwrap().action_mapping.take();
    let plain = tmp.path().join("unnamed");
    export_bundle(&agent, &plain, &ExportInfo::default(), None).unwrap();
    agent.robot.as_mut().unwrap().action_names = named;
    agent.robot.as_mut().unwrap().action_mapping = mapped;
    let m = shared_model::load_bundle(&plain, &Trust::AllowUnsigned)
        .unwrap()
        .manifest;
    assert!(
        m.action.names.is_empty() && m.action.robot_scale.is_empty() && m.format_version == 5,
        "{m:?}"
    );
    let mut policy = controller::runtime::Policy::new(
        &b,
        &controller::runtime::PolicyOptions {
            backend: controller::runtime::Backend::Tract,
            executed_steps: None,
            seed: 5,
        },
    )
    .unwrap();
    // The runtime acts as the trained agent does (same seed: same noise and subsets).
    agent.act_rng = Rng::new(5);
    for obs in [
        [0.1, 0.0, 0.2, 0.5, 0.4, 0.3, 0.0],
        [0.6, 0.2, 0.1, 0.3, 0.9, 0.2, 0.5],
    ] {
        let want: Vec<f32> = agent.act(&obs).iter().map(|a| a.clamp(-1.0, 1.0)).collect();
        let mut got = [f32::NAN; 3];
        policy.act(&obs, &mut got).unwrap();
        let diff = want
            .iter()
            .zip(&got)
            .map(|(w, g)| (w - g).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-4, "burn {want:?} vs runtime {got:?}");
    }

    // What the robot recorded later (same shape), then fine-tuning on it.
    let recorded = tmp.path().join("recorded");
    own_robot_dataset(&recorded, "lab-arm", 5, 2);
    let out = tmp.path().join("ft");
    let summary = finetune(&finetune_options(&run, &recorded, &out, 4), &mut ()).unwrap();
    assert_eq!(summary.updates, 4);
    assert_eq!(summary.robot_episodes, 5);
    assert!(summary.before.is_none() && summary.after.is_none());
    let tuned = load_agent(&out).unwrap();
    // The description is kept; the observation bounds widen to hold what it trained on
    // (never narrow).
    let kept = tuned.robot.clone().unwrap();
    let (low, high) = (kept.obs_low.clone(), kept.obs_high.clone());
    let as_pretrained = trainer::robot::RobotInfo {
        obs_low: robot.obs_low.clone(),
        obs_high: robot.obs_high.clone(),
        ..kept
    };
    assert_eq!(as_pretrained, robot);
    assert!(
        low.iter().zip(&robot.obs_low).all(|(t, r)| t <= r)
            && high.iter().zip(&robot.obs_high).all(|(t, r)| t >= r),
        "{low:?} {high:?} against {robot:?}"
    );
    export_bundle(
        &tuned,
        &tmp.path().join("bundle2"),
        &ExportInfo::default(),
        None,
    )
    .unwrap();

    // The robot's data recorded after its robot file's action mapping changed: the
    // same shape and names, refused by the action it maps otherwise.
    let remapped = tmp.path().join("remapped");
    let mut data = dataset::read_dataset(&recorded).unwrap();
    data.info.action_mapping.as_mut().unwrap().scale[2] = 0.04;
    dataset::write_dataset(&remapped, &data.info, &data.episodes).unwrap();
    let o = finetune_options(&run, &remapped, &tmp.path().join("ft-remapped"), 1);
    let e = format!("{:#}", finetune(&o, &mut ()).unwrap_err());
    assert!(
        e.contains(
            "action [2] was recorded as 0.3 + 0.04 × a in robot units in the dataset, \
                    as 0.3 + 0.02 × a in the run's data"
        ),
        "{e}"
    );

    // A dataset of another shape is refused with its path.
    let other = tmp.path().join("other");
    tools::generate::generate(TaskId::Push, 1, 1, EnvConfig::default(), &other).unwrap();
    let o = finetune_options(&run, &other, &tmp.path().join("ft2"), 1);
    let e = format!("{:#}", finetune(&o, &mut ()).unwrap_err());
    assert!(
        e.contains(&other.display().to_string()) && e.contains("take 7 and 3"),
        "{e}"
    );
    // Refused through the command line, it leaves no directory behind: it left one
    // holding its lock file (the refusal came after the run directory was taken).
    let refused = tmp.path().join("ft3");
    let e = trainer_cli(&[
        "finetune",
        "--from",
        run.to_str().unwrap(),
        "--data",
        other.to_str().unwrap(),
        "--out",
        refused.to_str().unwrap(),
    ])
    .unwrap_err();
    assert!(e.contains("take 7 and 3"), "{e}");
    assert!(!refused.exists());
}

/// What needs a simulator names the missing one; a robot run needs its dataset.
#[test]
fn what_needs_a_simulator_says_so_for_a_robot_run() {
    let tmp = tempfile::tempdir().unwrap();
    let demos = tmp.path().join("demos");
    own_robot_dataset(&demos, "lab-arm", 6, 3);

    let e = Config::resolve("tiny", None, &["task=robot".into()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("run.dataset"), "{e}");
    let e = format!(
        "{:#}",
        Config::resolve("tiny", None, &["task=lab".into()]).unwrap_err()
    );
    assert!(
        e.contains("unknown task 'lab': expected arm-reach, push, maze or robot"),
        "{e}"
    );

    // Through the command line.
    let toml = trainer_cli(&[
        "config",
        "--preset",
        "tiny",
        "--set",
        "task=robot",
        "--set",
        &format!("run.dataset={}", demos.display()),
    ])
    .unwrap();
    assert!(
        toml.contains("task = \"robot\"")
            && toml.contains(&format!("dataset = \"{}\"", demos.display())),
        "{toml}"
    );

    // A robot that carries a simulated task's name is still not that task.
    let named_push = tmp.path().join("named-push");
    own_robot_dataset(&named_push, "push", 6, 4);
    let (run, bundle) = (tmp.path().join("np-run"), tmp.path().join("np-bundle"));
    pretrain(&robot_config(&named_push), &run);
    export_bundle(
        &load_agent(&run).unwrap(),
        &bundle,
        &ExportInfo::default(),
        None,
    )
    .unwrap();
    let e = trainer_cli(&[
        "eval",
        "--bundle",
        bundle.to_str().unwrap(),
        "--allow-unsigned",
        "--episodes",
        "2",
    ])
    .unwrap_err();
    assert!(
        e.contains(
            "the bundle takes 7 observations and 3 actions, the simulated task 'push' has 10 and 2"
        ),
        "{e}"
    );

    // Online steps need an environment.
    let mut c = robot_config(&demos);
    c.run.online_steps = 10;
    let e = train_error(&c, &tmp.path().join("online"));
    assert!(
        e.contains("no simulator") && e.contains("trainer pretrain"),
        "{e}"
    );

    let run = tmp.path().join("run");
    pretrain(&robot_config(&demos), &run);
    let mut agent = load_agent(&run).unwrap();
    let e = trainer::run::evaluate(&mut agent, 2, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs a simulated task"), "{e}");

    // Labelled demonstrations pass without a warning; without rewards they get one.
    assert!(
        trainer::run::offline_data(&robot_config(&demos))
            .unwrap()
            .warnings
            .is_empty()
    );
    let mut ds = dataset::read_dataset(&demos).unwrap();
    for ep in &mut ds.episodes {
        ep.rewards.iter_mut().for_each(|r| *r = 0.0);
    }
    let unlabelled = tmp.path().join("unlabelled");
    dataset::write_dataset(&unlabelled, &ds.info, &ds.episodes).unwrap();
    let w = trainer::run::offline_data(&robot_config(&unlabelled))
        .unwrap()
        .warnings;
    assert!(w.len() == 1 && w[0].contains("every reward is 0"), "{w:?}");
    // Rewards only on last frames that have no recorded successor and end truncated (a
    // LeRobot conversion with `next.reward` and `next.done` only): training leaves
    // those frames out, so it saw no reward, and nothing said so (the dataset has
    // rewards).
    let mut ds = dataset::read_dataset(&demos).unwrap();
    for ep in &mut ds.episodes {
        let n = ep.len();
        ep.rewards.iter_mut().for_each(|r| *r = 0.0);
        ep.rewards[n - 1] = 1.0;
        ep.terminated.iter_mut().for_each(|t| *t = false);
        ep.success.iter_mut().for_each(|s| *s = false);
        ep.truncated.iter_mut().for_each(|t| *t = false);
        ep.truncated[n - 1] = true;
        // As a reader derives them without the column: the next frame's, and the last
        // frame's own.
        let od = ds.info.obs_dim();
        ep.next_observations[..(n - 1) * od].copy_from_slice(&ep.observations[od..]);
        let last = ep.observations[(n - 1) * od..].to_vec();
        ep.next_observations[(n - 1) * od..].copy_from_slice(&last);
    }
    let rewards_cut = tmp.path().join("rewards-cut");
    dataset::write_dataset_as(&rewards_cut, &ds.info, &ds.episodes, false).unwrap();
    let w = trainer::run::offline_data(&robot_config(&rewards_cut))
        .unwrap()
        .warnings;
    let episodes = ds.episodes.len();
    assert!(
        w.len() == 1
            && w[0].contains(&format!(
                "{episodes} of the {episodes} frames with a reward (100% of the reward)"
            ))
            && w[0].contains("marked as interventions: the critics learn nothing"),
        "{w:?}"
    );
    // Frames marked as interventions are left out (their action did not move the arm)
    // and counted; a reward on one (the person finished the task) is left out with it.
    let mut ds = dataset::read_dataset(&demos).unwrap();
    let mut marked = 0;
    for ep in &mut ds.episodes {
        for (i, r) in ep.rewards.iter().enumerate() {
            if *r != 0.0 {
                ep.intervention[i] = true;
                marked += 1;
            }
        }
    }
    assert!(marked > 0);
    let taken_over = tmp.path().join("taken-over");
    dataset::write_dataset(&taken_over, &ds.info, &ds.episodes).unwrap();
    let w = trainer::run::offline_data(&robot_config(&taken_over))
        .unwrap()
        .warnings;
    assert!(
        w.len() == 2
            && w[0].contains(&format!("{marked} of the {marked} frames with a reward"))
            && w[1].contains(&format!(
                "{marked} frames marked as interventions are left out"
            )),
        "{w:?}"
    );
    // A value that never changes in the demonstrations (a sensor that read 0 throughout)
    // is named: its normalisation would amplify any change on the robot 1000 times.
    let mut ds = dataset::read_dataset(&demos).unwrap();
    let od = ds.info.obs_dim();
    for ep in &mut ds.episodes {
        for o in [&mut ep.observations, &mut ep.next_observations] {
            o.iter_mut().skip(2).step_by(od).for_each(|x| *x = 0.25);
        }
    }
    let constant = tmp.path().join("constant");
    dataset::write_dataset(&constant, &ds.info, &ds.episodes).unwrap();
    let w = trainer::run::offline_data(&robot_config(&constant))
        .unwrap()
        .warnings;
    let name = &ds.info.observation_names[2];
    assert!(
        w.len() == 1 && w[0].contains(&format!("observation [2] `{name}` barely varies")),
        "{w:?}"
    );

    // Actions in the robot's units (outside the policy's [-1, 1]) are refused.
    let mut ds = dataset::read_dataset(&demos).unwrap();
    ds.episodes[3].actions[7] = 42.0;
    let raw_units = tmp.path().join("raw-units");
    dataset::write_dataset(&raw_units, &ds.info, &ds.episodes).unwrap();
    let e = train_error(&robot_config(&raw_units), &tmp.path().join("raw-run"));
    assert!(
        e.contains(&raw_units.display().to_string())
            && e.contains("episode 3, frame 2: action[1] = 42")
            && e.contains("this dataset records its action mapping (`expo_action_mapping`"),
        "{e}"
    );
    // Without a recorded mapping (LeRobot's recorder), they may be the robot's units:
    // `label --robot-units` converts those (it refuses a dataset that records one).
    ds.info.action_mapping = None;
    let unmapped = tmp.path().join("raw-units-unmapped");
    dataset::write_dataset(&unmapped, &ds.info, &ds.episodes).unwrap();
    let e = train_error(&robot_config(&unmapped), &tmp.path().join("raw-run-2"));
    assert!(
        e.contains("episode 3, frame 2: action[1] = 42") && e.contains("--robot-units"),
        "{e}"
    );

    // A simulated task's dimensions do not fit this robot's data.
    let mut c = robot_config(&demos);
    c.task = TaskId::Push.into();
    let e = train_error(&c, &tmp.path().join("push"));
    assert!(
        e.contains("expects 10 and 2") && e.contains("task = \"robot\""),
        "{e}"
    );
}

/// Offline data that cannot train the run is refused by name before any update: a
/// dataset of another simulated task with the same sizes (push's and arm-reach's are
/// alike; it used to be trained on without a word), and a robot dataset whose
/// episodes are all shorter than the action horizon, without a terminal step (no chunk
/// at all; that used to panic on the first batch).
#[test]
fn offline_data_that_cannot_train_the_run_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let push = tmp.path().join("push-demos");
    tools::generate::generate(TaskId::Push, 2, 7, EnvConfig::default(), &push).unwrap();
    let mut c = Config::tiny();
    c.task = TaskId::ArmReach.into();
    c.run.dataset = Some(push.display().to_string());
    c.run.online_steps = 0;
    let e = format!(
        "{:#}",
        train(&c, &tmp.path().join("a"), &TrainOptions::default(), &mut ()).unwrap_err()
    );
    assert!(
        e.contains("push-demos") && e.contains("observation names differ from task arm-reach's"),
        "{e}"
    );

    // The task's own data with its actions named in another order: trained on, the
    // bundle named them in the task's (`finetune --data` refused the same data).
    let at_20 = tmp.path().join("demos-20hz");
    tools::generate::generate(TaskId::ArmReach, 2, 7, EnvConfig::default(), &at_20).unwrap();
    let mut ds = dataset::read_dataset(&at_20).unwrap();
    let mut swapped = ds.info.clone();
    swapped.action_names.swap(0, 1);
    let first = swapped.action_names[0].clone();
    let reordered = tmp.path().join("reordered-demos");
    dataset::write_dataset(&reordered, &swapped, &ds.episodes).unwrap();
    c.run.dataset = Some(reordered.display().to_string());
    let e = format!(
        "{:#}",
        train(&c, &tmp.path().join("r"), &TrainOptions::default(), &mut ()).unwrap_err()
    );
    assert!(
        e.contains(&format!(
            "reordered-demos: action `{first}` is at [0] in the dataset and at [1] in task \
             arm-reach: the same actions in another order"
        )),
        "{e}"
    );

    // The task's own data, but recorded at another rate (30 fps): its steps are not the
    // task's 20 Hz ones, and the bundle would say 20 Hz (it was trained on).
    assert_eq!(ds.info.fps, 20);
    ds.info.fps = 30;
    let fast = tmp.path().join("fast-demos");
    dataset::write_dataset(&fast, &ds.info, &ds.episodes).unwrap();
    c.run.dataset = Some(fast.display().to_string());
    let e = format!(
        "{:#}",
        train(&c, &tmp.path().join("f"), &TrainOptions::default(), &mut ()).unwrap_err()
    );
    assert!(
        e.contains("fast-demos: recorded at 30 Hz, task arm-reach steps at 20 Hz"),
        "{e}"
    );

    // The task's own demonstrations, but generated with gravity and dense rewards:
    // other dynamics and rewards than the run's arm-reach. Named, not trained on.
    let variant = tmp.path().join("gravity-demos");
    let options = EnvConfig {
        reward: sim::Reward::Dense,
        gravity: true,
    };
    tools::generate::generate(TaskId::ArmReach, 2, 7, options, &variant).unwrap();
    assert_eq!(
        dataset::read_dataset(&variant).unwrap().info.robot_type,
        "sim/arm-reach+gravity+dense"
    );
    c.run.dataset = Some(variant.display().to_string());
    let e = format!(
        "{:#}",
        train(&c, &tmp.path().join("g"), &TrainOptions::default(), &mut ()).unwrap_err()
    );
    assert!(
        e.contains("recorded as `sim/arm-reach+gravity+dense`") && e.contains("`gravity+dense`"),
        "{e}"
    );

    let demos = tmp.path().join("demos");
    let info = own_robot_dataset(&demos, "lab-arm", 4, 5);
    let mut ds = dataset::read_dataset(&demos).unwrap();
    for ep in &mut ds.episodes {
        ep.terminated.iter_mut().for_each(|t| *t = false);
        *ep.truncated.last_mut().unwrap() = true;
    }
    let cut = tmp.path().join("never-terminal");
    dataset::write_dataset(&cut, &info, &ds.episodes).unwrap();
    let mut c = robot_config(&cut);
    c.action_horizon = 32;
    let e = format!(
        "{:#}",
        train(&c, &tmp.path().join("b"), &TrainOptions::default(), &mut ()).unwrap_err()
    );
    assert!(
        e.contains("never-terminal") && e.contains("no training transition"),
        "{e}"
    );
}

/// `lab-arm` demonstrations under `dir/demos` without their action mapping (a
/// recording from before 2026-12-07, LeRobot's), and a run pretrained on them under
/// `dir/run`; with the dataset's description (mapping included).
fn pretrained_on_unmapped_demos(dir: &Path) -> (PathBuf, PathBuf, DatasetInfo) {
    let demos = dir.join("demos");
    let info = own_robot_dataset(&demos, "lab-arm", 4, 5);
    let mut unmapped = dataset::read_dataset(&demos).unwrap();
    unmapped.info.action_mapping = None;
    std::fs::remove_dir_all(&demos).unwrap();
    dataset::write_dataset(&demos, &unmapped.info, &unmapped.episodes).unwrap();
    let run = dir.join("run");
    pretrain(&robot_config(&demos), &run);
    assert_eq!(
        load_agent(&run).unwrap().robot.unwrap().action_mapping,
        None
    );
    (demos, run, info)
}

/// A run pretrained on data that recorded no action mapping (a recording from before
/// 2026-12-07, LeRobot's) takes the one its fine-tuning data recorded: its checkpoint
/// keeps it and its bundles carry it to the robot. A run whose own data recorded one
/// compares the actions' order of later data; the run that took one does not.
#[test]
fn a_finetune_takes_the_action_mapping_its_robot_data_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, run, info) = pretrained_on_unmapped_demos(tmp.path());
    let data = tmp.path().join("robot-data");
    own_robot_dataset(&data, "lab-arm", 2, 9);
    let out = tmp.path().join("ft");
    finetune(&finetune_options(&run, &data, &out, 2), &mut ()).unwrap();
    let tuned = load_agent(&out).unwrap();
    let mapping = info.action_mapping.unwrap();
    assert_eq!(
        tuned.robot.as_ref().unwrap().action_mapping.as_ref(),
        Some(&mapping)
    );
    let bundle = tmp.path().join("bundle");
    export_bundle(&tuned, &bundle, &ExportInfo::default(), None).unwrap();
    let m = shared_model::load_bundle(&bundle, &Trust::AllowUnsigned)
        .unwrap()
        .manifest;
    assert_eq!(m.action.robot_scale, mapping.scale);

    // A run whose own data recorded the mapping compares the actions' order through its
    // checkpoint (`RecordedBy::of`): the same actions in another order are refused. The
    // run above took its mapping from later data, and its names (the unmapped data's)
    // are still compared with nothing.
    let mapped_run = tmp.path().join("mapped-run");
    pretrain(&robot_config(&data), &mapped_run);
    let mut reordered = dataset::read_dataset(&data).unwrap();
    reordered.info.action_names.swap(0, 1);
    let swapped = tmp.path().join("swapped");
    dataset::write_dataset(&swapped, &reordered.info, &reordered.episodes).unwrap();
    let refused = finetune(
        &finetune_options(&mapped_run, &swapped, &tmp.path().join("ft2"), 2),
        &mut (),
    );
    let e = format!("{:#}", refused.unwrap_err());
    assert!(
        e.contains("action `dy` is at [0] in the dataset and at [1] in the run's data"),
        "{e}"
    );
    finetune(
        &finetune_options(&out, &swapped, &tmp.path().join("ft3"), 2),
        &mut (),
    )
    .unwrap();
}

/// The same through a live session: a run whose data recorded no action mapping takes
/// the one its robot's stream recorded (the run-start record), and its checkpoint and
/// the bundles it publishes carry it to the robot; they carried none (only `--data`'s
/// was taken), so a robot file mapping the actions otherwise was not refused at a swap.
/// The unmapped data's action names stay unchecked for order after that: before, a
/// resumed session refused the stream log the first one trained on, whose robot file lists
/// the actions in another order.
#[test]
fn a_live_session_takes_the_action_mapping_its_robot_stream_recorded() {
    use controller::robot_loop::log::{Record, RunStart, Transition};
    use firmware_config::protocol::{MAX_ACT, MAX_OBS};
    use std::time::Duration;
    let tmp = tempfile::tempdir().unwrap();
    let (demos, run, info) = pretrained_on_unmapped_demos(tmp.path());
    let key = uplink::Key::from_bytes([3; uplink::KEY_LEN]);
    let out = tmp.path().join("live");
    // `finetune --listen` on a free port, a bundle every 4 updates, without `--data`.
    let live = |updates, stop| {
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let opts = FinetuneOptions {
            data: vec![],
            listen: Some(trainer::finetune::LiveOptions {
                addr: "127.0.0.1:0".into(),
                key: key.clone(),
                publish_every: 4,
                signing_key: None,
                idle_exit: Some(Duration::from_secs(2)),
                bound: Some(bound_tx),
                stop,
            }),
            ..finetune_options(&run, &demos, &out, updates)
        };
        (opts, bound_rx)
    };
    let (opts, bound_rx) = live(8, None);
    let trainer = std::thread::spawn(move || finetune(&opts, &mut ()).unwrap());
    let addr = bound_rx.recv_timeout(Duration::from_secs(60)).unwrap();

    // The robot's stream: its run-start record (the robot file's mapping), then one
    // episode of 12 steps.
    let mapping = info.action_mapping.unwrap();
    let mut records = vec![Record::Run(RunStart {
        robot: "lab-arm".into(),
        task: "reach the marker".into(),
        fps: 50,
        observation_names: info.observation_names.clone(),
        action_names: vec!["dy".into(), "dx".into(), "dz".into()],
        bundle: "b".into(),
        started_unix: 0,
        run_id: "run-1".into(),
        action_scale: mapping.scale.clone(),
        action_offset: mapping.offset.clone(),
    })];
    records.push(Record::EpisodeStart {
        episode: 0,
        seed: 1,
    });
    for step in 0..12u32 {
        let mut obs = [0.0f32; MAX_OBS];
        obs[..7].fill(step as f32 / 12.0);
        // Past the demonstrations' range: the run's bounds widen to hold it.
        if step == 5 {
            obs[0] = 50.0;
        }
        let mut next_obs = [0.0f32; MAX_OBS];
        next_obs[..7].fill((step + 1) as f32 / 12.0);
        let mut action = [0.0f32; MAX_ACT];
        action[..3].copy_from_slice(&[0.5, -0.5, 0.25]);
        records.push(Record::Transition(Transition {
            episode: 0,
            step,
            obs_dim: 7,
            act_dim: 3,
            obs,
            action,
            reward: 0.0,
            done: false,
            truncated: false,
            success: false,
            intervention: false,
            teleop: false,
            next_obs,
            obs_fw_us: 0,
            next_obs_fw_us: 0,
            obs_rx_ns: 0,
            action_sent_ns: 0,
            next_obs_rx_ns: 0,
        }));
    }
    let bytes: Vec<Vec<u8>> = records
        .iter()
        .map(|r| {
            let mut b = Vec::new();
            r.encode(&mut b);
            b
        })
        .collect();
    let stream = std::net::TcpStream::connect(addr).unwrap();
    let mut session = uplink::Session::client(stream, &key).unwrap();
    let sent = uplink::records::send_records(&mut session, "lab-arm", &bytes).unwrap();
    assert_eq!(sent, bytes.len() as u64);
    drop(session);
    let summary = trainer.join().expect("the trainer did not panic");
    assert_eq!(summary.streamed, 12, "{summary:?}");
    assert!(!summary.published.is_empty(), "{summary:?}");

    let tuned = load_agent(&out).unwrap();
    assert_eq!(
        tuned.robot.as_ref().unwrap().action_mapping.as_ref(),
        Some(&mapping)
    );
    assert_eq!(tuned.robot.as_ref().unwrap().obs_high[0], 50.0);
    let last = summary.published.last().unwrap();
    let m = shared_model::load_bundle(last, &Trust::AllowUnsigned)
        .unwrap()
        .manifest;
    assert_eq!(m.observation.high[0], 50.0);
    for bundle in &summary.published {
        let m = shared_model::load_bundle(bundle, &Trust::AllowUnsigned)
            .unwrap()
            .manifest;
        assert_eq!(
            (&m.action.robot_scale, &m.action.robot_offset),
            (&mapping.scale, &mapping.offset),
            "{}",
            bundle.display()
        );
    }

    // A resumed session reads the stream's log again (ended at once: nothing to wait
    // for).
    static STOPPED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);
    let (resumed, _bound) = live(16, Some(&STOPPED));
    let resumed = FinetuneOptions {
        resume: true,
        ..resumed
    };
    finetune(&resumed, &mut ()).unwrap();
    let robot = load_agent(&out).unwrap().robot.unwrap();
    assert_eq!(robot.action_mapping, Some(mapping));
    assert_eq!(robot.obs_high[0], 50.0);
}

/// The run's offline data (`run.dataset`) is read again by `finetune` and `train
/// --resume`; a dataset replaced at the same path since the run was trained (other
/// episodes, same sizes) is refused with both fingerprints, where it used to be trained
/// on as the run's own. `--no-offline` fine-tunes without it.
#[test]
fn offline_data_changed_since_the_run_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let demos = tmp.path().join("demos");
    own_robot_dataset(&demos, "lab-arm", 4, 5);
    let c = robot_config(&demos);
    let run = tmp.path().join("run");
    pretrain(&c, &run);
    let data = tmp.path().join("robot-data");
    own_robot_dataset(&data, "lab-arm", 2, 9);
    // Unchanged: fine-tuning runs.
    finetune(
        &finetune_options(&run, &data, &tmp.path().join("ft1"), 2),
        &mut (),
    )
    .unwrap();

    std::fs::remove_dir_all(&demos).unwrap();
    own_robot_dataset(&demos, "lab-arm", 4, 6);
    let e = format!(
        "{:#}",
        finetune(
            &finetune_options(&run, &data, &tmp.path().join("ft2"), 2),
            &mut ()
        )
        .unwrap_err()
    );
    assert!(
        e.contains("is not what the run was trained on") && e.contains("or pass --no-offline"),
        "{e}"
    );
    assert!(
        !tmp.path().join("ft2/config.toml").exists(),
        "nothing written"
    );
    let mut o = finetune_options(&run, &data, &tmp.path().join("ft3"), 2);
    o.with_offline = false;
    finetune(&o, &mut ()).unwrap();

    let resume = TrainOptions {
        resume: true,
        ..TrainOptions::default()
    };
    let e = format!("{:#}", train(&c, &run, &resume, &mut ()).unwrap_err());
    assert!(
        e.contains("is not what the run was trained on") && e.contains("or start a new run"),
        "{e}"
    );
}

/// A run pretrained on demonstrations that named no observations (a LeRobot recording
/// without `names`: read as `observation.state.{i}`) fine-tunes on its robot's own
/// recordings, which name them, and takes their names: its checkpoint keeps them, its
/// bundles carry them, and later data of other names is refused. It refused the robot's
/// recordings (its names differed from the made-up ones), though the robot had run its
/// policy on those values in that order.
#[test]
fn a_run_on_demos_without_observation_names_takes_its_robot_data_names() {
    let tmp = tempfile::tempdir().unwrap();
    let demos = tmp.path().join("demos");
    let info = own_robot_dataset(&demos, "lab-arm", 4, 5);
    let mut unnamed = dataset::read_dataset(&demos).unwrap();
    let made_up: Vec<String> = (0..info.observation_names.len())
        .map(|i| format!("observation.state.{i}"))
        .collect();
    unnamed.info.observation_names = made_up.clone();
    std::fs::remove_dir_all(&demos).unwrap();
    dataset::write_dataset(&demos, &unnamed.info, &unnamed.episodes).unwrap();
    let run = tmp.path().join("run");
    pretrain(&robot_config(&demos), &run);
    let robot = |dir: &Path| load_agent(dir).unwrap().robot.unwrap();
    assert_eq!(robot(&run).observation_names, made_up);

    let data = tmp.path().join("robot-data");
    own_robot_dataset(&data, "lab-arm", 2, 9);
    // One observation past the demonstrations' range: the bounds widen to hold it.
    let mut wide = dataset::read_dataset(&data).unwrap();
    wide.episodes[0].observations[1] = -40.0;
    std::fs::remove_dir_all(&data).unwrap();
    dataset::write_dataset(&data, &wide.info, &wide.episodes).unwrap();
    assert!(robot(&run).obs_low[1] > -40.0);
    let out = tmp.path().join("ft");
    let s = finetune(&finetune_options(&run, &data, &out, 2), &mut ()).unwrap();
    assert!(
        s.warnings.iter().any(|w| w.contains(&format!(
            "the run's data named no observations (observation.state.0 to \
             observation.state.6): the run takes the names of {} for them, in their order \
             (q0, q1, q2, q3, q4, q5, q6)",
            data.display()
        ))),
        "{:?}",
        s.warnings
    );
    assert_eq!(robot(&out).observation_names, info.observation_names);
    let bundle = tmp.path().join("bundle");
    export_bundle(
        &load_agent(&out).unwrap(),
        &bundle,
        &ExportInfo::default(),
        None,
    )
    .unwrap();
    let m = shared_model::load_bundle(&bundle, &Trust::AllowUnsigned)
        .unwrap()
        .manifest;
    assert_eq!(m.observation.names, info.observation_names);
    assert_eq!(
        (robot(&out).obs_low[1], m.observation.low[1]),
        (-40.0, -40.0)
    );

    // Compared from then on: another robot's names are refused; data naming none is
    // taken in the run's order, said so.
    let mut other = dataset::read_dataset(&data).unwrap();
    other.info.observation_names[2] = "elbow".into();
    let renamed = tmp.path().join("renamed");
    dataset::write_dataset(&renamed, &other.info, &other.episodes).unwrap();
    let refused = finetune(
        &finetune_options(&out, &renamed, &tmp.path().join("ft2"), 2),
        &mut (),
    );
    let e = format!("{:#}", refused.unwrap_err());
    assert!(
        e.contains("first at [2] (`elbow` in the dataset, `q2` in the run)"),
        "{e}"
    );
    other.info.observation_names = made_up;
    let nameless = tmp.path().join("nameless");
    dataset::write_dataset(&nameless, &other.info, &other.episodes).unwrap();
    let s = finetune(
        &finetune_options(&out, &nameless, &tmp.path().join("ft3"), 2),
        &mut (),
    )
    .unwrap();
    assert!(
        s.warnings.iter().any(|w| w.contains(&format!(
            "{} names no observations (observation.state.0 to observation.state.6): its \
             values are taken as the run's (q0, q1, q2, q3, q4, q5, q6), in that order \
             (not checked)",
            nameless.display()
        ))),
        "{:?}",
        s.warnings
    );
}
