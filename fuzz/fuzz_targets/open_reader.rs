//! Arbitrary bytes as an `.enc` file, opened with a fixed key: the reader
//! must never panic, never allocate beyond its bounds, and refuse with one
//! single-line error (random bytes cannot authenticate).

#![no_main]

use case_export::seal::{SecretKey, open_reader};
use case_export_fuzz::oracle::{KEY, LIMIT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = SecretKey::from_fernet_key(KEY).expect("the fixed key parses");
    match open_reader(data, &key, LIMIT) {
        Ok(opened) => assert!(opened.plaintext.len() as u64 <= LIMIT),
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty() && !msg.contains('\n'), "{msg:?}");
        }
    }
});
