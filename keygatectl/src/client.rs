//! One admin call over HTTP: the credential header, a JSON body, and the API's answer or its
//! error message. Invariant: the key is only ever sent in the `x-api-key` header, never
//! printed or put in an error.

use serde_json::Value;
use std::path::Path;
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

impl Client {
    pub fn new(base: &str, key: String) -> Client {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(30))
            .build();
        Client {
            base: base.trim_end_matches('/').to_owned(),
            key,
            agent,
        }
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
            Ok(res) => parse(res),
            Err(ureq::Error::Status(status, res)) => Err(api_error(status, res)),
            Err(e) => Err(Error::Transport(format!("{method} {url}: {e}"))),
        }
    }
}

fn parse(res: ureq::Response) -> Result<Value, Error> {
    let text = res
        .into_string()
        .map_err(|e| Error::Transport(format!("reading the answer: {e}")))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Transport(format!("the answer is not JSON ({e}): {text}")))
}

/// The API's `{"error": "..."}` message, or the raw body when it is not that.
fn api_error(status: u16, res: ureq::Response) -> Error {
    let text = res.into_string().unwrap_or_default();
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or(text);
    Error::Api(status, message)
}
