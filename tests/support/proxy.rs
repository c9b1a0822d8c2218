//! A TCP proxy on 127.0.0.1 in front of the test PostgreSQL server, which a
//! test can take down (every connection through it is cut, new ones are
//! refused) and bring back: "PostgreSQL stopped" without stopping the
//! machine's server. With TLS, it answers PostgreSQL's `SSLRequest`, does
//! the handshake with its own certificate and forwards the plaintext.

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

/// PostgreSQL's SSLRequest code (protocol 1234.5679).
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// A proxy to `target`; dropped, it stops.
pub struct PgProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    up: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PgProxy {
    /// A plaintext proxy to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        Self::start_with(target, None).await
    }

    /// A proxy that speaks TLS to its clients with `tls` (certificate and
    /// key), and plaintext to `target`.
    pub async fn start_with(target: SocketAddr, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (up, up_rx) = watch::channel(true);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if !*up_rx.borrow() {
                    drop(client);
                    continue;
                }
                let rx = up_rx.clone();
                let tls = tls.clone().map(TlsAcceptor::from);
                tokio::spawn(async move {
                    let _ = relay(client, target, tls, rx).await;
                });
            }
        });
        Self { addr, up, task }
    }

    /// Cuts every connection and refuses new ones until [`Self::bring_up`].
    pub fn take_down(&self) {
        self.up.send_replace(false);
    }

    /// Lets connections through again.
    pub fn bring_up(&self) {
        self.up.send_replace(true);
    }
}

async fn relay(
    mut client: TcpStream,
    target: SocketAddr,
    tls: Option<TlsAcceptor>,
    mut up: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut server = TcpStream::connect(target).await?;
    let Some(acceptor) = tls else {
        tokio::select! {
            r = tokio::io::copy_bidirectional(&mut client, &mut server) => r.map(|_| ()),
            _ = up.wait_for(|u| !*u) => Ok(()),
        }?;
        return Ok(());
    };
    let mut first = [0u8; 8];
    client.read_exact(&mut first).await?;
    if first != SSL_REQUEST {
        // A client that does not ask for TLS gets nothing from this proxy.
        return Ok(());
    }
    client.write_all(b"S").await?;
    let mut client = acceptor.accept(client).await?;
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut server) => r.map(|_| ()),
        _ = up.wait_for(|u| !*u) => Ok(()),
    }
}

/// The test PostgreSQL server's address, from `CASE_EXPORT_TEST_PG`.
pub fn pg_socket_addr() -> SocketAddr {
    let url = super::pg_admin_url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let hostport = rest.split_once('@').map_or(rest, |(_, h)| h);
    let hostport = hostport
        .split(['/', '?'])
        .next()
        .unwrap_or("127.0.0.1:5432");
    let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "5432"));
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    format!("{host}:{port}")
        .parse()
        .unwrap_or_else(|e| panic!("{} is not host:port ({e})", super::PG_ENV))
}

/// A CA, and a server certificate it signed for `names`, as rustls config
/// for the proxy plus the CA's PEM for clients.
pub fn proxy_tls(names: &[&str]) -> (Arc<rustls::ServerConfig>, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.self_signed(&ca_key).expect("CA cert");
    let ca_pem = ca.pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("server key");
    let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .expect("server params");
    let cert = params.signed_by(&key, &issuer).expect("server cert");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server config");
    (Arc::new(config), ca_pem)
}
