//! `maze`: a point-mass robot navigates a maze to a goal (AntMaze-like, sparse reward).
//!
//! ```text
//!   row 0  ###########      Cells are 1 m squares; x grows to the right from the left
//!   row 1  #....G....#      edge, y grows upwards from the bottom edge. The robot starts
//!   row 2  #.###.###.#      at S and must reach G. Four routes: outer left/right (12 m)
//!   row 3  #.#.....#.#      and inner left/right (8 m). Heading straight up from S hits
//!   row 4  #.#.###.#.#      a wall, and the average of left and right is exactly that.
//!   row 5  #....S....#
//!   row 6  ###########
//! ```
//!
//! Observation (6): `x, y, vx, vy, goal_x, goal_y` (m, m/s). Action (2): velocity
//! command, `v_des = 1.5 m/s · a`, reached with a 4 m/s² acceleration limit.
//! Success: within 0.3 m of the goal.

use crate::{
    Demonstrator, Env, EnvConfig, Scene, Shape, ShapeKind, Step, TaskId, TaskSpec, rng::Rng,
    sanitize_action,
};

pub const SPEC: TaskSpec = TaskSpec {
    id: TaskId::Maze,
    description: "Drive the robot through the maze to the goal.",
    obs_names: &["x", "y", "vx", "vy", "goal_x", "goal_y"],
    obs_low: &[0.0, 0.0, -1.5, -1.5, 0.0, 0.0],
    obs_high: &[11.0, 7.0, 1.5, 1.5, 11.0, 7.0],
    action_names: &["vx_command", "vy_command"],
    horizon: 150,
    control_hz: 10,
    substeps: 5,
};

/// The maze, row 0 at the top. `#` wall, `.` free, `S` start cell, `G` goal cell.
pub const LAYOUT: [&str; 7] = [
    "###########",
    "#....G....#",
    "#.###.###.#",
    "#.#.....#.#",
    "#.#.###.#.#",
    "#....S....#",
    "###########",
];
pub const ROWS: usize = LAYOUT.len();
pub const COLS: usize = 11;
const CELLS: usize = ROWS * COLS;
pub const ROBOT_RADIUS: f32 = 0.15;
pub const GOAL_TOLERANCE: f32 = 0.3;
/// Speed for an action of magnitude 1 (m/s).
pub const MAX_SPEED: f32 = 1.5;
const MAX_ACCEL: f32 = 4.0;
const PHYSICS_DT: f32 = 1.0 / (SPEC.control_hz * SPEC.substeps) as f32;
/// Via cells (row, col) that define the four routes: outer left, inner left, inner
/// right, outer right.
pub const ROUTE_VIA: [(usize, usize); 4] = [(3, 1), (3, 3), (3, 7), (3, 9)];

const fn layout_byte(row: usize, col: usize) -> u8 {
    LAYOUT[row].as_bytes()[col]
}

/// Whether cell (row, col) is a wall; outside the grid counts as wall.
pub fn is_wall(row: isize, col: isize) -> bool {
    if row < 0 || col < 0 || row >= ROWS as isize || col >= COLS as isize {
        return true;
    }
    layout_byte(row as usize, col as usize) == b'#'
}

fn find(c: u8) -> (usize, usize) {
    for r in 0..ROWS {
        for k in 0..COLS {
            if layout_byte(r, k) == c {
                return (r, k);
            }
        }
    }
    unreachable!("layout has no '{}'", c as char)
}

/// Centre of cell (row, col) in world coordinates.
pub fn cell_center(row: usize, col: usize) -> [f32; 2] {
    [col as f32 + 0.5, (ROWS - 1 - row) as f32 + 0.5]
}

/// Cell (row, col) containing world point `p`.
pub fn cell_of(p: [f32; 2]) -> (isize, isize) {
    ((ROWS as f32 - p[1]).floor() as isize, p[0].floor() as isize)
}

