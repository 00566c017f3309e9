//! The controller's ticks: what `controller run --rerun` records.
//!
//! The control thread copies each tick into a fixed-size frame and hands it to the
//! controller's recording thread without waiting (a full queue drops the frame and
//! counts it); that thread turns frames into [`TickView`]s for [`TickLogger::log`]. The
//! rerun SDK batches on its own thread; a viewer connection that stalls blocks
//! `log` once rerun's buffers fill, which holds up only the recording thread, not the
//! logger that writes the transition log and the dataset.

use crate::{log_scalars, log_scene, paths};
use anyhow::Result;
use rerun::{Color, RecordingStream};
use sim::{Scene, TaskId};

/// The serial link's error counters (cumulative over the run), read when the frame is
/// recorded: up to 256 ticks after the tick, so an error can show at an earlier tick than
/// the one it happened at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkView {
    pub crc_errors: u64,
    pub resyncs: u64,
    pub seq_lost: u64,
    pub queue_drops: u64,
    pub read_errors: u64,
}

/// One policy step.
#[derive(Clone, Copy, Debug)]
pub struct ActView<'a> {
    /// The observation acted on, `[O]`.
    pub obs: &'a [f32],
    /// The policy's action before the safety envelope, `[A]` (the teleop device's
    /// when `teleop`).
    pub policy_action: &'a [f32],
    /// The action came from the teleop device (`controller run --teleop`).
    pub teleop: bool,
    /// The action sent, `[A]`, policy units.
    pub action: &'a [f32],
    pub clamped: bool,
    pub rate_limited: bool,
    /// Candidates `[M, A]`: `num_base` base samples, then the edited ones.
    pub candidates: &'a [f32],
    pub num_base: usize,
    /// Q values of the sampled critics `[K, M]` (empty without a critic).
    pub q: &'a [f32],
    /// Index of the chosen candidate (`None`: no critic, the first base sample).
    pub selected: Option<usize>,
}

/// One tick of the control loop.
#[derive(Clone, Copy, Debug)]
pub struct TickView<'a> {
    pub tick: u64,
    /// Seconds since the run started.
    pub time_s: f64,
    pub episode: Option<u32>,
    /// The loop's phase (`running`, `safe_stop`, …).
    pub phase: &'a str,
    /// How late the loop woke after its deadline.
    pub jitter_us: f64,
    /// The tick's whole work, from waking to the end (an overrun when it and the
    /// jitter together exceed a period).
    pub work_us: f64,
    pub read_us: f64,
    /// Policy and command write times, when the tick acted.
    pub infer_us: Option<f64>,
    pub send_us: Option<f64>,
    pub act: Option<ActView<'a>>,
    pub link: LinkView,
}

/// Turns ticks into rerun entities (see the crate docs for the layout).
pub struct TickLogger {
    task: Option<TaskId>,
    obs_paths: Vec<String>,
    act_paths: Vec<String>,
    raw_paths: Vec<String>,
    scene: Scene,
    last_phase: String,
    /// Score labels, reused.
    labels: Vec<String>,
    /// Whether `policy/candidates` and `policy/selected` show a tick's points, which the
    /// viewer keeps drawing until they are cleared.
    shows_candidates: bool,
    shows_selected: bool,
}

fn base_color() -> Color {
    Color::from_rgb(70, 110, 220)
}
fn edited_color() -> Color {
    Color::from_rgb(230, 140, 40)
}
fn selected_color() -> Color {
    Color::from_rgb(40, 170, 80)
}

impl TickLogger {
    /// `task` draws the simulated task's scene from each observation (`None`: a robot
    /// without one), when the observation names are the task's: a real robot named
    /// `maze-bot` with 6 other observations is not drawn as the simulated maze.
    pub fn new(task: Option<TaskId>, obs_names: &[String], action_names: &[String]) -> Self {
        let task = task.filter(|t| t.spec().obs_names.iter().eq(obs_names.iter()));
        TickLogger {
            task,
            obs_paths: paths("observation.state", obs_names),
            act_paths: paths("action", action_names),
            raw_paths: paths("policy/raw_action", action_names),
            scene: Scene::default(),
            last_phase: String::new(),
            labels: vec![],
            shows_candidates: false,
            shows_selected: false,
        }
    }

