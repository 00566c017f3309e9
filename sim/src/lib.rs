//! `sim`: simulated robots and tasks for EXPO.
//!
//! It owns the three built-in tasks, their scripted (imperfect, multimodal)
//! demonstrators, and the single- and vectorized-environment APIs that the trainer, the
//! simulated firmware and the Python bindings drive. Everything is deterministic from a
//! seed, allocation-free per step, and render-free: [`Env::scene`] gives geometric
//! primitives for visualization.
//!
//! # Tasks
//!
//! | id | robot | obs | act | control | horizon | modes |
//! |---|---|---|---|---|---|---|
//! | `arm-reach` | 2-link planar arm, PD joint targets | 10 | 2 | 20 Hz | 60 | swing left / right around the obstacle |
//! | `push` | disc pusher pushing a puck on a table | 10 | 2 | 20 Hz | 100 | go around the puck on its left / right |
//! | `maze` | point-mass robot in a grid maze | 6 | 2 | 10 Hz | 150 | four routes (outer/inner, left/right) |
//!
//! All actions are in `[-1, 1]`; out-of-range or non-finite actions are clamped (NaN
//! becomes 0) so that a bad policy output can never blow up the physics. Rewards are
//! sparse by default: `1` on the step that reaches success, which also terminates the
//! episode; `0` otherwise. Failures that a real robot would treat as an abort (arm hits
//! the obstacle) terminate with reward `0`. Dense shaping (`Reward::Dense`) adds minus a
//! distance to the goal, scaled per task, for users who want it; an abort is charged that
//! distance for every step left to the task's horizon (the table's, whatever shorter limit
//! a wrapper sets), so that ending early on the obstacle never scores better than staying
//! where it stopped.
//!
//! # Physics (SI units: m, s, kg, rad, N, N·m)
//!
//! Every task integrates with semi-implicit Euler (velocity first, then position) at a
//! fixed physics step; one control step runs several physics substeps with the action
//! held (zero-order hold). The integrator is first order: for the free arm (no torque, no
//! friction) its energy error shrinks in proportion to the step (about 2.4% over 10 s at
//! 1 ms with gravity, tested); in the tasks the PD damping and joint friction dominate it.
//!
//! - `arm-reach` ([`arm`]): two uniform rods (1 kg, 0.5 m each) on revolute joints, full
//!   rigid-body dynamics `M(q) q̈ + C(q, q̇) q̇ + g(q) = τ − b q̇`, physics step 5 ms
//!   (10 substeps per 50 ms control step). Action = joint position target offset
//!   (`q_des = q + 0.3 rad · a`) re-referenced to the measured position at every
//!   physics substep, so the PD (10 and 5 N·m limits at the shoulder and elbow) applies
//!   a constant `KP · 0.3 rad · a` plus damping over the control step: in effect a damped
//!   torque command, with nothing pulling back to a position at `a = 0`. Joint speeds are
//!   capped at 20 rad/s. Joint limits are hard
//!   stops (position clamped, velocity into the stop zeroed). The arm moves in the
//!   horizontal plane by default; `gravity = true` tilts it vertical (joint 1 hanging
//!   down at `q = 0`). The torque limits then bound the gravity compensation too: with
//!   the shoulder near horizontal (9.8 of its 10 N·m hold the arm up) an upward action
//!   moves it far less than a downward one.
//! - `push` ([`push`]): a disc pusher of 3 cm radius (1 kg, velocity-tracking force
//!   controller, 20 N limit) and a puck of 5 cm radius (0.2 kg, Coulomb friction μ = 0.4 with the table) on a
//!   1 m x 1 m table with walls; the pusher-puck contact is resolved with an impulse
//!   (restitution 0.1) plus positional correction, the walls stop a body dead (position
//!   clamped, velocity into the wall zeroed: no bounce); physics step 5 ms (10 substeps
//!   per control step).
//! - `maze` ([`maze`]): a 0.15 m-radius point-mass robot whose velocity tracks the
//!   commanded velocity with a 4 m/s² acceleration limit; walls are axis-aligned 1 m
//!   cells and collisions remove the velocity component into the wall (the robot slides);
//!   physics step 20 ms (5 substeps per 100 ms control step).
//!
//! # Determinism
//!
//! [`Env::reset`] takes a seed; the state after it and every subsequent step depend only
//! on that seed and the actions. The random generator is our own ([`rng::Rng`]), so its
//! integer stream is the same on every platform and across dependency updates. Resets,
//! the Gaussian noise, the arm's dynamics (`sin`, `cos`) and the demonstrators (`atan2`,
//! `acos`) go through the platform's maths library, so trajectories are bit for bit the
//! same on machines with the same library (and the same build), not necessarily across
//! operating systems.

