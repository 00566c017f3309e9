//! End to end through the serial link (issue 5): a quickly trained bundle runs in the
//! real control loop against the simulated firmware over a pseudo-terminal, and reaches
//! the task's goal exactly as often as the same bundle stepping the simulator in-process.

use controller::robot_loop::{self, Brain, RunConfig};
use controller::runtime::{Backend, Policy, PolicyOptions};
use hil_tests::firmware::{FirmwareOptions, FirmwareThread, Pacing};
use shared_model::manifest::Trust;
use sim::{EnvConfig, TaskId, make_env};
use std::path::Path;
use trainer::config::Config;
use trainer::export::{ExportInfo, export_bundle};
use trainer::run::{TrainOptions, load_agent, train};

const EPISODES: usize = 16;
const SEED: u64 = 4242;

/// A push policy from a short offline pretraining: diffusion behaviour cloning, with a
/// faster EMA than the preset's so that the acting copy has caught up after few updates.
fn quick_config() -> Config {
    let mut c = Config::cpu();
    c.algo = trainer::config::Algo::Bc;
    c.task = TaskId::Push.into();
    c.diffusion.ema_rate = 0.01;
    c.run.pretrain_steps = 6000;
    c.run.pretrain_critic = false;
    c.run.online_steps = 0;
    c.run.eval_episodes = 1;
    c
}

/// Trains `c` under `dir/run` and exports `dir/bundle`.
fn quick_bundle(c: &Config, dir: &Path) {
    let run = dir.join("run");
    train(c, &run, &TrainOptions::default(), &mut ()).unwrap();
    let info = ExportInfo {
        dataset: "scripted demonstrations".into(),
        env_steps: 0,
        executed_steps: None,
        not_before_unix: 0,
    };
    export_bundle(&load_agent(&run).unwrap(), &dir.join("bundle"), &info, None).unwrap();
}

/// How an episode went: what the controller's recording must say of it too (its report
/// has the success, the length and the return).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Outcome {
    success: bool,
    steps: u32,
    /// The rewards' sum, in step order.
    ret: f32,
    /// The last step's flags.
    terminated: bool,
    truncated: bool,
}

/// Episode `i` reset with `SEED + i`, one policy (seeded with `SEED`) acting on every
/// step in turn (with action chunks, on every chunk's first step, from each episode's
/// start): the controller's order of episodes and actions, without the link.
fn in_process(bundle: &Path) -> Vec<Outcome> {
    let b = shared_model::load_bundle(bundle, &Trust::AllowUnsigned).unwrap();
    let options = PolicyOptions {
        backend: Backend::Tract,
        executed_steps: None,
        seed: SEED,
    };
    let mut policy = Policy::new(&b, &options).unwrap();
    let mut env = make_env(TaskId::Push, EnvConfig::default());
    let spec = TaskId::Push.spec();
    let (mut obs, mut next) = (vec![0.0; spec.obs_dim()], vec![0.0; spec.obs_dim()]);
    let (ad, h) = (spec.action_dim(), policy.horizon());
    let mut chunk = vec![0.0; policy.chunk_dim()];
    (0..EPISODES as u64)
        .map(|i| {
            env.reset(SEED + i, &mut obs);
            let mut ret = 0.0f32;
            for t in 0.. {
                if t % h == 0 {
                    policy.act(&obs, &mut chunk).unwrap();
                }
                let k = t % h;
                let s = env.step(&chunk[k * ad..(k + 1) * ad], &mut next);
                obs.copy_from_slice(&next);
                ret += s.reward;
                if s.done() {
                    return Outcome {
                        success: s.success,
                        steps: t as u32 + 1,
                        ret,
                        terminated: s.terminated,
                        truncated: s.truncated,
                    };
                }
            }
            unreachable!()
        })
        .collect()
}

/// The bundle on the simulated push hardware described by `robot`, over a pseudo-terminal.
fn through_the_link(
    bundle: &Path,
    out: &Path,
    mut robot: firmware_config::RobotConfig,
) -> robot_loop::RunReport {
    let b = shared_model::load_bundle(bundle, &Trust::AllowUnsigned).unwrap();
    // Lockstep: a slow step of this busy machine must not count as a stale sensor, nor
    // trip the firmware's command watchdog (200 ms is 20 ms of real time at the 10x
    // clock; one 15 ms inference on a loaded 2-core VM once did). This test is about
    // success through the link; the HIL tests cover both checks.
    robot.safety.stale_sensor_ms = 3000;
    robot.command_timeout_ms = 20_000;
    let options = PolicyOptions {
        backend: Backend::Tract,
        executed_steps: None,
        seed: SEED,
    };
    let brain = Brain::new(&b, &options, false).unwrap();
    let mut fw = FirmwareOptions::new(TaskId::Push, robot.clone());
    fw.pacing = Pacing::Lockstep;
    fw.seed = SEED;
    let time_scale = 10.0;
    let firmware = FirmwareThread::spawn(fw, time_scale).unwrap();
    let mut cfg = RunConfig::new(robot, firmware.path().to_path_buf());
    // Not a cadence test: a pause on a loaded machine at this time scale can miss 10
    // deadlines in a row (controller/tests/hil.rs checks that fault).
    cfg.max_consecutive_overruns = 0;
    cfg.episodes = Some(EPISODES as u32);
    cfg.seed = SEED;
    cfg.time_scale = time_scale;
    cfg.out = Some(out.to_path_buf());
    cfg.quiet = true;
    let report = robot_loop::run(cfg, brain, &b.manifest.task, "quick bundle").unwrap();
    drop(firmware);
    report
}

