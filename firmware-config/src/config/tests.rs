use super::*;

const PUSH: &str = include_str!("../../robots/push.toml");

/// Loads `text` from a file named `robot.toml` and returns the error message.
fn load_err(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("robot.toml");
    std::fs::write(&path, text).unwrap();
    let err = RobotConfig::load(&path).expect_err("config should be rejected");
    // Strip the temporary directory so the messages compare.
    err.to_string()
        .replace(&format!("{}/", dir.path().display()), "")
}

/// `PUSH` with the first occurrence of `from` replaced by `to`.
fn edit(from: &str, to: &str) -> String {
    assert!(PUSH.contains(from), "push.toml lacks {from:?}");
    PUSH.replacen(from, to, 1)
}

/// 1-based line of the first line of `text` that contains `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line contains {needle:?}"))
        + 1
}

#[test]
fn examples_load_and_match_the_sim_tasks() {
    let dir = crate_dir();
    // (name, obs dim, act dim, control Hz): sim::TaskId::{ArmReach, Push, Maze}.spec();
    // hil-tests checks them against the sim crate itself.
    for (name, obs, act, hz) in [
        ("arm-reach", 10, 2, 20),
        ("push", 10, 2, 20),
        ("maze", 6, 2, 10),
    ] {
        let c = RobotConfig::load(dir.join(format!("robots/{name}.toml"))).unwrap();
        assert_eq!(
            (c.observation.dim, c.action.dim, c.control_hz),
            (obs, act, hz),
            "{name}"
        );
        assert_eq!(RobotConfig::example(name).as_ref(), Some(&c));
        let h = c.hello();
        assert_eq!(
            (h.obs_dim, h.act_dim, h.control_hz),
            (obs as u8, act as u8, hz as u16)
        );
        assert!(c.command_timeout() >= c.control_period());
    }
    assert!(RobotConfig::example("nope").is_none());
}

/// The robot id is the CRC-32 of the name and channel names; the expected values were
/// computed independently (Python's `tomllib` and `zlib.crc32` over the same text).
#[test]
fn robot_ids_tell_robots_apart_and_ignore_settings() {
    let id = |name| RobotConfig::example(name).unwrap().identity();
    assert_eq!(id("push"), 0xbb86_8dbb);
    assert_eq!(id("arm-reach"), 0xb19b_87cf);
    assert_eq!(id("maze"), 0xcc2c_0de9);
    let push = RobotConfig::example("push").unwrap();
    assert_eq!(push.hello().robot_id, push.identity());
    assert!(
        push.identity_text()
            .starts_with("robot 8:sim-push\nobservation 8:pusher_x\n")
    );
    // What the values mean changes the id: the name, a channel name, the channel order.
    let changed = |f: &dyn Fn(&mut RobotConfig)| {
        let mut c = push.clone();
        f(&mut c);
        c.identity()
    };
    assert_ne!(changed(&|c| c.robot.push('2')), push.identity());
    assert_ne!(
        changed(&|c| c.observation.names[3] = "puck_q".into()),
        push.identity()
    );
    assert_ne!(
        changed(&|c| c.observation.names.swap(0, 1)),
        push.identity()
    );
    assert_ne!(changed(&|c| c.joints[1].name.push('2')), push.identity());
    // Names are length-prefixed: one name that spells two lines is not two names.
    assert_ne!(
        changed(&|c| {
            let two = c.observation.names.drain(..2).collect::<Vec<_>>();
            let spelled = format!("{}\nobservation {}", two[0], two[1]);
            c.observation.names.insert(0, spelled);
        }),
        push.identity()
    );
    // Settings do not.
    assert_eq!(
        changed(&|c| {
            c.safety.stale_sensor_ms += 1;
            c.action.scale[0] = 2.0;
            c.joints[0].torque_max += 1.0;
            c.serial.baud = 115_200;
        }),
        push.identity()
    );
}

