//! A throwaway certificate authority for TLS tests: a CA and a server certificate it signed for
//! `localhost` and `127.0.0.1`, written as PEM files into a temporary directory (made by rcgen).

use crate::error::{Error, Result};
use crate::tmp::TempDir;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use std::path::PathBuf;

/// PEM files of a fresh CA and of a server certificate signed by it; removed on drop.
pub struct TestCa {
    /// The CA's certificate (what a client trusts).
    pub ca_cert: PathBuf,
    /// The server's certificate (for `localhost` and `127.0.0.1`).
    pub server_cert: PathBuf,
    /// The server's private key (mode 0600).
    pub server_key: PathBuf,
    _dir: TempDir,
}

fn tls_err(e: rcgen::Error) -> Error {
    Error::msg(format!("generating a test certificate: {e}"))
}

impl TestCa {
    /// Generates the CA named `name` and its server certificate.
    pub fn new(name: &str) -> Result<TestCa> {
        let dir = TempDir::new("tls")?;
        let ca_key = KeyPair::generate().map_err(tls_err)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, name);
        let ca_pem = ca.self_signed(&ca_key).map_err(tls_err)?.pem();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().map_err(tls_err)?;
        let mut server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .map_err(tls_err)?;
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let server_pem = server.signed_by(&key, &issuer).map_err(tls_err)?.pem();
        let ca_cert = dir.path().join("ca.pem");
        let server_cert = dir.path().join("server.pem");
        let server_key = dir.path().join("server.key");
        std::fs::write(&ca_cert, ca_pem)?;
        std::fs::write(&server_cert, server_pem)?;
        write_private(&server_key, &key.serialize_pem())?;
        Ok(TestCa {
            ca_cert,
            server_cert,
            server_key,
            _dir: dir,
        })
    }
}

/// Writes `text` to a new file readable by its owner only (PostgreSQL refuses a key others
/// can read).
fn write_private(path: &std::path::Path, text: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    Ok(())
}
