//! keygate-echo: the demo and test upstream.
//!
//! `keygate-echo --listen 127.0.0.1:8080` answers every request `200` with the JSON
//! `{"method","path","headers":{lowercase name: value},"body"}` of what it received (repeated
//! headers are joined with ", "). Prints `echo listening on ADDR` to stderr once it accepts
//! connections (port 0 picks a free port; ADDR shows the real one).
//!
//! Plain std::net with a thread per connection: HTTP/1.1 keep-alive (HTTP/1.0 and
//! `connection: close` close after the answer), `content-length` and chunked request bodies,
//! `expect: 100-continue`. Malformed requests get `400` and the connection is closed.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use serde_json::{json, Map, Value};

/// Largest request head (request line and headers).
const MAX_HEAD: u64 = 64 * 1024;
/// Largest request body.
const MAX_BODY: u64 = 16 * 1024 * 1024;

fn main() -> ExitCode {
    let mut listen = "127.0.0.1:8080".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => match args.next() {
                Some(a) => listen = a,
                None => return usage("--listen needs an address"),
            },
            "-h" | "--help" => {
                println!("usage: keygate-echo --listen ADDR   (default 127.0.0.1:8080)");
                return ExitCode::SUCCESS;
            }
            other => return usage(&format!("unknown argument {other:?}")),
        }
    }
    let listener = match TcpListener::bind(&listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("keygate-echo: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(addr) => eprintln!("echo listening on {addr}"),
        Err(e) => {
            eprintln!("keygate-echo: {e}");
            return ExitCode::FAILURE;
        }
    }
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let spawned = thread::Builder::new()
                    .name("echo-conn".into())
                    .spawn(move || serve(stream));
                if let Err(e) = spawned {
                    eprintln!("keygate-echo: cannot start a connection thread: {e}");
                }
            }
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                eprintln!("keygate-echo: accept: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
    ExitCode::SUCCESS
}

fn usage(why: &str) -> ExitCode {
    eprintln!("keygate-echo: {why}\nusage: keygate-echo --listen ADDR");
    ExitCode::from(2)
}

/// One request as received.
#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    keep_alive: bool,
}

/// Why a request could not be read.
#[derive(Debug)]
enum ReadError {
    /// The peer went away (or timed out) between requests: just close.
    Closed,
    /// A malformed request: answer 400 and close.
    Bad(String),
}

impl From<io::Error> for ReadError {
    fn from(_: io::Error) -> Self {
        ReadError::Closed
    }
}

fn serve(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    loop {
        match read_request(&mut reader, &mut writer) {
            Ok(req) => {
                let body = echo_body(&req).to_string();
                if write_response(&mut writer, 200, "OK", &body, &req).is_err() || !req.keep_alive {
                    return;
                }
            }
            Err(ReadError::Closed) => return,
            Err(ReadError::Bad(why)) => {
                let body = json!({ "error": why }).to_string();
                let head = format!(
                    "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = writer.write_all(format!("{head}{body}").as_bytes());
                return;
            }
        }
    }
}

/// The JSON answer for `req`.
fn echo_body(req: &Request) -> Value {
    let mut headers = Map::new();
    for (name, value) in &req.headers {
        let joined = match headers.get(name).and_then(Value::as_str) {
            Some(prev) => format!("{prev}, {value}"),
            None => value.clone(),
        };
        headers.insert(name.clone(), Value::String(joined));
    }
    json!({
        "method": req.method,
        "path": req.path,
        "headers": headers,
        "body": String::from_utf8_lossy(&req.body),
    })
}

fn write_response(
    w: &mut TcpStream,
    status: u16,
    reason: &str,
    body: &str,
    req: &Request,
) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    if !req.keep_alive {
        out.push_str("connection: close\r\n");
    }
    out.push_str("\r\n");
    if req.method != "HEAD" {
        out.push_str(body);
    }
    w.write_all(out.as_bytes())
}

