//! `trainer finetune`: continuing a run on recorded robot data.

use sim::{EnvConfig, TaskId};
use std::path::{Path, PathBuf};
use trainer::config::Config;
use trainer::finetune::{FinetuneOptions, LiveOptions, finetune};
use trainer::run::{TrainOptions, load_agent, train};

fn tiny_run(dir: &Path) {
    tiny_run_with_horizon(dir, 1);
}

fn tiny_run_with_horizon(dir: &Path, action_horizon: usize) {
    let mut c = Config::tiny();
    c.task = TaskId::ArmReach.into();
    c.action_horizon = action_horizon;
    c.run.online_steps = 20;
    let opts = TrainOptions {
        checkpoint_every: 0,
        log_every: 10,
        ..Default::default()
    };
    train(&c, dir, &opts, &mut ()).unwrap();
}

fn options(from: &Path, data: &Path, out: &Path) -> FinetuneOptions {
    FinetuneOptions {
        from: from.into(),
        data: vec![data.into()],
        out: out.into(),
        updates: 6,
        with_offline: true,
        checkpoint_every: 3,
        log_every: 1,
        eval_episodes: 0,
        resume: false,
        stop_after: None,
        keep_interventions: false,
        device: None,
        exports_bundle: false,
        listen: None,
    }
}

/// A fine-tuning on a run whose base policy's cosine schedule has ended says so: its
/// learning rate is 0 there, and only the critics and the edit policy learn (an
/// open-ended live session went on publishing an unchanging base policy, unsaid). One
/// within its schedule says nothing.
#[test]
fn a_finetune_past_the_base_policys_schedule_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("robot");
    tools::generate::generate(TaskId::ArmReach, 2, 7, EnvConfig::default(), &data).unwrap();
    let (ended, within) = (tmp.path().join("ended"), tmp.path().join("within"));
    let mut c = Config::tiny();
    c.task = TaskId::ArmReach.into();
    c.run.online_steps = 20;
    c.optim.actor_lr_decay_steps = 1;
    let opts = TrainOptions {
        checkpoint_every: 0,
        log_every: 10,
        ..Default::default()
    };
    train(&c, &ended, &opts, &mut ()).unwrap();
    tiny_run(&within);
    let said = |from: &Path, out: &str| {
        let s = finetune(&options(from, &data, &tmp.path().join(out)), &mut ()).unwrap();
        s.warnings
            .into_iter()
            .find(|w| w.contains("the base policy's learning rate"))
    };
    let w = said(&ended, "ft-ended").expect("said");
    assert!(
        w.contains(
            "the base policy's learning rate is 0: its cosine schedule ended at \
             optim.actor_lr_decay_steps = 1 denoiser updates"
        ),
        "{w}"
    );
    assert_eq!(said(&within, "ft-within"), None);
}

/// `finetune --resume` into an `--out` that holds no checkpoint but a killed `train`'s
/// logs is refused by name (it kept that run's rows beside its own).
#[test]
fn a_finetune_resume_refuses_the_logs_of_a_train_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (from, data, out) = (
        tmp.path().join("from"),
        tmp.path().join("robot"),
        tmp.path().join("out"),
    );
    tiny_run(&from);
    tools::generate::generate(TaskId::ArmReach, 2, 7, EnvConfig::default(), &data).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("metrics.csv"), "step,critic_loss\n").unwrap();
    let mut o = options(&from, &data, &out);
    o.resume = true;
    let e = format!("{:#}", finetune(&o, &mut ()).unwrap_err());
    assert!(
        e.contains(
            "holds the logs of a `train` or `pretrain` run that wrote no checkpoint \
             (metrics.csv)"
        ),
        "{e}"
    );
    assert!(
        !out.join("finetune.csv").exists(),
        "a finetune run was started"
    );
}

/// The config and options of `train --resume` continuing a fine-tuned `tiny_run` online
/// to 30 steps.
fn continued_online() -> (Config, TrainOptions) {
    let mut c = Config::tiny();
    c.task = TaskId::ArmReach.into();
    c.run.online_steps = 30;
    let resume = TrainOptions {
        resume: true,
        checkpoint_every: 0,
        log_every: 10,
        ..Default::default()
    };
    (c, resume)
}

/// `finetune.csv` without the timing column.
fn losses(out: &Path) -> Vec<String> {
    std::fs::read_to_string(out.join("finetune.csv"))
        .unwrap()
        .lines()
        .map(|l| l.rsplit_once(',').unwrap().0.to_string())
        .collect()
}

