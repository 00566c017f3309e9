//! After warm-up, an action allocates nothing with the native backend: a counting
//! global allocator watches 200 full EXPO actions and 200 two-speed ticks. (tract
//! allocates its tensors on every run; the count is printed for reference, not asserted.)

use controller::runtime::{Backend, Policy, PolicyOptions, TwoSpeedPolicy};
use shared_model::manifest::{Trust, load_bundle};
use shared_model::synthetic::SyntheticSpec;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations per call of `act` (on one observation and action buffer) after a
/// warm-up, counted on every thread (a two-speed worker's included).
fn allocations_per_action(
    mut act: impl FnMut(&[f32], &mut [f32]) -> anyhow::Result<()>,
    actions: usize,
) -> f64 {
    let obs: Vec<f32> = (0..10).map(|i| i as f32 * 0.1).collect();
    let mut a = [0.0; 2];
    for _ in 0..5 {
        act(&obs, &mut a).unwrap(); // warm-up
    }
    ALLOCATIONS.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    for _ in 0..actions {
        act(&obs, &mut a).unwrap();
    }
    COUNTING.store(false, Ordering::Relaxed);
    ALLOCATIONS.load(Ordering::Relaxed) as f64 / actions as f64
}

fn policy_actions(policy: &mut Policy, actions: usize) -> f64 {
    allocations_per_action(|o, a| policy.act(o, a).map(drop), actions)
}

// One test function: the counter is global, so parallel tests would disturb it.
#[test]
fn native_actions_do_not_allocate() {
    let dir = tempfile::tempdir().unwrap();
    SyntheticSpec::cpu().write(dir.path(), 4, None).unwrap();
    let b = load_bundle(dir.path(), &Trust::AllowUnsigned).unwrap();
    let options = |backend| PolicyOptions {
        backend,
        executed_steps: None,
        seed: 1,
    };
    let mut native = Policy::new(&b, &options(Backend::Native)).unwrap();
    assert_eq!(policy_actions(&mut native, 200), 0.0);
    let mut truncated = Policy::new(
        &b,
        &PolicyOptions {
            executed_steps: Some(2),
            ..options(Backend::Native)
        },
    )
    .unwrap();
    assert_eq!(policy_actions(&mut truncated, 200), 0.0);
    // Two-speed ticks: the tick edits and scores the worker's newest candidates while
    // the worker samples the next ones; neither allocates.
    let mut two = TwoSpeedPolicy::new(&b, &options(Backend::Native)).unwrap();
    let two_speed = allocations_per_action(|o, a| two.act(o, a).map(drop), 200);
    assert_eq!(two_speed, 0.0);
    let mut tract = Policy::new(&b, &options(Backend::Tract)).unwrap();
    eprintln!(
        "tract: {:.0} allocations per action (not asserted)",
        policy_actions(&mut tract, 50)
    );
}
