//! Timed runs on a shared machine: other processes (builds, tests) share
//! the 2 cores, so each timed run waits for quiet first, records the
//! contention during it, and comparisons interleave their variants.

use crate::report::median;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub fn time<T>(f: impl FnOnce() -> T) -> f64 {
    let t = Instant::now();
    black_box(f());
    t.elapsed().as_secs_f64()
}

/// Busy CPU seconds of the whole machine, and of this process plus its
/// reaped children.
#[derive(Clone, Copy)]
pub struct CpuMark {
    pub at: Instant,
    pub machine_busy: f64,
    pub own: f64,
}

pub fn cpu_mark() -> CpuMark {
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let busy: u64 = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .enumerate()
        // user nice system idle iowait irq softirq steal: all but idle, iowait
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum();
    let ru = |who| {
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage fills the struct it is given.
        unsafe { libc::getrusage(who, &mut u) };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(u.ru_utime) + tv(u.ru_stime)
    };
    CpuMark {
        at: Instant::now(),
        machine_busy: busy as f64 / tck,
        own: ru(libc::RUSAGE_SELF) + ru(libc::RUSAGE_CHILDREN),
    }
}

pub fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

/// Share of the machine's CPU that other processes used between two marks.
pub fn others_share(a: CpuMark, b: CpuMark) -> f64 {
    let wall = (b.at - a.at).as_secs_f64().max(1e-6);
    let others = (b.machine_busy - a.machine_busy) - (b.own - a.own);
    (others / (wall * cores())).clamp(0.0, 1.0)
}

/// Total time the harness may spend waiting for a quiet machine.
pub static QUIET_BUDGET_MS: AtomicU64 = AtomicU64::new(180_000);
/// What that budget was at the start, for the report.
pub static QUIET_BUDGET_INITIAL_MS: AtomicU64 = AtomicU64::new(180_000);
/// Contention seen during timed runs, for the report.
pub static CONTENTION: std::sync::Mutex<Vec<f64>> = std::sync::Mutex::new(Vec::new());

/// Waits (within the run's budget) until other processes use less than
/// 15% of the machine over 300 ms, so a timed run starts on idle cores.
pub fn wait_quiet() {
    loop {
        let a = cpu_mark();
        std::thread::sleep(Duration::from_millis(300));
        let b = cpu_mark();
        if others_share(a, b) < 0.15 {
            return;
        }
        let left = QUIET_BUDGET_MS.load(Ordering::Relaxed);
        if left < 300 {
            return;
        }
        QUIET_BUDGET_MS.store(left - 300, Ordering::Relaxed);
    }
}

/// Times `f` after waiting for quiet, recording the contention during it.
/// A run during which other processes took more than 20% of the machine
/// is done again (twice at most, and only while the waiting budget lasts),
/// after waiting for quiet again.
pub fn timed_rep(f: &mut dyn FnMut() -> f64) -> f64 {
    let mut tries = 0;
    loop {
        wait_quiet();
        let a = cpu_mark();
        let secs = f();
        let b = cpu_mark();
        let share = others_share(a, b);
        tries += 1;
        // Once the waiting budget is spent, redoing runs would only make a
        // busy machine's run longer: keep what was measured.
        let budget_left = QUIET_BUDGET_MS.load(Ordering::Relaxed) >= 300;
        if share <= 0.2 || tries == 3 || !budget_left {
            CONTENTION.lock().unwrap().push(share);
            return secs;
        }
    }
}

/// Contention over the timed runs since the last call: (median, max).
pub fn take_contention() -> (f64, f64) {
    let v = std::mem::take(&mut *CONTENTION.lock().unwrap());
    let max = v.iter().copied().fold(0.0, f64::max);
    (median(&v), max)
}

/// Runs each named variant `reps` times, interleaved, and returns the
/// median seconds of each.
pub fn interleaved(reps: usize, variants: &mut [(&str, &mut dyn FnMut() -> f64)]) -> Vec<f64> {
    let mut secs: Vec<Vec<f64>> = vec![vec![]; variants.len()];
    for _ in 0..reps {
        for (i, (_, f)) in variants.iter_mut().enumerate() {
            secs[i].push(timed_rep(*f));
        }
    }
    secs.iter().map(|s| median(s)).collect()
}
