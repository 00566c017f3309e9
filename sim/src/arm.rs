//! `arm-reach`: a two-link planar arm reaching a goal past an obstacle.
//!
//! ```text
//!            goal ●            The arm starts hanging down (q ≈ 0). The goal lies on the far
//!                 |            side (up), and the obstacle sits halfway between the base and
//!             ( obst )         the goal, so the arm cannot point straight at it: it must swing
//!                 |            around on the right (q1 > 0, elbow bent one way) or on the left
//!          base ◉              (q1 < 0, bent the other way). Demonstrations hold both modes;
//!                 \            their average (stay put) is useless, which is what makes a
//!                  ○ (ee)      unimodal Gaussian policy struggle here.
//! ```
//!
//! Angles: joint 1 is measured from the downward vertical (−y), counter-clockwise
//! positive; joint 2 relative to link 1. Link directions are `(sin θ, −cos θ)`.
//!
//! Observation (10): `q1/π, q2/π, q̇1/10, q̇2/10, ee_x, ee_y, goal_x, goal_y, obstacle_x,
//! obstacle_y` (angles in rad and speeds in rad/s before the scaling; positions in m). Action (2): joint position target offsets, `q_des = q +
//! 0.3 rad · a`, tracked by a torque-limited PD controller at the physics rate. The
//! target is taken from the measured `q` at every substep (as a firmware streaming
//! relative targets would), so the proportional term stays `KP · 0.3 rad · a` for the
//! whole control step: a damped torque command, not a position the arm settles at.
//! Success: end effector within 5 cm of the goal. Touching the obstacle (a link within
//! its radius plus the 2 cm link half-width) aborts the episode (terminated, reward 0).

use crate::{
    Demonstrator, Env, EnvConfig, Scene, Shape, ShapeKind, Step, TaskId, TaskSpec, rng::Rng,
    sanitize_action,
};
use std::f32::consts::PI;

pub const SPEC: TaskSpec = TaskSpec {
    id: TaskId::ArmReach,
    description: "Reach the goal with the arm's end effector, swinging around the obstacle without touching it.",
    obs_names: &[
        "q1",
        "q2",
        "qd1",
        "qd2",
        "ee_x",
        "ee_y",
        "goal_x",
        "goal_y",
        "obstacle_x",
        "obstacle_y",
    ],
    obs_low: &[-1.1, -1.0, -2.0, -2.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0],
    obs_high: &[1.1, 1.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
    action_names: &["dq1_target", "dq2_target"],
    horizon: 60,
    control_hz: 20,
    substeps: 10,
};

// Physical constants (SI).
/// Link length (m); both links.
pub const LINK_LEN: f32 = 0.5;
const LINK_MASS: f32 = 1.0;
/// Half the link's thickness, used for collisions (m).
pub const LINK_HALF_WIDTH: f32 = 0.02;
/// Obstacle disc radius (m).
pub const OBSTACLE_RADIUS: f32 = 0.09;
/// Success radius around the goal (m).
pub const GOAL_TOLERANCE: f32 = 0.05;
/// Largest joint-target offset an action of magnitude 1 commands (rad).
pub const MAX_TARGET_OFFSET: f32 = 0.3;
const Q1_LIMIT: f32 = 3.4;
const Q2_LIMIT: f32 = 2.6;
/// Joint speed limit (rad/s): a real joint's velocity saturation.
const QD_LIMIT: f32 = 20.0;
const KP: [f32; 2] = [30.0, 30.0];
const KD: [f32; 2] = [6.0, 2.0];
const TORQUE_LIMIT: [f32; 2] = [10.0, 5.0];
const JOINT_FRICTION: f32 = 0.1;
const GRAVITY: f32 = 9.81;
const PHYSICS_DT: f32 = 1.0 / (SPEC.control_hz * SPEC.substeps) as f32;

// Inertia terms of two uniform rods (see `mass_matrix`).
const LC: f32 = LINK_LEN / 2.0;
const ROD_INERTIA: f32 = LINK_MASS * LINK_LEN * LINK_LEN / 12.0;
const M11_CONST: f32 =
    2.0 * ROD_INERTIA + LINK_MASS * LC * LC + LINK_MASS * (LINK_LEN * LINK_LEN + LC * LC);
const M11_COS: f32 = 2.0 * LINK_MASS * LINK_LEN * LC;
const M12_CONST: f32 = ROD_INERTIA + LINK_MASS * LC * LC;
const M12_COS: f32 = LINK_MASS * LINK_LEN * LC;
const M22: f32 = ROD_INERTIA + LINK_MASS * LC * LC;
const CORIOLIS: f32 = LINK_MASS * LINK_LEN * LC;

/// Joint-space state of the arm and its physics (public for tests and tools).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ArmState {
    pub q: [f32; 2],
    pub qd: [f32; 2],
}

