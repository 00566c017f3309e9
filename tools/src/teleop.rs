//! A scripted teleop device (`tools teleop`): a simulated task's demonstrator plays the
//! person at the device, acting on the observations `controller run --teleop` sends
//! back. It exercises the teleop path without hardware: recording demonstrations
//! through the real controller, serial link and safety envelope, or taking over from a
//! policy part of the time.
//!
//! It speaks [`firmware_config::teleop`]: it announces itself with a disengaged action,
//! then answers every observation with the demonstrator's action (engaged when the
//! [`Engage`] schedule says so, marked as the answer to that observation, which a
//! controller with `--teleop-wait-ms` waits for), and repeats its last datagram while no observation
//! arrives, so that the controller keeps hearing from it between episodes (a person's
//! device streams continuously the same way). A repeated answer still names the step
//! it answers, so the controller does not act on it in the next episode's first frames.

use anyhow::{Context, Result, bail, ensure};
use firmware_config::protocol::MAX_ACT;
use firmware_config::teleop::{self as wire, Datagram, ENGAGED, TeleopAction};
use sim::TaskId;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// When the scripted device holds its deadman.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Engage {
    /// Always: demonstrations.
    Always,
    /// From the answer to step `from`'s observation of each episode on (a takeover
    /// from the policy that acted before). The controller drives with that answer from
    /// step `from` when it waits for it (`--teleop-wait-ms`), from step `from + 1`
    /// otherwise: it sends step `from`'s command before the answer arrives.
    FromStep(u32),
}

/// `tools teleop`'s options.
#[derive(Clone, Debug)]
pub struct DeviceOptions {
    /// The controller's `--teleop` address.
    pub controller: SocketAddr,
    pub task: TaskId,
    pub engage: Engage,
    /// Stop after this long without an observation, once one has come.
    pub idle: Duration,
    /// Resend the last datagram this often while no observation comes.
    pub resend: Duration,
    /// Keep every engaged action in the summary (tests compare them with the record;
    /// the CLI only counts them, so that a session of hours does not grow).
    pub keep_actions: bool,
    /// The controller run's `--seed`: its episode `e` is reset with `seed + e`, and the
    /// demonstrator is seeded from that episode seed, as in-process
    /// (`sim::record_episode`).
    pub seed: u64,
}

impl DeviceOptions {
    pub fn new(controller: SocketAddr, task: TaskId) -> DeviceOptions {
        DeviceOptions {
            controller,
            task,
            engage: Engage::Always,
            idle: Duration::from_secs(5),
            resend: Duration::from_millis(20),
            keep_actions: true,
            seed: 0,
        }
    }
}

/// What the scripted device saw and did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeviceSummary {
    pub observations: u64,
    /// Observations that said the device's action was in control.
    pub in_control: u64,
    pub actions_sent: u64,
    pub episodes_seen: u64,
    /// Engaged actions sent.
    pub engaged: u64,
    /// Every engaged action sent, in order, with `keep_actions` (for tests that compare
    /// with the record).
    pub engaged_actions: Vec<Vec<f32>>,
    /// Datagrams from other addresses than the controller's, ignored. A controller
    /// listening on all its addresses may answer from another one than the device
    /// was given: the first such datagram is reported on stderr.
    pub foreign: u64,
}

/// Runs the device until the controller falls silent for `idle` (after its first
/// observation) or `stop` is set. However it ends (those, or an error: a damaged
/// datagram, a failed send), its last datagram lets go of the deadman, as a person's
/// hand leaves a device: an engaged one was the controller's to act on until its
/// `--teleop-timeout-ms` ran out, counted as a lapse.
pub fn run_device(o: &DeviceOptions, stop: &AtomicBool) -> Result<DeviceSummary> {
    let bind = if o.controller.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    // The controller answers from its concrete address; datagrams from any other
    // address are ignored, so an unspecified one would never hear an observation.
    ensure!(
        !o.controller.ip().is_unspecified(),
        "the controller's address {} is unspecified: give the address it listens on, e.g. \
         127.0.0.1:{}",
        o.controller,
        o.controller.port()
    );
    let socket = UdpSocket::bind(bind).context("binding the device's socket")?;
    socket.set_read_timeout(Some(o.resend))?;
    let ad = o.task.spec().action_dim();
    ensure!(ad <= MAX_ACT, "{} has {ad} action values", o.task);
    let mut summary = DeviceSummary::default();
    let mut sent = Sent {
        seq: 0,
        action: vec![0.0; ad],
    };
    let served = serve(o, stop, &socket, &mut sent, &mut summary);
    let released = sent.release(&socket, o.controller);
    served?;
    // Not sent (no controller listening, the link down): a warning, as the resends'
    // errors are none; the controller's teleop timeout lets go instead.
    match released {
        Ok(_) => summary.actions_sent += 1,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        Err(e) => eprintln!(
            "tools teleop: warning: the release could not be sent to {} ({e}); the \
             controller lets go at its teleop timeout",
            o.controller
        ),
    }
    Ok(summary)
}

