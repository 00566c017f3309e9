//! Process-level plumbing of the loop: stop signals, the panic flags, and the optional
//! real-time settings (`--realtime`).
//!
//! Signals and panics only set flags; the control thread polls them every tick and
//! runs the safe stop itself, because it is the only place that may send commands.
//! A second Ctrl-C gets the default action (the process dies at once; the firmware's
//! watchdog then holds on its own).
//!
//! Panics are scoped to a run ([`RunScope`]): a panic on one of a run's threads (the
//! thread that called `run`, and every thread it starts with [`spawn_in_run`]: link,
//! logger, uplink, teleop, operator, control) stops that run's robot. A panic on any
//! other thread of the process (another run's, a test's, a host application's) does
//! not, and a run started after a panic starts clean. Work a run relies on that runs
//! on a thread started outside it catches its own panics and reports them as errors
//! (the two-speed policy's candidate worker does).

use serde::Serialize;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Once};

static STOP: AtomicBool = AtomicBool::new(false);
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// Stop signals received so far: a signal after the run's stop is told apart from the
/// one that stopped it ([`signal_count`]).
static SIGNALS: AtomicU32 = AtomicU32::new(0);
static PANIC_HOOK: Once = Once::new();

thread_local! {
    /// Set while this thread runs code whose panics are caught and returned as errors
    /// ([`catching_panics`]): those do not stop the robot.
    static CATCHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The panic flag of the run this thread works for (`None`: no run).
    static RUN_PANICKED: RefCell<Option<Arc<RunPanic>>> = const { RefCell::new(None) };
    /// `Some` on a thread whose panic messages are kept here instead of printed
    /// ([`defer_panic_messages`]).
    static DEFERRED_PANICS: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// From now on, the calling thread's panic messages are kept for
/// [`take_deferred_panics`] instead of printed by the panic hook. The control thread's:
/// printing writes to stderr, which blocks while nobody reads it (a paused terminal),
/// and the panic's hold goes out only after the hook returns.
pub fn defer_panic_messages() {
    install_panic_hook();
    DEFERRED_PANICS.with(|d| *d.borrow_mut() = Some(vec![]));
}

/// The panic messages kept since the last call (see [`defer_panic_messages`]).
pub fn take_deferred_panics() -> Vec<String> {
    DEFERRED_PANICS.with(|d| {
        d.borrow_mut()
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    })
}

/// A run's panic flag, with the first panic's thread and message (for the run's fault
/// and `report.json`: "a thread of the controller panicked" named neither, and the
/// default hook's message went to stderr only).
#[derive(Debug, Default)]
pub struct RunPanic {
    raised: AtomicBool,
    first: Mutex<Option<String>>,
}

impl RunPanic {
    /// True once a thread of the run panicked (one atomic load: checked every tick).
    pub fn raised(&self) -> bool {
        self.raised.load(Ordering::Relaxed)
    }

    /// The first panic: "thread 'NAME' panicked at FILE:LINE:COL: MESSAGE".
    pub fn first(&self) -> Option<String> {
        self.first.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// From the panic hook: the message is kept (if none was) before the flag is raised,
    /// so that whoever sees the flag finds it. `try_lock`: a hook never waits.
    pub(super) fn raise(&self, what: impl FnOnce() -> String) {
        if let Ok(mut first) = self.first.try_lock()
            && first.is_none()
        {
            *first = Some(what());
        }
        self.raised.store(true, Ordering::SeqCst);
    }
}

/// The calling thread works for a new run until this is dropped: its panics, and those
/// of the threads it starts with [`spawn_in_run`], raise this run's panic flag only.
pub struct RunScope {
    previous: Option<Arc<RunPanic>>,
}

impl RunScope {
    pub fn enter() -> RunScope {
        install_panic_hook();
        let flag = Arc::new(RunPanic::default());
        let previous = RUN_PANICKED.with(|f| f.replace(Some(flag)));
        RunScope { previous }
    }
}

impl Drop for RunScope {
    fn drop(&mut self) {
        RUN_PANICKED.with(|f| *f.borrow_mut() = self.previous.take());
    }
}

/// Starts a thread named `name` that works for the calling thread's run (if any).
pub fn spawn_in_run<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<T>> {
    let flag = run_panic_flag();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            RUN_PANICKED.with(|f| *f.borrow_mut() = flag);
            f()
        })
}

extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe work: lock-free atomics and signal().
    STOP_SIGNAL.store(sig, Ordering::SeqCst);
    STOP.store(true, Ordering::SeqCst);
    SIGNALS.fetch_add(1, Ordering::SeqCst);
    kill_at_a_second_sigint(sig);
}

/// For a stop signal's handler: after a first SIGINT the next one kills (Ctrl-C twice is
/// the person's way out of a stop that hangs). SIGTERM and SIGHUP come from programs (a
/// service manager, a closing terminal that sends SIGHUP more than once) and must not
/// cut the stop short: they stay caught. Async-signal-safe (signal() only).
pub fn kill_at_a_second_sigint(sig: libc::c_int) {
    if sig == libc::SIGINT {
        // SAFETY: restoring the default disposition is async-signal-safe.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
}

/// Installs `handler` for `signals`; one of `keep_ignored` that was ignored when the
/// process started (`nohup`, a script's background job) stays ignored. The handler must
/// do async-signal-safe work only (atomic stores, signal()).
pub fn route_signals(
    signals: &[libc::c_int],
    keep_ignored: &[libc::c_int],
    handler: extern "C" fn(libc::c_int),
) -> std::io::Result<()> {
    for &sig in signals {
        // SAFETY: the caller's handler is async-signal-safe.
        let prev = unsafe { libc::signal(sig, handler as *const () as libc::sighandler_t) };
        if prev == libc::SIG_ERR {
            return Err(std::io::Error::last_os_error());
        }
        if prev == libc::SIG_IGN && keep_ignored.contains(&sig) {
            // SAFETY: restoring the disposition found at start.
            unsafe {
                libc::signal(sig, libc::SIG_IGN);
            }
        }
    }
    Ok(())
}

/// The dispositions `signals` had when it was made, put back when it is dropped: for a
/// caller that routes signals for a while only (a live fine-tuning session, after which
/// a SIGTERM kills the process again, as before it).
pub struct SavedSignals(Vec<(libc::c_int, libc::sigaction)>);

impl SavedSignals {
    pub fn save(signals: &[libc::c_int]) -> std::io::Result<SavedSignals> {
        let mut saved = Vec::with_capacity(signals.len());
        for &sig in signals {
            // SAFETY: a query (no new action) into a zeroed struct sigaction.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            saved.push((sig, old));
        }
        Ok(SavedSignals(saved))
    }
}

impl Drop for SavedSignals {
    fn drop(&mut self) {
        for (sig, old) in &self.0 {
            // SAFETY: an action sigaction() returned for this signal.
            unsafe {
                libc::sigaction(*sig, old, std::ptr::null_mut());
            }
        }
    }
}

/// Routes SIGINT, SIGTERM and SIGHUP (the terminal or the SSH session went away) to the
/// stop flag: each one ends the run with a safe stop and a finished dataset. Repeated
/// SIGTERM or SIGHUP only ask for the stop again; a second SIGINT (Ctrl-C twice) kills
/// the controller at once, the firmware's watchdog then stopping the robot. A SIGHUP
/// that was ignored when the controller started (`nohup`) stays ignored.
pub fn install_signal_handlers() -> std::io::Result<()> {
    route_signals(
        &[libc::SIGINT, libc::SIGTERM, libc::SIGHUP],
        &[libc::SIGHUP],
        on_signal,
    )
}

/// The message of a caught panic's payload (`panic!` with a literal or a format).
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

/// True once a stop was requested (signal or [`request_stop`]).
pub fn stop_requested() -> bool {
    // Acquire: pairs with the handler's stores, so a stop seen here comes with its
    // signal's number (`stop_signal`), also on weakly ordered CPUs (ARM).
    STOP.load(Ordering::Acquire)
}

/// The signal that requested the stop (0 if none).
pub fn stop_signal() -> i32 {
    STOP_SIGNAL.load(Ordering::Relaxed)
}

/// How many stop signals this process has received.
pub fn signal_count() -> u32 {
    SIGNALS.load(Ordering::SeqCst)
}

pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// Installs (once) a panic hook that raises the panicking thread's run flag (if it works
/// for a run) before the default hook prints the message, so that the run's control
/// thread stops the robot safely. A panic inside [`catching_panics`] on its own thread
/// does neither.
pub fn install_panic_hook() {
    PANIC_HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CATCHING.with(|c| c.get()) {
                return;
            }
            // `try_`: a panic while this thread's scope is being changed (never in
            // practice) must still print.
            let _ = RUN_PANICKED.try_with(|f| {
                if let Ok(f) = f.try_borrow()
                    && let Some(flag) = f.as_ref()
                {
                    flag.raise(|| {
                        let thread = std::thread::current();
                        let name = thread.name().unwrap_or("unnamed");
                        // "panicked at FILE:LINE:COL:\nMESSAGE", on one line.
                        format!("thread '{name}' {info}")
                            .replace(":\n", ": ")
                            .replace('\n', " ")
                    });
                }
            });
            let deferred = DEFERRED_PANICS
                .try_with(|d| match d.try_borrow_mut() {
                    Ok(mut d) => d.as_mut().map(|kept| kept.push(info.to_string())).is_some(),
                    Err(_) => false,
                })
                .unwrap_or(false);
            if !deferred {
                default(info);
            }
        }));
    });
}