impl ArmState {
    /// Elbow and end-effector positions.
    pub fn kinematics(&self) -> ([f32; 2], [f32; 2]) {
        let (s1, c1) = self.q[0].sin_cos();
        let (s12, c12) = (self.q[0] + self.q[1]).sin_cos();
        let elbow = [LINK_LEN * s1, -LINK_LEN * c1];
        (
            elbow,
            [elbow[0] + LINK_LEN * s12, elbow[1] - LINK_LEN * c12],
        )
    }

    /// Gravity torques (vertical plane, q measured from hanging down).
    pub fn gravity_torque(&self) -> [f32; 2] {
        let s1 = self.q[0].sin();
        let s12 = (self.q[0] + self.q[1]).sin();
        let g2 = LINK_MASS * LC * GRAVITY * s12;
        [
            (LINK_MASS * LC + LINK_MASS * LINK_LEN) * GRAVITY * s1 + g2,
            g2,
        ]
    }

    /// Mass matrix `[M11, M12, M22]`.
    pub fn mass_matrix(&self) -> [f32; 3] {
        let c2 = self.q[1].cos();
        [M11_CONST + M11_COS * c2, M12_CONST + M12_COS * c2, M22]
    }

    /// Kinetic energy plus (when `gravity`) potential energy, zero hanging at rest (J).
    pub fn energy(&self, gravity: bool) -> f32 {
        let [m11, m12, m22] = self.mass_matrix();
        let [v1, v2] = self.qd;
        let kinetic = 0.5 * (m11 * v1 * v1 + 2.0 * m12 * v1 * v2 + m22 * v2 * v2);
        if !gravity {
            return kinetic;
        }
        let c1 = self.q[0].cos();
        let c12 = (self.q[0] + self.q[1]).cos();
        // Heights of the rods' centres relative to their lowest position.
        let h1 = LC * (1.0 - c1);
        let h2 = LINK_LEN * (1.0 - c1) + LC * (1.0 - c12);
        kinetic + LINK_MASS * GRAVITY * (h1 + h2)
    }

    /// One semi-implicit Euler step of the rigid-body dynamics under joint torques `tau`,
    /// with joint friction `friction` (N·m·s/rad). Joint limits are not applied here.
    pub fn integrate(&mut self, tau: [f32; 2], gravity: bool, friction: f32, dt: f32) {
        self.integrate_capped(tau, gravity, friction, f32::INFINITY, dt);
    }

    /// [`ArmState::integrate`] with the joint speeds saturating at `qd_limit` (rad/s)
    /// before they move the joints, so that no step moves a joint by more than
    /// `qd_limit · dt`.
    pub fn integrate_capped(
        &mut self,
        tau: [f32; 2],
        gravity: bool,
        friction: f32,
        qd_limit: f32,
        dt: f32,
    ) {
        let [m11, m12, m22] = self.mass_matrix();
        let h = CORIOLIS * self.q[1].sin();
        let [v1, v2] = self.qd;
        let g = if gravity {
            self.gravity_torque()
        } else {
            [0.0; 2]
        };
        let rhs1 = tau[0] - friction * v1 - g[0] + h * (2.0 * v1 * v2 + v2 * v2);
        let rhs2 = tau[1] - friction * v2 - g[1] - h * v1 * v1;
        let inv_det = 1.0 / (m11 * m22 - m12 * m12);
        let a1 = (m22 * rhs1 - m12 * rhs2) * inv_det;
        let a2 = (m11 * rhs2 - m12 * rhs1) * inv_det;
        self.qd[0] = (self.qd[0] + a1 * dt).clamp(-qd_limit, qd_limit);
        self.qd[1] = (self.qd[1] + a2 * dt).clamp(-qd_limit, qd_limit);
        self.q[0] += self.qd[0] * dt;
        self.q[1] += self.qd[1] * dt;
    }
}

