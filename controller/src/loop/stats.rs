//! Timing statistics of the control loop without allocating in it: fixed log-linear
//! histograms (32 buckets per power of two, so a percentile is within about 3% of the
//! true value; the maximum is exact) and the cadence report built from them.

use serde::Serialize;
use std::fmt;
use std::time::Duration;

/// Sub-buckets per power of two (2^5 = 32).
const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
const BUCKETS: usize = SUB + (64 - SUB_BITS as usize) * SUB;

/// A histogram of durations in nanoseconds.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u32; BUCKETS]>,
    count: u64,
    sum_ns: u128,
    max_ns: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Histogram({})", self.summary())
    }
}

fn bucket(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let e = 63 - v.leading_zeros();
    let sub = (v >> (e - SUB_BITS)) as usize & (SUB - 1);
    SUB + (e - SUB_BITS) as usize * SUB + sub
}

/// The middle of bucket `i`.
fn value(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let e = (i - SUB) / SUB + SUB_BITS as usize;
    let sub = ((i - SUB) % SUB) as u64;
    let lo = (SUB as u64 | sub) << (e - SUB_BITS as usize);
    let width = 1u64 << (e - SUB_BITS as usize);
    lo + width / 2
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram {
            counts: Box::new([0; BUCKETS]),
            count: 0,
            sum_ns: 0,
            max_ns: 0,
        }
    }

    pub fn record(&mut self, d: Duration) {
        self.record_ns(d.as_nanos().min(u64::MAX as u128) as u64);
    }

    pub fn record_ns(&mut self, ns: u64) {
        let b = &mut self.counts[bucket(ns)];
        *b = b.saturating_add(1);
        self.count += 1;
        self.sum_ns += ns as u128;
        self.max_ns = self.max_ns.max(ns);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn clear(&mut self) {
        self.counts.fill(0);
        self.count = 0;
        self.sum_ns = 0;
        self.max_ns = 0;
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a = a.saturating_add(*b);
        }
        self.count += other.count;
        self.sum_ns += other.sum_ns;
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// The `q`-quantile in ns (0 for an empty histogram).
    pub fn quantile_ns(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((self.count - 1) as f64 * q).round() as u64 + 1;
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c as u64;
            if seen >= rank {
                return value(i).min(self.max_ns);
            }
        }
        self.max_ns
    }

    /// p50, p99, max and mean in µs.
    pub fn summary(&self) -> Summary {
        let us = |ns: u64| ns as f64 / 1e3;
        Summary {
            count: self.count,
            p50_us: us(self.quantile_ns(0.5)),
            p99_us: us(self.quantile_ns(0.99)),
            max_us: us(self.max_ns),
            mean_us: if self.count == 0 {
                0.0
            } else {
                self.sum_ns as f64 / self.count as f64 / 1e3
            },
        }
    }
}

/// Percentiles of one histogram, in µs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub count: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:.0} / p99 {:.0} / max {:.0} µs",
            self.p50_us, self.p99_us, self.max_us
        )
    }
}

/// What the loop measures, per episode and for the whole run.
#[derive(Clone, Debug, Default)]
pub struct Cadence {
    /// Draining the link's frames and picking the newest sensor frame.
    pub read: Histogram,
    /// The policy (only ticks that acted).
    pub infer: Histogram,
    /// Safety shaping, the gate, encoding and the write (ticks that sent a command).
    pub send: Histogram,
    /// Building transitions and handing them to the logger.
    pub log: Histogram,
    /// Wake-up time minus the deadline.
    pub jitter: Histogram,
    /// Time left before the next deadline when a tick's work ended (ticks that made it).
    pub headroom: Histogram,
    /// Sensor frame arrival (I/O thread) to its command written.
    pub latency: Histogram,
    pub ticks: u64,
    pub acted_ticks: u64,
    /// Deadlines missed: a tick's work ran past the next deadline.
    pub overruns: u64,
    pub elapsed: Duration,
}

