//! Two-speed EXPO: base candidates refreshed by a worker, edit + Q-select every tick.
//!
//! ```text
//! control thread (every tick)               worker thread (as fast as it can)
//!   publish newest obs ──────────────────►   copy newest obs
//!   copy newest candidates ◄──────────────   run the denoising chain for N candidates
//!   edit + critic + argmax on newest obs     publish candidates (swap, no allocation)
//! ```
//!
//! The candidates a tick edits were sampled for an observation up to one chain-time old;
//! the edit and the critic see the newest observation, which is what keeps the action
//! reactive. [`TwoSpeedPolicy::candidate_age`] reports how many observations old they
//! are, and [`CandidateAges`] sums that up over a run (`report.json`'s `two_speed`).
//! Candidates are only used for the episode they were sampled in: after
//! [`TwoSpeedPolicy::restart`] (a new episode) the previous episode's are not edited.
//! [`TwoSpeedPolicy::act`] waits for a usable set; [`TwoSpeedPolicy::try_act`], what the
//! control loop uses, does not wait: until the worker has sampled for the new episode
//! (one chain time), the loop holds (the robot has just been reset), and its rate and the
//! firmware's command watchdog are unaffected by the chain's length.
//!
//! Candidates too old are not acted on: a worker starved of CPU (a swap being prepared,
//! a loaded 2-core robot computer) or stopped would otherwise have every tick edit the
//! same plan, made for a state long gone (the edit moves an action by at most β). A
//! planning tick is an error, waiting or not, when the oldest observation its worker
//! has not sampled for was published more than [`MAX_CANDIDATE_AGE`] ago (an episode's
//! first set included): the control loop faults and stops safely. Timed from that
//! observation, not from the candidates' own, so that a slow control rate (a period
//! longer than the limit) does not fault a worker that keeps up. (Ticks that only
//! publish, playing a chunk or driven by a teleop device, do not check.)
//!
//! With action chunks the candidates are whole chunks (`[N, H·A]`): the tick that plans
//! a chunk edits and selects among them, and the ticks that play it only publish their
//! observation ([`TwoSpeedPolicy::observe`]), so the worker's candidates stay current.

use super::{Choice, GraphRows, Policy, PolicyOptions, load_networks};
use anyhow::{Context, Result, bail};
use shared_model::VerifiedBundle;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest the candidate worker may be behind ([`TwoSpeedPolicy`]'s `behind`: the
/// time since the first observation it has not sampled for was published) before a
/// tick refuses its candidates. A healthy worker is at most about two chain times
/// behind at any control rate; chains took 0.1-51 ms on the machines measured
/// (BENCHMARKS.md, `paper` on one core the slowest), so 500 ms is about ten of the
/// slowest: a stalled or stopped worker, or one starved of CPU for that long.
/// [`TwoSpeedPolicy::with_max_candidate_age`] changes it (a slower robot computer).
pub const MAX_CANDIDATE_AGE: Duration = Duration::from_millis(500);

/// Observations whose publication times are kept: 0.8 s of them at the highest control
/// rate a robot file may set (10 kHz), more than [`MAX_CANDIDATE_AGE`].
const PUBLISHED_RING: usize = 8192;

/// How old the base candidates were when the policy planned with them, in observations
/// published after the one they were sampled for (0: sampled for this very tick's). The
/// price of two-speed mode's latency, in `report.json` (`two_speed`).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct CandidateAges {
    /// Ticks that planned with worker candidates.
    pub plans: u64,
    pub mean_age: f64,
    pub max_age: u64,
    #[serde(skip)]
    age_sum: u64,
}

impl CandidateAges {
    fn record(&mut self, age: u64) {
        self.merge(&CandidateAges {
            plans: 1,
            mean_age: age as f64,
            max_age: age,
            age_sum: age,
        });
    }

    /// Adds `other`'s plans (a swapped-out policy's to the run's).
    pub fn merge(&mut self, other: &CandidateAges) {
        self.plans += other.plans;
        self.age_sum = self.age_sum.saturating_add(other.age_sum);
        self.max_age = self.max_age.max(other.max_age);
        self.mean_age = if self.plans == 0 {
            0.0
        } else {
            self.age_sum as f64 / self.plans as f64
        };
    }
}