/// Reads one line (with its `\n`), at most `limit` bytes. Empty at EOF.
fn read_line(r: &mut BufReader<TcpStream>, limit: u64) -> Result<Vec<u8>, ReadError> {
    let mut line = Vec::new();
    r.by_ref().take(limit).read_until(b'\n', &mut line)?;
    if !line.is_empty() && !line.ends_with(b"\n") {
        if line.len() as u64 >= limit {
            return Err(ReadError::Bad("request head too large".into()));
        }
        return Err(ReadError::Closed);
    }
    Ok(line)
}

fn trim_eol(line: &[u8]) -> Result<&str, ReadError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    std::str::from_utf8(line).map_err(|_| ReadError::Bad("request head is not UTF-8".into()))
}

fn read_request(r: &mut BufReader<TcpStream>, w: &mut TcpStream) -> Result<Request, ReadError> {
    let mut budget = MAX_HEAD;
    // Request line; empty lines before it are allowed (RFC 9112 §2.2).
    let request_line = loop {
        let line = read_line(r, budget)?;
        if line.is_empty() {
            return Err(ReadError::Closed);
        }
        budget = budget.saturating_sub(line.len() as u64);
        let text = trim_eol(&line)?;
        if !text.is_empty() {
            break text.to_string();
        }
    };
    let mut parts = request_line.split(' ');
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Bad(format!("bad request line {request_line:?}")));
    };
    if method.is_empty() || path.is_empty() || !version.starts_with("HTTP/1.") {
        return Err(ReadError::Bad(format!("bad request line {request_line:?}")));
    }
    let mut headers = Vec::new();
    loop {
        let line = read_line(r, budget)?;
        if line.is_empty() {
            return Err(ReadError::Closed);
        }
        budget = budget.saturating_sub(line.len() as u64);
        let text = trim_eol(&line)?;
        if text.is_empty() {
            break;
        }
        let Some((name, value)) = text.split_once(':') else {
            return Err(ReadError::Bad(format!("bad header line {text:?}")));
        };
        if name.is_empty() || name.contains(|c: char| c.is_whitespace()) {
            return Err(ReadError::Bad(format!("bad header name {name:?}")));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let header = |n: &'static str| {
        headers
            .iter()
            .filter(move |(k, _)| k == n)
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    let connection: Vec<String> = header("connection").collect();
    let keep_alive = if version == "HTTP/1.0" {
        connection.iter().any(|v| v.contains("keep-alive"))
    } else {
        !connection.iter().any(|v| v.contains("close"))
    };
    if header("expect").any(|v| v == "100-continue") {
        w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let chunked = header("transfer-encoding").any(|v| v.contains("chunked"));
    let body = if chunked {
        read_chunked(r)?
    } else if let Some(len) = header("content-length").next() {
        let len: u64 = len
            .parse()
            .map_err(|_| ReadError::Bad(format!("bad content-length {len:?}")))?;
        if len > MAX_BODY {
            return Err(ReadError::Bad("body too large".into()));
        }
        let mut body = Vec::new();
        r.by_ref().take(len).read_to_end(&mut body)?;
        if body.len() as u64 != len {
            return Err(ReadError::Closed);
        }
        body
    } else {
        Vec::new()
    };
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
        headers,
        body,
        keep_alive,
    })
}

fn read_chunked(r: &mut BufReader<TcpStream>) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r, 1024)?;
        if line.is_empty() {
            return Err(ReadError::Closed);
        }
        let text = trim_eol(&line)?;
        let size_text = text.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size_text, 16)
            .map_err(|_| ReadError::Bad(format!("bad chunk size {size_text:?}")))?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                let line = read_line(r, MAX_HEAD)?;
                if line.is_empty() || trim_eol(&line)?.is_empty() {
                    return Ok(body);
                }
            }
        }
        if body.len() as u64 + size > MAX_BODY {
            return Err(ReadError::Bad("body too large".into()));
        }
        let before = body.len();
        r.by_ref().take(size).read_to_end(&mut body)?;
        if (body.len() - before) as u64 != size {
            return Err(ReadError::Closed);
        }
        let crlf = read_line(r, 2)?;
        if !trim_eol(&crlf)?.is_empty() {
            return Err(ReadError::Bad("chunk not followed by CRLF".into()));
        }
    }
}
