//! Generated protobuf and gRPC code for `case_export.v1`, plus the redacting
//! `Debug` of messages that carry a key.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("case_export.v1");

/// Serialized descriptors of the contract, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("case_export_descriptor");

impl std::fmt::Debug for ExportKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportKey")
            .field("fernet_key", &"[REDACTED]")
            .field("ciphertext_sha256", &self.ciphertext_sha256)
            .field("chunk_count", &self.chunk_count)
            .field("ciphertext_size", &self.ciphertext_size)
            .field("warning", &self.warning)
            .field(
                "wrapped_key",
                &format_args!("{} bytes", self.wrapped_key.len()),
            )
            .field("sealed_to", &self.sealed_to)
            .field("receipt", &format_args!("{} bytes", self.receipt.len()))
            .finish()
    }
}

impl Drop for ExportKey {
    // Wipes the key text once the message has been encoded and dropped.
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.fernet_key);
    }
}
