//! The run's console lines (the control thread's faults, episode reports and operator
//! replies; the teleop and uplink threads' lines), written by a thread of their own.
//!
//! ```text
//!  control thread ── try_send(String) ──► bounded channel ──► console thread ──► stderr
//!                    (full: drop, count)   (CAPACITY lines)    (may block: a paused
//!                                                               terminal, a stalled pipe)
//! ```
//!
//! Writing to stderr blocks when its reader does not read: a terminal paused with
//! Ctrl-S, `controller run 2>&1 | less` scrolled back, a pipe whose reader hangs. A
//! control thread that wrote its fault line there itself would send the fault's hold
//! only once the write returned; the firmware's watchdog would stop the robot instead,
//! later and harder. So it only queues its lines, never waiting, and a full queue
//! drops them (counted, and said at the end).

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

/// Lines waiting to be written; a line sent while the queue is full is dropped. A run
/// prints a line per episode and per fault, so this is many episodes of output (2.5 s
/// even at a fault every tick at 100 Hz, which the run stops long before).
pub const CAPACITY: usize = 256;

/// The control thread's end: queues a line, never waits.
#[derive(Clone, Debug)]
pub struct ConsoleTx {
    tx: Sender<String>,
    dropped: Arc<AtomicU64>,
}

impl ConsoleTx {
    /// Queues `line` for stderr; drops it (counted) when the queue is full.
    pub fn line(&self, line: String) {
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The console thread.
pub struct Console {
    handle: JoinHandle<()>,
    dropped: Arc<AtomicU64>,
}

impl Console {
    /// Starts a thread that writes every queued line to `out` (stderr in a run).
    pub fn spawn(mut out: impl Write + Send + 'static) -> std::io::Result<(Console, ConsoleTx)> {
        let (tx, rx): (Sender<String>, Receiver<String>) = bounded(CAPACITY);
        let dropped = Arc::new(AtomicU64::new(0));
        let handle = super::realtime::spawn_in_run("console", move || {
            for line in rx {
                // A console that cannot be written to loses the line, nothing else.
                let _ = writeln!(out, "{line}");
            }
        })?;
        let console = Console {
            handle,
            dropped: dropped.clone(),
        };
        Ok((console, ConsoleTx { tx, dropped }))
    }

    /// Waits until every line queued is written (all [`ConsoleTx`] must be dropped), and
    /// returns how many lines were dropped.
    pub fn finish(self) -> u64 {
        let _ = self.handle.join();
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Condvar, Mutex};
    use std::time::Duration;

    /// Whether a write began, whether the writer is released, and what it was given.
    type Written = Mutex<(bool, bool, Vec<u8>)>;

    /// A writer that blocks until released, as a paused terminal does, then keeps what
    /// it was given.
    #[derive(Clone, Default)]
    struct Paused(Arc<(Written, Condvar)>);

    impl Write for Paused {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (lock, cvar) = &*self.0;
            let mut g = lock.lock().unwrap();
            g.0 = true;
            cvar.notify_all();
            let mut g = cvar.wait_while(g, |(_, open, _)| !*open).unwrap();
            g.2.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// With stderr blocked, queuing lines never waits: past the queue's capacity they
    /// are dropped and counted; once the writer is released, the queued ones are written
    /// in order.
    #[test]
    fn a_blocked_console_never_blocks_the_sender() {
        let out = Paused::default();
        let (console, tx) = Console::spawn(out.clone()).unwrap();
        // Line 0 first, until the console thread is blocked writing it: the queue then
        // holds the next CAPACITY lines, and the rest are dropped.
        tx.line("line 0".into());
        {
            let (lock, cvar) = &*out.0;
            let g = lock.lock().unwrap();
            let (g, _) = cvar
                .wait_timeout_while(g, Duration::from_secs(60), |(began, _, _)| !*began)
                .unwrap();
            assert!(g.0, "the console thread never wrote");
        }
        let n = CAPACITY + 50;
        // On a thread of its own, so that a send that blocked fails the test instead of
        // hanging it (the writer is released only after all were sent).
        let (sent_tx, sent) = bounded(1);
        let sender = tx.clone();
        std::thread::spawn(move || {
            for i in 1..=n {
                sender.line(format!("line {i}"));
            }
            sent_tx.send(()).unwrap();
        });
        sent.recv_timeout(Duration::from_secs(60))
            .expect("queuing a line waited for the blocked console");
        {
            let (lock, cvar) = &*out.0;
            lock.lock().unwrap().1 = true;
            cvar.notify_all();
        }
        drop(tx);
        let dropped = console.finish();
        let text = String::from_utf8(out.0.0.lock().unwrap().2.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let want: Vec<String> = (0..=CAPACITY).map(|i| format!("line {i}")).collect();
        assert_eq!(lines, want);
        assert_eq!(dropped as usize, n - CAPACITY);
    }
}
