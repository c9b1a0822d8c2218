//! What sealing the key to the analyst costs: an export whose key is
//! wrapped for one recipient against the same export with the raw key,
//! side by side, and the age wrapping alone (time and bytes).

use crate::PURPOSE;
use crate::env::{Env, warm};
use crate::memory::ChildServer;
use crate::opts::Opts;
use crate::report::{Report, f2};
use crate::support::test_client_options;
use crate::timing::interleaved;
use case_export::client::{ClientOptions, ExportClient};
use case_export::keywrap::wrap_key;
use std::time::Instant;

const KEY: &str = "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=";

pub fn keys_section(r: &mut Report, env: &mut Env, opts: &Opts) {
    let s = r.section(
        "Keys sealed to recipients",
        "One export of the same case through `case-export serve` and the library \
         client (chunks discarded), with the raw key and with the key sealed to \
         one age X25519 recipient, interleaved; and `keywrap::wrap_key` alone, \
         median of 200 calls, with the size of the age file against the 44 \
         bytes of the raw key (smallest and largest of the 200: age adds a \
         random \"grease\" stanza to some files).",
        &["what", "median", "bytes of the key", "ratio to raw"],
    );
    let size = if opts.quick { 16 } else { 64 };
    let db = env.case_db_for(size);
    warm(&db.path);
    let child = ChildServer::spawn(env, &db.path, "");
    let recipients: Vec<String> = (0..3)
        .map(|_| age::x25519::Identity::generate().to_public().to_string())
        .collect();
    let case_id = db.case_ids[0].clone();
    let url = child.url();
    let rt = &env.client_rt;
    let export = |opts: ClientOptions| {
        let t = Instant::now();
        rt.block_on(async {
            let mut sink = tokio::io::sink();
            ExportClient::connect_with(&url, opts)
                .await
                .expect("connect")
                .export_case(&case_id, PURPOSE, &mut sink, |_, _| {})
                .await
                .expect("export")
        });
        t.elapsed().as_secs_f64()
    };
    let wrapped_opts = ClientOptions {
        recipients: recipients[..1].to_vec(),
        ..test_client_options()
    };
    let m = interleaved(
        opts.reps(size),
        &mut [
            ("raw", &mut || export(test_client_options())),
            ("wrapped", &mut || export(wrapped_opts.clone())),
        ],
    );
    r.metric("export_raw_key_s", m[0]);
    r.metric("export_wrapped_key_s", m[1]);
    r.row(
        s,
        vec![
            format!("export of a {size} MiB case, raw key"),
            format!("{:.3} s", m[0]),
            "44".into(),
            "1.00".into(),
        ],
    );
    r.row(
        s,
        vec![
            "the same, key sealed to 1 recipient".into(),
            format!("{:.3} s", m[1]),
            "see below".into(),
            f2(m[1] / m[0]),
        ],
    );
    for n in [1, 3] {
        let mut times: Vec<f64> = (0..200)
            .map(|_| {
                let t = Instant::now();
                let w = wrap_key(KEY, &recipients[..n]).expect("wrap");
                std::hint::black_box(w);
                t.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let med = times[times.len() / 2];
        let sizes: Vec<usize> = (0..200)
            .map(|_| wrap_key(KEY, &recipients[..n]).expect("wrap").len())
            .collect();
        let (lo, hi) = (
            sizes.iter().min().copied().unwrap_or(0),
            sizes.iter().max().copied().unwrap_or(0),
        );
        let bytes = if lo == hi {
            lo.to_string()
        } else {
            format!("{lo} to {hi}")
        };
        r.metric(&format!("wrap_key_us_{n}"), med * 1e6);
        r.row(
            s,
            vec![
                format!("wrap_key alone, {n} recipient(s)"),
                format!("{:.0} µs", med * 1e6),
                bytes,
                "".into(),
            ],
        );
    }
    r.contention(s);
}
