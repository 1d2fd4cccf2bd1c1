//! keygate-demo: the two-instance walk-through (`make demo`).
//!
//! Starts a keystore, the echo upstream and two Envoys (A and B, 2 workers each) with the
//! keygate filter, then walks through the scenario step by step, printing each HTTP status.
//! Uses the well-known ports (A 10000, B 10001, admins 9901/9902, keystore 8081, upstream
//! 8080) when they are free, free ports otherwise. Everything it started is stopped on exit,
//! on error and on Ctrl-C. Exits non-zero if a step did not give the expected answer.
//! With `--keep` (`make demo KEEP=1`) it keeps everything running after the last step, for
//! trying it by hand: it writes the root key and a fresh user key to files (mode 0600, in a
//! directory of mode 0700, removed on Ctrl-C), prints where they are, and waits for Ctrl-C.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use keygate_harness::{
    default_keygate_config, port_is_free, process, request, send_json, Envoy, Error, KeystoreOpts,
    Response, Result, Steps, TwoInstances, TwoOpts,
};
use keygate_protocol::routes::admin;
use serde_json::{json, Value};

/// Set by the signal handler; the watcher thread does the cleanup.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// With `--keep`: the directory holding the keys, removed by the watcher on Ctrl-C.
static KEYS_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn on_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT, SIGTERM and SIGHUP set a flag; a thread watching it kills every child process
/// group and exits (the owners' `Drop`s would not run after `exit`).
fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
    let watcher = thread::Builder::new()
        .name("signal-watcher".into())
        .spawn(|| loop {
            if INTERRUPTED.load(Ordering::SeqCst) {
                eprintln!("\ninterrupted: stopping everything");
                process::kill_all_children(Duration::from_secs(2));
                if let Some(dir) = KEYS_DIR.get() {
                    let _ = std::fs::remove_dir_all(dir);
                }
                std::process::exit(130);
            }
            thread::sleep(Duration::from_millis(50));
        });
    if let Err(e) = watcher {
        eprintln!("keygate-demo: cannot watch for Ctrl-C ({e}); children still die with the demo");
    }
}

const ACCOUNT: &str = "acme";
const ADMIN_USER: &str = "alice";
const USER: &str = "bob";
const USER_ROLE: &str = "member";
const CONCURRENT: usize = 200;

fn main() -> ExitCode {
    install_signal_handlers();
    let keep = std::env::args().skip(1).any(|a| a == "--keep");
    let outcome = std::panic::catch_unwind(|| run(keep));
    if INTERRUPTED.load(Ordering::SeqCst) {
        // The children were killed under the running steps: whatever failed, that is why.
        process::kill_all_children(Duration::from_secs(2));
        return ExitCode::from(130);
    }
    match outcome {
        Ok(Ok(0)) => {
            println!("\ndemo done: every step gave the expected answer");
            ExitCode::SUCCESS
        }
        Ok(Ok(n)) => {
            println!("\ndemo done: {n} step(s) did NOT give the expected answer (marked above)");
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            eprintln!("\ndemo failed: {e}");
            ExitCode::FAILURE
        }
        // The panic message was printed by the panic hook; everything was dropped on unwind.
        Err(_) => ExitCode::FAILURE,
    }
}

/// The port if it is free now, else `None` (a free one is picked).
fn prefer(port: u16) -> Option<u16> {
    port_is_free(port).then_some(port)
}

fn prefer_pair(listen: u16, admin: u16) -> Option<(u16, u16)> {
    Some((prefer(listen)?, prefer(admin)?))
}

/// The headers the echo upstream received, from its JSON body.
fn echoed(r: &Response) -> Value {
    r.json()
        .ok()
        .and_then(|v| v.get("headers").cloned())
        .unwrap_or(Value::Null)
}

fn header_of(echo: &Value, name: &str) -> String {
    echo.get(name)
        .and_then(Value::as_str)
        .unwrap_or("(absent)")
        .to_string()
}

fn user_key(r: &Response) -> Result<String> {
    r.json()?
        .get("user_key")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| Error::msg(format!("no user_key in {} {}", r.status, r.body)))
}

/// `kg_abcd…wxyz`: enough of a key to recognise it.
fn short(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 14 {
        return key.to_string();
    }
    let head: String = chars.iter().take(7).collect();
    let tail: String = chars.iter().skip(chars.len() - 4).collect();
    format!("{head}…{tail}")
}