    pub fn log(&mut self, rec: &RecordingStream, t: &TickView) -> Result<()> {
        rec.set_time_sequence("tick", t.tick as i64);
        rec.set_duration_secs("time", t.time_s);
        // Between episodes a tick belongs to none (not to the one that ended).
        match t.episode {
            Some(e) => rec.set_time_sequence("episode", e as i64),
            None => rec.disable_timeline("episode"),
        }
        if t.phase != self.last_phase {
            rec.log("safety/state", &rerun::TextLog::new(t.phase))?;
            self.last_phase = t.phase.to_string();
        }
        rec.log("timing/jitter_us", &rerun::Scalars::single(t.jitter_us))?;
        rec.log("timing/tick_us", &rerun::Scalars::single(t.work_us))?;
        rec.log("timing/read_us", &rerun::Scalars::single(t.read_us))?;
        if let Some(us) = t.infer_us {
            rec.log("timing/infer_us", &rerun::Scalars::single(us))?;
        }
        if let Some(us) = t.send_us {
            rec.log("timing/send_us", &rerun::Scalars::single(us))?;
        }
        let l = &t.link;
        for (name, v) in [
            ("link/crc_errors", l.crc_errors),
            ("link/resyncs", l.resyncs),
            ("link/seq_lost", l.seq_lost),
            ("link/queue_drops", l.queue_drops),
            ("link/read_errors", l.read_errors),
        ] {
            rec.log(name, &rerun::Scalars::single(v as f64))?;
        }
        match &t.act {
            Some(a) => self.log_act(rec, a)?,
            // Outside a running episode nothing drives the robot from the policy (an
            // episode's end, a safe stop, a reset): its last choice goes from the view
            // (it stayed drawn as the selected action through a safe stop). A running
            // tick that did not act (no fresh frame) keeps it: the command stands.
            None if t.phase != "running" => self.clear_choice(rec, true, true)?,
            None => {}
        }
        Ok(())
    }

    /// Clears the candidates and the selected point where shown.
    fn clear_choice(
        &mut self,
        rec: &RecordingStream,
        selected: bool,
        candidates: bool,
    ) -> Result<()> {
        if selected && self.shows_selected {
            rec.log("policy/selected", &rerun::Clear::flat())?;
            self.shows_selected = false;
        }
        if candidates && self.shows_candidates {
            rec.log("policy/candidates", &rerun::Clear::flat())?;
            self.shows_candidates = false;
        }
        Ok(())
    }