fn critic_weights(run: &Path) -> Vec<f32> {
    let agent = load_agent(run).unwrap();
    let w = trainer::export::critic_weights(agent.critic().unwrap());
    w.layers.iter().flat_map(|l| l.weight.clone()).collect()
}

#[test]
fn finetune_continues_a_run_on_robot_data_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let (run, data) = (tmp.path().join("run"), tmp.path().join("robot"));
    tiny_run(&run);
    let recorded =
        tools::generate::generate(TaskId::ArmReach, 3, 7, EnvConfig::default(), &data).unwrap();

    let straight = tmp.path().join("straight");
    let s = finetune(&options(&run, &data, &straight), &mut ()).unwrap();
    assert_eq!(s.updates, 6);
    assert_eq!(s.robot_episodes, 3);
    assert_eq!(s.robot_transitions, recorded.total_frames);
    assert_eq!(losses(&straight).len(), 1 + 6);
    // Started again into the same --out without --resume: refused, nothing touched.
    let before = losses(&straight);
    let e = format!(
        "{:#}",
        finetune(&options(&run, &data, &straight), &mut ()).unwrap_err()
    );
    assert!(
        e.contains("already holds a run") && e.contains("--resume"),
        "{e}"
    );
    assert_eq!(losses(&straight), before);

    // Killed after the checkpoint at update 3, then resumed.
    let interrupted = tmp.path().join("interrupted");
    let mut o = options(&run, &data, &interrupted);
    o.stop_after = Some(3);
    assert!(finetune(&o, &mut ()).unwrap().stopped_early);
    // A new run from the unfinished one says it starts from its checkpoint (it was taken
    // without a word); one from the finished run does not.
    let from_unfinished = finetune(
        &options(&interrupted, &data, &tmp.path().join("from-unfinished")),
        &mut (),
    )
    .unwrap();
    assert!(
        from_unfinished.warnings.iter().any(|w| w.contains(
            "is a fine-tune run whose last checkpoint is at update 3 of the 6 it was given"
        ) && w.contains(&format!(
            "`finetune --resume --from {} --out {}` would finish it first",
            run.canonicalize().unwrap().display(),
            interrupted.display()
        ))),
        "{:?}",
        from_unfinished.warnings
    );
    let from_finished = finetune(
        &options(&straight, &data, &tmp.path().join("from-finished")),
        &mut (),
    )
    .unwrap();
    assert!(
        !from_finished
            .warnings
            .iter()
            .any(|w| w.contains("is a fine-tune run whose last checkpoint")),
        "{:?}",
        from_finished.warnings
    );
    // A kill later than the checkpoint leaves rows past it; the resumed run logs them again.
    let log = interrupted.join("finetune.csv");
    let mut text = std::fs::read_to_string(&log).unwrap();
    text.push_str("4,9,9,9,9,9,9,9,1.0\n");
    std::fs::write(&log, text).unwrap();
    o.stop_after = None;
    o.resume = true;
    // Resumed with other batch options, it would go on as another run: refused by flag.
    o.with_offline = false;
    let e = format!("{:#}", finetune(&o, &mut ()).unwrap_err());
    assert!(
        e.contains("the run began without --no-offline, --resume is with --no-offline"),
        "{e}"
    );
    o.with_offline = true;
    // Resumed with an edited config.toml whose candidate schedule changes what the run
    // computes: refused by name (it went on as another run); back as it was, resumed.
    let config_path = interrupted.join("config.toml");
    let config_text = std::fs::read_to_string(&config_path).unwrap();
    assert_eq!(
        config_text.matches("candidates = \"hoisted\"").count(),
        1,
        "{config_text}"
    );
    std::fs::write(
        &config_path,
        config_text.replace("candidates = \"hoisted\"", "candidates = \"sequential\""),
    )
    .unwrap();
    let e = format!("{:#}", finetune(&o, &mut ()).unwrap_err());
    assert!(
        e.contains(
            "`compute.candidates` is \"sequential\", but the run was checkpointed with \"hoisted\""
        ),
        "{e}"
    );
    std::fs::write(&config_path, &config_text).unwrap();
    let resumed = finetune(&o, &mut ()).unwrap();
    assert_eq!(resumed.updates, 6);
    // Its summary does not claim no robot data: the dataset was read by the first
    // session (it said "6 updates on 0 robot transitions (0 episodes, …)").
    let said = trainer::finetune::describe(&resumed);
    assert!(
        said.contains("6 updates on the replay saved at update 3 (resumed")
            && !said.contains("0 robot transitions"),
        "{said}"
    );
    assert!(
        trainer::finetune::describe(&s).contains(" robot transitions ("),
        "{}",
        trainer::finetune::describe(&s)
    );
    assert_eq!(losses(&interrupted), losses(&straight));
    assert_eq!(critic_weights(&interrupted), critic_weights(&straight));

    // The source run is untouched, and the result differs from it (it trained).
    assert_ne!(critic_weights(&run), critic_weights(&straight));
    // The output is a run directory: it exports like any run.
    let agent = load_agent(&straight).unwrap();
    let info = trainer::export::ExportInfo {
        dataset: "test".into(),
        env_steps: 20,
        executed_steps: None,
        not_before_unix: 0,
    };
    trainer::export::export_bundle(&agent, &tmp.path().join("bundle"), &info, None).unwrap();
    // And `train --resume` continues it online (it has no metrics.csv or eval.csv yet).
    let (mut c, resume) = continued_online();
    let s = train(&c, &straight, &resume, &mut ()).unwrap();
    assert_eq!(s.env_steps, 30);
    let metrics = std::fs::read_to_string(straight.join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 1 + 1, "{metrics}");
    // Its checkpoint keeps the finetune's count, so that a `finetune --resume` here goes
    // on from update 6 instead of starting over (and cutting finetune.csv to nothing).
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(straight.join("checkpoint/state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["finetune_updates"], 6, "{state}");
    // A run is not shortened by a resume.
    c.run.online_steps = 25;
    let e = format!("{:#}", train(&c, &straight, &resume, &mut ()).unwrap_err());
    assert!(e.contains("would shorten it"), "{e}");
}

/// A resumed run's `finetune.csv` rows average the same updates as an uninterrupted
/// run's also when the checkpoint falls between two rows (the sums since the last row
/// are kept in the checkpoint, as `train` keeps its `metrics.csv` window).
#[test]
fn a_resume_between_log_rows_logs_the_same_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let (run, data) = (tmp.path().join("run"), tmp.path().join("robot"));
    tiny_run(&run);
    tools::generate::generate(TaskId::ArmReach, 3, 7, EnvConfig::default(), &data).unwrap();
    let straight = tmp.path().join("straight");
    let mut o = options(&run, &data, &straight);
    o.log_every = 2;
    finetune(&o, &mut ()).unwrap();
    let interrupted = tmp.path().join("interrupted");
    let mut o = options(&run, &data, &interrupted);
    o.log_every = 2;
    o.stop_after = Some(3);
    assert!(finetune(&o, &mut ()).unwrap().stopped_early);
    o.stop_after = None;
    o.resume = true;
    finetune(&o, &mut ()).unwrap();
    assert_eq!(losses(&straight).len(), 1 + 3);
    assert_eq!(losses(&interrupted), losses(&straight));

    // `train --resume` on a run stopped between two finetune rows keeps the finetune's
    // window in its checkpoints (it was dropped, and the next `finetune.csv` row then
    // averaged only the updates after it).
    let between = tmp.path().join("between");
    let mut o = options(&run, &data, &between);
    o.log_every = 2;
    o.stop_after = Some(3);
    assert!(finetune(&o, &mut ()).unwrap().stopped_early);
    let window = |dir: &Path| {
        let state: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("checkpoint/state.json")).unwrap(),
        )
        .unwrap();
        state["finetune_metrics_window"].clone()
    };
    let before = window(&between);
    assert_eq!(before[1], 1, "{before}");
    let (c, resume) = continued_online();
    train(&c, &between, &resume, &mut ()).unwrap();
    assert_eq!(window(&between), before);

    // A finetune resumed at the count it stopped at makes no update: the window stays
    // for the next resume (it was dropped, and the next row averaged fewer updates).
    let idle = tmp.path().join("idle");
    let mut o = options(&run, &data, &idle);
    o.log_every = 2;
    o.stop_after = Some(3);
    assert!(finetune(&o, &mut ()).unwrap().stopped_early);
    let before = window(&idle);
    let updates = o.updates;
    o.stop_after = None;
    o.resume = true;
    o.updates = 3;
    finetune(&o, &mut ()).unwrap();
    assert_eq!(window(&idle), before);
    o.updates = updates;
    finetune(&o, &mut ()).unwrap();
    assert_eq!(losses(&idle), losses(&straight));
}

