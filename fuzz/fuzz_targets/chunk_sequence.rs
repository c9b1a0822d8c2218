//! A structured sequence of chunk headers, each sealed as a valid token
//! under the fixed key: `open_reader` must accept the file exactly when the
//! rules of docs/FORMAT.md say it is well-formed, and then return the
//! expected snapshot (see `case_export_fuzz::oracle`).

#![no_main]

use arbitrary::Arbitrary;
use case_export_fuzz::oracle::{Layout, Spec, check};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    chunk_size: u8,
    last_len: u8,
    total: Option<u16>,
    chunks: Vec<ChunkInput>,
}

/// (index, final, export-id choice, data length) per chunk; `None` is the
/// value a correct writer would use. The export id and reserved bits are
/// bytes that change only at one value, so that most sequences keep them
/// and well-formed files stay common enough to test acceptance too.
#[derive(Debug, Arbitrary)]
struct ChunkInput {
    index: Option<u8>,
    is_final: Option<bool>,
    export_choice: u8,
    data_len: Option<u8>,
    reserved: u8,
}

fuzz_target!(|input: Input| {
    let chunks: Vec<Spec> = input
        .chunks
        .iter()
        .take(24)
        .map(|c| Spec {
            index: c.index.map(u64::from),
            is_final: c.is_final,
            other_export: c.export_choice == 0xb5,
            data_len: c.data_len.map(usize::from),
            reserved_bit: c.reserved == 0x01,
        })
        .collect();
    let chunk_size = usize::from(input.chunk_size).max(1);
    check(&Layout {
        chunk_size,
        last_len: usize::from(input.last_len) % chunk_size + 1,
        total: input.total.map(u64::from),
        chunks,
    });
});
