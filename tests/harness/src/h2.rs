//! A raw HTTP/2 client without TLS (prior knowledge), for requests no HTTP library will send:
//! header bytes that are not UTF-8, repeated pseudo-headers' neighbours, request trailers.
//! One request per connection; frames written by hand (RFC 9113), headers coded with HPACK.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::error::{Error, Result};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

/// One HTTP/2 request: header fields as raw bytes, in order (pseudo-headers first), an
/// optional body, and optional trailers.
#[derive(Debug, Clone, Default)]
pub struct H2Request {
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(Vec<u8>, Vec<u8>)>,
}

impl H2Request {
    /// `GET path` to `authority`, with `headers` after the pseudo-headers.
    pub fn get(path: &[u8], headers: &[(&str, &str)]) -> H2Request {
        let mut h: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b":method".to_vec(), b"GET".to_vec()),
            (b":scheme".to_vec(), b"http".to_vec()),
            (b":authority".to_vec(), b"localhost".to_vec()),
            (b":path".to_vec(), path.to_vec()),
        ];
        h.extend(
            headers
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())),
        );
        H2Request {
            headers: h,
            ..H2Request::default()
        }
    }

    /// Turns the request into a POST with `body` and `trailers`.
    pub fn with_body_and_trailers(mut self, body: &[u8], trailers: &[(&str, &str)]) -> H2Request {
        if let Some(m) = self.headers.iter_mut().find(|(k, _)| k == b":method") {
            m.1 = b"POST".to_vec();
        }
        self.body = body.to_vec();
        self.trailers = trailers
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        self
    }
}

/// The answer: status, header fields and body.
#[derive(Debug, Clone)]
pub struct H2Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(0).to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn read_frame(s: &mut TcpStream) -> Result<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    s.read_exact(&mut head)
        .map_err(|e| Error::msg(format!("h2: reading a frame: {e}")))?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload)
        .map_err(|e| Error::msg(format!("h2: reading a frame body: {e}")))?;
    Ok((head[3], head[4], stream, payload))
}

/// Sends `req` on a new connection to `127.0.0.1:port` and reads the answer of stream 1.
pub fn send(port: u16, req: &H2Request) -> Result<H2Response> {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .map_err(|e| Error::msg(format!("h2: connect to port {port}: {e}")))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| Error::msg(e.to_string()))?;
    let mut enc = fluke_hpack::Encoder::new();
    let block = enc.encode(req.headers.iter().map(|(k, v)| (&k[..], &v[..])));
    let done = req.body.is_empty() && req.trailers.is_empty();
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend(frame(
        HEADERS,
        END_HEADERS | if done { END_STREAM } else { 0 },
        1,
        &block,
    ));
    if !req.body.is_empty() {
        let flags = if req.trailers.is_empty() {
            END_STREAM
        } else {
            0
        };
        out.extend(frame(DATA, flags, 1, &req.body));
    }
    if !req.trailers.is_empty() {
        let block = enc.encode(req.trailers.iter().map(|(k, v)| (&k[..], &v[..])));
        out.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &block));
    }
    s.write_all(&out)
        .map_err(|e| Error::msg(format!("h2: sending: {e}")))?;
    read_response(&mut s)
}

fn read_response(s: &mut TcpStream) -> Result<H2Response> {
    let mut dec = fluke_hpack::Decoder::new();
    let (mut block, mut fields, mut body) = (Vec::new(), Vec::new(), Vec::new());
    loop {
        let (kind, flags, stream, payload) = read_frame(s)?;
        match kind {
            SETTINGS if flags & ACK == 0 => {
                let _ = s.write_all(&frame(SETTINGS, ACK, 0, &[]));
            }
            HEADERS | CONTINUATION if stream == 1 => {
                block.extend_from_slice(&payload);
                if flags & END_HEADERS != 0 {
                    let decoded = dec
                        .decode(&block)
                        .map_err(|e| Error::msg(format!("h2: HPACK: {e:?}")))?;
                    fields.extend(decoded.into_iter().map(|(k, v)| {
                        let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
                        (text(k), text(v))
                    }));
                    block.clear();
                }
            }
            DATA if stream == 1 => body.extend_from_slice(&payload),
            RST_STREAM if stream == 1 => return Err(Error::msg("h2: stream reset by the server")),
            GOAWAY => return Err(Error::msg("h2: connection closed by the server (GOAWAY)")),
            _ => {}
        }
        if stream == 1 && matches!(kind, HEADERS | DATA) && flags & END_STREAM != 0 {
            break;
        }
    }
    let status = fields
        .iter()
        .find(|(k, _)| k == ":status")
        .and_then(|(_, v)| v.parse().ok())
        .ok_or_else(|| Error::msg("h2: no :status in the answer"))?;
    Ok(H2Response {
        status,
        headers: fields,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
