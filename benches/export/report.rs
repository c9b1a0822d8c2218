//! Statistics, the report's sections and metrics, and its Markdown with
//! the machine it ran on.

use crate::MIB;
use crate::timing::{QUIET_BUDGET_INITIAL_MS, QUIET_BUDGET_MS, take_contention};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;
use std::sync::atomic::Ordering;

pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn percentile(xs: &[f64], p: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Megabytes (10^6 bytes) per second.
pub fn mbs(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

pub fn f1(x: f64) -> String {
    if x.is_nan() {
        "n/a".into()
    } else {
        format!("{x:.1}")
    }
}

pub fn f2(x: f64) -> String {
    if x.is_nan() {
        "n/a".into()
    } else {
        format!("{x:.2}")
    }
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / MIB as f64)
}

pub struct Section {
    pub title: String,
    pub intro: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

#[derive(Default)]
pub struct Report {
    pub sections: Vec<Section>,
    pub metrics: BTreeMap<String, f64>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn section(&mut self, title: &str, intro: &str, header: &[&str]) -> usize {
        self.sections.push(Section {
            title: title.into(),
            intro: intro.into(),
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: vec![],
        });
        self.sections.len() - 1
    }

    pub fn row(&mut self, s: usize, cells: Vec<String>) {
        let line = cells.join(" | ");
        eprintln!("  {line}");
        self.sections[s].rows.push(cells);
    }

    /// Appends the contention seen since the last call to a section's intro.
    pub fn contention(&mut self, s: usize) {
        let (med, max) = take_contention();
        if med.is_nan() {
            return;
        }
        // The budget is 30 s with --quick: say the one this run had.
        let note = format!(
            " Other processes' CPU during these timed runs (a run above 20% is redone, twice at most, while the {:.0} s waiting budget lasts): median {:.0}%, max {:.0}% of the machine.",
            QUIET_BUDGET_INITIAL_MS.load(Ordering::Relaxed) as f64 / 1000.0,
            med * 100.0,
            max * 100.0
        );
        self.sections[s].intro.push_str(&note);
        self.metrics
            .insert(format!("contention_max_{}", self.sections[s].title), max);
    }

    pub fn metric(&mut self, k: &str, v: f64) {
        self.metrics.insert(k.to_string(), v);
    }

    pub fn get(&self, k: &str) -> f64 {
        self.metrics.get(k).copied().unwrap_or(f64::NAN)
    }
}

pub fn machine() -> Vec<String> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|s| s.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let mem = proc_meminfo("MemTotal");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let rustc = Command::new("rustc")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has = |f: &str| flags.split_whitespace().any(|w| w == f);
    vec![
        format!(
            "{cores} cores ({cpu}; AES-NI {}, SHA-NI {}), {:.1} GiB RAM, Linux {kernel}",
            if has("aes") { "yes" } else { "no" },
            if has("sha_ni") { "yes" } else { "no" },
            mem as f64 / (1u64 << 30) as f64
        ),
        format!("{rustc}; release profile (thin LTO, codegen-units 1)"),
        format!("load average at start: {}", load.trim()),
        format!("source: {}", git_state()),
    ]
}

pub fn git_state() -> String {
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let head = run(&["rev-parse", "--short", "HEAD"]);
    let dirty = run(&[
        "status",
        "--porcelain",
        "--",
        "src",
        "Cargo.toml",
        "Cargo.lock",
    ]);
    let n = dirty.lines().count();
    if n == 0 {
        format!("commit {head}, src clean")
    } else {
        format!("commit {head} with {n} uncommitted change(s) under src/ and Cargo.*")
    }
}

pub fn proc_meminfo(field: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|r| r.trim_start_matches(':').split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

pub fn markdown(r: &Report, machine: &[String], elapsed: f64, tg: &Section) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# case-export benchmark results\n");
    // Every option given, not only --quick: an --only run is not the full
    // table.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let _ = writeln!(
        md,
        "Run: `cargo bench --bench export --{}` in {:.0} s.\n",
        args.iter().fold(String::new(), |acc, a| acc + " " + a),
        elapsed
    );
    for m in machine {
        let _ = writeln!(md, "- {m}");
    }
    let _ = writeln!(
        md,
        "- load average at end: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let _ = writeln!(md);
    let mut all: Vec<&Section> = vec![tg];
    all.extend(r.sections.iter());
    for sec in all {
        let _ = writeln!(md, "## {}\n", sec.title);
        if !sec.intro.is_empty() {
            let _ = writeln!(md, "{}\n", sec.intro);
        }
        let _ = writeln!(md, "| {} |", sec.header.join(" | "));
        let _ = writeln!(
            md,
            "|{}|",
            sec.header
                .iter()
                .map(|_| "---")
                .collect::<Vec<_>>()
                .join("|")
        );
        for row in &sec.rows {
            let _ = writeln!(md, "| {} |", row.join(" | "));
        }
        let _ = writeln!(md);
    }
    let initial = QUIET_BUDGET_INITIAL_MS.load(Ordering::Relaxed);
    let waited = initial.saturating_sub(QUIET_BUDGET_MS.load(Ordering::Relaxed));
    let _ = writeln!(
        md,
        "Before each timed run the harness waits until other processes use \
         under 15% of the machine (at most 180 s in all, 30 s with --quick); \
         this run waited {:.0} s.\n",
        waited as f64 / 1000.0
    );
    if !r.notes.is_empty() {
        let _ = writeln!(md, "## Notes\n");
        for n in &r.notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    md
}