fn run(keep: bool) -> Result<usize> {
    println!("keygate demo: starting the keystore, the echo upstream and Envoys A and B ...");
    let mut opts = TwoOpts::new(default_keygate_config());
    opts.keystore = KeystoreOpts {
        port: prefer(8081),
        ..KeystoreOpts::default()
    };
    opts.upstream_port = prefer(8080);
    opts.a_ports = prefer_pair(10000, 9901);
    opts.b_ports = prefer_pair(10001, 9902);
    let env = TwoInstances::start_with(opts)?;
    let (a, b, ks) = (&env.a, &env.b, &env.keystore);
    println!(
        "  keystore   {}\n  upstream   {} (keygate-echo)\n  Envoy A    {}  (admin {}, 2 workers)\n  Envoy B    {}  (admin {}, 2 workers)\n",
        ks.url(),
        env.upstream.url(),
        a.url(),
        a.admin_url(),
        b.url(),
        b.admin_url()
    );
    let mut s = Steps::new(64);
    let root = ks.root_key().to_string();

    // 1. An account, created through A: Envoy routes the admin API to the keystore.
    let r = send_json(
        "POST",
        &format!("{}{}", a.url(), admin::ACCOUNTS),
        &[("x-api-key", &root)],
        &json!({"account_id": ACCOUNT, "admin_user_id": ADMIN_USER}),
    )?;
    s.step(
        &format!("create account {ACCOUNT:?} through A"),
        r.status,
        201,
    );
    if r.status != 201 {
        return Err(Error::msg(format!(
            "cannot go on without an account: {}",
            r.body
        )));
    }
    let alice = user_key(&r)?;
    println!("      admin user {ADMIN_USER:?}, key {}", short(&alice));

    // 2. Its key works through the other instance at once.
    let r = request(
        "GET",
        &format!("{}/orders", b.url()),
        &[("x-api-key", &alice)],
        None,
    )?;
    s.step("use the new key through B (first try)", r.status, 200);

    // 3. What the upstream was told.
    s.header("identity headers the upstream received:");
    let h = echoed(&r);
    for (name, want) in [
        ("x-account-id", ACCOUNT),
        ("x-user-id", ADMIN_USER),
        ("x-role", "admin"),
    ] {
        let got = header_of(&h, name);
        s.expect(got == want, &format!("{name}: {got}"));
    }

    // 4. A client cannot claim another identity.
    let r = request(
        "GET",
        &format!("{}/orders", a.url()),
        &[("x-api-key", &alice), ("x-account-id", "victim")],
        None,
    )?;
    s.step(
        "valid key with a spoofed \"x-account-id: victim\"",
        r.status,
        200,
    );
    let got = header_of(&echoed(&r), "x-account-id");
    s.expect(got == ACCOUNT, &format!("upstream saw x-account-id: {got}"));

    // 5. An unknown key.
    let r = request(
        "GET",
        &format!("{}/orders", a.url()),
        &[("authorization", "Bearer kg_this-key-does-not-exist")],
        None,
    )?;
    s.step("unknown key through A", r.status, 401);
    println!("      body: {}", r.body.trim());

    // 6. A fresh user, then a burst of first requests split across A and B.
    let r = send_json(
        "POST",
        &format!("{}{}", a.url(), admin::users(ACCOUNT)),
        &[("x-api-key", &alice)],
        &json!({"user_id": USER, "role": USER_ROLE}),
    )?;
    s.step(
        &format!("create user {USER:?} (role {USER_ROLE}) through A"),
        r.status,
        201,
    );
    if r.status != 201 {
        return Err(Error::msg(format!(
            "cannot go on without the user: {}",
            r.body
        )));
    }
    let bob = user_key(&r)?;
    let before = ks.lookups();
    let (counts, took) = burst(&[a.url(), b.url()], &bob);
    let after = ks.lookups();
    s.header(&format!(
        "{CONCURRENT} concurrent first requests with {USER}'s key, half to A, half to B:"
    ));
    let all_ok = counts.len() == 1 && counts.get("200") == Some(&CONCURRENT);
    let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{k} x {v}")).collect();
    s.expect(
        all_ok,
        &format!(
            "statuses: {} (in {} ms)",
            summary.join(", "),
            took.as_millis()
        ),
    );
    println!(
        "      store lookups they caused: {} (keystore_lookups_total {before} -> {after})",
        after.saturating_sub(before)
    );

    // 7. Revocation through A takes effect on A at once.
    let r = request(
        "DELETE",
        &format!("{}{}", a.url(), admin::user(ACCOUNT, USER)),
        &[("x-api-key", &alice)],
        None,
    )?;
    s.step(&format!("revoke user {USER:?} through A"), r.status, 0);
    let r = request(
        "GET",
        &format!("{}/orders", a.url()),
        &[("x-api-key", &bob)],
        None,
    )?;
    s.step(
        &format!("{USER}'s key through A right after"),
        r.status,
        401,
    );

    // And on B once its changes feed has caught up (informational: not a step that can fail).
    let start = Instant::now();
    let mut last = 0;
    while start.elapsed() < Duration::from_secs(5) {
        last = request(
            "GET",
            &format!("{}/orders", b.url()),
            &[("x-api-key", &bob)],
            None,
        )?
        .status;
        if last == 401 {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    if last == 401 {
        println!(
            "      and through B: 401 after {} ms (changes feed)",
            start.elapsed().as_millis()
        );
    } else {
        println!("      and through B: still {last} after 5 s");
    }

    rotate_with_grace(&mut s, a, b, &alice)?;

    if keep {
        keep_running(&env, s.mismatches())?;
    }
    println!("\nstopping everything");
    drop(env);
    Ok(s.mismatches())
}

/// Writes `text` to `path`, readable by this user only.
fn write_secret(path: &Path, text: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// `--keep`: the keys in files, what to try, then waits for Ctrl-C (the signal watcher stops
/// everything and removes the files).
fn keep_running(env: &TwoInstances, mismatches: usize) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    let ks = &env.keystore;
    let key = ks.create_user(ACCOUNT, "carol", "member");
    let dir = std::env::temp_dir().join(format!("keygate-demo-{}", std::process::id()));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let _ = KEYS_DIR.set(dir.clone());
    let (root_file, key_file) = (dir.join("root.key"), dir.join("carol.key"));
    write_secret(&root_file, ks.root_key())?;
    write_secret(&key_file, &key)?;
    let (a, b) = (&env.a, &env.b);
    let verdict = if mismatches == 0 {
        "every step gave the expected answer".to_string()
    } else {
        format!("{mismatches} step(s) did NOT give the expected answer (marked above)")
    };
    println!(
        "\ndemo done: {verdict}. Still running (--keep); Ctrl-C stops everything.\n\
         \x20 root key   {root}  (admin API, e.g. keygatectl --url {ks_url})\n\
         \x20 user key   {user}  (user \"carol\", role member, account {ACCOUNT})\n\
         Try:\n\
         \x20 KEY=$(cat {user})\n\
         \x20 curl -i {b_url}/anything -H \"x-api-key: $KEY\"   # 200, the upstream sees x-account-id etc.\n\
         \x20 curl -i {a_url}/anything -H \"x-api-key: nope\"   # 401\n\
         \x20 curl -s {admin}/stats | grep keygate                 # the filter's counters",
        root = root_file.display(),
        user = key_file.display(),
        ks_url = ks.url(),
        a_url = a.url(),
        b_url = b.url(),
        admin = a.admin_url(),
    );
    loop {
        thread::sleep(Duration::from_secs(1));
    }
}

/// The grace period of the demo's rotation.
const GRACE_S: u64 = 5;

/// A zero-downtime rotation: alice rotates her own key through A keeping the old one valid for
/// [`GRACE_S`] seconds; both keys work on A and B meanwhile (a deployed client switches at its
/// own pace), then the old one is refused everywhere without any further admin call.
fn rotate_with_grace(s: &mut Steps, a: &Envoy, b: &Envoy, old: &str) -> Result<()> {
    let r = send_json(
        "POST",
        &format!("{}{}", a.url(), admin::user_key(ACCOUNT, ADMIN_USER)),
        &[("x-api-key", old)],
        &json!({ "grace_s": GRACE_S }),
    )?;
    let rotated = Instant::now();
    s.step(
        &format!("rotate {ADMIN_USER}'s key through A, {GRACE_S} s grace"),
        r.status,
        200,
    );
    let new = user_key(&r)?;
    println!(
        "      new key {}, old key {} valid {GRACE_S} s more",
        short(&new),
        short(old)
    );
    let get = |envoy: &Envoy, key: &str| -> Result<u16> {
        Ok(request(
            "GET",
            &format!("{}/orders", envoy.url()),
            &[("x-api-key", key)],
            None,
        )?
        .status)
    };
    s.header("during the grace, a deployed client switches keys:");
    for (what, envoy, key) in [
        ("old key through B", b, old),
        ("new key through B", b, new.as_str()),
        ("old key through A", a, old),
        ("new key through A", a, new.as_str()),
    ] {
        let status = get(envoy, key)?;
        s.expect(status == 200, &format!("{what}: {status}"));
    }
    let end = Duration::from_secs(GRACE_S + 1);
    thread::sleep(end.saturating_sub(rotated.elapsed()));
    s.header(&format!(
        "{} s after the rotation (no other admin call):",
        end.as_secs()
    ));
    for (what, envoy, key, want) in [
        ("old key through A", a, old, 401),
        ("old key through B", b, old, 401),
        ("new key through B", b, new.as_str(), 200),
    ] {
        let status = get(envoy, key)?;
        s.expect(status == want, &format!("{what}: {status}"));
    }
    Ok(())
}

/// `CONCURRENT` requests at once, alternating between `urls`, each on its own connection.
/// Returns the count of each status (or error) and the wall time.
fn burst(urls: &[String], key: &str) -> (BTreeMap<String, usize>, Duration) {
    let barrier = Arc::new(Barrier::new(CONCURRENT));
    let start = Instant::now();
    let handles: Vec<_> = (0..CONCURRENT)
        .map(|i| {
            let url = format!("{}/orders/{i}", urls[i % urls.len()]);
            let key = key.to_string();
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                match request("GET", &url, &[("x-api-key", &key)], None) {
                    Ok(r) => r.status.to_string(),
                    Err(e) => format!("error ({e})"),
                }
            })
        })
        .collect();
    let mut counts = BTreeMap::new();
    for h in handles {
        let outcome = h.join().unwrap_or_else(|_| "panic".to_string());
        *counts.entry(outcome).or_insert(0) += 1;
    }
    (counts, start.elapsed())
}