// Index loops over the x/y (or joint 1/2) components read like the equations they code.
#![allow(clippy::needless_range_loop)]

pub mod arm;
pub mod maze;
pub mod push;
pub mod rng;
mod scene;
mod vec_env;

pub use scene::{Scene, Shape, ShapeKind};
pub use vec_env::VecEnv;

use std::fmt;
use std::str::FromStr;

/// Static description of a task: what a policy sees and sends.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskSpec {
    pub id: TaskId,
    /// Natural-language task description (goes into dataset metadata).
    pub description: &'static str,
    pub obs_names: &'static [&'static str],
    /// Nominal observation bounds (for normalization and Gymnasium spaces); values stay
    /// inside them under any action sequence.
    pub obs_low: &'static [f32],
    pub obs_high: &'static [f32],
    pub action_names: &'static [&'static str],
    /// Control steps before the episode is truncated.
    pub horizon: u32,
    /// Control rate in Hz.
    pub control_hz: u32,
    /// Physics substeps per control step.
    pub substeps: u32,
}

impl TaskSpec {
    pub fn obs_dim(&self) -> usize {
        self.obs_names.len()
    }
    pub fn action_dim(&self) -> usize {
        self.action_names.len()
    }
    pub fn control_dt(&self) -> f32 {
        1.0 / self.control_hz as f32
    }
    /// The observation names as the owned strings datasets, bundles and robot files hold.
    pub fn owned_obs_names(&self) -> Vec<String> {
        self.obs_names.iter().map(|s| s.to_string()).collect()
    }
    /// The action names likewise.
    pub fn owned_action_names(&self) -> Vec<String> {
        self.action_names.iter().map(|s| s.to_string()).collect()
    }
}

/// The built-in tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum TaskId {
    #[serde(rename = "arm-reach")]
    ArmReach,
    #[serde(rename = "push")]
    Push,
    #[serde(rename = "maze")]
    Maze,
}

impl TaskId {
    pub const ALL: [TaskId; 3] = [TaskId::ArmReach, TaskId::Push, TaskId::Maze];

    pub fn name(self) -> &'static str {
        match self {
            TaskId::ArmReach => "arm-reach",
            TaskId::Push => "push",
            TaskId::Maze => "maze",
        }
    }

    pub fn spec(self) -> &'static TaskSpec {
        match self {
            TaskId::ArmReach => &arm::SPEC,
            TaskId::Push => &push::SPEC,
            TaskId::Maze => &maze::SPEC,
        }
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown task '{0}': expected one of arm-reach, push, maze")]
pub struct UnknownTask(pub String);

impl FromStr for TaskId {
    type Err = UnknownTask;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskId::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| UnknownTask(s.to_string()))
    }
}

/// Reward shaping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reward {
    /// 1 on reaching success, else 0.
    #[default]
    Sparse,
    /// Sparse reward minus a scaled distance to the goal every step.
    Dense,
}

/// Options common to every task.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EnvConfig {
    pub reward: Reward,
    /// `arm-reach` only: the arm moves in a vertical plane under gravity.
    pub gravity: bool,
}

impl EnvConfig {
    /// The `robot_type` a dataset of `task` under these options records:
    /// `sim/arm-reach` for the defaults, with `+gravity` and `+dense` appended for those
    /// options. The trainer's simulated tasks run with the defaults and refuse data of
    /// another variant by this name (other dynamics, other rewards).
    pub fn robot_type(&self, task: TaskId) -> String {
        let mut name = format!("sim/{task}");
        if self.gravity {
            name.push_str("+gravity");
        }
        if self.reward == Reward::Dense {
            name.push_str("+dense");
        }
        name
    }

    /// The options [`EnvConfig::robot_type`] appends, without the leading `+`
    /// (`gravity+dense`; empty for the defaults): what [`split_variant`] finds.
    pub fn options(&self) -> String {
        let name = self.robot_type(TaskId::Push);
        split_variant(&name).1.to_string()
    }