/// A resume reads nothing from `--from`, so a source run moved away since does not stop
/// it (it failed with a bare "No such file or directory"); a fresh run from a missing
/// source is refused naming it.
#[test]
fn a_resume_goes_on_when_the_source_run_has_moved() {
    let tmp = tempfile::tempdir().unwrap();
    let (run, data) = (tmp.path().join("run"), tmp.path().join("robot"));
    tiny_run(&run);
    tools::generate::generate(TaskId::ArmReach, 3, 7, EnvConfig::default(), &data).unwrap();
    let out = tmp.path().join("out");
    let mut o = options(&run, &data, &out);
    o.stop_after = Some(3);
    assert!(finetune(&o, &mut ()).unwrap().stopped_early);
    std::fs::rename(&run, tmp.path().join("run-moved")).unwrap();
    o.stop_after = None;
    o.resume = true;
    // Resumed with --updates below its checkpoint, it was written as finished at 3
    // updates (and exported from) without a word.
    o.updates = 2;
    let e = format!("{:#}", finetune(&o, &mut ()).unwrap_err());
    assert!(
        e.contains("its checkpoint is at 3 updates, and --updates 2 ends the run before it"),
        "{e}"
    );
    assert_eq!(losses(&out).len(), 1 + 3);
    // Without --updates, a resume runs the count the run was last given: 6 as it began,
    // then 9 once a resume asked for 9 (and was killed again at 6).
    assert_eq!(trainer::finetune::updates_for(&out, true), 6);
    assert_eq!(
        trainer::finetune::updates_for(&out, false),
        trainer::finetune::DEFAULT_UPDATES
    );
    o.updates = 9;
    o.stop_after = Some(6);
    assert!(finetune(&o, &mut ()).unwrap().stopped_early);
    assert_eq!(trainer::finetune::updates_for(&out, true), 9);
    o.updates = trainer::finetune::updates_for(&out, true);
    o.stop_after = None;
    let done = finetune(&o, &mut ()).unwrap();
    assert!(!done.stopped_early);
    assert_eq!(losses(&out).len(), 1 + 9);
    let fresh = options(&run, &data, &tmp.path().join("fresh"));
    let err = format!("{:#}", finetune(&fresh, &mut ()).unwrap_err());
    assert!(err.contains(&run.display().to_string()), "{err}");
}