/// Squared distance from point `p` to segment `a`–`b`.
fn segment_dist2(p: [f32; 2], a: [f32; 2], b: [f32; 2]) -> f32 {
    let d = [b[0] - a[0], b[1] - a[1]];
    let w = [p[0] - a[0], p[1] - a[1]];
    let t = ((w[0] * d[0] + w[1] * d[1]) / (d[0] * d[0] + d[1] * d[1] + 1e-12)).clamp(0.0, 1.0);
    let e = [w[0] - t * d[0], w[1] - t * d[1]];
    e[0] * e[0] + e[1] * e[1]
}

/// The `arm-reach` environment.
pub struct ArmReach {
    config: EnvConfig,
    state: ArmState,
    goal: [f32; 2],
    obstacle: [f32; 2],
    t: u32,
    done: bool,
    collided: bool,
}

impl ArmReach {
    pub fn new(config: EnvConfig) -> Self {
        ArmReach {
            config,
            state: ArmState::default(),
            goal: [0.0, 0.6],
            obstacle: [0.0, 0.3],
            t: 0,
            done: false,
            collided: false,
        }
    }

    pub fn state(&self) -> ArmState {
        self.state
    }

    pub fn goal(&self) -> [f32; 2] {
        self.goal
    }

    /// Whether the last episode ended on the obstacle.
    pub fn collided(&self) -> bool {
        self.collided
    }

    fn touches_obstacle(&self) -> bool {
        let (elbow, ee) = self.state.kinematics();
        let r = OBSTACLE_RADIUS + LINK_HALF_WIDTH;
        segment_dist2(self.obstacle, [0.0, 0.0], elbow) < r * r
            || segment_dist2(self.obstacle, elbow, ee) < r * r
    }

    fn goal_distance(&self) -> f32 {
        let (_, ee) = self.state.kinematics();
        ((ee[0] - self.goal[0]).powi(2) + (ee[1] - self.goal[1]).powi(2)).sqrt()
    }
}

impl Env for ArmReach {
    fn spec(&self) -> &'static TaskSpec {
        &SPEC
    }

    fn reset(&mut self, seed: u64, obs: &mut [f32]) {
        let mut rng = Rng::new(seed);
        // Goal: up, ±20° around the vertical, 0.55-0.8 m from the base.
        let psi = PI + rng.range(-0.35, 0.35);
        let r = rng.range(0.55, 0.8);
        self.goal = [r * psi.sin(), -r * psi.cos()];
        self.obstacle = [0.5 * self.goal[0], 0.5 * self.goal[1]];
        self.state = ArmState {
            q: [rng.range(-0.2, 0.2), rng.range(-0.3, 0.3)],
            qd: [0.0; 2],
        };
        self.t = 0;
        self.done = false;
        self.collided = false;
        self.observe(obs);
    }

    fn step(&mut self, action: &[f32], obs: &mut [f32]) -> Step {
        assert_eq!(action.len(), 2, "arm-reach takes 2 actions");
        if self.done {
            self.observe(obs);
            return Step {
                reward: 0.0,
                terminated: !self.truncated_end(),
                truncated: self.truncated_end(),
                success: false,
            };
        }
        let offset = [
            MAX_TARGET_OFFSET * sanitize_action(action[0]),
            MAX_TARGET_OFFSET * sanitize_action(action[1]),
        ];
        let gravity = self.config.gravity;
        for _ in 0..SPEC.substeps {
            // The target moves with the measured position, as in a firmware that streams
            // relative position targets; gravity compensation when the arm is vertical.
            let g = if gravity {
                self.state.gravity_torque()
            } else {
                [0.0; 2]
            };
            let mut tau = [0.0; 2];
            for j in 0..2 {
                tau[j] = (KP[j] * offset[j] - KD[j] * self.state.qd[j] + g[j])
                    .clamp(-TORQUE_LIMIT[j], TORQUE_LIMIT[j]);
            }
            self.state
                .integrate_capped(tau, gravity, JOINT_FRICTION, QD_LIMIT, PHYSICS_DT);
            let limits = [Q1_LIMIT, Q2_LIMIT];
            for j in 0..2 {
                if self.state.q[j].abs() > limits[j] {
                    self.state.q[j] = self.state.q[j].clamp(-limits[j], limits[j]);
                    if self.state.q[j] * self.state.qd[j] > 0.0 {
                        self.state.qd[j] = 0.0;
                    }
                }
            }
            if self.touches_obstacle() {
                self.collided = true;
                self.state.qd = [0.0; 2];
                break;
            }
        }
        self.t += 1;
        let dist = self.goal_distance();
        let success = !self.collided && dist < GOAL_TOLERANCE;
        let step = Step::score(
            &SPEC,
            &self.config,
            self.t,
            success,
            self.collided,
            dist,
            0.1,
        );
        self.done = step.done();
        self.observe(obs);
        step
    }

    fn observe(&self, obs: &mut [f32]) {
        let (_, ee) = self.state.kinematics();
        let s = &self.state;
        obs.copy_from_slice(&[
            s.q[0] / PI,
            s.q[1] / PI,
            s.qd[0] / 10.0,
            s.qd[1] / 10.0,
            ee[0],
            ee[1],
            self.goal[0],
            self.goal[1],
            self.obstacle[0],
            self.obstacle[1],
        ]);
    }

    fn t(&self) -> u32 {
        self.t
    }

    fn scene(&self, scene: &mut Scene) {
        let mut obs = [0.0; 10];
        self.observe(&mut obs);
        scene_from_observation(&obs, scene);
    }
}

