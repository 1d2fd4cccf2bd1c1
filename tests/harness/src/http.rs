//! A small blocking HTTP client for tests: 4xx and 5xx are answers, not errors.

use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use crate::error::{Error, Result};

/// The default whole-request timeout of [`request`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP answer, whatever its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names (lowercase) and values, in the order received; repeated names repeat.
    pub headers: Vec<(String, String)>,
    /// The body as text (lossy UTF-8).
    pub body: String,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.body).map_err(|e| {
            Error::msg(format!(
                "status {} body is not JSON ({e}): {:?}",
                self.status,
                truncate(&self.body, 500)
            ))
        })
    }
}

/// An HTTP client. [`Client::new`] opens a fresh connection per request (deterministic across
/// server restarts); [`Client::keep_alive`] reuses connections.
#[derive(Debug, Clone)]
pub struct Client {
    agent: ureq::Agent,
}

impl Client {
    /// A client without connection reuse; `timeout` bounds each whole request.
    pub fn new(timeout: Duration) -> Client {
        Client::build(timeout, 0)
    }

    /// A client that keeps idle connections for reuse.
    pub fn keep_alive(timeout: Duration) -> Client {
        Client::build(timeout, 100)
    }

    fn build(timeout: Duration, idle: usize) -> Client {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(timeout.min(Duration::from_secs(3)))
            .timeout(timeout)
            .redirects(0)
            .max_idle_connections(idle)
            .max_idle_connections_per_host(idle)
            .build();
        Client { agent }
    }

    /// Sends `method url` with `headers` and an optional `body`. Any status is `Ok`; only
    /// transport failures (refused, timed out, malformed answer) are `Err`.
    pub fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<Response> {
        let mut req = self.agent.request(method, url);
        for (name, value) in headers {
            req = req.set(name, value);
        }
        let sent = match body {
            Some(b) => req.send_string(b),
            None => req.call(),
        };
        let resp = match sent {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => {
                return Err(Error::msg(format!("{method} {url}: {t}")));
            }
        };
        convert(resp).map_err(|e| e.context(format!("{method} {url}")))
    }

    /// GET `url` with `headers`.
    pub fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<Response> {
        self.request("GET", url, headers, None)
    }

    /// GET `url` with `headers`: the status and the body's bytes as received (for binary
    /// bodies, which [`Response`] would turn into lossy text).
    pub fn get_bytes(&self, url: &str, headers: &[(&str, &str)]) -> Result<(u16, Vec<u8>)> {
        let mut req = self.agent.get(url);
        for (name, value) in headers {
            req = req.set(name, value);
        }
        let resp = match req.call() {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => return Err(Error::msg(format!("GET {url}: {t}"))),
        };
        let status = resp.status();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut resp.into_reader(), &mut bytes)
            .map_err(|e| Error::msg(format!("GET {url}: reading the body of a {status}: {e}")))?;
        Ok((status, bytes))
    }

    /// `method url` with a JSON body (and `content-type: application/json`) plus `headers`.
    pub fn send_json(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> Result<Response> {
        let mut all: Vec<(&str, &str)> = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.request(method, url, &all, Some(&body.to_string()))
    }
}

fn convert(resp: ureq::Response) -> Result<Response> {
    let status = resp.status();
    let mut headers = Vec::new();
    for name in resp.headers_names() {
        for value in resp.all(&name) {
            headers.push((name.to_ascii_lowercase(), value.to_string()));
        }
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut bytes)
        .map_err(|e| Error::msg(format!("reading the body of a {status}: {e}")))?;
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

fn default_client() -> &'static Client {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    CLIENT.get_or_init(|| Client::new(DEFAULT_TIMEOUT))
}

/// Sends one request on a fresh connection with a 10 s timeout. Any status is `Ok`.
pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<Response> {
    default_client().request(method, url, headers, body)
}

/// GET `url` with `headers` (see [`request`]).
pub fn get(url: &str, headers: &[(&str, &str)]) -> Result<Response> {
    default_client().get(url, headers)
}

/// `method url` with a JSON body (see [`request`]).
pub fn send_json(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> Result<Response> {
    default_client().send_json(method, url, headers, body)
}

/// At most `max` bytes of `s` (on a char boundary), for messages.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}