/// The settings hash is the CRC-32 of the settings both sides act on; the expected
/// value was computed independently (Python's `zlib.crc32` over the text below).
#[test]
fn the_settings_hash_covers_what_both_sides_act_on() {
    let push = RobotConfig::example("push").unwrap();
    assert_eq!(
        push.settings_text(),
        "action.scale 1 1\naction.offset 0 0\nsafety.action_min -1 -1\n\
         safety.action_max 1 1\nsafety.max_delta_per_tick 2 2\n\
         safety.gravity_safe_torque_off true\n\
         joint 8:pusher_x position_min -0.47 position_max 0.47 velocity_max 0.5\n\
         joint 8:pusher_y position_min -0.47 position_max 0.47 velocity_max 0.5\n"
    );
    assert_eq!(push.settings_hash(), 0xca27_18a2);
    assert_eq!(push.hello().settings_hash, push.settings_hash());
    let changed = |f: &dyn Fn(&mut RobotConfig)| {
        let mut c = push.clone();
        f(&mut c);
        c.settings_hash()
    };
    // Each setting both sides act on changes it (and not the robot id).
    let edits: [&dyn Fn(&mut RobotConfig); 9] = [
        &|c| c.action.scale[1] = 0.5,
        &|c| c.action.offset[0] = 0.25,
        &|c| c.safety.action_min[1] = -0.9,
        &|c| c.safety.action_max[0] = 0.9,
        &|c| c.safety.max_delta_per_tick[1] = 1.5,
        &|c| c.safety.gravity_safe_torque_off = false,
        &|c| c.joints[1].position_min = -0.4,
        &|c| c.joints[0].position_max = 0.4,
        &|c| c.joints[1].velocity_max = 0.6,
    ];
    for (i, edit) in edits.iter().enumerate() {
        assert_ne!(changed(edit), push.settings_hash(), "edit {i}");
        let mut c = push.clone();
        edit(&mut c);
        assert_eq!(c.identity(), push.identity(), "edit {i}");
    }
    // Each side's own settings and the names do not (the names are the robot id's).
    assert_eq!(
        changed(&|c| {
            c.command_timeout_ms += 100;
            c.joints[0].torque_max += 1.0;
            c.joints[0].position_observation = Some("pusher_x".into());
            c.joints[0].position_observation_scale = Some(2.0);
            c.joints[1].velocity_observation = Some("pusher_vy".into());
            c.joints[1].velocity_observation_scale = Some(0.5);
            c.safety.stale_sensor_ms += 1;
            c.safety.hold_ticks_before_torque_off += 1;
            c.serial.baud = 115_200;
            c.serial.device = "/dev/ttyUSB1".into();
            c.action.names = vec!["a".into(), "b".into()];
            c.observation.names[0] = "x".into();
        }),
        push.settings_hash()
    );
    // The same values written otherwise hash alike: `2.0` and `2`, `-0.0` and `0`.
    let text = PUSH
        .replace(
            "max_delta_per_tick = [2.0, 2.0]",
            "max_delta_per_tick = [2, 2.00]",
        )
        .replace("offset = [0.0, 0.0]", "offset = [-0.0, 0.0]");
    assert!(text.contains("[2, 2.00]") && text.contains("[-0.0, 0.0]"));
    let rewritten = RobotConfig::from_toml_str(&text, "push.toml").unwrap();
    assert_eq!(rewritten.settings_hash(), push.settings_hash());
    // Shortest round-trip digits, never an exponent (a firmware's build reproduces the
    // text from these lines).
    let mut small = push.clone();
    small.action.scale = vec![0.1, 1e-7];
    small.action.offset = vec![3e8, -2.5];
    assert!(
        small
            .settings_text()
            .starts_with("action.scale 0.1 0.0000001\naction.offset 300000000 -2.5\n"),
        "{}",
        small.settings_text()
    );
}

#[test]
fn serialized_config_loads_back() {
    let c = RobotConfig::example("maze").unwrap();
    let text = toml::to_string(&c).unwrap();
    assert_eq!(RobotConfig::from_toml_str(&text, "x.toml").unwrap(), c);
}

#[test]
fn action_units_roundtrip() {
    let a = ActionConfig {
        dim: 2,
        scale: vec![2.0, -0.5],
        offset: vec![1.0, 0.25],
        names: vec![],
    };
    let mut robot = [0.0; 2];
    a.to_robot_units(&[0.5, 1.0], &mut robot);
    assert_eq!(robot, [2.0, -0.25]);
    let mut back = [0.0; 2];
    a.to_policy_units(&robot, &mut back);
    assert_eq!(back, [0.5, 1.0]);
}

