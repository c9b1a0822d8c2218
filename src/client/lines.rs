//! Where a received export's tokens go, one per line, hashed as they are
//! written: any `AsyncWrite`, or a file written by a thread of its own.
//!
//! The file path keeps the receiving task to decoding messages: hashing
//! (SHA-256 runs at about the speed the tokens arrive) and the writes
//! happen on the writer thread meanwhile, each token written straight from
//! the message with its newline in one call, no buffer in between. The
//! thread also starts the kernel's writeback of what it has written every
//! few megabytes, so the final fsync has little left to wait for.

use sha2::{Digest, Sha256};
use std::io::{IoSlice, Write};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// Tokens the file writer may have queued: as many as the server's
/// default channel, so neither side waits on the other for long.
const QUEUE: usize = 8;
/// Written bytes between two requests to start writeback.
#[cfg(target_os = "linux")]
const WRITEBACK_EVERY: u64 = 8 << 20;

/// The destination of one export's lines.
pub(super) enum Lines<'w, W> {
    /// Any writer, hashed and written on the receiving task.
    Writer { out: &'w mut W, hasher: Sha256 },
    /// A file, hashed and written on its own thread.
    File(FileLines),
}

impl<'w, W: AsyncWrite + Unpin> Lines<'w, W> {
    pub(super) fn writer(out: &'w mut W) -> Self {
        Self::Writer {
            out,
            hasher: Sha256::new(),
        }
    }

    /// Hashes and writes one token and its newline.
    pub(super) async fn line(&mut self, token: String) -> std::io::Result<()> {
        match self {
            Self::Writer { out, hasher } => {
                hasher.update(token.as_bytes());
                hasher.update(b"\n");
                out.write_all(token.as_bytes()).await?;
                out.write_all(b"\n").await
            }
            Self::File(f) => f.line(token).await,
        }
    }

    /// Everything is written: the SHA-256 of it, and the file, if any.
    pub(super) async fn finish(self) -> std::io::Result<([u8; 32], Option<std::fs::File>)> {
        match self {
            Self::Writer { out, hasher } => {
                out.flush().await?;
                Ok((hasher.finalize().into(), None))
            }
            Self::File(f) => {
                let (digest, file) = f.finish().await?;
                Ok((digest, Some(file)))
            }
        }
    }
}

type Done = std::io::Result<([u8; 32], std::fs::File)>;

/// A file being written by its own thread.
pub(super) struct FileLines {
    tx: Option<mpsc::Sender<String>>,
    done: oneshot::Receiver<Done>,
}

impl FileLines {
    pub(super) fn start(file: std::fs::File) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (done_tx, done) = oneshot::channel();
        std::thread::Builder::new()
            .name("export-writer".into())
            .spawn(move || {
                let _ = done_tx.send(write_lines(rx, file));
            })?;
        Ok(Self { tx: Some(tx), done })
    }

    async fn line(&mut self, token: String) -> std::io::Result<()> {
        let sent = match &self.tx {
            Some(tx) => tx.send(token).await.is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The thread stopped: it says why.
        self.tx = None;
        match (&mut self.done).await {
            Ok(Err(e)) => Err(e),
            _ => Err(std::io::Error::other("the file writer stopped")),
        }
    }

    async fn finish(mut self) -> Done {
        self.tx = None;
        self.done
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("the file writer stopped")))
    }
}

/// The writer thread: each token and its newline, hashed, then written.
fn write_lines(mut rx: mpsc::Receiver<String>, mut file: std::fs::File) -> Done {
    let mut hasher = Sha256::new();
    #[cfg(target_os = "linux")]
    let (mut written, mut flushed) = (0u64, 0u64);
    while let Some(token) = rx.blocking_recv() {
        hasher.update(token.as_bytes());
        hasher.update(b"\n");
        write_line(&mut file, token.as_bytes())?;
        #[cfg(target_os = "linux")]
        {
            written += token.len() as u64 + 1;
            if written - flushed >= WRITEBACK_EVERY {
                start_writeback(&file, flushed, written - flushed);
                flushed = written;
            }
        }
    }
    Ok((hasher.finalize().into(), file))
}

/// Writes `token` and a newline with as few calls as the kernel allows.
fn write_line(file: &mut std::fs::File, token: &[u8]) -> std::io::Result<()> {
    let total = token.len() + 1;
    let mut done = 0;
    while done < total {
        let n = if done < token.len() {
            file.write_vectored(&[IoSlice::new(&token[done..]), IoSlice::new(b"\n")])
        } else {
            file.write(b"\n")
        };
        match n {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Asks the kernel to start writing a range back to disk, without waiting:
/// the fsync at the end then finds most of the file already written. Only
/// a hint; an error changes nothing (the fsync still decides).
#[cfg(target_os = "linux")]
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range only reads its integer arguments; the file
    // descriptor is open for the duration of the call.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_file_gets_each_token_and_its_newline_and_their_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.enc");
        let mut lines = Lines::<tokio::io::Sink>::File(
            FileLines::start(std::fs::File::create(&path).unwrap()).unwrap(),
        );
        let tokens: Vec<String> = (0..40).map(|i| "x".repeat(i * 50_000 + 1)).collect();
        let mut expected = String::new();
        for t in &tokens {
            lines.line(t.clone()).await.unwrap();
            expected.push_str(t);
            expected.push('\n');
        }
        let (digest, file) = lines.finish().await.unwrap();
        assert!(file.is_some());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), expected);
        assert_eq!(
            digest,
            <[u8; 32]>::from(Sha256::digest(expected.as_bytes()))
        );
    }

    #[tokio::test]
    async fn a_failed_write_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ro");
        std::fs::write(&path, b"").unwrap();
        // Opened for reading only: every write fails.
        let file = std::fs::File::open(&path).unwrap();
        let mut lines = Lines::<tokio::io::Sink>::File(FileLines::start(file).unwrap());
        let mut failed = false;
        for _ in 0..(QUEUE + 4) {
            if lines.line("token".into()).await.is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed || lines.finish().await.is_err());
    }
}
