//! HTTPS for the keystore's own listener (`--tls-cert`/`--tls-key`).
//!
//! Invariant: with a certificate configured, the listener speaks TLS only (no plaintext
//! fallback on the same port), with rustls' safe defaults (TLS 1.2 and 1.3) over the `ring`
//! provider; a certificate or key that cannot be read or parsed stops the start-up, naming
//! the file.

use crate::{router, AppState};
use axum_server::tls_rustls::RustlsConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

/// The crypto provider every TLS configuration of the keystore uses: `ring`, already built for
/// the workspace, rather than rustls' newer default aws-lc-rs (a C library build of several
/// minutes on the 2-core machines `make test` runs on). rustls 0.23.48 deprecates it only for
/// lacking post-quantum key exchange; classic X25519/P-256 stay as rustls offered them so far.
#[allow(deprecated)]
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM file (at least one), the error naming the file.
pub fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{what} {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// The server's TLS configuration from a PEM certificate chain and a PEM private key.
pub fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, String> {
    let chain = certificates(cert, "--tls-cert")?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Like [`crate::serve`], over TLS: prints `keystore listening on <addr> (https)` once the
/// listener accepts connections, and finishes in-flight requests after `shutdown`.
pub async fn serve_tls(
    listener: std::net::TcpListener,
    state: AppState,
    config: rustls::ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopper.graceful_shutdown(None);
    });
    let server =
        axum_server::from_tcp_rustls(listener, RustlsConfig::from_config(Arc::new(config)))?
            .handle(handle);
    eprintln!("keystore listening on {addr} (https)");
    server.serve(router(state).into_make_service()).await
}