/// The geometry of an observation (an observation holds the whole state that is
/// drawn): arm links, goal, obstacle.
pub fn scene_from_observation(obs: &[f32], scene: &mut Scene) {
    scene.clear();
    let state = ArmState {
        q: [obs[0] * PI, obs[1] * PI],
        qd: [0.0; 2],
    };
    let (elbow, ee) = state.kinematics();
    let w = 2.0 * LINK_HALF_WIDTH;
    scene.push(
        ShapeKind::Obstacle,
        Shape::Circle {
            x: obs[8],
            y: obs[9],
            r: OBSTACLE_RADIUS,
        },
    );
    scene.push(
        ShapeKind::Goal,
        Shape::Circle {
            x: obs[6],
            y: obs[7],
            r: GOAL_TOLERANCE,
        },
    );
    scene.push(
        ShapeKind::Robot,
        Shape::Segment {
            x0: 0.0,
            y0: 0.0,
            x1: elbow[0],
            y1: elbow[1],
            width: w,
        },
    );
    scene.push(
        ShapeKind::Robot,
        Shape::Segment {
            x0: elbow[0],
            y0: elbow[1],
            x1: ee[0],
            y1: ee[1],
            width: w,
        },
    );
}

impl ArmReach {
    fn truncated_end(&self) -> bool {
        !self.collided && self.goal_distance() >= GOAL_TOLERANCE
    }
}

/// Inverse kinematics: joint angles that put the end effector at `goal` with the elbow
/// bent to `side` (+1: swung around on the right, q1 > 0; −1: on the left, q1 < 0).
pub fn inverse_kinematics(goal: [f32; 2], side: f32) -> [f32; 2] {
    let r2 = goal[0] * goal[0] + goal[1] * goal[1];
    let c2 = ((r2 - 2.0 * LINK_LEN * LINK_LEN) / (2.0 * LINK_LEN * LINK_LEN)).clamp(-1.0, 1.0);
    let q2 = side * c2.acos();
    let beta = (LINK_LEN * q2.sin()).atan2(LINK_LEN + LINK_LEN * q2.cos());
    // Goal direction in the joint-1 convention, in [0, 2π).
    let mut psi = goal[0].atan2(-goal[1]);
    if psi < 0.0 {
        psi += 2.0 * PI;
    }
    let q1 = if side > 0.0 {
        psi - beta
    } else {
        psi - beta - 2.0 * PI
    };
    [q1, q2]
}

/// Scripted demonstrator for `arm-reach`.
///
/// Per episode it picks a side (50/50), a speed (60-100% of the largest target offset),
/// and with probability `hesitate_prob` first heads to the other side for a few steps
/// before changing its mind. It moves on a straight line in joint space to the inverse
/// kinematics solution of its side, with Gaussian action noise. Typical failures: noise
/// and hesitation swing a link into the obstacle, or the arm is still moving when time
/// runs out.
#[derive(Clone, Debug)]
pub struct ArmExpert {
    pub noise_std: f32,
    pub hesitate_prob: f32,
    rng: Rng,
    side: f32,
    speed: f32,
    hesitate_steps: u32,
    t: u32,
}

