//! TLS to PostgreSQL, as libpq's `sslmode` and `sslrootcert` say.
//!
//! Invariant: the mode in the URL is the mode used, and a mode that promises verification
//! never connects without it. tokio-postgres knows only `disable`, `prefer` and `require`, and
//! refuses the other libpq options, so both parameters are taken out of the URL (or the
//! `key=value` string) here and applied to the rustls connector:
//!
//! | `sslmode` | TLS | certificate checked |
//! | --- | --- | --- |
//! | `disable` | never | - |
//! | `prefer` (the default, as in libpq) | when the server offers it | no |
//! | `require` | always | no (with `sslrootcert`: as `verify-ca`, as libpq) |
//! | `verify-ca` | always | chained to `sslrootcert` |
//! | `verify-full` | always | chained to `sslrootcert` and naming the host |
//!
//! `sslrootcert` is a PEM file, or `system` for the system's CA certificates; `verify-ca` and
//! `verify-full` need it (libpq's fallback, `~/.postgresql/root.crt`, is not read). `allow` is
//! refused: tokio-postgres cannot try plaintext first.

use super::StoreError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Check {
    /// Encryption only.
    None,
    /// Chained to the roots, any name.
    Chain,
    /// Chained to the roots and naming the host.
    Full,
}

/// The TLS settings taken out of a database URL.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PgTls {
    pub(crate) mode: SslMode,
    pub(crate) check: Check,
    /// `sslrootcert`: a PEM file, or `system`.
    pub(crate) root_cert: Option<String>,
}

fn config_error(message: String) -> StoreError {
    StoreError::Internal(format!("invalid database URL: {message}"))
}

/// Splits `url` into the URL tokio-postgres parses (without `sslmode` and `sslrootcert`) and
/// the TLS settings they gave.
pub(crate) fn split(url: &str) -> Result<(String, PgTls), StoreError> {
    let mut sslmode = None;
    let mut root_cert = None;
    let mut take = |name: &str, value: String| match name {
        "sslmode" => sslmode = Some(value),
        _ => root_cert = Some(value),
    };
    let is_tls = |name: &str| name == "sslmode" || name == "sslrootcert";
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&') {
                    let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                    if is_tls(name) {
                        let value = percent_encoding::percent_decode_str(value)
                            .decode_utf8()
                            .map_err(|e| config_error(format!("{name}: {e}")))?;
                        take(name, value.into_owned());
                    } else {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut kept = Vec::new();
        for word in url.split_whitespace() {
            match word.split_once('=') {
                Some((name, value)) if is_tls(name) => {
                    take(name, value.trim_matches('\'').to_owned());
                }
                _ => kept.push(word),
            }
        }
        kept.join(" ")
    };
    Ok((rest, settings(sslmode.as_deref(), root_cert)?))
}

/// The settings of an `sslmode` (libpq's default: `prefer`) and an `sslrootcert`.
fn settings(sslmode: Option<&str>, root_cert: Option<String>) -> Result<PgTls, StoreError> {
    let (mode, check) = match sslmode.unwrap_or("prefer") {
        "disable" => (SslMode::Disable, Check::None),
        "prefer" => (SslMode::Prefer, Check::None),
        "require" if root_cert.is_some() => (SslMode::Require, Check::Chain),
        "require" => (SslMode::Require, Check::None),
        "verify-ca" => (SslMode::Require, Check::Chain),
        "verify-full" => (SslMode::Require, Check::Full),
        other => {
            return Err(config_error(format!(
                "sslmode={other} is not supported: give disable, prefer, require, verify-ca \
                 or verify-full"
            )))
        }
    };
    if check != Check::None && root_cert.is_none() {
        return Err(config_error(format!(
            "sslmode={} needs sslrootcert=FILE (a PEM file of the CA certificates to trust) \
             or sslrootcert=system (the system's)",
            sslmode.unwrap_or_default()
        )));
    }
    Ok(PgTls {
        mode,
        check,
        root_cert,
    })
}

/// The roots of `sslrootcert`: the PEM file's certificates, or the system's.
fn roots(root_cert: &str) -> Result<rustls::RootCertStore, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    if root_cert == "system" {
        let found = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(found.certs);
    } else {
        let path = std::path::Path::new(root_cert);
        for cert in crate::tls::certificates(path, "sslrootcert").map_err(config_error)? {
            roots
                .add(cert)
                .map_err(|e| config_error(format!("sslrootcert {root_cert}: {e}")))?;
        }
    }
    if roots.is_empty() {
        return Err(config_error(format!(
            "sslrootcert {root_cert}: no CA certificate"
        )));
    }
    Ok(roots)
}

impl PgTls {
    /// The connector for tokio-postgres (also given with `disable`, where it is not used).
    pub(crate) fn connector(&self) -> Result<MakeRustlsConnect, StoreError> {
        let provider = crate::tls::provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| config_error(format!("TLS: {e}")))?;
        let webpki = match (&self.root_cert, self.check) {
            (Some(root_cert), check) if check != Check::None => Some(
                WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots(root_cert)?),
                    provider.clone(),
                )
                .build()
                .map_err(|e| config_error(format!("sslrootcert {root_cert}: {e}")))?,
            ),
            _ => None,
        };
        let verifier = Verifier {
            webpki,
            check: self.check,
            provider,
        };
        let config = builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(MakeRustlsConnect::new(config))
    }
}

/// The server certificate check of a [`Check`]: WebPKI's, minus the name for `Chain`, none
/// for `None`. The handshake's signatures are always verified (the server holds the key of
/// the certificate it shows), so only the trust decision differs.
#[derive(Debug)]
struct Verifier {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    check: Check,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        let verdict =
            webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        match verdict {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if self.check == Check::Chain => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_leave_the_url_and_set_the_check() {
        let (url, tls) =
            split("postgres://ks@db:5432/k?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x")
                .unwrap();
        assert_eq!(url, "postgres://ks@db:5432/k?application_name=x");
        assert_eq!(tls.check, Check::Full);
        assert_eq!(tls.root_cert.as_deref(), Some("/etc/ca.pem"));
        let (url, tls) = split("host=db sslmode=require user=ks").unwrap();
        assert_eq!(url, "host=db user=ks");
        assert_eq!((tls.mode, tls.check), (SslMode::Require, Check::None));
        let (url, tls) = split("postgres://db/k?sslmode=require&sslrootcert=system").unwrap();
        assert_eq!(url, "postgres://db/k");
        assert_eq!(tls.check, Check::Chain);
        let (_, tls) = split("postgres://db/k").unwrap();
        assert_eq!((tls.mode, tls.check), (SslMode::Prefer, Check::None));
        let (_, tls) = split("postgres://db/k?sslmode=disable").unwrap();
        assert_eq!(tls.mode, SslMode::Disable);
    }

    #[test]
    fn a_verifying_mode_without_roots_or_an_unknown_mode_is_refused() {
        for (url, want) in [
            ("postgres://db/k?sslmode=verify-full", "needs sslrootcert"),
            ("host=db sslmode=verify-ca", "needs sslrootcert"),
            (
                "postgres://db/k?sslmode=allow",
                "sslmode=allow is not supported",
            ),
        ] {
            let err = split(url).unwrap_err().to_string();
            assert!(err.contains(want), "{url}: {err}");
        }
    }
}