#[test]
fn a_trained_bundle_reaches_the_goal_through_the_serial_link_as_often_as_in_process() {
    let tmp = tempfile::tempdir().unwrap();
    quick_bundle(&quick_config(), tmp.path());
    let bundle = tmp.path().join("bundle");
    // `controller check`'s comparison of the backends on a trained bundle without an
    // edit policy or a critic (behaviour cloning): its denoiser alone, well within the
    // tolerance.
    let b = shared_model::load_bundle(&bundle, &Trust::AllowUnsigned).unwrap();
    let rows = controller::runtime::GraphRows::for_manifest(&b.manifest);
    let mut nets: Vec<(String, Box<dyn controller::runtime::Networks>)> =
        [Backend::Tract, Backend::Native]
            .into_iter()
            .map(|backend| {
                let nets = controller::runtime::load_networks(backend, &b, rows).unwrap();
                (format!("{backend:?}"), nets)
            })
            .collect();
    let d = controller::runtime::backend_differences(&mut nets, &b.manifest, rows).unwrap();
    assert_eq!(
        d.iter().map(|d| d.graph).collect::<Vec<_>>(),
        ["denoiser"],
        "{d:?}"
    );
    assert!(d[0].within_tolerance() && d[0].max_abs < 1e-4, "{d:?}");
    let robot = firmware_config::RobotConfig::example("push").unwrap();
    same_outcomes(&bundle, &tmp.path().join("controller"), robot);
}

/// A behaviour-cloned policy that plans chunks of 4 actions (`action_horizon = 4`):
/// the controller plays each chunk out one sensor step at a time, and the episodes end
/// as they do in-process.
#[test]
fn a_chunked_bundle_plays_its_chunks_through_the_serial_link_as_in_process() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = quick_config();
    c.action_horizon = 4;
    // Chunks of a quick policy need more pretraining to reach the goal at all: with
    // 6000 updates none of the 16 episodes succeeded once sampling added the reference's
    // √β noise (2026-12-02).
    c.run.pretrain_steps = 12_000;
    quick_bundle(&c, tmp.path());
    let bundle = tmp.path().join("bundle");
    let b = shared_model::load_bundle(&bundle, &Trust::AllowUnsigned).unwrap();
    assert_eq!((b.manifest.action.dim, b.manifest.action.horizon), (2, 4));
    let robot = firmware_config::RobotConfig::example("push").unwrap();
    let report = same_outcomes(&bundle, &tmp.path().join("controller"), robot);
    // The recorded frames are single steps, as for any bundle: the trainer makes chunks
    // of them again (`trainer::replay::Chunker`).
    let ds = dataset::read_dataset(&tmp.path().join("controller/dataset")).unwrap();
    assert_eq!(ds.info.action_dim(), 2);
    assert_eq!(ds.episodes.len(), report.episodes_completed);
}

/// The bundle's episodes through the link on `robot` end as they do in-process (and
/// some succeed), with the same lengths and returns in the run's report, and the same
/// lengths, returns and last flags in its recording (before, only the successes were
/// compared); returns the run's report.
fn same_outcomes(
    bundle: &Path,
    out: &Path,
    robot: firmware_config::RobotConfig,
) -> robot_loop::RunReport {
    let outcomes = in_process(bundle);
    let expected: Vec<bool> = outcomes.iter().map(|o| o.success).collect();
    let report = through_the_link(bundle, out, robot);
    let got: Vec<bool> = report.episodes.iter().map(|e| e.success).collect();
    eprintln!(
        "in-process {}/{EPISODES}, through the link {}/{EPISODES}; faults {:?}",
        expected.iter().filter(|&&s| s).count(),
        report.successes,
        report.faults
    );
    assert_eq!(report.episodes_completed, EPISODES, "{report:?}");
    assert!(report.faults.is_empty(), "{:?}", report.faults);
    // The policy reaches the goal in some episodes (so the comparison means something)
    // and the link changes nothing: episode by episode, the same outcomes.
    assert!(
        expected.iter().any(|&s| s),
        "the quick policy never succeeds"
    );
    assert_eq!(got, expected);
    // The rewards and the episodes' ends, as the report and the recording have them.
    let ds = dataset::read_dataset(&out.join("dataset")).unwrap();
    assert_eq!(ds.episodes.len(), EPISODES);
    for (i, ((want, rep), ep)) in outcomes
        .iter()
        .zip(&report.episodes)
        .zip(&ds.episodes)
        .enumerate()
    {
        let recorded = Outcome {
            success: ep.is_success(),
            steps: ep.rewards.len() as u32,
            ret: ep.rewards.iter().sum(),
            terminated: *ep.terminated.last().unwrap(),
            truncated: *ep.truncated.last().unwrap(),
        };
        assert_eq!(recorded, *want, "episode {i}: the recording");
        assert_eq!(
            (rep.success, rep.steps, rep.ret),
            (want.success, want.steps, want.ret),
            "episode {i}: the report"
        );
    }
    report
}