struct Shared {
    /// Newest raw observation and its sequence number.
    obs: Mutex<(Vec<f32>, u64)>,
    obs_ready: Condvar,
    /// Newest candidates `[N, A]` (`A` a whole chunk) and the observation sequence
    /// they were sampled for (0 before the first set).
    candidates: Mutex<(Vec<f32>, u64)>,
    candidates_ready: Condvar,
    stop: AtomicBool,
    /// First worker error, reported by the next tick.
    error: Mutex<Option<String>>,
}

pub struct TwoSpeedPolicy {
    tick: Policy,
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
    obs_seq: u64,
    candidate_obs_seq: u64,
    /// The first observation whose candidates the next tick may use (see `restart`).
    fresh_from: u64,
    /// When each of the last [`PUBLISHED_RING`] observations was published, at
    /// `seq % PUBLISHED_RING`.
    published: Box<[Instant]>,
    max_age: Duration,
    ages: CandidateAges,
}

impl TwoSpeedPolicy {
    pub fn new(bundle: &VerifiedBundle, options: &PolicyOptions) -> Result<Self> {
        let m = &bundle.manifest;
        if m.selection.critic_subset == 0 {
            bail!("two-speed mode needs a critic to select with (this bundle has none)");
        }
        let rows = GraphRows::for_manifest(m);
        let mut tick = Policy::with_networks(
            m.clone(),
            load_networks(options.backend, bundle, rows)?,
            options,
        )?;
        tick.external_base = true;
        // The worker has its own networks and random stream.
        let mut worker_policy = Policy::with_networks(
            m.clone(),
            load_networks(options.backend, bundle, rows)?,
            &PolicyOptions {
                seed: options.seed ^ 0x2_5bee_d5ee_d5ee,
                ..options.clone()
            },
        )?;
        let (od, n, ad) = (
            m.observation.dim,
            m.selection.num_samples,
            m.action.chunk_dim(),
        );
        let shared = Arc::new(Shared {
            obs: Mutex::new((vec![0.0; od], 0)),
            obs_ready: Condvar::new(),
            candidates: Mutex::new((vec![0.0; n * ad], 0)),
            candidates_ready: Condvar::new(),
            stop: AtomicBool::new(false),
            error: Mutex::new(None),
        });
        let s = Arc::clone(&shared);
        let worker = std::thread::Builder::new()
            .name("expo-base-candidates".into())
            .spawn(move || {
                let mut local_obs = vec![0.0; od];
                let mut out = vec![0.0; n * ad];
                let mut seen = 0u64;
                while !s.stop.load(Ordering::Acquire) {
                    {
                        let mut guard = s.obs.lock().unwrap();
                        while guard.1 == seen && !s.stop.load(Ordering::Acquire) {
                            guard = s
                                .obs_ready
                                .wait_timeout(guard, Duration::from_millis(50))
                                .unwrap()
                                .0;
                        }
                        if s.stop.load(Ordering::Acquire) {
                            break;
                        }
                        local_obs.copy_from_slice(&guard.0);
                        seen = guard.1;
                    }
                    // Started before the run, this thread is not one of its threads
                    // (`realtime::RunScope`): its panic comes to the tick as an error.
                    let result = crate::robot_loop::realtime::catching_panics(|| {
                        worker_policy
                            .load_observation(&local_obs)
                            .and_then(|_| worker_policy.run_chain())
                    })
                    .unwrap_or_else(|msg| {
                        Err(anyhow::anyhow!("the candidate worker panicked: {msg}"))
                    });
                    if let Err(e) = result {
                        // Under the candidates lock, as the tick checks the error and
                        // waits: else the notice could fall between them and the tick
                        // sleep out its 100 ms wait.
                        let _c = s.candidates.lock().unwrap();
                        *s.error.lock().unwrap() = Some(format!("{e:#}"));
                        s.candidates_ready.notify_all();
                        break;
                    }
                    out.copy_from_slice(&worker_policy.x);
                    let mut c = s.candidates.lock().unwrap();
                    std::mem::swap(&mut c.0, &mut out);
                    c.1 = seen;
                    drop(c);
                    s.candidates_ready.notify_all();
                }
            })
            .context("spawning the candidate worker")?;
        Ok(TwoSpeedPolicy {
            tick,
            shared,
            worker: Some(worker),
            obs_seq: 0,
            candidate_obs_seq: 0,
            fresh_from: 1,
            published: vec![Instant::now(); PUBLISHED_RING].into_boxed_slice(),
            max_age: MAX_CANDIDATE_AGE,
            ages: CandidateAges::default(),
        })
    }