/// Runs `f`, returning its panic as `Err(message)`. Such a panic is expected (an
/// inference engine on a malformed bundle, say): it neither raises the panic flag nor
/// prints, and panics on other threads meanwhile are handled as usual.
pub fn catching_panics<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    install_panic_hook();
    let was = CATCHING.with(|c| c.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(was));
    result.map_err(|panic| panic_message(panic.as_ref()))
}

/// The panic flag of the calling thread's run (`None` outside runs). The control thread
/// keeps it, so that its per-tick check is one atomic load.
pub fn run_panic_flag() -> Option<Arc<RunPanic>> {
    RUN_PANICKED.with(|f| f.borrow().clone())
}

/// True once a thread of the calling thread's run panicked (false outside runs).
pub fn panicked() -> bool {
    RUN_PANICKED.with(|f| f.borrow().as_ref().is_some_and(|p| p.raised()))
}

/// One step of the real-time setup and how it went.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RealtimeStep {
    pub step: String,
    pub ok: bool,
    pub detail: String,
}

impl std::fmt::Display for RealtimeStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "realtime: {:<44} {}: {}",
            self.step,
            if self.ok { "OK    " } else { "FAILED" },
            self.detail
        )
    }
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

/// Nice value of the threads whose work may wait ([`background_priority`]).
pub const BACKGROUND_NICE: i32 = 10;

/// Lowers the calling thread's scheduling priority to nice [`BACKGROUND_NICE`], or
/// leaves it where it is if it is lower already (Linux gives each thread its own nice
/// value). For threads whose work may wait while the control thread runs: the uplink's
/// bundle fetching and building, which takes tens to hundreds of ms of CPU on a robot
/// computer of 2 cores. At nice 10 such a thread gets
/// about a tenth of a core that the control thread also wants, and all of an idle one.
/// Unprivileged (lowering one's own priority always is).
pub fn background_priority() -> std::io::Result<()> {
    // SAFETY: gettid, getpriority and setpriority take plain integers and touch no
    // memory of ours. getpriority's -1 may be an error; then the target is ours.
    check(unsafe {
        let tid = libc::gettid() as libc::id_t;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        libc::setpriority(libc::PRIO_PROCESS, tid, now.max(BACKGROUND_NICE))
    })
}

/// `CAP_IPC_LOCK`'s bit in a capability set (linux/capability.h).
const CAP_IPC_LOCK: u32 = 14;