/// The device's sequence number and its last action's values, which its release
/// repeats, disengaged.
struct Sent {
    seq: u32,
    action: Vec<f32>,
}

impl Sent {
    /// Sends `to` a release: the last action's values, disengaged, under the next
    /// sequence number.
    fn release(&mut self, socket: &UdpSocket, to: SocketAddr) -> std::io::Result<usize> {
        self.seq = self.seq.wrapping_add(1);
        let mut buf = [0u8; wire::MAX_DATAGRAM];
        let len = wire::encode_action(&TeleopAction::new(self.seq, 0, &self.action), &mut buf);
        socket.send_to(&buf[..len], to)
    }
}

/// [`run_device`]'s loop.
fn serve(
    o: &DeviceOptions,
    stop: &AtomicBool,
    socket: &UdpSocket,
    sent: &mut Sent,
    summary: &mut DeviceSummary,
) -> Result<()> {
    let od = o.task.spec().obs_dim();
    let mut demonstrator = sim::make_demonstrator(o.task);
    let mut last = TeleopAction::new(sent.seq, 0, &sent.action);
    let mut buf = [0u8; wire::MAX_DATAGRAM];
    let mut episode = None;
    // The step of the last observation answered: a new run's first episode may reuse the
    // last episode's number (a firmware restarted with the controller), but starts over
    // at step 0.
    let mut last_step: Option<u32> = None;
    let mut last_heard: Option<Instant> = None;
    // An observation was answered in the last resend period: no resend is due.
    let mut answered = false;
    while !stop.load(Ordering::Relaxed) {
        if !answered {
            // The same values again, as a new datagram (its own sequence number).
            sent.seq = sent.seq.wrapping_add(1);
            last.seq = sent.seq;
            let len = wire::encode_action(&last, &mut buf);
            // The controller may not be up yet: "connection refused" on loopback is
            // normal.
            let _ = socket.send_to(&buf[..len], o.controller);
            summary.actions_sent += 1;
        }
        answered = false;
        // Answer every observation that comes within one resend period. The period
        // ends on time also while datagrams keep coming (a controller at `--time-scale
        // 5` sends one every 10 ms), so that `stop` and the idle limit are looked at.
        let period_end = Instant::now() + o.resend;
        while Instant::now() < period_end && !stop.load(Ordering::Relaxed) {
            let mut rx = [0u8; wire::MAX_DATAGRAM + 1];
            let Ok((n, from)) = socket.recv_from(&mut rx) else {
                break;
            };
            if from != o.controller {
                if summary.foreign == 0 {
                    eprintln!(
                        "tools teleop: ignoring datagrams from {from}, which is not the \
                         controller's address {} (a controller on several addresses may \
                         answer from another one: give that one)",
                        o.controller
                    );
                }
                summary.foreign += 1;
                continue;
            }
            let obs = match wire::decode(&rx[..n]) {
                Ok(Datagram::Observation(obs)) => obs,
                Ok(Datagram::Action(_)) => bail!("the controller sent an action datagram"),
                Err(e) => bail!("a datagram from the controller: {e}"),
            };
            ensure!(
                obs.n as usize == od,
                "the controller sent {} observation values, {} has {od}",
                obs.n,
                o.task
            );
            last_heard = Some(Instant::now());
            summary.observations += 1;
            summary.in_control += obs.in_control() as u64;
            let restarted = obs.step == 0 && last_step.is_some_and(|s| s > 0);
            if episode != Some(obs.episode) || restarted {
                episode = Some(obs.episode);
                summary.episodes_seen += 1;
                // Seeded from the episode's seed, not its number: the two differ
                // unless the controller's `--seed` is 0.
                let episode_seed = o.seed.wrapping_add(u64::from(obs.episode));
                demonstrator.reset(sim::demonstrator_seed(episode_seed));
                // The deadman let go between episodes, as a person lets go after a safe
                // stop: the controller takes no device's action after one until a
                // release, and an always-engaged device never released (every later
                // episode recorded the hold action).
                sent.release(socket, o.controller)
                    .context("sending an action to the controller")?;
                summary.actions_sent += 1;
            }
            last_step = Some(obs.step);
            answered = true;
            demonstrator.act(obs.values(), &mut sent.action);
            let engaged = match o.engage {
                Engage::Always => true,
                Engage::FromStep(k) => obs.step >= k,
            };
            sent.seq = sent.seq.wrapping_add(1);
            // Marked as the answer to this observation (for `--teleop-wait-ms`).
            last = TeleopAction::new(sent.seq, if engaged { ENGAGED } else { 0 }, &sent.action)
                .answering(obs.step);
            let len = wire::encode_action(&last, &mut buf);
            socket
                .send_to(&buf[..len], o.controller)
                .context("sending an action to the controller")?;
            summary.actions_sent += 1;
            if engaged {
                summary.engaged += 1;
                if o.keep_actions {
                    summary.engaged_actions.push(sent.action.clone());
                }
            }
        }
        if last_heard.is_some_and(|t| t.elapsed() > o.idle) {
            break;
        }
    }
    Ok(())
}

