//! Per-tick recordings for the rerun viewer (`controller run --rerun FILE` or
//! `--rerun-connect ADDR`, cargo feature `viz`).
//!
//! ```text
//!  control thread ── end of tick: copy TickFrame ──try_send──► bounded channel
//!   (fixed size, no allocation; a full channel drops the frame, counted in
//!    report.viz_drops)                                               │
//!                                            recording thread (of the logger) ──
//!                                            viz::tick::TickLogger ──► rerun SDK
//!                                            (batches on its own thread) ──► .rrd / viewer
//! ```
//!
//! The frame types are always compiled, so the control thread's code is the same with
//! and without the feature; only the consumer ([`open_sink`]) needs rerun.

use super::link::LinkCounters;
use firmware_config::protocol::{MAX_ACT, MAX_OBS};
use std::path::PathBuf;

/// Candidates recorded per tick: N + n_edit of the paper preset is 16; more are cut.
pub const MAX_CANDIDATES: usize = 32;
/// Sampled critics recorded per tick (EXPO samples 2 of 10); more are cut.
pub const MAX_CRITICS: usize = 16;
/// Frames waiting for the logger thread: about half a second at 500 Hz.
pub const QUEUE: usize = 256;

/// Where the recording goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RerunTarget {
    File(PathBuf),
    /// A viewer's address (`HOST:PORT` or a `rerun+http://` URL).
    Connect(String),
}

/// A policy step, copied out of the policy's buffers.
#[derive(Clone, Copy, Debug)]
pub struct ActFrame {
    pub od: u8,
    pub ad: u8,
    pub obs: [f32; MAX_OBS],
    pub policy_action: [f32; MAX_ACT],
    pub action: [f32; MAX_ACT],
    pub clamped: bool,
    pub rate_limited: bool,
    /// The action came from the teleop device.
    pub teleop: bool,
    /// Candidates recorded (`m ≤ MAX_CANDIDATES`), `[m, ad]`.
    pub m: u8,
    pub num_base: u8,
    pub candidates: [f32; MAX_CANDIDATES * MAX_ACT],
    /// Sampled critics recorded (`k ≤ MAX_CRITICS`), Q values `[k, m]`.
    pub k: u8,
    pub q: [f32; MAX_CRITICS * MAX_CANDIDATES],
    pub selected: Option<u8>,
    pub infer_ns: u64,
    pub send_ns: u64,
}

impl Default for ActFrame {
    fn default() -> Self {
        ActFrame {
            od: 0,
            ad: 0,
            obs: [0.0; MAX_OBS],
            policy_action: [0.0; MAX_ACT],
            action: [0.0; MAX_ACT],
            clamped: false,
            rate_limited: false,
            teleop: false,
            m: 0,
            num_base: 0,
            candidates: [0.0; MAX_CANDIDATES * MAX_ACT],
            k: 0,
            q: [0.0; MAX_CRITICS * MAX_CANDIDATES],
            selected: None,
            infer_ns: 0,
            send_ns: 0,
        }
    }
}

impl ActFrame {
    /// Copies the policy's last candidates (`[m_all, ad]`) and sampled Q values
    /// (`[k_all, m_all]`), keeping the first `MAX_CANDIDATES` / `MAX_CRITICS`.
    /// `candidates` holds one row of `stride` values per candidate; the action shown is
    /// the `ad` values at `offset` in each row (with action chunks, this step's action of
    /// each candidate chunk; otherwise `stride = ad`, `offset = 0`).
    pub fn set_candidates(
        &mut self,
        candidates: &[f32],
        (stride, offset): (usize, usize),
        num_base: usize,
        q: &[f32],
        selected: Option<usize>,
    ) {
        let ad = (self.ad as usize).max(1);
        let stride = stride.max(ad);
        let m_all = candidates.len() / stride;
        let m = m_all.min(MAX_CANDIDATES);
        self.m = m as u8;
        self.num_base = num_base.min(m) as u8;
        for (dst, row) in self.candidates[..m * ad]
            .chunks_exact_mut(ad)
            .zip(candidates.chunks_exact(stride))
        {
            dst.copy_from_slice(&row[offset..offset + ad]);
        }
        let k_all = q.len().checked_div(m_all).unwrap_or(0);
        let k = k_all.min(MAX_CRITICS);
        self.k = k as u8;
        for c in 0..k {
            self.q[c * m..(c + 1) * m].copy_from_slice(&q[c * m_all..c * m_all + m]);
        }
        self.selected = selected.filter(|&s| s < m).map(|s| s as u8);
    }
}