/// A robot the trainer knows only from recordings in its own units (README, "Your own
/// robot"): demonstrations as LeRobot would record them (the motors' units, no rewards),
/// labelled and converted with `tools dataset label`, a `task = "robot"` run, and its
/// bundle on the hardware through the link with those units, ending its episodes as it
/// does in-process. The hardware is the simulated push table with motors that take
/// `scale · a` (powers of two, so that the conversions are exact and the two runs can be
/// compared episode by episode).
#[test]
fn a_robot_known_only_from_its_recordings_runs_through_the_link_as_in_process() {
    let tmp = tempfile::tempdir().unwrap();
    let mut robot = firmware_config::RobotConfig::example("push").unwrap();
    robot.robot = "lab-pusher".into();
    robot.action.scale = vec![0.5, 2.0];

    // The demonstrations, in policy units, and as the robot's recorder would hold them.
    let demos = tmp.path().join("demos");
    tools::generate::generate(TaskId::Push, 200, 7, EnvConfig::default(), &demos).unwrap();
    let policy_units = dataset::read_dataset(&demos).unwrap();
    let mut recorded = policy_units.clone();
    recorded.info.robot_type = robot.robot.clone();
    let mut successful = std::collections::BTreeSet::new();
    for (i, ep) in recorded.episodes.iter_mut().enumerate() {
        if ep.is_success() {
            successful.insert(i);
        }
        let mut units = vec![0.0; 2];
        for a in ep.actions.chunks_exact_mut(2) {
            robot.action.to_robot_units(a, &mut units);
            a.copy_from_slice(&units);
        }
        ep.set_outcome(false);
    }
    assert!(!successful.is_empty());
    let raw = tmp.path().join("raw");
    dataset::write_dataset(&raw, &recorded.info, &recorded.episodes).unwrap();

    // The README's step: label and convert, then the labels and actions are the originals.
    let labelled = tmp.path().join("labelled");
    let l = tools::label::label_success(
        &raw,
        &labelled,
        &tools::label::Successful::Only(successful),
        Some((Path::new("lab-pusher.toml"), &robot)),
    )
    .unwrap();
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let back = dataset::read_dataset(&labelled).unwrap();
    assert_eq!(back.episodes.len(), policy_units.episodes.len());
    for (b, p) in back.episodes.iter().zip(&policy_units.episodes) {
        assert_eq!(b.actions, p.actions);
        assert_eq!(b.is_success(), p.is_success());
        if p.is_success() {
            assert_eq!((&b.rewards, &b.terminated), (&p.rewards, &p.terminated));
        }
    }

    let mut c = quick_config();
    c.task = trainer::config::Task::Robot;
    c.run.dataset = Some(labelled.display().to_string());
    quick_bundle(&c, tmp.path());
    let bundle = tmp.path().join("bundle");
    let b = shared_model::load_bundle(&bundle, &Trust::AllowUnsigned).unwrap();
    assert_eq!(b.manifest.task, "lab-pusher");
    // The mapping the copy was converted through went into the bundle (format 7).
    let mapping = dataset::ActionMapping {
        scale: robot.action.scale.clone(),
        offset: robot.action.offset.clone(),
    };
    assert_eq!(back.info.action_mapping.as_ref(), Some(&mapping));
    assert_eq!(
        (
            &b.manifest.action.robot_scale,
            &b.manifest.action.robot_offset
        ),
        (&mapping.scale, &mapping.offset)
    );
    let report = same_outcomes(&bundle, &tmp.path().join("controller"), robot);
    // What the controller recorded is in policy units again: the trainer takes it. Its
    // run-start record gave the robot file's mapping, which the dataset keeps.
    let logged = tmp.path().join("controller/dataset");
    let ds = trainer::robot::read_training_dataset(&logged, Some((10, 2))).unwrap();
    assert_eq!(ds.info.robot_type, "lab-pusher");
    assert_eq!(ds.episodes.len(), report.episodes_completed);
    assert_eq!(ds.info.action_mapping, Some(mapping));
}
