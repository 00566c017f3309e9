//! Work split across threads on the CPU backends (`compute.threads`).
//!
//! burn's CPU backends run each operation on the calling thread. The learner's large
//! operations are independent by row (a chain, a candidate's score) or by critic
//! member, so a batch cut into consecutive ranges, each range on its own thread, gives
//! exactly the values of the whole batch on one thread; the callers join the parts in
//! order. The tests check it to the bit (`trainer/tests/schedules.rs`,
//! `trainer/tests/networks.rs`).

use burn::tensor::Tensor;
use std::ops::Range;

/// The `k`-th of `parts` consecutive ranges that cover `0..n`; their sizes differ by at
/// most one.
pub fn part(n: usize, parts: usize, k: usize) -> Range<usize> {
    n * k / parts..n * (k + 1) / parts
}

/// `f` on each of `parts` consecutive ranges covering `0..n` ([`part`]), the first on
/// the calling thread and each other one on a thread of its own; the results in order.
/// `parts` is clamped to `1..=n`, so no range is empty (unless `n` is 0: one empty
/// range). A panic in any part is raised again here.
pub fn in_threads<T: Send>(n: usize, parts: usize, f: impl Fn(Range<usize>) -> T + Sync) -> Vec<T> {
    let parts = parts.clamp(1, n.max(1));
    if parts == 1 {
        return vec![f(0..n)];
    }
    std::thread::scope(|s| {
        let f = &f;
        let others: Vec<_> = (1..parts)
            .map(|k| s.spawn(move || f(part(n, parts, k))))
            .collect();
        let mut out = Vec::with_capacity(parts);
        out.push(f(part(n, parts, 0)));
        for h in others {
            out.push(h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
        }
        out
    })
}

/// Parts of consecutive rows (the first axis) joined in order. One part is returned as
/// it is: a one-tensor `cat` would still copy it (on a GPU, one more kernel launch).
pub fn join<const D: usize>(mut parts: Vec<Tensor<D>>) -> Tensor<D> {
    if parts.len() == 1 {
        parts.pop().expect("one part")
    } else {
        Tensor::cat(parts, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_range_in_order() {
        for (n, parts) in [(10, 3), (3, 3), (7, 1), (5, 2), (64, 5)] {
            let got = in_threads(n, parts, |r| r);
            assert_eq!(got.len(), parts);
            assert_eq!(got[0].start, 0);
            assert_eq!(got.last().unwrap().end, n);
            for w in got.windows(2) {
                assert_eq!(w[0].end, w[1].start);
            }
            let (min, max) = got.iter().fold((usize::MAX, 0), |(a, b), r| {
                (a.min(r.len()), b.max(r.len()))
            });
            assert!(max - min <= 1 && min > 0, "{n} in {parts}: {got:?}");
        }
    }

    #[test]
    fn more_parts_than_items_are_clamped() {
        assert_eq!(in_threads(2, 8, |r| r), vec![0..1, 1..2]);
        assert_eq!(in_threads(0, 4, |r| r), vec![0..0]);
    }

    #[test]
    fn each_part_runs_on_its_own_thread() {
        let ids = in_threads(9, 3, |_| std::thread::current().id());
        assert_eq!(ids[0], std::thread::current().id());
        assert!(ids[1] != ids[0] && ids[2] != ids[0] && ids[1] != ids[2]);
    }
}