/// One tick.
#[derive(Clone, Copy, Debug, Default)]
pub struct TickFrame {
    pub tick: u64,
    pub time_ns: u64,
    pub episode: Option<u32>,
    pub phase: &'static str,
    /// How late the loop woke after its deadline.
    pub jitter_ns: u64,
    /// From waking to handing over this frame: the tick's whole work (read, checks,
    /// policy, send, log). The tick overran when jitter plus work exceeds a period
    /// (or less, after `--align-phase` moved the grid earlier).
    pub work_ns: u64,
    pub read_ns: u64,
    pub act: Option<ActFrame>,
}

/// What the logger thread does with frames.
pub trait TickSink: Send {
    /// Records one tick; `link` are the serial link's counters now.
    fn tick(&mut self, frame: &TickFrame, link: &LinkCounters);
    /// Flushes; the first error of the recording, if any.
    fn finish(self: Box<Self>) -> Result<(), String>;
    /// How long the run's end waits for the recording (its last frames and its flush):
    /// `None`, for ever (a file); for a viewer, which can stop reading mid-run and
    /// block the recording thread inside a tick, a bound past which it is given up.
    fn finish_wait(&self) -> Option<std::time::Duration> {
        None
    }
}

/// Opens the recording (feature `viz`).
#[cfg(feature = "viz")]
pub fn open_sink(
    target: &RerunTarget,
    task: &str,
    obs_names: &[String],
    action_names: &[String],
) -> anyhow::Result<Box<dyn TickSink>> {
    let target = match target {
        RerunTarget::File(p) => viz::Target::File(p.clone()),
        RerunTarget::Connect(a) => viz::Target::Connect(a.clone()),
    };
    // A robot run may go on for hours: no footer held in memory for the whole of it.
    let rec = viz::Recorder::open_unbounded("expo_controller", &target)?;
    let logger = viz::tick::TickLogger::new(viz::task_of(task), obs_names, action_names);
    Ok(Box::new(RerunSink {
        viewer: matches!(target, viz::Target::Connect(_)),
        rec: Some(rec),
        logger,
        error: None,
    }))
}

/// Without the feature: an error that says how to get it.
#[cfg(not(feature = "viz"))]
pub fn open_sink(
    _target: &RerunTarget,
    _task: &str,
    _obs_names: &[String],
    _action_names: &[String],
) -> anyhow::Result<Box<dyn TickSink>> {
    anyhow::bail!(
        "this controller was built without rerun support: build it with `cargo build --release -p controller --features viz`"
    )
}

#[cfg(feature = "viz")]
struct RerunSink {
    /// Streams to a viewer (`--rerun-connect`), not to a file.
    viewer: bool,
    /// Taken by `finish`; one left at drop (a run that failed before it recorded) is
    /// closed within the viewer's limit as well.
    rec: Option<viz::Recorder>,
    logger: viz::tick::TickLogger,
    error: Option<String>,
}

