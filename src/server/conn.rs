//! Accepted connections: a cap on how many each listener keeps open, and a
//! deadline for the TLS and HTTP/2 handshakes, so that sockets that never
//! speak cannot pile up. Only connections that sent the whole HTTP/2 client
//! preface in time reach the gRPC server.

use super::ServeError;
use super::config::TlsConfig;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tonic::transport::server::Connected;
use tracing::{debug, warn};
use zeroize::Zeroizing;

/// What every HTTP/2 client sends first (RFC 9113, section 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Open connections of one listener, against `max_connections`.
#[derive(Clone)]
pub struct ConnLimit(Arc<LimitInner>);

struct LimitInner {
    open: AtomicUsize,
    metrics: Arc<crate::metrics::Metrics>,
    max: usize,
    listener: &'static str,
    /// Set while refusing, so the log says it once per episode.
    refusing: AtomicBool,
}

/// One connection's place under the cap; given back on drop.
pub struct ConnSlot(Arc<LimitInner>);

impl ConnLimit {
    /// A cap of `max` connections for the listener named `listener` (a
    /// metric label: `grpc`, `health`, `metrics`).
    pub fn new(listener: &'static str, max: usize, metrics: Arc<crate::metrics::Metrics>) -> Self {
        Self(Arc::new(LimitInner {
            open: AtomicUsize::new(0),
            metrics,
            max,
            listener,
            refusing: AtomicBool::new(false),
        }))
    }

    /// A place for one more connection, or `None` at the cap (counted).
    pub fn try_take(&self) -> Option<ConnSlot> {
        let i = &self.0;
        let taken = i
            .open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < i.max).then_some(n + 1)
            })
            .is_ok();
        let m = &i.metrics;
        if !taken {
            m.connection_rejected(i.listener, "over_cap");
            if !i.refusing.swap(true, Ordering::SeqCst) {
                warn!(
                    listener = i.listener,
                    max_connections = i.max,
                    "connection cap reached: new connections are closed until some end"
                );
            }
            return None;
        }
        m.connections_open(i.listener).inc();
        Some(ConnSlot(i.clone()))
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.refusing.store(false, Ordering::SeqCst);
        self.0.metrics.connections_open(self.0.listener).dec();
    }
}

