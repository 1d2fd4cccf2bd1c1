//! keygate-echo: the demo and test upstream.
//!
//! `keygate-echo --listen 127.0.0.1:8080` answers every request `200` with the JSON
//! `{"method","path","version","headers":{lowercase name: value},"body","trailers":{...}}` of
//! what it received (repeated headers are joined with ", "). Prints `echo listening on ADDR` to
//! stderr once it accepts connections (port 0 picks a free port; ADDR shows the real one).
//!
//! hyper serves HTTP/1.1 and HTTP/2 without TLS (prior knowledge) on the same port, so tests can
//! point an HTTP/2 cluster at it and see request trailers.

use std::convert::Infallible;
use std::process::ExitCode;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::HeaderMap;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Map, Value};

/// Largest request body.
const MAX_BODY: usize = 16 * 1024 * 1024;

fn main() -> ExitCode {
    let listen = match parse_args() {
        Ok(Some(l)) => l,
        Ok(None) => return ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("keygate-echo: {why}\nusage: keygate-echo --listen ADDR");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keygate-echo: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(&listen)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keygate-echo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args() -> Result<Option<String>, String> {
    let mut listen = "127.0.0.1:8080".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().ok_or("--listen needs an address")?,
            "-h" | "--help" => {
                println!("usage: keygate-echo --listen ADDR   (default 127.0.0.1:8080)");
                return Ok(None);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some(listen))
}

async fn serve(listen: &str) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!("echo listening on {addr}");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                eprintln!("keygate-echo: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(echo);
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn echo(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_string(), |p| p.as_str().to_string());
    let version = format!("{:?}", req.version());
    let headers = to_json(req.headers());
    let (status, value) = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => {
            let trailers = collected.trailers().map_or_else(Map::new, to_json);
            let body = collected.to_bytes();
            let v = json!({
                "method": method,
                "path": path,
                "version": version,
                "headers": headers,
                "body": String::from_utf8_lossy(&body),
                "trailers": trailers,
            });
            (200, v)
        }
        Err(e) => (400, json!({ "error": e.to_string() })),
    };
    let resp = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())));
    Ok(resp.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
}

/// Headers (or trailers) as a JSON object, repeated names joined with ", ".
fn to_json(map: &HeaderMap) -> Map<String, Value> {
    let mut out = Map::new();
    for name in map.keys() {
        let joined: Vec<String> = map
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        out.insert(name.as_str().to_string(), Value::String(joined.join(", ")));
    }
    out
}