/// Robot data whose every reward is 0 (a LeRobot recording without `next.reward`, or
/// nothing labelled) is trained on with a warning naming it, as offline data is (it
/// was taken without a word).
#[test]
fn robot_data_without_rewards_is_warned_about() {
    let tmp = tempfile::tempdir().unwrap();
    let (run, data) = (tmp.path().join("run"), tmp.path().join("robot"));
    tiny_run(&run);
    tools::generate::generate(TaskId::ArmReach, 3, 7, EnvConfig::default(), &data).unwrap();
    let mut ds = dataset::read_dataset(&data).unwrap();
    for e in &mut ds.episodes {
        e.rewards.iter_mut().for_each(|r| *r = 0.0);
    }
    let unrewarded = tmp.path().join("unrewarded");
    dataset::write_dataset(&unrewarded, &ds.info, &ds.episodes).unwrap();
    // One reward is enough to be labelled.
    *ds.episodes[0].rewards.last_mut().unwrap() = 1.0;
    let rewarded = tmp.path().join("rewarded");
    dataset::write_dataset(&rewarded, &ds.info, &ds.episodes).unwrap();
    let s = finetune(&options(&run, &rewarded, &tmp.path().join("a")), &mut ()).unwrap();
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    let s = finetune(&options(&run, &unrewarded, &tmp.path().join("b")), &mut ()).unwrap();
    assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
    assert!(
        s.warnings[0].contains(&unrewarded.display().to_string())
            && s.warnings[0].contains("every reward is 0"),
        "{:?}",
        s.warnings
    );
}

/// Frames the operator marked as interventions stay out of the online buffer unless
/// `keep_interventions` (their logged action is not what moved the arm). Teleoperated
/// frames (their action is what the robot was sent) are counted and kept.
#[test]
fn intervention_frames_are_left_out_unless_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let (run, generated, data) = (
        tmp.path().join("run"),
        tmp.path().join("generated"),
        tmp.path().join("robot"),
    );
    tiny_run(&run);
    tools::generate::generate(TaskId::ArmReach, 2, 7, EnvConfig::default(), &generated).unwrap();
    let mut ds = dataset::read_dataset(&generated).unwrap();
    let (mut marked, mut teleop) = (0, 0);
    for ep in &mut ds.episodes {
        for (i, m) in ep.intervention.iter_mut().enumerate() {
            *m = (3..9).contains(&i);
            marked += *m as usize;
        }
        // Overlapping the marked frames in 6..9: those stay out with the marked ones.
        for (i, t) in ep.teleop.iter_mut().enumerate() {
            *t = (6..14).contains(&i);
            teleop += *t as usize;
        }
    }
    dataset::write_dataset(&data, &ds.info, &ds.episodes).unwrap();
    let total = ds.num_frames();
    assert_eq!((marked, teleop), (12, 16));

    let mut o = options(&run, &data, &tmp.path().join("dropped"));
    o.updates = 1;
    let s = finetune(&o, &mut ()).unwrap();
    assert_eq!(s.robot_transitions, total);
    assert_eq!(s.robot_interventions, marked);
    assert_eq!(s.robot_teleop, teleop);
    assert_eq!(s.robot_transitions_used, total - marked);
    // One step at a time: one training transition per admitted frame.
    assert_eq!(s.replay_transitions, total - marked);

    let mut o = options(&run, &data, &tmp.path().join("kept"));
    o.updates = 1;
    o.keep_interventions = true;
    let s = finetune(&o, &mut ()).unwrap();
    assert_eq!(s.robot_interventions, marked);
    assert_eq!(s.robot_transitions_used, total);
}

