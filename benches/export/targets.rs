//! The targets of BENCHMARKS.md, each with its verdict from this run.

use crate::MIB;
use crate::opts::Opts;
use crate::report::{Report, Section};

pub fn targets(r: &Report, opts: &Opts) -> Section {
    let mut rows = vec![];
    let verdict = |ok: bool, by: String| {
        let word = if ok { "met" } else { "MISSED" };
        if by.is_empty() {
            word.to_string()
        } else {
            format!("{word} ({by})")
        }
    };
    for &size in &opts.e2e_sizes {
        let fe = r.get(&format!("fernet_1t_mbs_{size}"));
        let dir = r.get(&format!("e2e_dir_mbs_{size}"));
        let dirs = r.get(&format!("e2e_dir_stream_mbs_{size}"));
        let dis = r.get(&format!("e2e_discard_mbs_{size}"));
        let diss = r.get(&format!("e2e_discard_stream_mbs_{size}"));
        let py = r.get(&format!("python_mbs_{size}"));
        if !dir.is_nan() && !fe.is_nan() {
            rows.push(vec![
                format!("e2e to disk ≥ 0.9 × fernet 1T ({size} MiB)"),
                format!("{:.2}× (stream phase alone {:.2}×)", dir / fe, dirs / fe),
                verdict(
                    dir / fe >= 0.9,
                    format!("{:.0}% of target", dir / fe / 0.9 * 100.0),
                ),
            ]);
        }
        if !dis.is_nan() && !fe.is_nan() {
            rows.push(vec![
                format!("e2e discarding client ≥ 1.6 × fernet 1T ({size} MiB)"),
                format!("{:.2}× (stream phase alone {:.2}×)", dis / fe, diss / fe),
                verdict(
                    dis / fe >= 1.6,
                    format!("{:.0}% of target", dis / fe / 1.6 * 100.0),
                ),
            ]);
        }
        if !dir.is_nan() && !py.is_nan() {
            rows.push(vec![
                format!("e2e to disk ≥ 10 × original design ({size} MiB)"),
                format!("{:.2}× (stream phase alone {:.2}×)", dir / py, dirs / py),
                verdict(
                    dir / py >= 10.0,
                    format!("{:.0}% of target", dir / py / 10.0 * 100.0),
                ),
            ]);
        }
        let py_s = r.get(&format!("python_s_{size}"));
        let build_s = r.get(&format!("e2e_dir_ttfc_s_{size}"));
        let total_s = r.get(&format!("e2e_dir_total_s_{size}"));
        if !py_s.is_nan() && !total_s.is_nan() {
            rows.push(vec![
                format!("  … if the original had to build the same snapshot first ({size} MiB)"),
                format!(
                    "{:.2}× (our time to first chunk {build_s:.2} s + Python {py_s:.2} s, against our {total_s:.2} s)",
                    (build_s + py_s) / total_s
                ),
                verdict(
                    (build_s + py_s) / total_s >= 10.0,
                    format!("{:.0}% of target", (build_s + py_s) / total_s / 10.0 * 100.0),
                ),
            ]);
        }
        let s1 = r.get(&format!("sealer_1w_mbs_{size}"));
        let s2 = r.get(&format!("sealer_2w_mbs_{size}"));
        if !s1.is_nan() {
            rows.push(vec![
                format!("Sealer 2 workers ≥ 1.8 × 1 worker ({size} MiB)"),
                format!("{:.2}×", s2 / s1),
                verdict(
                    s2 / s1 >= 1.8,
                    format!("{:.0}% of target", s2 / s1 / 1.8 * 100.0),
                ),
            ]);
        }
    }
    for &size in &opts.mem_sizes {
        let hwm = r.get(&format!("mem_hwm_{size}"));
        let target = r.get(&format!("mem_target_{size}"));
        if !hwm.is_nan() {
            rows.push(vec![
                format!("server peak RSS ≤ 1.1 × snapshot + 64 MiB ({size} MiB)"),
                format!(
                    "{:.0} MiB vs {:.0} MiB",
                    hwm / MIB as f64,
                    target / MIB as f64
                ),
                verdict(
                    hwm <= target,
                    format!("{:+.0} MiB", (hwm - target) / MIB as f64),
                ),
            ]);
            let anon = r.get(&format!("mem_peak_anon_{size}"));
            rows.push(vec![
                format!("  … counting anonymous memory only (RssAnon) ({size} MiB)"),
                format!(
                    "{:.0} MiB vs {:.0} MiB (mapped file pages at peak: {:.0} MiB)",
                    anon / MIB as f64,
                    target / MIB as f64,
                    r.get(&format!("mem_peak_file_{size}")) / MIB as f64
                ),
                verdict(
                    anon <= target,
                    format!("{:+.0} MiB", (anon - target) / MIB as f64),
                ),
            ]);
        }
    }
    let e = r.get("load_a_errors");
    if !e.is_nan() {
        rows.push(vec![
            "load A: 32 clients, zero errors".into(),
            format!("{e:.0} errors"),
            verdict(
                e == 0.0,
                format!("{:.1} exports/s", r.get("load_a_exports_per_s")),
            ),
        ]);
    }
    let o = r.get("load_b_other_errors");
    if !o.is_nan() {
        let hwm = r.get("load_b_hwm");
        let budget = r.get("load_b_budget");
        rows.push(vec![
            "load B: only OK / RESOURCE_EXHAUSTED, RSS within budget".into(),
            format!(
                "{:.0} OK, {:.0} exhausted, {o:.0} other; {:.0} MiB of {:.0} MiB",
                r.get("load_b_ok"),
                r.get("load_b_exhausted"),
                hwm / MIB as f64,
                budget / MIB as f64
            ),
            verdict(o == 0.0 && hwm <= budget, "".into()),
        ]);
    }
    Section {
        title: "Targets".into(),
        intro: "Each target as measured in this run.".into(),
        header: vec!["target".into(), "measured".into(), "verdict".into()],
        rows,
    }
}
