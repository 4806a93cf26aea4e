//! The TLS side of a client's connection to an `https://` broker, run in `lease-broker
//! --tls-relay HOST:PORT` rather than in `lease`: the TLS stack then never weighs on the start
//! of a local `lease run` or `lease verify` (a static binary relocates all it links at every
//! start). `lease` starts the relay with one end of a socket pair as its standard input, reads
//! one line (`ok`, or `error: WHY`), then speaks plain HTTP on that socket; the relay carries
//! it over TLS both ways until either side closes.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use tokio::io::AsyncWriteExt;

use crate::exit::Exit;

/// Where the CA certificates that an `https://` broker's certificate must chain to are, when
/// `LEASE_BROKER_CA` does not name a PEM file: the system's bundle (Debian's path).
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The bound on connecting and on the handshake.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the relay to `authority` (`HOST:PORT`) on standard input (a unix stream socket).
pub fn relay(authority: &str) -> Exit {
    let Ok(fd) = std::io::stdin().as_fd().try_clone_to_owned() else {
        return Exit::Failure;
    };
    let client = std::os::unix::net::UnixStream::from(fd);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(_) => return Exit::Failure,
    };
    runtime.block_on(async move {
        let Ok(()) = client.set_nonblocking(true) else {
            return Exit::Failure;
        };
        let Ok(mut client) = tokio::net::UnixStream::from_std(client) else {
            return Exit::Failure;
        };
        match connect(authority).await {
            Ok(mut tls) => {
                if client.write_all(b"ok\n").await.is_err() {
                    return Exit::Failure;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut tls).await;
                let _ = tls.shutdown().await;
                Exit::Success
            }
            Err(err) => {
                // One line, whatever it quotes (a path with a line break in it).
                let line = format!("error: {}\n", crate::one_line(&format!("{err:#}")));
                let _ = client.write_all(line.as_bytes()).await;
                Exit::Failure
            }
        }
    })
}

async fn connect(
    authority: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|err| anyhow!("'{}' is not a server name: {err}", host.escape_debug()))?;
    let tcp = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(authority))
        .await
        .map_err(|_| anyhow!("connecting: no answer within {}s", TIMEOUT.as_secs()))?
        .context("connecting")?;
    let _ = tcp.set_nodelay(true);
    let cas = ca_file();
    let connector = tokio_rustls::TlsConnector::from(config(&cas)?);
    tokio::time::timeout(TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| anyhow!("TLS handshake: no answer within {}s", TIMEOUT.as_secs()))?
        .map_err(|err| {
            // A certificate that no trusted CA signed: say which CAs were trusted, and how to
            // trust the broker's. (Not for a bad signature: rustls says so as well of a
            // handshake signed without the certificate's key, where trusting another CA is
            // the wrong advice.)
            let unknown = err
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(|tls| {
                    matches!(
                        tls,
                        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
                    )
                });
            if unknown {
                anyhow!(
                    "TLS handshake: {err}: no CA in {} signed the broker's certificate (or the broker does not send its intermediate certificates); set LEASE_BROKER_CA to the PEM file of the CA that did",
                    cas.display()
                )
            } else {
                anyhow::Error::from(err).context("TLS handshake")
            }
        })
}

/// The PEM file of the CA certificates an `https://` broker's certificate must chain to:
/// `LEASE_BROKER_CA`, or the system's bundle.
fn ca_file() -> std::path::PathBuf {
    std::env::var_os("LEASE_BROKER_CA")
        .filter(|p| !p.is_empty())
        .map_or_else(|| std::path::PathBuf::from(SYSTEM_CA_BUNDLE), Into::into)
}

/// The TLS client configuration: the CA certificates of `path` (a PEM file, see [`ca_file`]),
/// and nothing older than TLS 1.2.
fn config(path: &std::path::Path) -> Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let pem = crate::config::read_pem(path).map_err(|err| {
        anyhow!(
            "CA certificates {}: {err}; set LEASE_BROKER_CA to a PEM file",
            path.display()
        )
    })?;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|err| anyhow!("CA certificates {}: {err}", path.display()))?;
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        bail!(
            "CA certificates {}: none could be read; set LEASE_BROKER_CA to a PEM file",
            path.display()
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