/// Whether this process may lock its future pages too (`MCL_FUTURE`): with a finite
/// `RLIMIT_MEMLOCK` (`memlock_limit`, `None`: unlimited) and without `CAP_IPC_LOCK`
/// (which lifts the limit), every later allocation that would take the locked bytes
/// past the limit fails (mlockall(2)), and Rust aborts the process at a failed
/// allocation: no safe stop, no report, the episode in memory lost.
/// `mlockall(MCL_CURRENT | MCL_FUTURE)` succeeds under a finite limit above the
/// process's size when `--realtime` applies (a `limits.conf` realtime group's), so its
/// success tells nothing: the limit decides.
fn may_lock_future_pages(memlock_limit: Option<u64>, cap_ipc_lock: bool) -> bool {
    cap_ipc_lock || memlock_limit.is_none()
}

/// The link /proc/self/ns/user points to in the initial user namespace (the kernel's
/// fixed `PROC_USER_INIT_INO`).
const INITIAL_USER_NAMESPACE: &str = "user:[4026531837]";

/// Whether `status` (the text of /proc/self/status) gives the effective capability
/// set (`CapEff`, hexadecimal) with `CAP_IPC_LOCK` (`false` where it does not read),
/// in the initial user namespace (`user_ns`: where /proc/self/ns/user points; `None`
/// on a kernel without user namespaces, where there is only that one). The kernel
/// checks the capability against the initial namespace: inside a container's own user
/// namespace `CapEff` shows it while the limit still applies.
fn has_cap_ipc_lock(status: &str, user_ns: Option<&str>) -> bool {
    let initial_namespace = user_ns.is_none_or(|ns| ns == INITIAL_USER_NAMESPACE);
    initial_namespace
        && status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .is_some_and(|set| set & (1 << CAP_IPC_LOCK) != 0)
}

/// This process's `RLIMIT_MEMLOCK` soft limit in bytes (`None`: unlimited).
fn memlock_limit() -> std::io::Result<Option<u64>> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given, a valid pointer.
    check(unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) })?;
    // `rlim_t` is 32 bits wide on some 32-bit robot computers' targets.
    #[allow(clippy::unnecessary_cast)]
    Ok((lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur as u64))
}

/// The memory-locking step of `--realtime`: current and future pages where
/// [`may_lock_future_pages`], else the current ones only (said in the step's detail).
fn lock_memory() -> RealtimeStep {
    let limit = match memlock_limit() {
        Ok(l) => l,
        Err(e) => return step("mlockall", Err(e)),
    };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    // Absent: a kernel without user namespaces. Unreadable otherwise (a sandbox): not
    // taken for the initial one.
    let user_ns = match std::fs::read_link("/proc/self/ns/user") {
        Ok(p) => Some(p.to_string_lossy().into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(_) => Some(String::new()),
    };
    let cap = has_cap_ipc_lock(&status, user_ns.as_deref());
    if may_lock_future_pages(limit, cap) {
        return step(
            "mlockall(MCL_CURRENT | MCL_FUTURE)",
            // SAFETY: mlockall has no memory-safety preconditions.
            check(unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) })
                .map(|_| "all current and future pages locked in RAM".into()),
        );
    }
    let limit = limit.unwrap_or_default();
    step(
        "mlockall(MCL_CURRENT)",
        // SAFETY: as above.
        check(unsafe { libc::mlockall(libc::MCL_CURRENT) }).map(|_| {
            format!(
                "the current pages locked in RAM, not future ones: RLIMIT_MEMLOCK is \
                 {limit} bytes without CAP_IPC_LOCK in the initial user namespace, and an \
                 allocation past it would abort the run (no safe stop); raise it to \
                 unlimited (ulimit -l) or grant CAP_IPC_LOCK in the initial user namespace \
                 (not a container's own) to lock them all"
            )
        }),
    )
}

/// The `--realtime` steps for the calling (control) thread: lock memory, SCHED_FIFO
/// at `priority`, pin to `cpu`. Each is attempted and reported, whatever the others
/// did; without the privileges (root or CAP_IPC_LOCK / CAP_SYS_NICE) they fail. Future
/// pages are locked only where the memory-lock limit cannot make an allocation fail
/// ([`may_lock_future_pages`]).
pub fn apply_realtime(priority: i32, cpu: Option<usize>) -> Vec<RealtimeStep> {
    let mut out = vec![lock_memory()];
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

/// The CPUs the calling thread may run on.
fn allowed_cpus() -> std::io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        check(libc::sched_getaffinity(
            0,
            std::mem::size_of::<libc::cpu_set_t>(),
            &mut set,
        ))?;
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect())
    }
}

