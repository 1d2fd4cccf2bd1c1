//! One admin call over HTTP or HTTPS: the credential header, a JSON body, and the API's answer
//! or its error message. Invariants: the key is only ever sent in the `x-api-key` header, never
//! printed or put in an error; it goes only to the origin of `--url`: no redirect is followed
//! (a 3xx answer is an error naming where it pointed). Not even a same-origin one: the admin
//! API never redirects, so a redirect means a wrong URL or someone else answering, and the
//! request body can carry a key too (`--import-key-file`, `key find`). HTTPS trusts the
//! system's roots plus, with `--ca-cert`, the certificates of that PEM file.

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Why a command failed; decides the exit status.
#[derive(Debug)]
pub enum Error {
    /// Bad usage or configuration (exit 2).
    Usage(String),
    /// The API answered with an error status (exit 1): status and the API's message.
    Api(u16, String),
    /// The store could not be reached or answered garbage (exit 3).
    Transport(String),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Api(..) => 1,
            Error::Usage(_) => 2,
            Error::Transport(_) => 3,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Usage(m) | Error::Transport(m) => f.write_str(m),
            Error::Api(status, m) => write!(f, "{status}: {m}"),
        }
    }
}

/// The store's address and the caller's key.
pub struct Client {
    base: String,
    key: String,
    agent: ureq::Agent,
}

/// Reads a key from a file (surrounding whitespace trimmed); the error never shows the key.
pub fn read_key_file(path: &Path, what: &str) -> Result<String, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Usage(format!("cannot read {what} {}: {e}", path.display())))?;
    let key = text.trim().to_owned();
    if key.is_empty() {
        return Err(Error::Usage(format!("{what} {} is empty", path.display())));
    }
    Ok(key)
}

/// Reads a key's value from a file, or from standard input for `-` (surrounding whitespace
/// trimmed); the error never shows the value.
pub fn read_value(path: &Path, what: &str) -> Result<String, Error> {
    if path.as_os_str() != "-" {
        return read_key_file(path, what);
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
        .map_err(|e| Error::Usage(format!("cannot read {what} from standard input: {e}")))?;
    let value = text.trim().to_owned();
    if value.is_empty() {
        return Err(Error::Usage(format!("{what}: standard input is empty")));
    }
    Ok(value)
}

/// The TLS roots: the system's, plus every certificate in `ca_cert`.
fn roots(ca_cert: Option<&Path>) -> Result<rustls::RootCertStore, Error> {
    let mut roots = rustls::RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(system.certs);
    if let Some(path) = ca_cert {
        let bad =
            |e: &dyn std::fmt::Display| Error::Usage(format!("--ca-cert {}: {e}", path.display()));
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(&e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(&e))?;
        if certs.is_empty() {
            return Err(bad(&"no PEM certificate in it"));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| bad(&e))?;
        }
    }
    Ok(roots)
}

/// rustls over `ring` (the provider ureq builds with) and `roots`.
#[allow(deprecated)] // ring: deprecated in rustls 0.23.48 only for lacking post-quantum groups
fn tls_config(ca_cert: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Usage(format!("TLS: {e}")))?
        .with_root_certificates(roots(ca_cert)?)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

impl Client {
    /// A client of the store at `base` (`http://` or `https://`; anything else is a usage
    /// error), trusting `ca_cert` besides the system's roots for HTTPS.
    pub fn new(base: &str, key: String, ca_cert: Option<&Path>) -> Result<Client, Error> {
        let lower = base.to_ascii_lowercase();
        let https = lower.starts_with("https://");
        if !https && !lower.starts_with("http://") {
            return Err(Error::Usage(format!(
                "--url {base:?}: give the scheme, e.g. https://keystore.example:8081"
            )));
        }
        let mut builder = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(30))
            .redirects(0);
        if https {
            builder = builder.tls_config(tls_config(ca_cert)?);
        }
        Ok(Client {
            base: base.trim_end_matches('/').to_owned(),
            key,
            agent: builder.build(),
        })
    }

    /// Sends `method path` with an optional JSON body; the answer's JSON on 2xx.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, Error> {
        let url = format!("{}{}", self.base, path);
        let req = self.agent.request(method, &url).set("x-api-key", &self.key);
        let res = match body {
            Some(b) => req
                .set("content-type", "application/json")
                .send_string(&b.to_string()),
            None => req.call(),
        };
        match res {
            Ok(res) if (300..400).contains(&res.status()) => Err(redirect(method, &url, &res)),
            Ok(res) => parse(res),
            Err(ureq::Error::Status(status, res)) => Err(api_error(status, res)),
            Err(ureq::Error::Transport(t)) => Err(Error::Transport(format!(
                "{method} {url}: {}",
                transport_reason(&t)
            ))),
        }
    }
}

/// A redirect, refused: where it pointed, and that nothing was sent there.
fn redirect(method: &str, url: &str, res: &ureq::Response) -> Error {
    let to = res.header("location").unwrap_or("nowhere");
    Error::Transport(format!(
        "{method} {url}: the store answered {} redirecting to {to}; keygatectl follows no \
         redirect (the key would go along): give --url the address that answers",
        res.status()
    ))
}

/// A transport error without its URL (the caller names it once): kind, message and causes.
fn transport_reason(t: &ureq::Transport) -> String {
    let mut text = t.kind().to_string();
    if let Some(m) = t.message() {
        text.push_str(": ");
        text.push_str(m);
    }
    let mut source = std::error::Error::source(t);
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

fn parse(res: ureq::Response) -> Result<Value, Error> {
    let text = res
        .into_string()
        .map_err(|e| Error::Transport(format!("reading the answer: {e}")))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Transport(format!("the answer is not JSON ({e}): {text}")))
}

/// The API's message: an RFC 9457 problem's `detail` (else its `title`), or the `error` of
/// `{"error": "..."}`; the raw body when it is neither.
fn api_error(status: u16, res: ureq::Response) -> Error {
    let text = res.into_string().unwrap_or_default();
    Error::Api(status, error_message(&text).unwrap_or(text))
}

fn error_message(body: &str) -> Option<String> {
    let v = serde_json::from_str::<Value>(body).ok()?;
    ["detail", "title", "error"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::error_message;

    #[test]
    fn problem_details_and_error_objects_both_give_their_message() {
        let problem = r#"{"type":"https://keygate.dev/problems/forbidden","title":"Forbidden","status":403,"detail":"this key lacks the capability account_admin"}"#;
        assert_eq!(
            error_message(problem).as_deref(),
            Some("this key lacks the capability account_admin")
        );
        let titled = r#"{"type":"about:blank","title":"Not Found","status":404}"#;
        assert_eq!(error_message(titled).as_deref(), Some("Not Found"));
        let legacy = r#"{"error":"account nope not found"}"#;
        assert_eq!(
            error_message(legacy).as_deref(),
            Some("account nope not found")
        );
        assert_eq!(error_message("<html>bad gateway</html>"), None);
    }
}