impl Cadence {
    pub fn merge(&mut self, o: &Cadence) {
        self.read.merge(&o.read);
        self.infer.merge(&o.infer);
        self.send.merge(&o.send);
        self.log.merge(&o.log);
        self.jitter.merge(&o.jitter);
        self.headroom.merge(&o.headroom);
        self.latency.merge(&o.latency);
        self.ticks += o.ticks;
        self.acted_ticks += o.acted_ticks;
        self.overruns += o.overruns;
        self.elapsed += o.elapsed;
    }

    /// Empties every histogram and counter (keeps the histograms' memory).
    pub fn clear(&mut self) {
        for h in [
            &mut self.read,
            &mut self.infer,
            &mut self.send,
            &mut self.log,
            &mut self.jitter,
            &mut self.headroom,
            &mut self.latency,
        ] {
            h.clear();
        }
        self.ticks = 0;
        self.acted_ticks = 0;
        self.overruns = 0;
        self.elapsed = Duration::ZERO;
    }

    pub fn report(&self, target_hz: f64) -> CadenceReport {
        let secs = self.elapsed.as_secs_f64();
        CadenceReport {
            target_hz,
            effective_hz: if secs > 0.0 {
                self.ticks as f64 / secs
            } else {
                0.0
            },
            command_hz: if secs > 0.0 {
                self.acted_ticks as f64 / secs
            } else {
                0.0
            },
            ticks: self.ticks,
            acted_ticks: self.acted_ticks,
            overruns: self.overruns,
            seconds: secs,
            read: self.read.summary(),
            infer: self.infer.summary(),
            send: self.send.summary(),
            log: self.log.summary(),
            jitter: self.jitter.summary(),
            headroom: self.headroom.summary(),
            latency: self.latency.summary(),
        }
    }
}

/// The cadence numbers printed after each episode and at exit.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CadenceReport {
    pub target_hz: f64,
    /// Loop ticks per second.
    pub effective_hz: f64,
    /// Ticks that acted on a new sensor frame, per second.
    pub command_hz: f64,
    pub ticks: u64,
    pub acted_ticks: u64,
    pub overruns: u64,
    pub seconds: f64,
    pub read: Summary,
    pub infer: Summary,
    pub send: Summary,
    pub log: Summary,
    pub jitter: Summary,
    pub headroom: Summary,
    pub latency: Summary,
}

impl fmt::Display for CadenceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  rate {:.1} Hz (target {:.1}), commands {:.1}/s, {} ticks, {} overruns, {:.2} s",
            self.effective_hz,
            self.target_hz,
            self.command_hz,
            self.ticks,
            self.overruns,
            self.seconds
        )?;
        writeln!(
            f,
            "  stages: read {}, infer {}, send {}, log {}",
            self.read, self.infer, self.send, self.log
        )?;
        write!(
            f,
            "  wake-up jitter {}, sleep headroom {}, sensor-to-command {}",
            self.jitter, self.headroom, self.latency
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_tight() {
        let mut last = 0;
        for v in (0..100_000u64).chain([1 << 40, u64::MAX]) {
            let b = bucket(v);
            assert!(b >= last && b < BUCKETS);
            last = b;
            if v >= 32 {
                let mid = value(b) as f64;
                assert!((mid - v as f64).abs() / (v as f64) < 0.04, "{v} -> {mid}");
            }
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::new();
        for i in 1..=1000u64 {
            h.record_ns(i * 1000);
        }
        let s = h.summary();
        assert!((s.p50_us - 500.0).abs() < 20.0, "{s:?}");
        assert!((s.p99_us - 990.0).abs() < 40.0, "{s:?}");
        assert_eq!(s.max_us, 1000.0);
        assert!((s.mean_us - 500.5).abs() < 1e-6);
        let mut g = Histogram::new();
        g.merge(&h);
        assert_eq!(g.summary(), s);
        assert_eq!(Histogram::new().summary().p99_us, 0.0);
    }
}