    /// This policy with another limit on its candidates' age than
    /// [`MAX_CANDIDATE_AGE`]. A worker is timed over the last 8,192 observations at most
    /// (0.8 s at 10 kHz): a limit longer than that span at the control rate is never
    /// reached.
    pub fn with_max_candidate_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// The tick-side policy (its candidates and Q values are the last action's).
    pub fn policy(&self) -> &Policy {
        &self.tick
    }

    /// Observations published since the candidates used by the last tick were sampled.
    pub fn candidate_age(&self) -> u64 {
        self.obs_seq - self.candidate_obs_seq
    }

    /// The ages of the candidates every plan so far used.
    pub fn candidate_ages(&self) -> CandidateAges {
        self.ages
    }

    /// A new episode: the next tick waits for candidates sampled for an observation
    /// published from now on (the robot was reset; the candidates of the last state
    /// before it are for another situation).
    pub fn restart(&mut self) {
        self.fresh_from = self.obs_seq + 1;
    }

    /// The worker stopped at an error (it stops at its first): every later plan fails
    /// with it, in this episode and any other.
    pub fn worker_failed(&self) -> bool {
        self.shared.error.lock().unwrap().is_some()
    }

    /// A worker error as the worker records it, for the tests of what follows one.
    #[cfg(test)]
    pub(crate) fn fail_worker(&self, why: &str) {
        let _c = self.shared.candidates.lock().unwrap();
        *self.shared.error.lock().unwrap() = Some(why.into());
    }

    /// Observations published to the worker so far.
    pub fn published(&self) -> u64 {
        self.obs_seq
    }

    /// Publishes `raw_obs` to the worker without acting: for ticks whose action comes
    /// from elsewhere (a teleop device), so that the candidates stay current for the
    /// first tick the policy acts again.
    pub fn observe(&mut self, raw_obs: &[f32]) -> Result<()> {
        // Validate (and normalize, once) before publishing, so a bad observation never
        // reaches the worker.
        self.tick.load_observation(raw_obs)?;
        self.obs_seq += 1;
        self.published[(self.obs_seq % PUBLISHED_RING as u64) as usize] = Instant::now();
        {
            let mut o = self.shared.obs.lock().unwrap();
            o.0.copy_from_slice(raw_obs);
            o.1 = self.obs_seq;
        }
        self.shared.obs_ready.notify_one();
        Ok(())
    }

    /// One tick: publish `raw_obs` to the worker, then edit + select on it, waiting
    /// for a usable candidate set if there is none yet.
    pub fn act(&mut self, raw_obs: &[f32], action: &mut [f32]) -> Result<Choice> {
        self.observe(raw_obs)?;
        let age = self.take_candidates(true)?.expect("waited for candidates");
        self.plan(age, action)
    }

    /// [`Self::act`] without waiting: `None` (and nothing written) while the worker has
    /// no candidates for this episode yet.
    pub fn try_act(&mut self, raw_obs: &[f32], action: &mut [f32]) -> Result<Option<Choice>> {
        self.observe(raw_obs)?;
        let Some(age) = self.take_candidates(false)? else {
            return Ok(None);
        };
        self.plan(age, action).map(Some)
    }

    /// Edits and selects among the candidates taken, `age` observations old; counted
    /// once the plan succeeded (a failed one made no command).
    fn plan(&mut self, age: u64, action: &mut [f32]) -> Result<Choice> {
        let choice = self.tick.act_loaded(action, Instant::now())?;
        self.ages.record(age);
        Ok(choice)
    }