/// Pushes the robot disc out of any wall cell it overlaps and removes the velocity
/// component into that wall, so the robot slides along walls.
fn collide_walls(p: &mut [f32; 2], v: &mut [f32; 2]) {
    let (row, col) = cell_of(*p);
    for dr in -1..=1 {
        for dc in -1..=1 {
            let (r, c) = (row + dr, col + dc);
            if !is_wall(r, c) {
                continue;
            }
            // The cell's rectangle in world coordinates.
            let x0 = c as f32;
            let y0 = (ROWS as isize - 1 - r) as f32;
            let closest = [p[0].clamp(x0, x0 + 1.0), p[1].clamp(y0, y0 + 1.0)];
            let d = [p[0] - closest[0], p[1] - closest[1]];
            let dist2 = d[0] * d[0] + d[1] * d[1];
            if dist2 >= ROBOT_RADIUS * ROBOT_RADIUS {
                continue;
            }
            let dist = dist2.sqrt();
            // Centre inside the wall cannot happen at our step sizes (< radius per step);
            // fall back to pushing up if it ever does.
            let n = if dist > 1e-6 {
                [d[0] / dist, d[1] / dist]
            } else {
                [0.0, 1.0]
            };
            let depth = ROBOT_RADIUS - dist;
            p[0] += n[0] * depth;
            p[1] += n[1] * depth;
            let vn = v[0] * n[0] + v[1] * n[1];
            if vn < 0.0 {
                v[0] -= vn * n[0];
                v[1] -= vn * n[1];
            }
        }
    }
}

/// Distance from `p` to the nearest wall surface; inside a wall, minus the depth into
/// its cell (the distance to that cell's nearest edge).
pub fn wall_clearance(p: [f32; 2]) -> f32 {
    let mut best = f32::INFINITY;
    for r in 0..ROWS as isize {
        for c in 0..COLS as isize {
            if !is_wall(r, c) {
                continue;
            }
            let x0 = c as f32;
            let y0 = (ROWS as isize - 1 - r) as f32;
            let closest = [p[0].clamp(x0, x0 + 1.0), p[1].clamp(y0, y0 + 1.0)];
            let d = ((p[0] - closest[0]).powi(2) + (p[1] - closest[1]).powi(2)).sqrt();
            let inside = p[0] > x0 && p[0] < x0 + 1.0 && p[1] > y0 && p[1] < y0 + 1.0;
            let depth = (p[0] - x0)
                .min(x0 + 1.0 - p[0])
                .min(p[1] - y0)
                .min(y0 + 1.0 - p[1]);
            best = best.min(if inside { -depth } else { d });
        }
    }
    best
}

/// The `maze` environment.
pub struct Maze {
    config: EnvConfig,
    pos: [f32; 2],
    vel: [f32; 2],
    goal: [f32; 2],
    t: u32,
    ended: Option<Step>,
}

impl Maze {
    pub fn new(config: EnvConfig) -> Self {
        Maze {
            config,
            pos: [5.5, 1.5],
            vel: [0.0; 2],
            goal: [5.5, 5.5],
            t: 0,
            ended: None,
        }
    }

    pub fn position(&self) -> [f32; 2] {
        self.pos
    }

    fn goal_distance(&self) -> f32 {
        ((self.pos[0] - self.goal[0]).powi(2) + (self.pos[1] - self.goal[1]).powi(2)).sqrt()
    }
}

impl Env for Maze {
    fn spec(&self) -> &'static TaskSpec {
        &SPEC
    }

    fn reset(&mut self, seed: u64, obs: &mut [f32]) {
        let mut rng = Rng::new(seed);
        let (sr, sc) = find(b'S');
        let (gr, gc) = find(b'G');
        let s = cell_center(sr, sc);
        let g = cell_center(gr, gc);
        self.pos = [s[0] + rng.range(-0.2, 0.2), s[1] + rng.range(-0.2, 0.2)];
        self.goal = [g[0] + rng.range(-0.2, 0.2), g[1] + rng.range(-0.2, 0.2)];
        self.vel = [0.0; 2];
        self.t = 0;
        self.ended = None;
        self.observe(obs);
    }

    fn step(&mut self, action: &[f32], obs: &mut [f32]) -> Step {
        assert_eq!(action.len(), 2, "maze takes 2 actions");
        if let Some(end) = self.ended {
            self.observe(obs);
            return Step {
                reward: 0.0,
                success: false,
                ..end
            };
        }
        let v_cmd = [
            MAX_SPEED * sanitize_action(action[0]),
            MAX_SPEED * sanitize_action(action[1]),
        ];
        let dv_max = MAX_ACCEL * PHYSICS_DT;
        for _ in 0..SPEC.substeps {
            let mut dv = [v_cmd[0] - self.vel[0], v_cmd[1] - self.vel[1]];
            let n = (dv[0] * dv[0] + dv[1] * dv[1]).sqrt();
            if n > dv_max {
                dv = [dv[0] * dv_max / n, dv[1] * dv_max / n];
            }
            self.vel[0] += dv[0];
            self.vel[1] += dv[1];
            self.pos[0] += self.vel[0] * PHYSICS_DT;
            self.pos[1] += self.vel[1] * PHYSICS_DT;
            collide_walls(&mut self.pos, &mut self.vel);
            // Sliding along a wall's corner turns the velocity: one axis can gain what
            // the other loses (up to 1.5·√2 at full diagonal speed). The drive is
            // limited per axis, and the observation bounds say so.
            for v in &mut self.vel {
                *v = v.clamp(-MAX_SPEED, MAX_SPEED);
            }
        }
        self.t += 1;
        let dist = self.goal_distance();
        let success = dist < GOAL_TOLERANCE;
        let step = Step::score(&SPEC, &self.config, self.t, success, false, dist, 0.02);
        if step.done() {
            self.ended = Some(step);
        }
        self.observe(obs);
        step
    }

    fn observe(&self, obs: &mut [f32]) {
        obs.copy_from_slice(&[
            self.pos[0],
            self.pos[1],
            self.vel[0],
            self.vel[1],
            self.goal[0],
            self.goal[1],
        ]);
    }

    fn t(&self) -> u32 {
        self.t
    }

    fn scene(&self, scene: &mut Scene) {
        let mut obs = [0.0; 6];
        self.observe(&mut obs);
        scene_from_observation(&obs, scene);
    }
}

