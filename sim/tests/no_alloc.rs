//! Stepping (single and vectorized) allocates nothing after construction.
//!
//! Only the allocations of the thread that steps are counted: the simulator runs on the
//! caller's thread, and the test harness's own thread may allocate at any moment (a CI
//! run once saw 4 allocations that the stepping did not make).

use sim::{EnvConfig, Step, TaskId, VecEnv, make_env, rng::Rng};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Set on the stepping thread. `const`, without a destructor: reading it never
    /// allocates and works during thread teardown.
    static COUNT_THIS_THREAD: Cell<bool> = const { Cell::new(false) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNT_THIS_THREAD.try_with(Cell::get).unwrap_or(false) {
            ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn stepping_does_not_allocate() {
    COUNT_THIS_THREAD.with(|c| c.set(true));
    for task in TaskId::ALL {
        let spec = task.spec();
        let (od, ad, n) = (spec.obs_dim(), spec.action_dim(), 8);
        let mut env = make_env(task, EnvConfig::default());
        let mut venv = VecEnv::new(task, n, EnvConfig::default());
        let mut obs = vec![0.0; od];
        let mut vobs = vec![0.0; n * od];
        let mut fin = vec![0.0; n * od];
        let mut steps = vec![Step::default(); n];
        let mut act = vec![0.0; n * ad];
        let mut rng = Rng::new(0);
        env.reset(0, &mut obs);
        venv.reset(0, &mut vobs);
        let before = ALLOCATIONS.load(Ordering::SeqCst);
        for _ in 0..2_000 {
            act.iter_mut().for_each(|a| *a = rng.range(-1.0, 1.0));
            if env.step(&act[..ad], &mut obs).done() {
                env.reset(rng.next_u64(), &mut obs);
            }
            venv.step(&act, &mut vobs, &mut fin, &mut steps);
        }
        let after = ALLOCATIONS.load(Ordering::SeqCst);
        assert_eq!(
            after - before,
            0,
            "{task} allocated {} times",
            after - before
        );
    }
}