#[cfg(feature = "viz")]
impl TickSink for RerunSink {
    fn tick(&mut self, f: &TickFrame, c: &LinkCounters) {
        use viz::tick::{ActView, LinkView, TickView};
        let link = LinkView {
            crc_errors: c.crc_errors,
            resyncs: c.resyncs,
            seq_lost: c.seq_lost,
            queue_drops: c.queue_drops,
            read_errors: c.read_errors,
        };
        let act = f.act.as_ref().map(|a| {
            let (od, ad, m, k) = (a.od as usize, a.ad as usize, a.m as usize, a.k as usize);
            ActView {
                obs: &a.obs[..od],
                policy_action: &a.policy_action[..ad],
                action: &a.action[..ad],
                clamped: a.clamped,
                rate_limited: a.rate_limited,
                teleop: a.teleop,
                candidates: &a.candidates[..m * ad],
                num_base: a.num_base as usize,
                q: &a.q[..k * m],
                selected: a.selected.map(usize::from),
            }
        });
        let view = TickView {
            tick: f.tick,
            time_s: f.time_ns as f64 * 1e-9,
            episode: f.episode,
            phase: f.phase,
            jitter_us: f.jitter_ns as f64 * 1e-3,
            work_us: f.work_ns as f64 * 1e-3,
            read_us: f.read_ns as f64 * 1e-3,
            infer_us: f.act.map(|a| a.infer_ns as f64 * 1e-3),
            send_us: f.act.map(|a| a.send_ns as f64 * 1e-3),
            act,
            link,
        };
        let Some(rec) = &self.rec else { return };
        if let Err(e) = self.logger.log(&rec.rec, &view)
            && self.error.is_none()
        {
            self.error = Some(format!("rerun: {e:#}"));
        }
    }

    fn finish_wait(&self) -> Option<std::time::Duration> {
        // The flush's own limit, and as long again for the frames still queued.
        self.viewer.then_some(2 * viz::VIEWER_FLUSH_TIMEOUT)
    }

    fn finish(mut self: Box<Self>) -> Result<(), String> {
        let flushed = match self.rec.take() {
            Some(rec) => rec.finish().map_err(|e| format!("{e:#}")),
            None => Ok(()),
        };
        match self.error.take() {
            Some(e) => Err(e),
            None => flushed,
        }
    }
}

/// The SDK's own close of a viewer stream waits for the viewer without a limit: a run
/// that fails before its control thread starts (no port, no `Hello`), with a viewer
/// connected that does not read, hung there instead of reporting its error.
#[cfg(feature = "viz")]
impl Drop for RerunSink {
    fn drop(&mut self) {
        if let Some(rec) = self.rec.take() {
            let _ = rec.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_and_q_values_are_cut_to_the_maxima_row_by_row() {
        let mut a = ActFrame {
            ad: 2,
            ..ActFrame::default()
        };
        // 40 candidates of 2 dims, 3 critics: [3, 40].
        let cands: Vec<f32> = (0..80).map(|i| i as f32).collect();
        let q: Vec<f32> = (0..120).map(|i| i as f32).collect();
        a.set_candidates(&cands, (2, 0), 20, &q, Some(35));
        assert_eq!((a.m, a.k, a.num_base), (32, 3, 20));
        assert_eq!(a.candidates[63], 63.0);
        // Row 1 of the recorded Q is row 1 of the policy's, first 32 columns.
        assert_eq!(a.q[32], 40.0);
        assert_eq!(a.q[32 + 31], 71.0);
        // The selected candidate was cut: not recorded.
        assert_eq!(a.selected, None);
        a.set_candidates(&cands, (2, 0), 20, &q, Some(3));
        assert_eq!(a.selected, Some(3));
        // Chunks of 4 two-dim actions: the third action of each of 10 candidates.
        a.set_candidates(&cands, (8, 4), 5, &q[..30], Some(1));
        assert_eq!((a.m, a.k, a.num_base), (10, 3, 5));
        assert_eq!(a.candidates[..4], [4.0, 5.0, 12.0, 13.0]);
        assert_eq!(a.candidates[18..20], [76.0, 77.0]);
    }
}