    /// Refuses options `task` would silently ignore (gravity outside `arm-reach`).
    pub fn check_for(&self, task: TaskId) -> Result<(), String> {
        if self.gravity && task != TaskId::ArmReach {
            return Err(format!(
                "gravity applies to arm-reach only; {task} moves in the horizontal plane"
            ));
        }
        Ok(())
    }
}

/// Splits the simulator options off a dataset's `robot_type` or a robot file's name:
/// `sim/arm-reach+gravity+dense` gives `("sim/arm-reach", "gravity+dense")`, a name
/// without them `(name, "")`. Simulated variants are named so, by
/// [`EnvConfig::robot_type`] and by the robot files `sim-firmware` takes for them (a
/// controller's dataset is named after its robot file), and the trainer tells their
/// data from its default tasks' by it.
pub fn split_variant(name: &str) -> (&str, &str) {
    let mut base = name;
    while let Some(b) = base
        .strip_suffix("+gravity")
        .or_else(|| base.strip_suffix("+dense"))
    {
        base = b;
    }
    let options = name.get(base.len() + 1..).unwrap_or("");
    (base, options)
}

/// What one control step returned.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Step {
    pub reward: f32,
    /// Task-terminal (success or abort): do not bootstrap past it.
    pub terminated: bool,
    /// Ended by the horizon.
    pub truncated: bool,
    /// The task's goal is reached in the state after this step (false on the frozen
    /// steps after the episode ended).
    pub success: bool,
}

impl Step {
    pub fn done(&self) -> bool {
        self.terminated || self.truncated
    }

    /// How every task scores a step (see the module doc): 1 on success,
    /// minus `dense_scale` × the goal distance `dist` with dense rewards (times the steps
    /// left to the horizon, this one included, on an abort); task-terminal on
    /// success or on `aborted` (a collision); truncated when neither and `t` (steps taken)
    /// has reached `spec.horizon`.
    fn score(
        spec: &TaskSpec,
        config: &EnvConfig,
        t: u32,
        success: bool,
        aborted: bool,
        dist: f32,
        dense_scale: f32,
    ) -> Step {
        let terminated = success || aborted;
        let mut reward = if success { 1.0 } else { 0.0 };
        if config.reward == Reward::Dense {
            // An abort is charged the steps it cut short, as if the robot stayed where it
            // stopped until the horizon: otherwise ending an episode early on the
            // obstacle would score better than trying until the horizon.
            let charged = if aborted {
                1 + spec.horizon.saturating_sub(t)
            } else {
                1
            };
            reward -= dense_scale * dist * charged as f32;
        }
        Step {
            reward,
            terminated,
            truncated: !terminated && t >= spec.horizon,
            success,
        }
    }
}

/// A single simulated environment.
///
/// `reset` and `step` write the observation into a caller buffer of length
/// `spec().obs_dim()`: no allocation per step.
pub trait Env: Send {
    fn spec(&self) -> &'static TaskSpec;
    /// Starts a new episode drawn from `seed`.
    fn reset(&mut self, seed: u64, obs: &mut [f32]);
    /// Advances one control step. Stepping after the episode ended keeps the state frozen
    /// and returns `truncated`/`terminated` again with zero reward. Call [`Env::reset`]
    /// first: a new environment's state is a fixed placeholder, not one the episodes'
    /// distribution draws (the Python environments refuse to step before a reset).
    fn step(&mut self, action: &[f32], obs: &mut [f32]) -> Step;
    /// Writes the current observation.
    fn observe(&self, obs: &mut [f32]);
    /// Control steps taken in this episode.
    fn t(&self) -> u32;
    /// Geometry of the current state for visualization (reuses `scene`'s buffers).
    fn scene(&self, scene: &mut Scene);
}

/// A scripted demonstrator. It acts from the observation (plus its own per-episode
/// choices, such as which side to go around), so it also works from Python.
pub trait Demonstrator: Send {
    /// Starts a new episode; draws the episode's strategy and noise from `seed`.
    fn reset(&mut self, seed: u64);
    /// Writes an action in `[-1, 1]` for `obs`.
    fn act(&mut self, obs: &[f32], action: &mut [f32]);
}

