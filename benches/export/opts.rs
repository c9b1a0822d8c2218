//! The harness's command line (see the header of `main.rs`).

use std::path::PathBuf;

pub struct Opts {
    /// Test mode: run by `cargo test` (no `--bench`, no `--profile`).
    pub smoke: bool,
    pub quick: bool,
    pub only: Option<Vec<String>>,
    pub reps: Option<usize>,
    pub out: Option<PathBuf>,
    pub e2e_sizes: Vec<u64>,
    pub mem_sizes: Vec<u64>,
    pub profile: Option<(String, u64, usize)>,
}

impl Opts {
    pub fn parse() -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut o = Opts {
            // `cargo bench` passes `--bench`; `cargo test` does not, and may
            // pass the test harness's own options, which are not ours.
            smoke: !args
                .iter()
                .any(|a| ["--bench", "--profile", "-h", "--help"].contains(&a.as_str())),
            quick: false,
            only: None,
            reps: None,
            out: None,
            e2e_sizes: vec![],
            mem_sizes: vec![],
            profile: None,
        };
        let sizes = |s: &str| -> Vec<u64> {
            s.split(',')
                .map(|x| x.trim().parse().expect("sizes are MiB numbers"))
                .collect()
        };
        if o.smoke {
            return o;
        }
        let mut args = args.into_iter();
        while let Some(a) = args.next() {
            let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
            match a.as_str() {
                "--bench" => {} // passed by `cargo bench`
                "--quick" => o.quick = true,
                "--only" => o.only = Some(val().split(',').map(str::to_string).collect()),
                "--reps" => o.reps = Some(val().parse().expect("--reps N")),
                "--out" => o.out = Some(PathBuf::from(val())),
                "--e2e-sizes" => o.e2e_sizes = sizes(&val()),
                "--mem-sizes" => o.mem_sizes = sizes(&val()),
                "--profile" => {
                    let v = val();
                    let p: Vec<&str> = v.split(':').collect();
                    o.profile = Some((
                        p[0].to_string(),
                        p.get(1).map_or(64, |s| s.parse().expect("MiB")),
                        p.get(2).map_or(3, |s| s.parse().expect("count")),
                    ));
                }
                "-h" | "--help" => {
                    println!("see the header of benches/export/main.rs and BENCHMARKS.md");
                    std::process::exit(0);
                }
                other => panic!("unknown option {other:?} (see benches/export/main.rs)"),
            }
        }
        if o.e2e_sizes.is_empty() {
            o.e2e_sizes = if o.quick { vec![16, 64] } else { vec![64, 512] };
        }
        if o.mem_sizes.is_empty() {
            o.mem_sizes = if o.quick {
                vec![16, 64]
            } else {
                vec![64, 256, 512]
            };
        }
        o
    }

    pub fn wants(&self, section: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|v| v.iter().any(|s| s == section))
    }

    /// Reps for a comparison whose single run moves `mib` MiB.
    pub fn reps(&self, mib: u64) -> usize {
        if let Some(r) = self.reps {
            return r.max(1);
        }
        match (self.quick, mib) {
            (true, _) => 3,
            (false, m) if m >= 256 => 3,
            (false, _) => 5,
        }
    }
}