    /// How long the worker has been behind when its newest set is for observation
    /// `sampled`: since the first observation it has not sampled for (from this
    /// episode's first on) was published; zero when there is none. A healthy worker is
    /// at most about two chain times behind, whatever the control rate.
    fn behind(&self, sampled: u64, now: Instant) -> Duration {
        let first = sampled.max(self.fresh_from - 1) + 1;
        if first > self.obs_seq {
            return Duration::ZERO;
        }
        // Older than the ring holds: its oldest entry, a lower bound (PUBLISHED_RING
        // periods, 0.8 s even at 10 kHz).
        let first = first.max((self.obs_seq + 1).saturating_sub(PUBLISHED_RING as u64));
        now.saturating_duration_since(self.published[(first % PUBLISHED_RING as u64) as usize])
    }

    /// Copies the newest candidates for the tick if they are usable (sampled for an
    /// observation from `fresh_from` on), waiting for them when `wait`; their age in
    /// observations, `None` if there are none yet. A worker behind by more than
    /// `max_age` ([`Self::behind`]) is an error, waiting or not.
    fn take_candidates(&mut self, wait: bool) -> Result<Option<u64>> {
        let mut c = self.shared.candidates.lock().unwrap();
        loop {
            // First: a worker that failed is named as such, not as one behind.
            if let Some(e) = self.shared.error.lock().unwrap().clone() {
                bail!("candidate worker failed: {e}");
            }
            // (Before the first set, c.1 is 0 and fresh_from at least 1.)
            let usable = c.1 >= self.fresh_from;
            let behind = self.behind(c.1, Instant::now());
            if behind > self.max_age {
                let sampled = c.1;
                drop(c);
                if usable {
                    bail!(
                        "the candidate worker fell behind: its newest base candidates are for \
                         an observation {} observations old, and it has sampled for none \
                         since in {} ms (limit {} ms): it is stalled or starved of CPU",
                        self.obs_seq - sampled,
                        behind.as_millis(),
                        self.max_age.as_millis()
                    );
                }
                bail!(
                    "the candidate worker has sampled nothing for this episode in {} ms \
                     (limit {} ms): it is stalled or starved of CPU",
                    behind.as_millis(),
                    self.max_age.as_millis()
                );
            }
            if usable {
                break;
            }
            if !wait {
                return Ok(None);
            }
            c = self
                .shared
                .candidates_ready
                .wait_timeout(c, Duration::from_millis(100))
                .unwrap()
                .0;
        }
        let n = c.0.len();
        self.tick.candidates[..n].copy_from_slice(&c.0);
        self.candidate_obs_seq = c.1;
        drop(c);
        if let Some(e) = self.shared.error.lock().unwrap().clone() {
            bail!("candidate worker failed: {e}");
        }
        Ok(Some(self.candidate_age()))
    }
}