/// With action chunks the admitted frames and the training transitions differ: each
/// stretch of consecutive admitted frames makes one chunk per frame but for its last
/// H − 1, unless it ends in a terminal step (which completes the shorter chunks too).
#[test]
fn chunked_runs_count_the_chunks_their_frames_make() {
    const H: usize = 3;
    let tmp = tempfile::tempdir().unwrap();
    let (run, generated, data) = (
        tmp.path().join("run"),
        tmp.path().join("generated"),
        tmp.path().join("robot"),
    );
    tiny_run_with_horizon(&run, H);
    tools::generate::generate(TaskId::ArmReach, 3, 9, EnvConfig::default(), &generated).unwrap();
    let mut ds = dataset::read_dataset(&generated).unwrap();
    let mut expected = 0;
    let stretch = |n: usize, terminal: bool| if terminal { n } else { n.saturating_sub(H - 1) };
    for ep in &mut ds.episodes {
        let len = ep.intervention.len();
        assert!(len > 12, "an episode of {len} frames");
        for (i, m) in ep.intervention.iter_mut().enumerate() {
            *m = (4..6).contains(&i);
        }
        expected += stretch(4, false) + stretch(len - 6, *ep.terminated.last().unwrap());
    }
    dataset::write_dataset(&data, &ds.info, &ds.episodes).unwrap();
    let total = ds.num_frames();

    let mut o = options(&run, &data, &tmp.path().join("out"));
    o.updates = 1;
    let s = finetune(&o, &mut ()).unwrap();
    assert_eq!(s.robot_transitions, total);
    assert_eq!(s.robot_transitions_used, total - 2 * 3);
    assert_eq!(s.replay_transitions, expected);
    assert!(s.replay_transitions < s.robot_transitions_used);
}

#[test]
fn finetune_refuses_data_of_another_shape_naming_the_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let (run, data) = (tmp.path().join("run"), tmp.path().join("maze-data"));
    tiny_run(&run);
    tools::generate::generate(TaskId::Maze, 1, 7, EnvConfig::default(), &data).unwrap();
    let err = finetune(&options(&run, &data, &tmp.path().join("out")), &mut ())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("maze-data") && err.contains("observation dim"),
        "{err}"
    );
    let err = finetune(
        &options(&tmp.path().join("nope"), &data, &tmp.path().join("out2")),
        &mut (),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("no checkpoint"), "{err}");
}

/// Data of another task with the same sizes (push's observations and actions are as
/// wide as arm-reach's) is refused by its observation names, before any update.
#[test]
fn data_of_another_task_with_the_same_sizes_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (run, data) = (tmp.path().join("run"), tmp.path().join("push"));
    tiny_run(&run);
    tools::generate::generate(TaskId::Push, 2, 7, EnvConfig::default(), &data).unwrap();
    let out = tmp.path().join("out");
    let e = format!(
        "{:#}",
        finetune(&options(&run, &data, &out), &mut ()).unwrap_err()
    );
    assert!(
        e.contains("observation names differ from the run's, first at [0]")
            && e.contains("`pusher_x` in the dataset"),
        "{e}"
    );
    assert!(!out.join("checkpoint").exists());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// `--resume` continues only a finetune run: pointed at the source run or at another