#[test]
fn a_recorded_action_mapping_is_compared_exactly() {
    let a = ActionConfig {
        dim: 2,
        scale: vec![2.0, -0.5],
        offset: vec![1.0, 0.25],
        names: vec!["wrist".into(), "grip".into()],
    };
    let (scale, offset) = (a.scale.clone(), a.offset.clone());
    assert_eq!(a.mapping_differs(&scale, &offset, "the data"), None);
    // Data recorded without one agrees with any robot file.
    assert_eq!(a.mapping_differs(&[], &[], "the data"), None);
    // Another offset on the second action, by the smallest step an f32 has.
    let moved = [offset[0], offset[1].next_up()];
    let e = a.mapping_differs(&scale, &moved, "the data").unwrap();
    assert!(
        e.starts_with("action [1] `grip` was recorded as 0.25000003 + -0.5 × a"),
        "{e}"
    );
    assert!(
        e.contains("in the data, and the robot file maps it to 0.25 + -0.5 × a"),
        "{e}"
    );
    // Another scale on the first, unnamed.
    let unnamed = ActionConfig {
        names: vec![],
        ..a.clone()
    };
    let e = unnamed
        .mapping_differs(&[1.0, -0.5], &offset, "the bundle's data")
        .unwrap();
    assert!(e.starts_with("action [0] was recorded as 1 + 1 × a"), "{e}");
}

