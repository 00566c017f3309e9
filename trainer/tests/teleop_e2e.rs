//! Demonstrations recorded through the controller with a teleop device (`controller run
//! --teleop`, no bundle) train a policy: the journey of README "Your own robot" with the
//! simulated arm as the robot and its scripted demonstrator as the person at the device.

use controller::robot_loop::teleop::TeleopConfig;
use controller::robot_loop::{self, Brain, RunConfig};
use hil_tests::firmware::{FirmwareOptions, FirmwareThread, Pacing};
use sim::TaskId;
use std::path::Path;
use std::time::Duration;
use tools::teleop::{DeviceOptions, DeviceThread};
use trainer::config::Config;
use trainer::run::{TrainOptions, evaluate, load_agent, train};

const TASK: TaskId = TaskId::ArmReach;

/// Records `episodes` teleoperated episodes of `TASK` into `out/dataset`; returns the
/// run's success rate and how many of the device's answers came too late.
fn record(out: &Path, episodes: u32) -> (f64, u64) {
    let mut robot = firmware_config::RobotConfig::example(TASK.name()).unwrap();
    // At the 10x clock a stale-sensor limit of 20 s is 2 s of real time: a stalled step
    // of a loaded 2-core machine must not fault one of the 100 episodes.
    robot.safety.stale_sensor_ms = 20_000;
    robot.command_timeout_ms = 40_000;
    let time_scale = 10.0;
    let mut teleop = TeleopConfig::bind("127.0.0.1:0", Duration::from_secs(2)).unwrap();
    // A closed-loop device (`--teleop-wait-ms`), waited for up to 80% of the control
    // period, the most the CLI accepts (4 ms of 5 ms at 20 Hz x10).
    teleop.wait = robot.control_period().mul_f64(0.8 / time_scale);
    let addr = teleop.socket.local_addr().unwrap();
    let mut o = DeviceOptions::new(addr, TASK);
    o.idle = Duration::from_secs(600);
    let device = DeviceThread::spawn(o);
    let mut fw = FirmwareOptions::new(TASK, robot.clone());
    fw.pacing = Pacing::Lockstep;
    let firmware = FirmwareThread::spawn(fw, time_scale).unwrap();
    let mut cfg = RunConfig::new(robot, firmware.path().to_path_buf());
    // Not a cadence test: a pause on a loaded machine at this time scale can miss 10
    // deadlines in a row (controller/tests/hil.rs checks that fault).
    cfg.max_consecutive_overruns = 0;
    cfg.episodes = Some(episodes);
    cfg.time_scale = time_scale;
    cfg.out = Some(out.to_path_buf());
    cfg.quiet = true;
    cfg.teleop = Some(teleop);
    let report = robot_loop::run(cfg, Brain::Hold, TASK.name(), "teleop").unwrap();
    device.finish().unwrap();
    drop(firmware);
    assert_eq!(report.episodes_completed, episodes as usize, "{report}");
    let t = report.teleop.as_ref().unwrap();
    eprintln!(
        "{} observations answered in time, {} late",
        t.answered, t.answer_timeouts
    );
    (report.success_rate, t.answer_timeouts)
}

fn bc(dataset: Option<&Path>, run: &Path, steps: usize) -> f64 {
    let mut c = Config::cpu();
    c.algo = trainer::config::Algo::Bc;
    c.task = TASK.into();
    c.diffusion.ema_rate = 0.01;
    c.run.pretrain_steps = steps;
    c.run.pretrain_critic = false;
    c.run.online_steps = 0;
    c.run.eval_episodes = 1;
    c.run.dataset = dataset.map(|d| d.display().to_string());
    train(&c, run, &TrainOptions::default(), &mut ()).unwrap();
    let mut agent = load_agent(run).unwrap();
    evaluate(&mut agent, 100, 77).unwrap().success_rate
}

/// 100 teleoperated arm-reach episodes train a BC policy that reaches the goal in a
/// share of 100 held-out episodes; the same recipe stopped after one update (the
/// control) does not. The device is closed-loop (`--teleop-wait-ms`), so it acts on the
/// frame it answers and the demonstrations are the scripted demonstrator's own (0.6 of
/// them succeed, as in-process). Without the wait it acted one control period late,
/// and on a loaded machine later still, at varying delays: once, BC on such a recording
/// reached 0.08 and failed this test. Measured on this machine (2026-12-03): 0.19 with
/// every answer on time, 0.19 to 0.22 with 1 to 5 late answers of 5,402 (2 busy loops
/// beside it), against 0.00.
#[test]
fn teleoperated_demonstrations_train_a_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = tmp.path().join("rec");
    let (demo_rate, late) = record(&rec, 100);
    // The demonstrator succeeds in about 0.6 of its episodes (BENCHMARKS, "Teleoperated
    // episodes"); far fewer would mean the loop delayed its actions.
    assert!(
        demo_rate > 0.4,
        "the demonstrations succeeded in {demo_rate}"
    );
    let ds = dataset::read_dataset(&rec.join("dataset")).unwrap();
    assert_eq!(ds.episodes.len(), 100);
    // Every frame but the run's first (sent before the device had seen anything) and,
    // at most, those whose answer came too late: mid-episode the previous frame's answer
    // stands in, at an episode's first frame the previous episode's last answer does
    // not (the hold action is sent).
    let frames = ds.num_frames();
    let teleop: usize = ds
        .episodes
        .iter()
        .map(|e| e.teleop.iter().filter(|&&t| t).count())
        .sum();
    assert!(
        teleop + 1 + late as usize >= frames,
        "{teleop} of {frames} frames teleoperated, {late} answers late"
    );

    let data = rec.join("dataset");
    let trained = bc(Some(&data), &tmp.path().join("run"), 6000);
    let control = bc(Some(&data), &tmp.path().join("control"), 1);
    eprintln!("demonstrations {demo_rate}, BC {trained}, after one update {control}");
    assert!(
        trained >= 0.1,
        "BC on the teleoperated demonstrations: {trained}"
    );
    assert!(control < trained, "one update: {control}, 6000: {trained}");
}