impl Default for ArmExpert {
    fn default() -> Self {
        ArmExpert {
            noise_std: 0.7,
            hesitate_prob: 0.3,
            rng: Rng::new(0),
            side: 1.0,
            speed: 1.0,
            hesitate_steps: 0,
            t: 0,
        }
    }
}

impl Demonstrator for ArmExpert {
    fn reset(&mut self, seed: u64) {
        self.rng = Rng::new(seed);
        self.side = self.rng.sign();
        self.speed = self.rng.range(0.6, 1.0);
        self.hesitate_steps = if self.rng.chance(self.hesitate_prob) {
            3 + self.rng.below(6)
        } else {
            0
        };
        self.t = 0;
    }

    fn act(&mut self, obs: &[f32], action: &mut [f32]) {
        let q = [obs[0] * PI, obs[1] * PI];
        let side = if self.t < self.hesitate_steps {
            -self.side
        } else {
            self.side
        };
        self.t += 1;
        let target = inverse_kinematics([obs[6], obs[7]], side);
        let delta = [target[0] - q[0], target[1] - q[1]];
        let largest = delta[0].abs().max(delta[1].abs()).max(1e-6);
        // Straight line in joint space: scale both joints together.
        let scale = (MAX_TARGET_OFFSET * self.speed / largest).min(1.0);
        for j in 0..2 {
            let a = delta[j] * scale / MAX_TARGET_OFFSET + self.noise_std * self.rng.normal();
            action[j] = sanitize_action(a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The speed cap applies before the position update: a joint at the cap, driven
    /// harder, moves by `QD_LIMIT · dt` in a step, not by the speed it would have had.
    #[test]
    fn a_capped_joint_moves_no_faster_than_the_cap() {
        let start = ArmState {
            q: [0.1, 0.2],
            qd: [QD_LIMIT - 0.01, -(QD_LIMIT - 0.01)],
        };
        let tau = [TORQUE_LIMIT[0], -TORQUE_LIMIT[1]];
        let mut capped = start;
        capped.integrate_capped(tau, true, JOINT_FRICTION, QD_LIMIT, PHYSICS_DT);
        let mut free = start;
        free.integrate(tau, true, JOINT_FRICTION, PHYSICS_DT);
        for j in 0..2 {
            let moved = (capped.q[j] - start.q[j]).abs();
            assert!(
                moved <= QD_LIMIT * PHYSICS_DT * 1.000_001,
                "joint {j}: {moved}"
            );
            assert_eq!(capped.qd[j].abs(), QD_LIMIT, "joint {j}");
            // Without the cap the same step goes further: the test can tell them apart.
            assert!((free.q[j] - start.q[j]).abs() > moved * 1.001, "joint {j}");
        }
    }

    #[test]
    fn inverse_kinematics_reaches_goal_on_both_sides() {
        for &goal in &[[0.1f32, 0.6], [-0.2, 0.7], [0.0, 0.55]] {
            for side in [-1.0, 1.0] {
                let q = inverse_kinematics(goal, side);
                let s = ArmState { q, qd: [0.0; 2] };
                let (_, ee) = s.kinematics();
                assert!((ee[0] - goal[0]).abs() < 1e-4 && (ee[1] - goal[1]).abs() < 1e-4);
                assert_eq!(q[0] > 0.0, side > 0.0, "side {side} gives q1 {}", q[0]);
                assert!(q[0].abs() < Q1_LIMIT && q[1].abs() < Q2_LIMIT);
            }
        }
    }

    #[test]
    fn both_goal_configurations_clear_the_obstacle() {
        let mut env = ArmReach::new(EnvConfig::default());
        let mut obs = [0.0; 10];
        for seed in 0..200 {
            env.reset(seed, &mut obs);
            for side in [-1.0, 1.0] {
                env.state.q = inverse_kinematics(env.goal, side);
                assert!(!env.touches_obstacle(), "seed {seed} side {side}");
            }
            // The averaged mode (arm straight at the goal) is blocked.
            env.state.q = [PI + (env.goal[0]).atan2(-env.goal[1]) - PI, 0.0];
            assert!(
                env.touches_obstacle(),
                "seed {seed}: straight arm should collide"
            );
        }
    }
}