#[test]
fn semantic_errors_name_file_line_and_field() {
    let cases: &[(&str, &str, &str, &str)] = &[
        // (replace, with, field, message)
        (
            "max_delta_per_tick = [2.0, 2.0]",
            "max_delta_per_tick = [2.0, 2.0, 2.0]",
            "safety.max_delta_per_tick",
            "expected 2 values (action.dim), found 3",
        ),
        (
            "action_min = [-1.0, -1.0]",
            "action_min = [-1.0]",
            "safety.action_min",
            "expected 2 values (action.dim), found 1",
        ),
        (
            "action_max = [1.0, 1.0]",
            "action_max = [1.0, -1.0]",
            "safety.action_max[1]",
            "must be greater than safety.action_min[1] (-1), found -1",
        ),
        (
            "scale = [1.0, 1.0]",
            "scale = [1.0, nan]",
            "action.scale[1]",
            "must be a finite number (f32), found NaN",
        ),
        (
            "offset = [0.0, 0.0]",
            "offset = [0.0, 1e39]",
            "action.offset[1]",
            "must be a finite number (f32), found inf",
        ),
        (
            "scale = [1.0, 1.0]",
            "scale = [0.0, 1.0]",
            "action.scale[0]",
            "must not be zero",
        ),
        (
            "dim = 2",
            "dim = 17",
            "action.dim",
            "must be between 1 and 16 (the protocol's MAX_ACT), found 17",
        ),
        (
            "\"target_x\", \"target_y\"]",
            "\"target_x\"]",
            "observation.names",
            "expected 10 values (observation.dim), found 9",
        ),
        (
            "control_hz = 20",
            "control_hz = 0",
            "control_hz",
            "must be between 1 and 10000 Hz (the controller's shortest control period is 100 µs), found 0",
        ),
        (
            "control_hz = 20",
            "control_hz = 20000",
            "control_hz",
            "must be between 1 and 10000 Hz (the controller's shortest control period is 100 µs), found 20000",
        ),
        (
            "command_timeout_ms = 200",
            "command_timeout_ms = 50",
            "command_timeout_ms",
            "must be at least 2 control periods (100 ms at 20 Hz), found 50",
        ),
        (
            "baud = 1000000",
            "baud = 0",
            "serial.baud",
            "must be positive, found 0",
        ),
        (
            "stale_sensor_ms = 150",
            "stale_sensor_ms = 0",
            "safety.stale_sensor_ms",
            "must be at least 2 control periods (100 ms at 20 Hz), found 0",
        ),
        (
            "stale_sensor_ms = 150",
            "stale_sensor_ms = 60",
            "safety.stale_sensor_ms",
            "must be at least 2 control periods (100 ms at 20 Hz), found 60",
        ),
        (
            "action_min = [-1.0, -1.0]",
            "action_min = [-1.0, 0.25]",
            "safety.action_min[1]",
            "must be at most 0 (the hold action, which the firmware falls back to, must be inside the envelope), found 0.25",
        ),
        (
            "action_max = [1.0, 1.0]",
            "action_max = [2.0, 1.0]",
            "safety.action_max[0]",
            "must be within the policy's range [-1, 1], found 2",
        ),
        (
            "action_min = [-1.0, -1.0]",
            "action_min = [-1.0, -1.5]",
            "safety.action_min[1]",
            "must be within the policy's range [-1, 1], found -1.5",
        ),
        (
            "command_timeout_ms = 200",
            "command_timeout_ms = 60001",
            "command_timeout_ms",
            "must be at most 60000 ms (a longer watchdog is none), found 60001",
        ),
        (
            "stale_sensor_ms = 150",
            "stale_sensor_ms = 4294967295",
            "safety.stale_sensor_ms",
            "must be at most 60000 ms (a longer watchdog is none), found 4294967295",
        ),
        (
            "action_max = [1.0, 1.0]",
            "action_max = [-0.5, 1.0]",
            "safety.action_max[0]",
            "must be at least 0 (the hold action, which the firmware falls back to, must be inside the envelope), found -0.5",
        ),
        (
            "scale = [1.0, 1.0]\noffset = [0.0, 0.0]",
            "scale = [1.0, 3e38]\noffset = [0.0, 1e38]",
            "action.scale[1]",
            "with action.offset[1] = 1e38 it maps safety bound 1e0 to inf in robot units",
        ),
        (
            "offset = [0.0, 0.0]",
            "offset = [1e8, 0.0]",
            "action.offset[0]",
            "1e8 against action.scale[0] = 1e0 leaves commands a rounding of 1.6e1 policy \
             units, more than a tenth of safety.max_delta_per_tick[0] (2e-1): every action \
             would round to a few commands",
        ),
        (
            "scale = [1.0, 1.0]",
            "scale = [1e-40, 1.0]",
            "action.scale[0]",
            "is too small to divide by (a subnormal f32), found 1e-40",
        ),
        (
            "name = \"pusher_y\"",
            "name = \"pusher_x\"",
            "joints[1].name",
            "duplicate joint name 'pusher_x'",
        ),
        (
            "velocity_max = 0.5        # m/s",
            "velocity_max = -0.5        # m/s",
            "joints[0].velocity_max",
            "must be positive, found -0.5",
        ),
        (
            "\"target_x\", \"target_y\"]",
            "\"target_x\", \"target_x\"]",
            "observation.names[9]",
            "duplicate observation name 'target_x'",
        ),
        (
            "names = [\"vx_command\", \"vy_command\"]",
            "names = [\"vx_command\", \"vx_command\"]",
            "action.names[1]",
            "duplicate action name 'vx_command'",
        ),
        (
            "names = [\"vx_command\", \"vy_command\"]",
            "names = [\"vx_command\"]",
            "action.names",
            "expected 2 values (action.dim), found 1",
        ),
        (
            "robot = \"sim-push\"",
            "robot = \"  \"",
            "robot",
            "must not be empty",
        ),
        // Every safe stop holds this long: a typo held the arm for a day.
        (
            "hold_ticks_before_torque_off = 20",
            "hold_ticks_before_torque_off = 2000000",
            "safety.hold_ticks_before_torque_off",
            "must be at least 1 tick and at most 60000 ms of ticks (1200 at 20 Hz), found 2000000",
        ),
        (
            "hold_ticks_before_torque_off = 20",
            "hold_ticks_before_torque_off = 0",
            "safety.hold_ticks_before_torque_off",
            "must be at least 1 tick and at most 60000 ms of ticks (1200 at 20 Hz), found 0",
        ),
        // A rate limit so small that the safe stop's ramp never ends.
        (
            "max_delta_per_tick = [2.0, 2.0]",
            "max_delta_per_tick = [2.0, 1e-4]",
            "safety.max_delta_per_tick[1]",
            "0.0001 ramps from the envelope's bound 1 to the hold action in 10000 ticks (500000 ms at 20 Hz); a safe stop may take at most 60000 ms",
        ),
    ];
    for (from, to, field, message) in cases {
        let text = edit(from, to);
        // The line where the edit went in.
        let line = PUSH[..PUSH.find(from).unwrap()].matches('\n').count() + 1;
        let expected = format!("robot.toml:{line}: {field}: {message}");
        assert_eq!(load_err(&text), expected, "editing {from:?} -> {to:?}");
    }
    // |offset| + |scale| past f32's range (the envelope's corners still finite): the
    // rounding allowance was NaN, and every firmware comparison with it false.
    let text = edit(
        "scale = [1.0, 1.0]\noffset = [0.0, 0.0]\n\n[safety]\naction_min = [-1.0, -1.0]\n\
         action_max = [1.0, 1.0]",
        "scale = [3e38, 1.0]\noffset = [3e38, 0.0]\n\n[safety]\naction_min = [-0.1, -1.0]\n\
         action_max = [0.1, 1.0]",
    );
    let e = load_err(&text);
    assert!(
        e.contains(
            "action.offset[0]: 3e38 against action.scale[0] = 3e38 leaves commands a \
             rounding of NaN policy units"
        ),
        "{e}"
    );
}