impl Drop for TwoSpeedPolicy {
    /// Stops the worker without waiting for it: a bundle swap drops the old policy on
    /// the control thread, which must not wait out a chain in progress (up to 51 ms at
    /// the `paper` preset). The worker ends after that chain, on its own. `stop` is set
    /// under the observation lock, so a worker between its `stop` check and its wait
    /// cannot miss the wake-up and sleep out its 50 ms timeout.
    fn drop(&mut self) {
        {
            let _obs = self.shared.obs.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.stop.store(true, Ordering::Release);
            self.shared.obs_ready.notify_all();
        }
        // Detached: the handle's drop does not join.
        self.worker.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Backend;
    use shared_model::manifest::{SigningKey, Trust, load_bundle};
    use shared_model::synthetic::SyntheticSpec;

    fn two_speed(dir: &std::path::Path) -> TwoSpeedPolicy {
        let key = SigningKey::from_bytes(&[3; 32]);
        SyntheticSpec::cpu().write(dir, 5, Some(&key)).unwrap();
        let b = load_bundle(dir, &Trust::Key(key.verifying_key())).unwrap();
        let options = PolicyOptions {
            backend: Backend::Native,
            executed_steps: None,
            seed: 1,
        };
        TwoSpeedPolicy::new(&b, &options).unwrap()
    }

    fn obs(i: usize) -> Vec<f32> {
        (0..10).map(|j| ((i * 7 + j) as f32 * 0.37).sin()).collect()
    }

    /// A policy with `max_age` that has acted once (the worker sampled for it).
    fn acted_once(dir: &std::path::Path, max_age: Duration) -> TwoSpeedPolicy {
        let mut two = two_speed(dir).with_max_candidate_age(max_age);
        two.act(&obs(0), &mut [0.0; 2]).unwrap();
        two
    }

    /// A policy whose worker stalled after its first set, at a new episode's start.
    fn stalled_at_an_episode_start(dir: &std::path::Path) -> TwoSpeedPolicy {
        let mut two = acted_once(dir, Duration::from_millis(40));
        stall(&two);
        two.restart();
        two
    }

    /// Stops the worker as a stall would: it samples nothing more.
    fn stall(two: &TwoSpeedPolicy) {
        let _obs = two.shared.obs.lock().unwrap();
        two.shared.stop.store(true, Ordering::Release);
        two.shared.obs_ready.notify_all();
    }

    /// A stalled worker's last candidates are not acted on once older than the limit:
    /// every tick would edit a plan made for a state long gone.
    #[test]
    fn candidates_older_than_the_limit_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut two = acted_once(dir.path(), Duration::from_millis(40));
        let mut a = [0.0; 2];
        stall(&two);
        // Within the limit, the last set still serves.
        assert!(two.try_act(&obs(1), &mut a).unwrap().is_some());
        std::thread::sleep(Duration::from_millis(60));
        let e = two.try_act(&obs(2), &mut a).unwrap_err().to_string();
        assert!(
            e.contains("fell behind") && e.contains("limit 40 ms"),
            "{e}"
        );
        assert_eq!(
            two.candidate_ages().plans,
            2,
            "the refused tick planned nothing"
        );
    }

    /// A worker that samples nothing for a new episode holds its first ticks only as
    /// long as the limit, then faults (it held the robot for good before).
    #[test]
    fn an_episode_without_candidates_faults_after_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut two = stalled_at_an_episode_start(dir.path());
        let mut a = [0.0; 2];
        assert!(two.try_act(&obs(1), &mut a).unwrap().is_none());
        std::thread::sleep(Duration::from_millis(60));
        let e = two.try_act(&obs(2), &mut a).unwrap_err().to_string();
        assert!(e.contains("sampled nothing for this episode"), "{e}");
    }

    /// A worker that keeps up is never behind, however slow the control rate: a period
    /// longer than the limit faulted every plan when the age was timed from the
    /// candidates' own observation (one period old at every plan).
    #[test]
    fn a_worker_that_keeps_up_at_a_slow_rate_is_not_behind() {
        let dir = tempfile::tempdir().unwrap();
        let mut two = acted_once(dir.path(), Duration::from_millis(40));
        let mut a = [0.0; 2];
        for i in 1..4 {
            // One period of 80 ms: the worker samples the last observation meanwhile.
            std::thread::sleep(Duration::from_millis(80));
            two.try_act(&obs(i), &mut a).unwrap().expect("candidates");
        }
    }

    /// The blocking `act` gives up on a stalled worker after the limit (it waited for
    /// ever for an episode's first set).
    #[test]
    fn act_gives_up_on_a_stalled_worker() {
        let dir = tempfile::tempdir().unwrap();
        let mut two = stalled_at_an_episode_start(dir.path());
        let e = two.act(&obs(1), &mut [0.0; 2]).unwrap_err().to_string();
        assert!(e.contains("sampled nothing for this episode"), "{e}");
    }

    /// A plan that failed made no command and is not counted in `report.json`.
    #[test]
    fn a_failed_plan_is_not_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut two = two_speed(dir.path());
        let mut a = [0.0; 2];
        two.act(&obs(0), &mut a).unwrap();
        assert_eq!(two.candidate_ages().plans, 1);
        // A buffer of the wrong size fails after the candidates were taken.
        assert!(two.act(&obs(1), &mut [0.0; 3]).is_err());
        assert!(two.try_act(&obs(2), &mut [0.0; 3]).is_err());
        assert_eq!(two.candidate_ages().plans, 1);
    }
}