/// A connection that completed its handshake: the stream, the preface
/// bytes read to check it (handed to the HTTP/2 server first), and its
/// place under the cap, held until the server drops the connection.
pub struct Accepted<IO> {
    io: IO,
    preface: usize,
    _slot: ConnSlot,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Accepted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.preface < H2_PREFACE.len() {
            let rest = &H2_PREFACE[self.preface..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.preface += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Accepted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

// The peer address and client certificates stay visible to the handlers
// as tonic's own TCP and TLS connection info.
impl<IO: Connected> Connected for Accepted<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// Connections that completed their handshakes, in the shape
/// `serve_with_incoming` takes. It owns the listener and the handshakes
/// under way: when the server stops accepting and drops it, the port
/// closes and those handshakes end at once.
pub struct Incoming<IO, H> {
    listener: TcpListener,
    limit: ConnLimit,
    timeout: Duration,
    handshake: H,
    handshakes: JoinSet<Option<Accepted<IO>>>,
    /// After a failed accept (most likely out of file descriptors): a
    /// pause, so that some connections can close.
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Accepts on `listener`. Each connection gets a place under `limit` or is
/// closed at once; it then has `timeout` to finish `handshake` (TLS, or
/// nothing) and send the HTTP/2 client preface, or it is closed.
pub fn incoming<IO, H, Fut>(
    listener: TcpListener,
    limit: ConnLimit,
    timeout: Duration,
    handshake: H,
) -> Incoming<IO, H>
where
    H: Fn(TcpStream) -> Fut,
    Fut: Future<Output = io::Result<IO>>,
{
    Incoming {
        listener,
        limit,
        timeout,
        handshake,
        handshakes: JoinSet::new(),
        backoff: None,
    }
}

impl<IO, H, Fut> Incoming<IO, H>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(TcpStream) -> Fut,
    Fut: Future<Output = io::Result<IO>> + Send + 'static,
{
    fn start_handshake(&mut self, tcp: TcpStream, peer: std::net::SocketAddr) {
        let Some(slot) = self.limit.try_take() else {
            return;
        };
        let _ = tcp.set_nodelay(true);
        let handshake = (self.handshake)(tcp);
        let timeout = self.timeout;
        let listener = self.limit.0.listener;
        let metrics = self.limit.0.metrics.clone();
        self.handshakes.spawn(async move {
            let greeted = tokio::time::timeout(timeout, async {
                let mut io = handshake.await?;
                let mut preface = [0u8; 24];
                io.read_exact(&mut preface).await?;
                if &preface != H2_PREFACE {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "not an HTTP/2 client preface",
                    ));
                }
                Ok(io)
            })
            .await;
            match greeted {
                Ok(Ok(io)) => Some(Accepted {
                    io,
                    preface: 0,
                    _slot: slot,
                }),
                Ok(Err(e)) => {
                    debug!(listener, %peer, error = %e, "handshake failed; connection closed");
                    None
                }
                Err(_) => {
                    metrics.connection_rejected(listener, "handshake_timeout");
                    debug!(listener, %peer, "handshake not done in time; connection closed");
                    None
                }
            }
        });
    }
}

impl<IO, H, Fut> tokio_stream::Stream for Incoming<IO, H>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(TcpStream) -> Fut + Unpin,
    Fut: Future<Output = io::Result<IO>> + Send + 'static,
{
    type Item = io::Result<Accepted<IO>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(pause) = this.backoff.as_mut() {
                if pause.as_mut().poll(cx).is_pending() {
                    break;
                }
                this.backoff = None;
            }
            match this.listener.poll_accept(cx) {
                Poll::Ready(Ok((tcp, peer))) => this.start_handshake(tcp, peer),
                Poll::Ready(Err(e)) => {
                    warn!(listener = this.limit.0.listener, error = %e, "accept failed");
                    this.backoff = Some(Box::pin(tokio::time::sleep(Duration::from_millis(100))));
                }
                Poll::Pending => break,
            }
        }
        loop {
            match this.handshakes.poll_join_next(cx) {
                Poll::Ready(Some(Ok(Some(accepted)))) => return Poll::Ready(Some(Ok(accepted))),
                // Closed during its handshake (or the task failed): next.
                Poll::Ready(Some(_)) => continue,
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Plain TCP: the handshake is the HTTP/2 preface alone.
pub async fn plain(tcp: TcpStream) -> io::Result<TcpStream> {
    Ok(tcp)
}

/// The TLS handshake of `acceptor`, for [`incoming`].
pub fn tls(acceptor: TlsAcceptor) -> impl Fn(TcpStream) -> tokio_rustls::Accept<TcpStream> + Unpin {
    move |tcp| acceptor.accept(tcp)
}

/// File descriptors besides connections: databases, listeners, runtime.
const FD_RESERVE: u64 = 256;

/// Makes room for `max_connections` on each of `listeners` listeners: raises
/// the soft `RLIMIT_NOFILE` toward the hard limit if it is lower than that
/// needs, and warns when even the hard limit is too low (accepts would then
/// fail before the cap is reached).
pub fn ensure_fd_limit(max_connections: usize, listeners: usize) {
    let needed = (max_connections as u64)
        .saturating_mul(listeners as u64)
        .saturating_add(FD_RESERVE);
    #[cfg(target_os = "linux")]
    // SAFETY: getrlimit and setrlimit on this process, with a valid struct.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return;
        }
        let soft = l.rlim_cur;
        if soft >= needed {
            return;
        }
        let want = needed.min(l.rlim_max);
        if want > soft {
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: l.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                l.rlim_cur = raised.rlim_cur;
            }
        }
        let limit = l.rlim_cur;
        if limit < needed {
            warn!(
                needed,
                limit, "file descriptor limit below what max_connections needs"
            );
        }
    }
}

fn read_file(path: &std::path::Path, what: &str) -> Result<Zeroizing<Vec<u8>>, ServeError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|e| ServeError::Setup(format!("cannot read {what} {}: {e}", path.display())))
}

/// The server's TLS from `[tls]`, checked before anything is served: the
/// certificate chain and key, and with `client_ca` optional client
/// certificates that must chain to it. Offers HTTP/2 by ALPN.
pub fn tls_acceptor(t: &TlsConfig) -> Result<TlsAcceptor, ServeError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let setup = |m: String| ServeError::Setup(m);
    let certs = |path: &std::path::Path, what: &str| {
        let pem = read_file(path, what)?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| setup(format!("{what} {} is not valid PEM: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(setup(format!(
                "{what} {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            )));
        }
        Ok(certs)
    };
    let chain = certs(&t.cert, "TLS certificate")?;
    let key_pem = read_file(&t.key, "TLS key")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
        setup(format!(
            "TLS key {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
            t.key.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let invalid = |e: rustls::Error| setup(format!("invalid TLS configuration: {e}"));
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(invalid)?;
    let builder = match &t.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(certs(ca, "client CA")?);
            if added == 0 {
                return Err(setup(format!(
                    "client CA {} holds no usable CA certificate",
                    ca.display()
                )));
            }
            // Optional: callers may still authenticate with a token instead.
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| setup(format!("invalid client CA {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(invalid)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_refuses_over_max_and_frees_on_drop() {
        let limit = ConnLimit::new("test", 2, crate::metrics::Metrics::new());
        let a = limit.try_take().expect("first");
        let _b = limit.try_take().expect("second");
        assert!(limit.try_take().is_none(), "third is over the cap");
        drop(a);
        assert!(limit.try_take().is_some(), "a freed place is reusable");
    }

    #[tokio::test]
    async fn preface_is_read_back_first() {
        let (client, server) = tokio::io::duplex(64);
        let limit = ConnLimit::new("test", 1, crate::metrics::Metrics::new());
        let mut acc = Accepted {
            io: server,
            preface: 0,
            _slot: limit.try_take().unwrap(),
        };
        let mut client = client;
        tokio::io::AsyncWriteExt::write_all(&mut client, b"next")
            .await
            .unwrap();
        let mut got = [0u8; 28];
        acc.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..24], H2_PREFACE);
        assert_eq!(&got[24..], b"next");
    }
}