/// [`run_device`] in a thread of its own, until [`DeviceThread::finish`] (a device
/// beside a controller in the same process: tests, examples).
pub struct DeviceThread {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Result<DeviceSummary>>,
}

impl DeviceThread {
    pub fn spawn(o: DeviceOptions) -> DeviceThread {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let stop = stop.clone();
            std::thread::spawn(move || run_device(&o, &stop))
        };
        DeviceThread { stop, handle }
    }

    /// Stops the device and returns what it saw and did.
    pub fn finish(self) -> Result<DeviceSummary> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("the device thread panicked"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use firmware_config::teleop::TeleopObservation;

    /// Observations from an address other than the controller's are counted (and said
    /// once on stderr), not silently dropped forever.
    #[test]
    fn datagrams_from_another_address_are_counted() {
        let controller = UdpSocket::bind("127.0.0.1:0").unwrap();
        controller
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut o = DeviceOptions::new(controller.local_addr().unwrap(), TaskId::Push);
        o.resend = Duration::from_millis(20);
        let device = DeviceThread::spawn(o);
        let mut buf = [0u8; wire::MAX_DATAGRAM];
        let (_, device_addr) = controller.recv_from(&mut buf).unwrap();
        // The same host, answering from another socket (another of its addresses).
        let other = UdpSocket::bind("127.0.0.1:0").unwrap();
        let obs = TeleopObservation {
            episode: 1,
            step: 0,
            flags: 0,
            n: 10,
            values: [0.0; firmware_config::protocol::MAX_OBS],
        };
        let len = wire::encode_observation(&obs, &mut buf);
        // The device's resends queued so far are read first.
        controller.set_nonblocking(true).unwrap();
        let mut rx = [0u8; wire::MAX_DATAGRAM];
        while controller.recv_from(&mut rx).is_ok() {}
        controller.set_nonblocking(false).unwrap();
        for _ in 0..3 {
            other.send_to(&buf[..len], device_addr).unwrap();
        }
        // The device resends only after a read that found nothing: the second resend
        // from now on comes after it has read all three.
        for _ in 0..2 {
            controller.recv_from(&mut rx).unwrap();
        }
        let summary = device.finish().unwrap();
        assert_eq!(summary.observations, 0);
        assert_eq!(summary.foreign, 3);
    }

    /// A controller's socket, made the device's controller.
    fn controller_for(o: &mut DeviceOptions) -> UdpSocket {
        let controller = UdpSocket::bind("127.0.0.1:0").unwrap();
        controller
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        o.controller = controller.local_addr().unwrap();
        controller
    }

    fn observation(episode: u32, step: u32, values: &[f32]) -> TeleopObservation {
        let mut obs = TeleopObservation {
            episode,
            step,
            flags: 0,
            n: values.len() as u8,
            values: [0.0; firmware_config::protocol::MAX_OBS],
        };
        obs.values[..values.len()].copy_from_slice(values);
        obs
    }

    /// Observations arriving faster than the resend period (a controller at
    /// `--time-scale 5`) do not keep the device from seeing `stop`.
    #[test]
    fn the_device_stops_while_observations_keep_coming() {
        let mut o = DeviceOptions::new("127.0.0.1:1".parse().unwrap(), TaskId::Push);
        let controller = controller_for(&mut o);
        let device = DeviceThread::spawn(o);
        let mut buf = [0u8; wire::MAX_DATAGRAM];
        let (_, device_addr) = controller.recv_from(&mut buf).unwrap();
        let sending = Arc::new(AtomicBool::new(true));
        let sender = {
            let (sending, controller) = (sending.clone(), controller.try_clone().unwrap());
            std::thread::spawn(move || {
                let mut buf = [0u8; wire::MAX_DATAGRAM];
                // At most 20 s of observations, one every 5 ms.
                for step in 0..4000 {
                    if !sending.load(Ordering::SeqCst) {
                        return true;
                    }
                    let len = wire::encode_observation(&observation(1, step, &[0.0; 10]), &mut buf);
                    controller.send_to(&buf[..len], device_addr).unwrap();
                    std::thread::sleep(Duration::from_millis(5));
                }
                false
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        let summary = device.finish().unwrap();
        sending.store(false, Ordering::SeqCst);
        assert!(
            sender.join().unwrap(),
            "the device stopped only once the observations did"
        );
        assert!(summary.observations > 0, "{summary:?}");
    }

    /// However the device ends, its last datagram is a release: an error (a damaged
    /// datagram from the controller) left its engaged answer in force until the
    /// controller's teleop timeout, and so did a stop.
    #[test]
    fn the_device_lets_go_of_the_deadman_however_it_ends() {
        let last_action = |controller: &UdpSocket| {
            controller
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut rx = [0u8; wire::MAX_DATAGRAM];
            let mut last = None;
            while let Ok((n, _)) = controller.recv_from(&mut rx) {
                if let Ok(Datagram::Action(a)) = wire::decode(&rx[..n]) {
                    last = Some(a);
                }
            }
            last.expect("an action")
        };
        for damaged in [true, false] {
            let mut o = DeviceOptions::new("127.0.0.1:1".parse().unwrap(), TaskId::Push);
            let controller = controller_for(&mut o);
            let device = DeviceThread::spawn(o);
            let mut buf = [0u8; wire::MAX_DATAGRAM];
            let (_, device_addr) = controller.recv_from(&mut buf).unwrap();
            let len = wire::encode_observation(&observation(1, 0, &[0.0; 10]), &mut buf);
            controller.send_to(&buf[..len], device_addr).unwrap();
            // Its engaged answer.
            let mut rx = [0u8; wire::MAX_DATAGRAM];
            loop {
                let (n, _) = controller.recv_from(&mut rx).unwrap();
                if let Ok(Datagram::Action(a)) = wire::decode(&rx[..n])
                    && a.flags & ENGAGED != 0
                {
                    break;
                }
            }
            if damaged {
                buf[len - 1] ^= 0xff;
                controller.send_to(&buf[..len], device_addr).unwrap();
                let last = last_action(&controller);
                let e = device.finish().unwrap_err().to_string();
                assert!(e.contains("a datagram from the controller"), "{e}");
                assert_eq!(last.flags & ENGAGED, 0, "{last:?}");
            } else {
                let summary = device.finish().unwrap();
                assert_eq!(summary.engaged, 1, "{summary:?}");
                let last = last_action(&controller);
                assert_eq!(last.flags & ENGAGED, 0, "{last:?}");
            }
        }
    }

    /// A new run whose first episode has the number the last one had (a firmware that
    /// restarted with the controller) starts over at step 0: the demonstrator starts
    /// that episode afresh, as it would in-process from the same seed.
    #[test]
    fn a_run_restarting_at_step_0_of_the_same_episode_gets_a_fresh_demonstrator() {
        let mut o = DeviceOptions::new("127.0.0.1:1".parse().unwrap(), TaskId::Push);
        let controller = controller_for(&mut o);
        let device = DeviceThread::spawn(o);
        let mut buf = [0u8; wire::MAX_DATAGRAM];
        let (_, device_addr) = controller.recv_from(&mut buf).unwrap();
        let mut env = sim::make_env(TaskId::Push, sim::EnvConfig::default());
        let mut first = vec![0.0; 10];
        env.reset(3, &mut first);
        // The answer to each observation (resends, which answer older steps or none,
        // are skipped).
        let mut ask = |obs: TeleopObservation| -> Vec<f32> {
            let len = wire::encode_observation(&obs, &mut buf);
            controller.send_to(&buf[..len], device_addr).unwrap();
            let mut rx = [0u8; wire::MAX_DATAGRAM];
            loop {
                let (n, _) = controller.recv_from(&mut rx).unwrap();
                if let Ok(Datagram::Action(a)) = wire::decode(&rx[..n])
                    && a.flags & wire::ANSWERS != 0
                    && a.answers == obs.step
                {
                    return a.values[..a.n as usize].to_vec();
                }
            }
        };
        let mut fresh = sim::make_demonstrator(TaskId::Push);
        fresh.reset(sim::demonstrator_seed(0));
        let mut want = vec![0.0; 2];
        fresh.act(&first, &mut want);
        assert_eq!(ask(observation(0, 0, &first)), want);
        let mut later = first.clone();
        for step in 1..6 {
            later[0] += 0.01;
            ask(observation(0, step, &later));
        }
        // The next run: episode 0 again, from its step 0.
        assert_eq!(ask(observation(0, 0, &first)), want);
        let summary = device.finish().unwrap();
        assert_eq!(summary.episodes_seen, 2, "{summary:?}");
    }
}