/// Creates an environment for `task`.
///
/// # Panics
/// When `config` holds an option the task would ignore ([`EnvConfig::check_for`]):
/// its data would be labelled with a variant ([`EnvConfig::robot_type`]) it does not
/// simulate. Callers taking options from users check them first.
pub fn make_env(task: TaskId, config: EnvConfig) -> Box<dyn Env> {
    if let Err(e) = config.check_for(task) {
        panic!("make_env: {e}");
    }
    match task {
        TaskId::ArmReach => Box::new(arm::ArmReach::new(config)),
        TaskId::Push => Box::new(push::Push::new(config)),
        TaskId::Maze => Box::new(maze::Maze::new(config)),
    }
}

/// The geometry `task`'s environment draws for a state with observation `obs` (the
/// same as `Env::scene` for that state): for viewing recorded episodes.
pub fn scene_from_observation(task: TaskId, obs: &[f32], scene: &mut Scene) {
    assert_eq!(
        obs.len(),
        task.spec().obs_dim(),
        "observation of {task} has {} values",
        task.spec().obs_dim()
    );
    match task {
        TaskId::ArmReach => arm::scene_from_observation(obs, scene),
        TaskId::Push => push::scene_from_observation(obs, scene),
        TaskId::Maze => maze::scene_from_observation(obs, scene),
    }
}

/// Creates the task's scripted demonstrator with its documented default imperfection.
pub fn make_demonstrator(task: TaskId) -> Box<dyn Demonstrator> {
    match task {
        TaskId::ArmReach => Box::new(arm::ArmExpert::default()),
        TaskId::Push => Box::new(push::PushExpert::default()),
        TaskId::Maze => Box::new(maze::MazeExpert::default()),
    }
}

/// Clamps an action component to `[-1, 1]`, mapping NaN to 0.
#[inline]
pub fn sanitize_action(a: f32) -> f32 {
    if a.is_nan() { 0.0 } else { a.clamp(-1.0, 1.0) }
}

/// One recorded episode, flat row-major arrays (the layout the dataset crate stores).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Trajectory {
    pub observations: Vec<f32>,
    pub next_observations: Vec<f32>,
    pub actions: Vec<f32>,
    pub rewards: Vec<f32>,
    pub terminated: Vec<bool>,
    pub truncated: Vec<bool>,
    pub success: Vec<bool>,
}

impl Trajectory {
    pub fn len(&self) -> usize {
        self.rewards.len()
    }
    pub fn is_empty(&self) -> bool {
        self.rewards.is_empty()
    }
    pub fn is_success(&self) -> bool {
        self.success.iter().any(|&s| s)
    }
}

/// The seed [`record_episode`] resets the demonstrator with for an episode seeded with
/// `episode_seed` (public so that other drivers, e.g. the Python bindings, can replay it).
pub fn demonstrator_seed(episode_seed: u64) -> u64 {
    episode_seed ^ 0xdeadbeef_u64.rotate_left(17)
}

/// Runs one episode of `demonstrator` in `env` from `seed` and records it.
///
/// The demonstrator's own randomness is drawn from a stream derived from `seed`
/// ([`demonstrator_seed`]), so an episode is reproducible from `seed` alone.
pub fn record_episode(
    env: &mut dyn Env,
    demonstrator: &mut dyn Demonstrator,
    seed: u64,
) -> Trajectory {
    let spec = env.spec();
    let (od, ad) = (spec.obs_dim(), spec.action_dim());
    let mut obs = vec![0.0; od];
    let mut next = vec![0.0; od];
    let mut action = vec![0.0; ad];
    let mut traj = Trajectory::default();
    env.reset(seed, &mut obs);
    demonstrator.reset(demonstrator_seed(seed));
    loop {
        demonstrator.act(&obs, &mut action);
        let step = env.step(&action, &mut next);
        traj.observations.extend_from_slice(&obs);
        traj.next_observations.extend_from_slice(&next);
        traj.actions
            .extend(action.iter().map(|&a| sanitize_action(a)));
        traj.rewards.push(step.reward);
        traj.terminated.push(step.terminated);
        traj.truncated.push(step.truncated);
        traj.success.push(step.success);
        if step.done() {
            return traj;
        }
        obs.copy_from_slice(&next);
    }
}
