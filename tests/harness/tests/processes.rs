//! The harness's own end-to-end checks: the echo upstream, process cleanup, and Envoy with the
//! real template around a stand-in filter (`stub_wasm`), so they need only Envoy (`make setup`)
//! and this crate's own `keygate-echo`, not the real filter or keystore.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keygate_harness::{
    default_keygate_config, request, stub_wasm, Client, Envoy, EnvoyOpts, TempDir, Upstream,
};
use keygate_protocol::routes::admin;
use serde_json::Value;

fn echo_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_keygate-echo"))
}

fn alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

fn write_stub(dir: &TempDir, configure_ok: bool) -> PathBuf {
    let path = dir.path().join(format!("stub-{configure_ok}.wasm"));
    std::fs::write(&path, stub_wasm(configure_ok)).unwrap();
    path
}

/// Sends raw bytes on one connection and reads until the peer closes.
fn raw_exchange(port: u16, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn echo_reports_what_it_received() {
    let up = Upstream::start_with(echo_bin(), 0).unwrap();
    let r = request(
        "POST",
        &format!("{}/some/path?q=1", up.url()),
        &[("X-Api-Key", "k1"), ("x-multi", "a"), ("x-multi", "b")],
        Some("hello"),
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json().unwrap();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/some/path?q=1");
    assert_eq!(v["headers"]["x-api-key"], "k1");
    assert_eq!(v["headers"]["x-multi"], "a, b");
    assert_eq!(v["body"], "hello");
}

#[test]
fn echo_keeps_connections_alive_and_reads_chunked_bodies() {
    let up = Upstream::start_with(echo_bin(), 0).unwrap();
    let port = up.port();
    // Two requests on one connection, the first chunked, the second closing.
    let out = raw_exchange(
        port,
        b"PUT /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
          3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nx-trailer: t\r\n\r\n\
          GET /b HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
    assert!(out.contains(r#""body":"abcde""#), "{out}");
    assert!(out.contains(r#""path":"/b""#), "{out}");
    assert!(out.contains("connection: close"), "{out}");
    // HTTP/1.0 closes after one answer.
    let out = raw_exchange(port, b"GET /old HTTP/1.0\r\n\r\n");
    assert_eq!(out.matches("200 OK").count(), 1, "{out}");
    // Malformed: 400 and close.
    let out = raw_exchange(port, b"NONSENSE\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // A keep-alive client reuses its connection.
    let c = Client::keep_alive(Duration::from_secs(5));
    for i in 0..20 {
        let r = c.get(&format!("{}/{i}", up.url()), &[]).unwrap();
        assert_eq!(r.json().unwrap()["path"], format!("/{i}"));
    }
}

#[test]
fn drop_and_stop_leave_nothing_running() {
    let up = Upstream::start_with(echo_bin(), 0).unwrap();
    let pid = up.pid().unwrap();
    assert!(alive(pid));
    drop(up);
    assert!(!alive(pid), "echo {pid} survived drop");

    let mut up = Upstream::start_with(echo_bin(), 0).unwrap();
    let pid = up.pid().unwrap();
    up.stop();
    assert!(!alive(pid), "echo {pid} survived stop");
    assert_eq!(up.pid(), None);

    // A panicking test unwinds through the drop too.
    let pid = std::thread::spawn(|| {
        let up = Upstream::start_with(echo_bin(), 0).unwrap();
        let pid = up.pid().unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _up = up;
            panic!("test failure");
        }));
        assert!(r.is_err());
        pid
    })
    .join()
    .unwrap();
    assert!(!alive(pid), "echo {pid} survived a panic");
}

#[test]
fn a_failed_start_says_why() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let err = Upstream::start_with(echo_bin(), port).unwrap_err();
    assert!(err.0.contains("exited"), "{err}");
    assert!(err.0.contains("cannot listen"), "{err}");
}

/// Envoy from the real template, with the stand-in filter, an echo as upstream and another
/// echo standing in for the keystore.
#[test]
fn envoy_from_the_template_routes_and_reports() {
    let dir = TempDir::new("test").unwrap();
    let wasm = write_stub(&dir, true);
    let up = Upstream::start_with(echo_bin(), 0).unwrap();
    let fake_store = Upstream::start_with(echo_bin(), 0).unwrap();
    let mut opts = EnvoyOpts::new(
        "keygate-t",
        default_keygate_config(),
        up.port(),
        fake_store.port(),
    );
    opts.wasm_path = Some(wasm);
    let mut envoy = Envoy::start(opts).unwrap();
    assert!(envoy.config_path().is_file());

    let r = request(
        "GET",
        &format!("{}/hello", envoy.url()),
        &[("x-api-key", "k")],
        None,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let v: Value = r.json().unwrap();
    assert_eq!(v["path"], "/hello");
    assert_eq!(v["headers"]["x-api-key"], "k");
    let body = serde_json::json!({"account_id": "acme", "admin_user_id": "alice"});
    let r = keygate_harness::send_json(
        "POST",
        &format!("{}{}", envoy.url(), admin::ACCOUNTS),
        &[],
        &body,
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json().unwrap()["path"], admin::ACCOUNTS);

    let stats = envoy.stats();
    assert_eq!(
        stats.get("cluster.upstream.upstream_rq_200"),
        Some(&1),
        "routing"
    );
    assert_eq!(
        stats.get("cluster.keystore.upstream_rq_200"),
        Some(&1),
        "routing"
    );
    assert_eq!(envoy.stat("server.concurrency"), 2);
    // The filter's own counter, by the name it defined (`/stats` says `wasmcustom.NAME`).
    // Envoy configures one VM per worker, one on the main thread, and a base VM it clones
    // them from: 4 with 2 workers.
    let configures = envoy.stat(keygate_harness::STUB_METRIC);
    assert_eq!(
        stats.get(&format!("wasmcustom.{}", keygate_harness::STUB_METRIC)),
        Some(&configures)
    );
    assert!(configures >= 3, "{configures}");
    println!("on_configure ran {configures} times with 2 workers");
    assert_eq!(envoy.stat_opt("no.such.stat"), None);
    let missing = std::panic::catch_unwind(|| envoy.stat("keygate_no_such_stat"));
    assert!(missing.is_err());

    // Restart on the same ports; the old process is gone.
    let (port, admin, pid) = (envoy.port(), envoy.admin_port(), envoy.pid().unwrap());
    envoy.restart().unwrap();
    assert!(!alive(pid));
    assert_eq!((envoy.port(), envoy.admin_port()), (port, admin));
    let r = request("GET", &format!("{}/again", envoy.url()), &[], None).unwrap();
    assert_eq!(r.status, 200);

    let pid = envoy.pid().unwrap();
    envoy.kill();
    assert!(!alive(pid));
    let r = request("GET", &format!("{}/gone", envoy.url()), &[], None);
    assert!(r.is_err(), "{r:?}");
}

#[test]
fn envoy_two_instances_coexist_and_drop_cleans_up() {
    let dir = TempDir::new("test").unwrap();
    let wasm = write_stub(&dir, true);
    let up = Upstream::start_with(echo_bin(), 0).unwrap();
    let mk = |node: &str| {
        let mut o = EnvoyOpts::new(node, default_keygate_config(), up.port(), up.port());
        o.wasm_path = Some(wasm.clone());
        Envoy::start(o).unwrap()
    };
    let a = mk("keygate-a");
    let b = mk("keygate-b");
    let pids = [a.pid().unwrap(), b.pid().unwrap()];
    for e in [&a, &b] {
        let r = request("GET", &format!("{}/x", e.url()), &[], None).unwrap();
        assert_eq!(r.status, 200);
    }
    drop(a);
    drop(b);
    for pid in pids {
        assert!(!alive(pid), "envoy {pid} survived drop");
    }
}

#[test]
fn envoy_refusing_its_filter_config_fails_with_the_log() {
    let dir = TempDir::new("test").unwrap();
    let refusing = write_stub(&dir, false);
    let mut opts = EnvoyOpts::new("keygate-bad", default_keygate_config(), 1, 1);
    opts.wasm_path = Some(refusing);
    opts.ready_timeout = Duration::from_secs(10);

    let log = Envoy::start_expect_failure(opts.clone()).unwrap();
    assert!(log.contains("Unable to create Wasm plugin"), "{log}");

    let err = Envoy::start(opts).unwrap_err();
    assert!(err.0.contains("exited"), "{err}");
    assert!(err.0.contains("Unable to create Wasm plugin"), "{err}");

    // A filter that accepts: start_expect_failure is an error.
    let mut ok = EnvoyOpts::new("keygate-ok", default_keygate_config(), 1, 1);
    ok.wasm_path = Some(write_stub(&dir, true));
    let err = Envoy::start_expect_failure(ok).unwrap_err();
    assert!(err.0.contains("became ready"), "{err}");
}

#[test]
fn envoy_validates_the_rendered_template() {
    // `envoy --mode validate` loads the wasm and runs on_configure.
    let dir = TempDir::new("test").unwrap();
    let template = keygate_harness::load_envoy_template().unwrap();
    for (ok, want) in [(true, true), (false, false)] {
        let wasm = write_stub(&dir, ok);
        let config = serde_json::to_string_pretty(&default_keygate_config()).unwrap();
        let rendered = keygate_harness::render_envoy_config(
            &template,
            &keygate_harness::EnvoyConfigParams {
                node_id: "validate",
                listen_port: 1,
                admin_port: 2,
                upstream_port: 3,
                keystore_port: 4,
                wasm_path: &wasm,
                keygate_config: &config,
            },
        )
        .unwrap();
        let file = dir.path().join("envoy.yaml");
        std::fs::write(&file, rendered).unwrap();
        let out = std::process::Command::new(keygate_harness::envoy_path())
            .args(["--mode", "validate", "-c"])
            .arg(&file)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), want, "{text}");
    }
}