/// train run it is refused before that run's checkpoint is touched (it used to be
/// trained on and overwritten). Data that gives no training transition (every frame
/// an intervention) is refused too, instead of fine-tuning on the source's replay alone.
#[test]
fn finetune_never_overwrites_a_train_run_nor_runs_without_robot_data() {
    let tmp = tempfile::tempdir().unwrap();
    let (run, data) = (tmp.path().join("run"), tmp.path().join("robot"));
    tiny_run(&run);
    tools::generate::generate(TaskId::ArmReach, 2, 7, EnvConfig::default(), &data).unwrap();
    let other = tmp.path().join("other-train-run");
    copy_dir(&run, &other);
    let before = critic_weights(&other);
    for (out, text) in [
        (&run, "--out must differ from --from"),
        (&other, "it is not a finetune run"),
    ] {
        let mut o = options(&run, &data, out);
        o.resume = true;
        let e = format!("{:#}", finetune(&o, &mut ()).unwrap_err());
        assert!(e.contains(text), "{e}");
    }
    assert_eq!(critic_weights(&other), before);
    assert!(!other.join("finetune.csv").exists());

    let mut ds = dataset::read_dataset(&data).unwrap();
    for ep in &mut ds.episodes {
        ep.intervention.iter_mut().for_each(|m| *m = true);
    }
    let marked = tmp.path().join("all-marked");
    dataset::write_dataset(&marked, &ds.info, &ds.episodes).unwrap();
    let out = tmp.path().join("out");
    let e = format!(
        "{:#}",
        finetune(&options(&run, &marked, &out), &mut ()).unwrap_err()
    );
    assert!(
        e.contains("--data gives no training transition")
            && e.contains("left out as interventions"),
        "{e}"
    );
    assert!(!out.join("checkpoint").exists());

    // A count of evaluation episodes no memory holds is refused before anything is
    // written: the process aborted on an allocation after writing `finetune.csv`, and
    // a rerun was then refused ("holds the logs of a run that wrote no checkpoint").
    let huge = tmp.path().join("huge");
    let mut o = options(&run, &data, &huge);
    o.eval_episodes = 100_000_000_000;
    let e = format!("{:#}", finetune(&o, &mut ()).unwrap_err());
    assert!(
        e.contains("--eval-episodes 100000000000 is more than the 1000000"),
        "{e}"
    );
    assert!(!huge.exists());

    // An empty `--data` (an unset shell variable) is refused as `run.dataset = ""` is,
    // before anything is written: it read the current directory as a dataset.
    let empty = tmp.path().join("empty");
    let mut o = options(&run, &data, &empty);
    o.data.push(PathBuf::new());
    let e = format!("{:#}", finetune(&o, &mut ()).unwrap_err());
    assert!(e.contains("--data 2 is empty"), "{e}");
    assert!(!empty.exists());
}

/// An rlpd run exports no bundle, so `finetune --listen` could never publish one to the
/// robot it takes transitions from: refused before the port is bound and before
/// anything is written.
#[test]
fn an_rlpd_run_is_refused_with_listen_before_the_port_is_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("rlpd");
    let mut c = Config::tiny();
    c.task = TaskId::ArmReach.into();
    c.algo = trainer::config::Algo::Rlpd;
    c.run.online_steps = 20;
    let opts = TrainOptions {
        checkpoint_every: 0,
        log_every: 10,
        ..Default::default()
    };
    train(&c, &run, &opts, &mut ()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = tmp.path().join("out");
    let mut o = options(&run, &run, &out);
    o.data = vec![];
    o.listen = Some(LiveOptions {
        addr: "127.0.0.1:0".into(),
        key: uplink::Key::from_bytes([3; uplink::KEY_LEN]),
        publish_every: 1,
        signing_key: None,
        idle_exit: None,
        bound: Some(tx),
        stop: None,
    });
    // In a thread: without the check the run would bind the port and wait for a robot.
    let run_it = std::thread::spawn(move || finetune(&o, &mut ()));
    match rx.recv_timeout(std::time::Duration::from_secs(120)) {
        Ok(addr) => panic!("the port was bound: {addr}"),
        Err(e) => assert_eq!(e, std::sync::mpsc::RecvTimeoutError::Disconnected),
    }
    let e = format!("{:#}", run_it.join().unwrap().unwrap_err());
    assert!(e.contains("an rlpd run exports no bundle"), "{e}");
    assert!(!out.join("checkpoint").exists() && !out.join("finetune.csv").exists());
    // Nor is `--bundle` taken for one: the export after the work would fail.
    let data = tmp.path().join("robot");
    tools::generate::generate(TaskId::ArmReach, 2, 7, EnvConfig::default(), &data).unwrap();
    let mut o = options(&run, &data, &out);
    o.exports_bundle = true;
    let e = format!("{:#}", finetune(&o, &mut ()).unwrap_err());
    assert!(
        e.contains("an rlpd run exports no bundle") && e.contains("without --bundle"),
        "{e}"
    );
    assert!(!out.join("checkpoint").exists() && !out.join("finetune.csv").exists());
    o.exports_bundle = false;
    assert_eq!(finetune(&o, &mut ()).unwrap().updates, 6);
}

