//! Compiles the proto contract with protox (no `protoc` needed) and writes the
//! descriptor set that server reflection serves.

use prost::Message;
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/case_export/v1/export.proto",
        "proto/case_export/v1/audit.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("case_export_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        // Messages that carry a key get a hand-written, redacting Debug.
        .skip_debug(["case_export.v1.ExportKey"])
        .compile_fds(fds)?;
    Ok(())
}