fn set_affinity(cpus: &[usize]) -> std::io::Result<()> {
    if let Some(c) = cpus.iter().find(|&&c| c >= libc::CPU_SETSIZE as usize) {
        return Err(std::io::Error::other(format!(
            "CPU {c} is beyond the largest CPU set ({})",
            libc::CPU_SETSIZE
        )));
    }
    // SAFETY: cpu_set_t is plain data; every cpu is below CPU_SETSIZE (checked above).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        check(libc::sched_setaffinity(
            0,
            std::mem::size_of::<libc::cpu_set_t>(),
            &set,
        ))
    }
}

/// `--dedicated-cpu`, first half, on the thread that starts the others: takes `cpu`
/// out of the calling thread's affinity, so every thread it starts from now on (they
/// inherit it: link, logger, recording, two-speed worker, simulated firmware) stays
/// off that CPU. Unprivileged: a thread may narrow its own affinity. Idempotent.
pub fn reserve_cpu(cpu: usize) -> RealtimeStep {
    let r = allowed_cpus().and_then(|allowed| {
        let rest: Vec<usize> = allowed.iter().copied().filter(|&c| c != cpu).collect();
        if !allowed.contains(&cpu) && !reserved(cpu) {
            return Err(std::io::Error::other(format!(
                "CPU {cpu} is not one this process may use ({allowed:?})"
            )));
        }
        if rest.is_empty() {
            return Err(std::io::Error::other(format!(
                "no CPU left for the other threads (allowed: {allowed:?})"
            )));
        }
        set_affinity(&rest)?;
        RESERVED.store(cpu as i32, Ordering::SeqCst);
        Ok(format!("other threads on CPUs {rest:?}"))
    });
    step(&format!("reserve CPU {cpu} for the control thread"), r)
}

/// The CPU [`reserve_cpu`] took out (-1: none), so a second call knows it is allowed.
static RESERVED: AtomicI32 = AtomicI32::new(-1);

fn reserved(cpu: usize) -> bool {
    RESERVED.load(Ordering::SeqCst) == cpu as i32
}