/// Rewrites the `meta/info.json` of the dataset at `dir` through `edit`.
fn edit_info(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let info = dir.join("meta/info.json");
    let mut j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&info).unwrap()).unwrap();
    edit(&mut j);
    std::fs::write(&info, j.to_string()).unwrap();
}

/// A dataset's held-out splits (`val`, `test`) are left out of fine-tuning: every episode
/// was trained on, any evaluation on them then on training data.
#[test]
fn finetune_leaves_out_the_datasets_held_out_splits() {
    let tmp = tempfile::tempdir().unwrap();
    let (run, data) = (tmp.path().join("run"), tmp.path().join("robot"));
    tiny_run(&run);
    tools::generate::generate(TaskId::ArmReach, 3, 7, EnvConfig::default(), &data).unwrap();
    let lengths: Vec<usize> = dataset::read_dataset(&data)
        .unwrap()
        .episodes
        .iter()
        .map(|e| e.len())
        .collect();
    let set_splits = |v: serde_json::Value| edit_info(&data, |j| j["splits"] = v);
    set_splits(serde_json::json!({"train": "0:1", "val": "1:2"}));
    let s = finetune(&options(&run, &data, &tmp.path().join("a")), &mut ()).unwrap();
    // Episode 2 is in no split (appended after `val`): trained on.
    assert_eq!(s.robot_episodes, 2);
    assert_eq!(s.robot_transitions, lengths[0] + lengths[2]);
    set_splits(serde_json::json!({"test": "0:3"}));
    let e = format!(
        "{:#}",
        finetune(&options(&run, &data, &tmp.path().join("b")), &mut ()).unwrap_err()
    );
    assert!(
        e.contains("every episode is in a held-out split (test 0:3)"),
        "{e}"
    );
}

/// Recordings already trained on are refused by the controller run ids their datasets
/// note: the same dataset twice, one the `--from` run holds, and episodes of a run held
/// in part that another dataset holds too. They were trained on twice without a word.
#[test]
fn finetune_refuses_recordings_it_holds_already() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    tiny_run(&run);
    let dataset_of = |name: &str, seed: u64, runs: serde_json::Value| {
        let dir = tmp.path().join(name);
        tools::generate::generate(TaskId::ArmReach, 2, seed, EnvConfig::default(), &dir).unwrap();
        edit_info(&dir, |j| {
            for (k, v) in runs.as_object().unwrap() {
                j[k] = v.clone();
            }
        });
        dir
    };
    let d1 = dataset_of("d1", 1, serde_json::json!({"expo_runs": ["r1"]}));
    let d2 = dataset_of("d2", 2, serde_json::json!({"expo_runs": ["r2"]}));
    let part_a = dataset_of(
        "pa",
        3,
        serde_json::json!({"expo_partial_runs": {"r3": [0, 1]}}),
    );
    let part_b = dataset_of(
        "pb",
        4,
        serde_json::json!({"expo_partial_runs": {"r3": [2]}}),
    );
    let part_c = dataset_of(
        "pc",
        5,
        serde_json::json!({"expo_partial_runs": {"r3": [1]}}),
    );
    let err = |o: &FinetuneOptions| format!("{:#}", finetune(o, &mut ()).unwrap_err());

    let mut o = options(&run, &d1, &tmp.path().join("twice"));
    o.data.push(tmp.path().join("d1/../d1"));
    let e = err(&o);
    assert!(e.contains("given twice as --data"), "{e}");

    let round1 = tmp.path().join("round1");
    let mut o = options(&run, &d1, &round1);
    o.data.extend([part_a.clone(), part_b.clone()]);
    finetune(&o, &mut ()).unwrap();
    // Round 2 from it: d1 again is refused, naming the run and where it is held.
    let e = err(&options(&round1, &d1, &tmp.path().join("round2")));
    assert!(
        e.contains(&format!(
            "d1: holds controller run r1, whose recordings the run at {} holds already (from {})",
            round1.display(),
            d1.canonicalize().unwrap().display()
        )),
        "{e}"
    );
    // Within one command: the dataset before it is named.
    let mut o = options(&run, &part_a, &tmp.path().join("both"));
    o.data.push(part_c.clone());
    let e = err(&o);
    assert!(
        e.contains("pc: holds controller run r3, whose recordings another --data holds"),
        "{e}"
    );
    let e = err(&options(&round1, &part_c, &tmp.path().join("round2")));
    assert!(e.contains("pc: holds controller run r3"), "{e}");
    // New recordings are taken, and noted in their turn.
    let round2 = tmp.path().join("round2");
    finetune(&options(&round1, &d2, &round2), &mut ()).unwrap();
    let e = err(&options(&round2, &d1, &tmp.path().join("round3")));
    assert!(e.contains("d1: holds controller run r1"), "{e}");
}