    fn log_act(&mut self, rec: &RecordingStream, a: &ActView) -> Result<()> {
        log_scalars(rec, &self.obs_paths, a.obs)?;
        log_scalars(rec, &self.act_paths, a.action)?;
        log_scalars(rec, &self.raw_paths, a.policy_action)?;
        rec.log(
            "safety/clamped",
            &rerun::Scalars::single(a.clamped as u8 as f64),
        )?;
        rec.log(
            "safety/rate_limited",
            &rerun::Scalars::single(a.rate_limited as u8 as f64),
        )?;
        rec.log("teleop", &rerun::Scalars::single(a.teleop as u8 as f64))?;
        if let Some(task) = self.task {
            sim::scene_from_observation(task, a.obs, &mut self.scene);
            log_scene(rec, &self.scene)?;
        }
        let ad = a.policy_action.len().max(1);
        let m = a.candidates.len() / ad;
        // A tick that acted without candidates (the teleop device's action) or whose
        // choice was cut clears the last ones, so that the view never shows a choice
        // that is not driving the robot.
        let selected = a.selected.filter(|&s| s < m);
        self.clear_choice(rec, selected.is_none(), m == 0)?;
        if m == 0 {
            return Ok(());
        }
        let k = a.q.len().checked_div(m).unwrap_or(0);
        // Score of a candidate: the minimum over the sampled critics (what selection
        // maximizes). None without critics (a `bc` bundle's one sample).
        let mut scores = vec![0.0; m];
        if k > 0 {
            shared_model::select::pessimistic_scores(&a.q[..k * m], m, &mut scores);
        }
        let score = |j: usize| scores[j];
        let point = |j: usize| {
            let c = &a.candidates[j * ad..(j + 1) * ad];
            // Negated like the scene's y, so that "up" agrees in the two views.
            [c[0], -c.get(1).copied().unwrap_or(0.0)]
        };
        self.labels.clear();
        for j in 0..m {
            let kind = if j < a.num_base { "b" } else { "e" };
            let idx = if j < a.num_base { j } else { j - a.num_base };
            self.labels.push(if k > 0 {
                format!("{kind}{idx} {:.3}", score(j))
            } else {
                format!("{kind}{idx}")
            });
        }
        rec.log(
            "policy/candidates",
            &rerun::Points2D::new((0..m).map(point))
                .with_colors((0..m).map(|j| {
                    if j < a.num_base {
                        base_color()
                    } else {
                        edited_color()
                    }
                }))
                .with_radii([0.02])
                .with_labels(self.labels.iter().map(String::as_str)),
        )?;
        self.shows_candidates = true;
        if let Some(s) = selected {
            self.shows_selected = true;
            rec.log(
                "policy/selected",
                &rerun::Points2D::new([point(s)])
                    .with_colors([selected_color()])
                    .with_radii([0.035]),
            )?;
            if k > 0 {
                rec.log(
                    "policy/q/selected",
                    &rerun::Scalars::single(score(s) as f64),
                )?;
            }
        }
        if k > 0 {
            let best = |r: std::ops::Range<usize>| r.map(score).fold(f32::NEG_INFINITY, f32::max);
            rec.log(
                "policy/q/best_base",
                &rerun::Scalars::single(best(0..a.num_base.min(m)) as f64),
            )?;
            if a.num_base < m {
                rec.log(
                    "policy/q/best_edit",
                    &rerun::Scalars::single(best(a.num_base..m) as f64),
                )?;
            }
            rec.log(
                "policy/q/spread",
                &rerun::Scalars::single(spread(a.q, k, m)),
            )?;
        }
        Ok(())
    }
}

/// Standard deviation over the `k` critics of each of the `m` candidates (`q` is
/// `[k, m]`), averaged over candidates; 0 with one critic.
pub fn spread(q: &[f32], k: usize, m: usize) -> f64 {
    if k < 2 || m == 0 {
        return 0.0;
    }
    let mut total = 0.0;
    for j in 0..m {
        let vals = (0..k).map(|c| q[c * m + j] as f64);
        let mean = vals.clone().sum::<f64>() / k as f64;
        let var = vals.map(|v| (v - mean).powi(2)).sum::<f64>() / k as f64;
        total += var.sqrt();
    }
    total / m as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_the_mean_standard_deviation_over_critics() {
        // Two critics, two candidates: |1-3|/2 = 1 and |5-5|/2 = 0.
        let q = [1.0, 5.0, 3.0, 5.0];
        assert!((spread(&q, 2, 2) - 0.5).abs() < 1e-12);
        assert_eq!(spread(&q[..2], 1, 2), 0.0);
    }

    /// The simulated scene is drawn only for the task's own observations: a robot
    /// whose name contains a task's, with as many observations of its own, gets none.
    #[test]
    fn a_scene_is_drawn_only_for_the_tasks_own_observations() {
        let spec = TaskId::Maze.spec();
        let own: Vec<String> = spec.obs_names.iter().map(|n| n.to_string()).collect();
        let foreign: Vec<String> = (0..own.len()).map(|i| format!("joint{i}")).collect();
        let acts = vec!["a".to_string(), "b".to_string()];
        assert_eq!(
            TickLogger::new(Some(TaskId::Maze), &own, &acts).task,
            Some(TaskId::Maze)
        );
        assert_eq!(
            TickLogger::new(Some(TaskId::Maze), &foreign, &acts).task,
            None
        );
    }
}