#[test]
fn joint_range_error_points_at_the_second_joint() {
    // Only the second joint's position_max changes; the error must name joints[1] and
    // its line, not the first joint's identical-looking line.
    let text = PUSH.replace(
        "name = \"pusher_y\"\nposition_min = -0.47\nposition_max = 0.47",
        "name = \"pusher_y\"\nposition_min = -0.47\nposition_max = -0.5",
    );
    assert_ne!(text, PUSH);
    let line = line_of(&text, "position_max = -0.5");
    assert_eq!(
        load_err(&text),
        format!(
            "robot.toml:{line}: joints[1].position_max: must be greater than position_min (-0.47), found -0.5"
        )
    );
}

/// A joint may name the observation values that carry its position and velocity; the
/// names must exist and each may be claimed once. The checks say which value, which
/// joint and which limits.
#[test]
fn joint_limit_observations_are_checked_and_listed() {
    let arm = RobotConfig::example("arm-reach").unwrap();
    let checks = arm.joint_checks();
    assert_eq!(checks.len(), 4);
    // In the observation's units: the simulated arm sends the angle / π and the speed
    // / 10 (the limits were compared in radians with them, and never fired).
    assert_eq!(
        checks[0],
        JointCheck {
            index: 0,
            min: -3.4 * 0.31830987,
            max: 3.4 * 0.31830987,
            what: "joint `shoulder` position (observation `q1` = position × 0.31830987)".into(),
        }
    );
    assert_eq!(
        (checks[3].index, checks[3].min, checks[3].max),
        (3, -2.0, 2.0)
    );
    assert!(
        RobotConfig::example("push")
            .unwrap()
            .joint_checks()
            .is_empty()
    );
    let text = edit(
        "torque_max = 20.0",
        "torque_max = 20.0\nposition_observation = \"pusher_z\"",
    );
    let line = line_of(&text, "pusher_z");
    assert_eq!(
        load_err(&text),
        format!(
            "robot.toml:{line}: joints[0].position_observation: 'pusher_z' is not one of observation.names"
        )
    );
    let text = edit(
        "torque_max = 20.0",
        "torque_max = 20.0\nposition_observation = \"pusher_x\"\nvelocity_observation = \"pusher_x\"",
    );
    assert!(
        load_err(&text).contains(
            "joints[0].velocity_observation: 'pusher_x' is named by another joint limit already"
        ),
        "{}",
        load_err(&text)
    );
    for (scale, says) in [
        ("-0.5", "must be a positive number, found -0.5"),
        ("nan", "must be a positive number, found NaN"),
        ("1e10", "1e10 takes the joint's limits beyond f32"),
    ] {
        let text = edit(
            "torque_max = 20.0",
            &format!(
                "torque_max = 20.0\nposition_observation = \"pusher_x\"\nposition_observation_scale = {scale}"
            ),
        )
        .replacen("position_max = 0.47", "position_max = 1e30", 1);
        let err = load_err(&text);
        assert!(
            err.contains(&format!("joints[0].position_observation_scale: {says}")),
            "{err}"
        );
    }
    // A scale whose observation is not named (forgotten) would leave the joint
    // unchecked while its author believes it checked: refused.
    for (key, observation) in [
        ("position_observation_scale", "position_observation"),
        ("velocity_observation_scale", "velocity_observation"),
    ] {
        let text = edit(
            "torque_max = 20.0",
            &format!("torque_max = 20.0\n{key} = 0.5"),
        );
        let err = load_err(&text);
        assert!(
            err.contains(&format!(
                "joints[0].{key}: is given, but {observation} is not"
            )),
            "{err}"
        );
    }
}

