//! The driver's keep-alive HTTP/1.1 connections to its ox endpoint: TCP, TLS (rustls) for
//! https, and hyper's low-level HTTP/1.1 client, which writes the request head exactly
//! as [`crate::client`] builds it — header names title-cased, in insertion order, and
//! nothing added (no `Host`, no `User-Agent`, no `Accept`).

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::client::conn::http1::{Builder, SendRequest};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::OxConfig;

/// How long an unused connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// At most this many unused connections are kept.
const MAX_IDLE: usize = 32;

/// One HTTP/1.1 connection: the request sender, and the task driving the socket (ended
/// when the connection is dropped).
pub(crate) struct Conn {
    pub(crate) sender: SendRequest<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The connections of one driver (shared by all users).
pub(crate) struct Pool {
    host: String,
    port: u16,
    tls: Option<TlsConnector>,
    idle: Mutex<Vec<(Conn, Instant)>>,
}

impl Pool {
    /// `ca_pem`: the content of `ssl_ca_file`, trusted besides the system's roots.
    pub(crate) fn new(config: &OxConfig, ca_pem: Option<&[u8]>) -> Result<Pool, String> {
        let extra = match ca_pem {
            Some(pem) => ca_certificates(pem)?,
            None => Vec::new(),
        };
        let tls = if config.https {
            Some(TlsConnector::from(Arc::new(tls_config(extra)?)))
        } else {
            None
        };
        Ok(Pool {
            host: config.host.clone(),
            port: config.port,
            tls,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// The most recently used idle connection that is still open, if any.
    pub(crate) fn take(&self) -> Option<Conn> {
        let mut idle = self.idle.lock();
        idle.retain(|(c, since)| since.elapsed() < IDLE_TIMEOUT && !c.sender.is_closed());
        while let Some((conn, _)) = idle.pop() {
            if conn.sender.is_ready() {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps a connection whose last exchange is complete, for the next request.
    pub(crate) fn put(&self, conn: Conn) {
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE {
            idle.push((conn, Instant::now()));
        }
    }

    /// A new connection (TCP, then TLS for https).
    pub(crate) async fn connect(&self) -> io::Result<Conn> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        // Head and body go out as one small write; do not wait for ACKs of the last.
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => handshake(tcp).await,
            Some(tls) => {
                let name = ServerName::try_from(self.host.clone())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                handshake(tls.connect(name, tcp).await?).await
            }
        }
    }
}

/// hyper's HTTP/1.1 client on `io`, header names in Dovecot's case (`Content-Type`).
async fn handshake<S>(io: S) -> io::Result<Conn>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = Builder::new()
        .title_case_headers(true)
        .handshake::<_, String>(TokioIo::new(io))
        .await
        .map_err(io::Error::other)?;
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(Conn { sender, task })
}

/// The certificates of a PEM bundle (`ssl_ca_file`).
fn ca_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("ssl_ca_file: not a PEM certificate: {e}"))?;
    if certs.is_empty() {
        return Err("ssl_ca_file: no PEM certificate in the file".into());
    }
    Ok(certs)
}

/// TLS with certificate verification: the system's roots (Mozilla's, from webpki-roots,
/// when the system has none) plus `extra`. No ALPN, as Dovecot.
fn tls_config(extra: Vec<CertificateDer<'static>>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let (system, _) =
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if system == 0 {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    for cert in extra {
        roots
            .add(cert)
            .map_err(|e| format!("ssl_ca_file: not a usable CA certificate: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("Unable to initialize TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