/// The geometry of an observation: walls (the layout is fixed), goal, robot.
pub fn scene_from_observation(obs: &[f32], scene: &mut Scene) {
    scene.clear();
    for r in 0..ROWS {
        for c in 0..COLS {
            if is_wall(r as isize, c as isize) {
                let y0 = (ROWS - 1 - r) as f32;
                scene.push(
                    ShapeKind::Wall,
                    Shape::Rect {
                        x0: c as f32,
                        y0,
                        x1: c as f32 + 1.0,
                        y1: y0 + 1.0,
                    },
                );
            }
        }
    }
    scene.push(
        ShapeKind::Goal,
        Shape::Circle {
            x: obs[4],
            y: obs[5],
            r: GOAL_TOLERANCE,
        },
    );
    scene.push(
        ShapeKind::Robot,
        Shape::Circle {
            x: obs[0],
            y: obs[1],
            r: ROBOT_RADIUS,
        },
    );
}

/// Breadth-first distances (in cells) from every free cell to `(row, col)`;
/// `u8::MAX` for walls and unreachable cells.
fn distance_field(row: usize, col: usize) -> [u8; CELLS] {
    let mut dist = [u8::MAX; CELLS];
    let mut queue = [0usize; CELLS];
    let (mut head, mut tail) = (0, 0);
    dist[row * COLS + col] = 0;
    queue[tail] = row * COLS + col;
    tail += 1;
    while head < tail {
        let i = queue[head];
        head += 1;
        let (r, c) = ((i / COLS) as isize, (i % COLS) as isize);
        for (dr, dc) in [(-1, 0), (1, 0), (0, -1), (0, 1)] {
            let (nr, nc) = (r + dr, c + dc);
            if is_wall(nr, nc) {
                continue;
            }
            let j = nr as usize * COLS + nc as usize;
            if dist[j] == u8::MAX {
                dist[j] = dist[i] + 1;
                queue[tail] = j;
                tail += 1;
            }
        }
    }
    dist
}

/// Scripted demonstrator for `maze`.
///
/// Per episode it picks one of the four routes uniformly and a speed (40-100% of the
/// maximum). It follows breadth-first distance fields, first to the route's via cell,
/// then to the goal cell, steering at the next cell's centre (the goal itself in the
/// goal cell). Gaussian action noise and occasional distractions (a few steps of a random
/// command) cost time; slow outer routes often time out.
#[derive(Clone, Debug)]
pub struct MazeExpert {
    pub noise_std: f32,
    pub distraction_prob: f32,
    rng: Rng,
    via_fields: [[u8; CELLS]; 4],
    goal_field: [u8; CELLS],
    route: usize,
    reached_via: bool,
    speed: f32,
    distracted: u32,
    distraction: [f32; 2],
}

impl Default for MazeExpert {
    fn default() -> Self {
        let (gr, gc) = find(b'G');
        MazeExpert {
            noise_std: 0.7,
            distraction_prob: 0.05,
            rng: Rng::new(0),
            via_fields: ROUTE_VIA.map(|(r, c)| distance_field(r, c)),
            goal_field: distance_field(gr, gc),
            route: 0,
            reached_via: false,
            speed: 1.0,
            distracted: 0,
            distraction: [0.0; 2],
        }
    }
}