#[test]
fn parse_errors_name_file_line_and_field() {
    // Wrong type.
    let text = edit("control_hz = 20", "control_hz = \"fast\"");
    let err = load_err(&text);
    let line = line_of(&text, "control_hz = \"fast\"");
    assert!(
        err.starts_with(&format!("robot.toml:{line}: control_hz: invalid type")),
        "{err}"
    );
    // A float where an integer goes.
    let text = edit("baud = 1000000", "baud = 1.5e6");
    let err = load_err(&text);
    let line = line_of(&text, "baud = 1.5e6");
    assert!(
        err.starts_with(&format!("robot.toml:{line}: serial.baud: invalid type")),
        "{err}"
    );
    // Unknown field (typo).
    let text = edit("baud = 1000000", "baud = 1000000\nparity = \"none\"");
    let err = load_err(&text);
    let line = line_of(&text, "parity");
    assert!(
        err.starts_with(&format!(
            "robot.toml:{line}: serial.parity: unknown field `parity`"
        )),
        "{err}"
    );
    // Missing field inside a table: names the field, points at its table.
    let text = edit("baud = 1000000\n", "");
    let err = load_err(&text);
    let line = line_of(&text, "[serial]");
    assert!(
        err.starts_with(&format!(
            "robot.toml:{line}: serial.baud: missing field `baud`"
        )),
        "{err}"
    );
    // Missing field in an array of tables.
    let text = PUSH.replace("torque_max = 20.0\n\n[observation]", "\n[observation]");
    assert_ne!(text, PUSH);
    let err = load_err(&text);
    assert!(
        err.contains(": joints[1].torque_max: missing field `torque_max`"),
        "{err}"
    );
    // A UART too slow for the frames of one step; a USB CDC-ACM device (the examples')
    // ignores the baud rate.
    let acm = edit("baud = 1000000", "baud = 9600");
    RobotConfig::from_toml_str(&acm, "robot.toml").unwrap();
    let text = acm.replace("/dev/ttyACM0", "/dev/ttyUSB0");
    let line = line_of(&text, "baud = 9600");
    assert_eq!(
        load_err(&text),
        format!(
            "robot.toml:{line}: serial.baud: 9600 baud is too slow for 20 Hz: the firmware's frames for one step (103 bytes for 10 observation and 2 action values) take 107.3 ms of the 50 ms period, and at most half of it is allowed; use at least 41200 baud or a lower control_hz"
        )
    );
    // A symlink to a USB CDC-ACM device (`/dev/serial/by-id/usb-…-if00`, its stable
    // name) is judged by the device it names, and so is macOS's `tty.usbmodem` path; a
    // symlink to a UART is not exempt.
    let robot = RobotConfig::from_toml_str(&acm, "robot.toml").unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (device, exempt) in [("ttyACM3", true), ("ttyUSB3", false)] {
        std::fs::write(dir.path().join(device), "").unwrap();
        let link = dir.path().join(format!("usb-board-{device}-if00"));
        std::os::unix::fs::symlink(dir.path().join(device), &link).unwrap();
        let checked = robot.check_baud(&link.to_string_lossy(), 9600);
        assert_eq!(checked.is_ok(), exempt, "{device}: {checked:?}");
    }
    assert!(robot.check_baud("/dev/tty.usbmodem1101", 9600).is_ok());
    assert!(robot.check_baud("/dev/ttys004", 9600).is_ok());
    assert!(robot.check_baud("/dev/ttyS4", 9600).is_err());
    // The action's values count too: one observation value and 16 action values at 20
    // Hz, whose `Reward` frames carry the 16 applied values (the controller's command
    // of them, 81 bytes, is the shorter direction).
    let mut wide = robot.clone();
    (wide.observation.dim, wide.action.dim, wide.control_hz) = (1, 16, 20);
    let e = wide.check_baud("/dev/ttyUSB0", 24_000).unwrap_err();
    assert!(
        e.contains(
            "the firmware's frames for one step (123 bytes for 1 observation and 16 action values)"
        ) && e.contains("use at least 49200 baud"),
        "{e}"
    );
    assert!(wide.check_baud("/dev/ttyUSB0", 49_200).is_ok());
    // A timeout past u32 is named as given (it read 4294967295).
    let e = robot.check_command_timeout(5_000_000_000).unwrap_err();
    assert!(e.contains("found 5000000000"), "{e}");
    // Missing top-level field in a file that starts with a key (no comment first): the
    // error is the root table's, not the first key's.
    let start = PUSH.find("robot = ").unwrap();
    let text = PUSH[start..].replace(
        "control_hz = 20           # sim::push::SPEC.control_hz\n",
        "",
    );
    assert!(!text.contains("control_hz"));
    let err = load_err(&text);
    assert!(
        err.starts_with("robot.toml:1: control_hz: missing field `control_hz`"),
        "{err}"
    );
    // Missing table.
    let i = PUSH.find("[safety]").unwrap();
    let err = load_err(&PUSH[..i]);
    assert!(
        err.starts_with("robot.toml:1: safety: missing field `safety`"),
        "{err}"
    );
    // Not TOML at all: file, line and column.
    let text = edit("robot = \"sim-push\"", "robot = \"sim-push");
    let err = load_err(&text);
    let line = line_of(&text, "robot = \"sim-push");
    assert!(err.starts_with(&format!("robot.toml:{line}:")), "{err}");
    // No file.
    let err = RobotConfig::load("/nonexistent/robot.toml").unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string()
            .starts_with("/nonexistent/robot.toml: cannot read")
    );
    // The OS's reason is in the message once, and not again as the cause: an error
    // chain (anyhow's `Caused by:`) printed it twice.
    assert!(err.to_string().contains("No such file"), "{err}");
    assert!(std::error::Error::source(&err).is_none());
    // Not a regular file (a device named for the robot file, the port and the file
    // swapped; a directory): refused before it is read (a tty blocked for good).
    for path in ["/dev/null", "/tmp"] {
        let e = RobotConfig::load(path).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{path}: cannot read: not a regular file")),
            "{e}"
        );
    }
    // Larger than any robot file.
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.toml");
    let mut text = PUSH.to_string();
    text.push_str(&"#".repeat(MAX_ROBOT_FILE_BYTES as usize));
    std::fs::write(&big, text).unwrap();
    let e = RobotConfig::load(&big).unwrap_err().to_string();
    assert!(
        e.contains("more than the 1048576 bytes a robot file may have"),
        "{e}"
    );
}