/// `--dedicated-cpu`, second half, on the control thread: pins it to `cpu` if
/// [`reserve_cpu`] (its result is `reserved`) succeeded. Returns both steps and whether
/// the thread may busy-wait: only on a CPU nothing else of ours needs; without the
/// reservation the thread stays where it is and sleeps as usual.
pub fn dedicate_cpu(cpu: usize, reserved: RealtimeStep) -> (Vec<RealtimeStep>, bool) {
    let name = format!("sched_setaffinity(CPU {cpu})");
    let pinned = if reserved.ok {
        step(
            &name,
            set_affinity(&[cpu])
                .map(|_| format!("control thread alone on CPU {cpu}, busy-waiting")),
        )
    } else {
        RealtimeStep {
            step: name,
            ok: false,
            detail: "not attempted: the CPU could not be reserved; sleeping as usual".into(),
        }
    };
    let busy_wait = reserved.ok && pinned.ok;
    (vec![reserved, pinned], busy_wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Future pages are locked only where no allocation can fail for it: an unlimited
    /// memory-lock limit, or `CAP_IPC_LOCK` in the initial user namespace (which lifts
    /// the limit). A finite limit a process starts below made every allocation past it
    /// abort the run.
    #[test]
    fn future_pages_are_locked_only_where_allocations_cannot_fail_for_it() {
        assert!(may_lock_future_pages(None, false));
        assert!(may_lock_future_pages(Some(64 << 20), true));
        assert!(!may_lock_future_pages(Some(64 << 20), false));
        let status = |cap_eff: &str| format!("Name:\tcontroller\nCapEff:\t{cap_eff}\n");
        let initial = Some("user:[4026531837]");
        // Root's full set, and CAP_IPC_LOCK (bit 14) alone.
        assert!(has_cap_ipc_lock(&status("000001ffffffffff"), initial));
        assert!(has_cap_ipc_lock(&status("0000000000004000"), initial));
        assert!(!has_cap_ipc_lock(&status("0000000000800000"), initial));
        assert!(!has_cap_ipc_lock("Name:\tcontroller\n", initial));
        // A container's own user namespace: root's set there, the limit still applies.
        let container = Some("user:[4026532451]");
        assert!(!has_cap_ipc_lock(&status("000001ffffffffff"), container));
        // A kernel without user namespaces has only the initial one.
        assert!(has_cap_ipc_lock(&status("000001ffffffffff"), None));
    }

    /// The dispositions saved are put back when the guard goes: a handler routed for a
    /// while (a live session's) does not outlive it.
    #[test]
    fn saved_signals_are_put_back() {
        extern "C" fn ignore(_: libc::c_int) {}
        let handler_of = |sig| {
            let mut now: libc::sigaction = unsafe { std::mem::zeroed() };
            assert_eq!(
                unsafe { libc::sigaction(sig, std::ptr::null(), &mut now) },
                0
            );
            now.sa_sigaction
        };
        // SIGUSR2: no other test handles it.
        let sig = libc::SIGUSR2;
        assert_eq!(handler_of(sig), libc::SIG_DFL);
        let saved = SavedSignals::save(&[sig]).unwrap();
        route_signals(&[sig], &[], ignore).unwrap();
        assert_ne!(handler_of(sig), libc::SIG_DFL);
        drop(saved);
        assert_eq!(handler_of(sig), libc::SIG_DFL);
    }

    /// A panic on a run's thread raises that run's flag, on the thread that entered the
    /// run and on the threads it started; not another run's, and not for a panic on a
    /// thread outside every run. A run entered after a panic starts clean.
    #[test]
    fn a_panic_stops_only_the_run_whose_thread_panicked() {
        fn panic_in_run(name: &str) {
            spawn_in_run(name, || panic!("injected test panic"))
                .unwrap()
                .join()
                .unwrap_err();
        }
        let (a_flag_seen, b_flag_seen, after_seen) = std::thread::scope(|s| {
            let (to_b, b_waits) = std::sync::mpsc::channel::<()>();
            let b = s.spawn(move || {
                let _run = RunScope::enter();
                b_waits.recv().unwrap();
                panicked()
            });
            let a = s.spawn(move || {
                let run = RunScope::enter();
                assert!(!panicked());
                // A thread outside every run panics: no run stops.
                std::thread::spawn(|| panic!("injected test panic"))
                    .join()
                    .unwrap_err();
                assert!(!panicked(), "a thread outside the run stopped it");
                // A thread started by a thread of the run panics.
                spawn_in_run("nested", || {
                    panic_in_run("inner");
                })
                .unwrap()
                .join()
                .unwrap();
                let seen = panicked();
                // The first panic is named, with its thread.
                let first = run_panic_flag().unwrap().first().unwrap_or_default();
                assert!(
                    first.starts_with("thread 'inner' panicked at ")
                        && first.ends_with(": injected test panic")
                        && !first.contains("::"),
                    "{first}"
                );
                drop(run);
                assert!(!panicked(), "outside the run");
                let _again = RunScope::enter();
                (seen, panicked())
            });
            let (seen, after) = a.join().unwrap();
            to_b.send(()).unwrap();
            (seen, b.join().unwrap(), after)
        });
        assert!(a_flag_seen, "the run whose thread panicked");
        assert!(!b_flag_seen, "another run");
        assert!(!after_seen, "a run entered after the panic");
    }

    /// The calling thread, and only it, runs at the background nice value.
    #[test]
    fn background_priority_lowers_only_the_calling_thread() {
        let nice = || {
            // SAFETY: as in `background_priority`. getpriority returns the nice value.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
        };
        let before = nice();
        let inside = std::thread::spawn(move || {
            background_priority().unwrap();
            nice()
        })
        .join()
        .unwrap();
        assert_eq!(inside, BACKGROUND_NICE.max(before));
        assert_eq!(nice(), before, "the spawning thread is unchanged");
    }
}