impl MazeExpert {
    /// The route (index into [`ROUTE_VIA`]) chosen for this episode.
    pub fn route(&self) -> usize {
        self.route
    }

    /// The neighbouring cell one step down `field` from `(row, col)`.
    fn next_cell(field: &[u8; CELLS], row: isize, col: isize) -> Option<(usize, usize)> {
        if is_wall(row, col) {
            return None;
        }
        let here = field[row as usize * COLS + col as usize];
        [(-1, 0), (1, 0), (0, -1), (0, 1)]
            .into_iter()
            .map(|(dr, dc)| (row + dr, col + dc))
            .filter(|&(r, c)| !is_wall(r, c))
            .map(|(r, c)| (r as usize, c as usize))
            .find(|&(r, c)| field[r * COLS + c] < here)
    }
}

impl Demonstrator for MazeExpert {
    fn reset(&mut self, seed: u64) {
        self.rng = Rng::new(seed);
        self.route = self.rng.below(4) as usize;
        self.speed = self.rng.range(0.4, 1.0);
        self.reached_via = false;
        self.distracted = 0;
    }

    fn act(&mut self, obs: &[f32], action: &mut [f32]) {
        let pos = [obs[0], obs[1]];
        let goal = [obs[4], obs[5]];
        let (row, col) = cell_of(pos);
        if self.distracted == 0 && self.rng.chance(self.distraction_prob) {
            self.distracted = 3 + self.rng.below(5);
            self.distraction = [self.rng.range(-1.0, 1.0), self.rng.range(-1.0, 1.0)];
        }
        let mut dir = if self.distracted > 0 {
            self.distracted -= 1;
            self.distraction
        } else {
            let (vr, vc) = ROUTE_VIA[self.route];
            if (row, col) == (vr as isize, vc as isize) {
                self.reached_via = true;
            }
            let field = if self.reached_via {
                &self.goal_field
            } else {
                &self.via_fields[self.route]
            };
            let aim = match Self::next_cell(field, row, col) {
                Some((r, c)) => cell_center(r, c),
                // In the goal (or via) cell, or pushed into a wall cell: aim at the goal.
                None if self.reached_via => goal,
                None => {
                    let (r, c) = ROUTE_VIA[self.route];
                    cell_center(r, c)
                }
            };
            let d = [aim[0] - pos[0], aim[1] - pos[1]];
            let n = (d[0] * d[0] + d[1] * d[1]).sqrt().max(1e-6);
            // Slow down on the final approach.
            let k = self.speed * (n / 0.5).min(1.0) / n;
            [d[0] * k, d[1] * k]
        };
        for d in dir.iter_mut() {
            *d += self.noise_std * self.rng.normal();
        }
        action[0] = sanitize_action(dir[0]);
        action[1] = sanitize_action(dir[1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Negative inside a wall, as documented: it was −0.0, which is not below 0.
    #[test]
    fn clearance_is_negative_inside_a_wall() {
        let (r, c) = (0..ROWS as isize)
            .flat_map(|r| (0..COLS as isize).map(move |c| (r, c)))
            .find(|&(r, c)| is_wall(r, c))
            .expect("a wall cell");
        let (x0, y0) = (c as f32, (ROWS as isize - 1 - r) as f32);
        assert_eq!(wall_clearance([x0 + 0.5, y0 + 0.5]), -0.5);
        assert!((wall_clearance([x0 + 0.1, y0 + 0.5]) + 0.1).abs() < 1e-6);
    }

    #[test]
    fn four_distinct_routes_reach_the_goal() {
        let (gr, gc) = find(b'G');
        let (sr, sc) = find(b'S');
        let goal = distance_field(gr, gc);
        assert_eq!(
            goal[sr * COLS + sc],
            8,
            "shortest route is the inner one (8 cells)"
        );
        for (r, c) in ROUTE_VIA {
            let via = distance_field(r, c);
            assert!(via[sr * COLS + sc] < u8::MAX && goal[r * COLS + c] < u8::MAX);
        }
        // Straight up from the start is a wall.
        assert!(is_wall(sr as isize - 1, sc as isize));
    }

    #[test]
    fn cell_coordinates_round_trip() {
        for r in 0..ROWS {
            for c in 0..COLS {
                assert_eq!(cell_of(cell_center(r, c)), (r as isize, c as isize));
            }
        }
    }
}