#[test]
fn line_col_counts_characters() {
    assert_eq!(line_col("ab\ncd", 0), (1, 1));
    assert_eq!(line_col("ab\ncd", 3), (2, 1));
    assert_eq!(line_col("ab\ncd", 4), (2, 2));
    assert_eq!(line_col("é\nx", 99), (2, 2));
}

/// This crate's directory as cargo sets it at run time: `env!` keeps the checkout the
/// test was compiled in, and cargo reuses a shared target directory's tests after a move.
fn crate_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
        .into()
}

/// The same names in another order are found with both positions; a name repeated (a
/// dataset's, which nothing checks for repeats) is not taken for one out of place where
/// both lists hold it there.
#[test]
fn a_reordered_name_is_found_and_a_repeated_one_is_not() {
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let found = |a: &[&str], b: &[&str]| first_reordered_name(&names(a), &names(b));
    assert_eq!(found(&["a", "b"], &["b", "a"]), Some((0, 1)));
    assert_eq!(found(&["a", "b", "c"], &["a", "c", "b"]), Some((1, 2)));
    assert_eq!(found(&["g", "g"], &["g", "g"]), None);
    assert_eq!(found(&["a", "b"], &["a.pos", "b.pos"]), None);
    assert_eq!(found(&["a", "b"], &[]), None);
    let e = actions_reordered(
        &names(&["x", "y"]),
        "this run",
        &names(&["y", "x"]),
        "the data",
    );
    assert!(
        e.unwrap()
            .starts_with("action `y` is at [0] in the data and at [1] in this run: "),
    );
}
