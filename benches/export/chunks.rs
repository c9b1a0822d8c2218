//! Chunk size: sealing and streaming rates, time to the first chunk, and
//! the buffers an export reserves, for each candidate size.

use crate::e2e::{ClientKind, E2eRun, InProcServer, e2e_runs, med};
use crate::env::{CaseDb, Env, SnapData};
use crate::opts::Opts;
use crate::report::{Report, f1, f2, mbs, mib};
use crate::seal::{fernet_1t, sealer_run};
use crate::timing::{interleaved, time};
use crate::{CHUNK_SIZES, KIB, MIB};
use case_export::seal::token_len;
use case_export::server::Config;

pub fn chunk_section(r: &mut Report, env: &Env, db: &CaseDb, d: &SnapData, opts: &Opts) {
    let size_mib = d.bytes.len() as u64 / MIB;
    let s = r.section(
        &format!("Chunk size (snapshot of {} MiB)", mib(d.bytes.len() as u64)),
        "`Sealer 2w`: sealing throughput, no network. `stream MB/s`: end to end \
         with the discarding client, first chunk to end (snapshot build \
         excluded, it does not depend on the chunk size). `header→chunk`: \
         from the header message to the first chunk, the part of the time \
         to first chunk that the chunk size decides. `buffers/export`: \
         `Config::stream_buffer_bytes()` = (channel_depth + 2 × workers + 1) \
         × token size, what the memory budget reserves per export besides \
         the snapshot.",
        &[
            "chunk",
            "fernet 1T MB/s",
            "Sealer 2w MB/s",
            "stream MB/s (discard)",
            "stream MB/s (to disk)",
            "header→chunk ms",
            "token KiB",
            "buffers/export MiB",
        ],
    );
    let data = &d.bytes[..];
    let n = data.len() as u64;
    let reps = opts.reps(size_mib);
    for &cs in &CHUNK_SIZES {
        let cs = cs as usize;
        let m = interleaved(
            reps,
            &mut [
                ("fernet", &mut || time(|| fernet_1t(data, cs))),
                ("sealer2", &mut || time(|| sealer_run(data, cs, 2))),
            ],
        );
        let mut cfg_seen = Config::default();
        let srv = InProcServer::start(env, &db.path, |c| {
            c.chunk_size = cs;
            cfg_seen = c.clone();
        });
        let runs = e2e_runs(
            env,
            &srv.url,
            &d.case_id,
            &[ClientKind::Discard, ClientKind::Dir],
            reps,
        );
        drop(srv);
        let stream_discard = mbs(n, med(&runs[0], E2eRun::stream_secs));
        let stream_dir = mbs(n, med(&runs[1], E2eRun::stream_secs));
        let h2c = med(&runs[0], |x| x.header_to_chunk) * 1e3;
        let tok = token_len(cs + 40) as u64;
        let buffers = cfg_seen.stream_buffer_bytes();
        r.metric(&format!("chunk_{cs}_seal2_mbs"), mbs(n, m[1]));
        r.metric(&format!("chunk_{cs}_stream_discard_mbs"), stream_discard);
        r.metric(&format!("chunk_{cs}_stream_dir_mbs"), stream_dir);
        r.row(
            s,
            vec![
                format!("{} KiB", cs as u64 / KIB),
                f1(mbs(n, m[0])),
                f1(mbs(n, m[1])),
                f1(stream_discard),
                f1(stream_dir),
                f2(h2c),
                format!("{:.0}", tok as f64 / 1024.0),
                mib(buffers),
            ],
        );
    }
    r.contention(s);
}