/// Robot data beside a controller log that holds episodes it lacks (a controller killed
/// before it saved them: `controller run --out DIR` writes `DIR/dataset` and
/// `DIR/transitions.log`) is trained on with a warning naming the run and the
/// conversion that appends them (it trained on less without a word); once the dataset
/// holds them, nothing is said.
#[test]
fn a_finetune_says_what_its_data_lacks_of_the_log_beside_it() {
    use controller::robot_loop::log::{LogWriter, Record, RunStart, Transition};
    use firmware_config::protocol::{MAX_ACT, MAX_OBS};
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    tiny_run(&run);
    let data = tmp.path().join("robot/dataset");
    tools::generate::generate(TaskId::ArmReach, 2, 7, EnvConfig::default(), &data).unwrap();
    edit_info(&data, |j| j["expo_runs"] = serde_json::json!(["saved-1"]));
    let log = tmp.path().join("robot/transitions.log");
    let mut w = LogWriter::open(&log).unwrap();
    for (id, episodes) in [("saved-1", 1), ("killed-2", 2)] {
        w.append(&Record::Run(RunStart {
            robot: "r".into(),
            task: "arm-reach".into(),
            fps: 20,
            observation_names: vec![],
            action_names: vec![],
            bundle: "b".into(),
            started_unix: 7,
            run_id: id.into(),
            action_scale: vec![],
            action_offset: vec![],
        }))
        .unwrap();
        for episode in 0..episodes {
            w.append(&Record::Transition(Transition {
                episode,
                step: 0,
                obs_dim: 1,
                act_dim: 1,
                obs: [0.0; MAX_OBS],
                action: [0.0; MAX_ACT],
                reward: 0.0,
                done: false,
                truncated: false,
                success: false,
                intervention: false,
                teleop: false,
                next_obs: [0.0; MAX_OBS],
                obs_fw_us: 0,
                next_obs_fw_us: 0,
                obs_rx_ns: 0,
                action_sent_ns: 0,
                next_obs_rx_ns: 0,
            }))
            .unwrap();
        }
    }
    drop(w);
    let s = finetune(&options(&run, &data, &tmp.path().join("a")), &mut ()).unwrap();
    let said = s.warnings.join("\n");
    assert!(
        said.contains(&format!(
            "{} holds 2 episodes of run killed-2 (started at unix time 7) that the dataset \
             {} does not",
            log.display(),
            data.display()
        )) && said.contains("--run killed-2` appends them; this run trains without them")
            && !said.contains("saved-1"),
        "{said}"
    );
    // A new run pretrained on that dataset says so too.
    let mut c = Config::tiny();
    c.task = TaskId::ArmReach.into();
    c.run.online_steps = 0;
    c.run.dataset = Some(data.display().to_string());
    let opts = TrainOptions {
        checkpoint_every: 0,
        log_every: 10,
        ..Default::default()
    };
    let s = train(&c, &tmp.path().join("pre"), &opts, &mut ()).unwrap();
    assert!(
        s.warnings
            .iter()
            .any(|w| w.contains("holds 2 episodes of run killed-2")),
        "{:?}",
        s.warnings
    );
    // The run converted into another dataset given too: it is held.
    let converted = tmp.path().join("killed-2");
    tools::generate::generate(TaskId::ArmReach, 2, 8, EnvConfig::default(), &converted).unwrap();
    edit_info(&converted, |j| {
        j["expo_runs"] = serde_json::json!(["killed-2"])
    });
    let mut o = options(&run, &data, &tmp.path().join("a2"));
    o.data.push(converted);
    let said = finetune(&o, &mut ()).unwrap().warnings.join("\n");
    assert!(!said.contains(&log.display().to_string()), "{said}");
    edit_info(&data, |j| {
        j["expo_runs"] = serde_json::json!(["saved-1", "killed-2"])
    });
    let s = finetune(&options(&run, &data, &tmp.path().join("b")), &mut ()).unwrap();
    let said = s.warnings.join("\n");
    assert!(!said.contains(&log.display().to_string()), "{said}");
}
