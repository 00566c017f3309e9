//! Process-level plumbing of the loop: stop signals, the panic flag, and the optional
//! real-time settings (`--realtime`).
//!
//! Signals and panics only set flags; the control thread polls them every tick and
//! runs the safe stop itself, because it is the only place that may send commands.
//! A second Ctrl-C gets the default action (the process dies at once; the firmware's
//! watchdog then holds on its own).

use serde::Serialize;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);
static PANICKED: AtomicBool = AtomicBool::new(false);
static PANIC_HOOK: Once = Once::new();

extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe work: two atomic stores and signal().
    STOP_SIGNAL.store(sig, Ordering::SeqCst);
    STOP.store(true, Ordering::SeqCst);
    // SAFETY: restoring the default disposition is async-signal-safe.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
    }
}

/// Routes SIGINT and SIGTERM to the stop flag.
pub fn install_signal_handlers() -> std::io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only touches atomics and calls signal().
        let prev = unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
        if prev == libc::SIG_ERR {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// True once a stop was requested (signal or [`request_stop`]).
pub fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// The signal that requested the stop (0 if none).
pub fn stop_signal() -> i32 {
    STOP_SIGNAL.load(Ordering::Relaxed)
}

pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// Installs (once) a panic hook that raises the panic flag before the default hook
/// prints the message, so that a panic on any thread makes the control thread stop
/// the robot safely.
pub fn install_panic_hook() {
    PANIC_HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.store(true, Ordering::SeqCst);
            default(info);
        }));
    });
}

pub fn panicked() -> bool {
    PANICKED.load(Ordering::Relaxed)
}

/// One step of the real-time setup and how it went.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RealtimeStep {
    pub step: String,
    pub ok: bool,
    pub detail: String,
}

fn step(name: &str, r: std::io::Result<String>) -> RealtimeStep {
    match r {
        Ok(detail) => RealtimeStep {
            step: name.into(),
            ok: true,
            detail,
        },
        Err(e) => RealtimeStep {
            step: name.into(),
            ok: false,
            detail: e.to_string(),
        },
    }
}

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Lowers the calling thread's timer slack to 1 ns so that `sleep` wakes close to
/// its deadline (the default slack is 50 µs). Unprivileged; done for every run.
pub fn tight_timer_slack() -> bool {
    // SAFETY: prctl(PR_SET_TIMERSLACK) takes an integer argument and touches nothing else.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) == 0 }
}

/// The `--realtime` steps for the calling (control) thread: lock memory, SCHED_FIFO
/// at `priority`, pin to `cpu`. Each is attempted and reported, whatever the others
/// did; without the privileges (root or CAP_IPC_LOCK / CAP_SYS_NICE) they fail.
pub fn apply_realtime(priority: i32, cpu: Option<usize>) -> Vec<RealtimeStep> {
    let mut out = Vec::new();
    out.push(step(
        "mlockall(MCL_CURRENT | MCL_FUTURE)",
        // SAFETY: mlockall has no memory-safety preconditions.
        check(unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) })
            .map(|_| "all current and future pages locked in RAM".into()),
    ));
    let param = libc::sched_param {
        sched_priority: priority,
    };
    out.push(step(
        &format!("sched_setscheduler(SCHED_FIFO, priority {priority})"),
        // SAFETY: pid 0 is the calling thread; param is a valid pointer.
        check(unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) })
            .map(|_| "control thread runs SCHED_FIFO".into()),
    ));
    // SAFETY: sysconf has no preconditions.
    let ncpu = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    let cpu = cpu.unwrap_or(ncpu - 1);
    let r = if cpu >= ncpu {
        Err(std::io::Error::other(format!(
            "CPU {cpu} does not exist ({ncpu} online)"
        )))
    } else {
        // SAFETY: cpu_set_t is plain data; CPU_SET stays in bounds (cpu < ncpu <= CPU_SETSIZE).
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            check(libc::sched_setaffinity(
                0,
                std::mem::size_of::<libc::cpu_set_t>(),
                &set,
            ))
        }
        .map(|_| format!("control thread pinned to CPU {cpu} of {ncpu}"))
    };
    out.push(step(&format!("sched_setaffinity(CPU {cpu})"), r));
    out
}
