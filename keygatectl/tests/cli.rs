//! keygatectl against a real keystore binary (release build, SQLite in a temp dir): every
//! admin operation, tables and `--json`, credentials from the environment or a file, and the
//! API's error message with a non-zero exit status on failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use keygate_harness::{http, Keystore, KeystoreOpts};
use keygate_protocol::routes;
use serde_json::Value;
use std::io::Write as _;
use std::process::{Command, Stdio};

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs keygatectl with `KEYGATE_URL` = the store and the caller's key in `KEYGATE_KEY`.
fn ctl(ks: &Keystore, key: Option<&str>, args: &[&str]) -> Out {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygatectl"));
    cmd.args(args)
        .env("KEYGATE_URL", ks.url())
        .env_remove("KEYGATE_ROOT_KEY")
        .env_remove("KEYGATE_KEY")
        .env_remove("KEYGATE_KEY_FILE");
    if let Some(k) = key {
        cmd.env("KEYGATE_KEY", k);
    }
    let out = cmd.output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs with `--json` and parses the answer; the call must succeed.
fn ctl_json(ks: &Keystore, key: &str, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = ctl(ks, Some(key), &all);
    assert_eq!(out.code, 0, "{args:?}: {}{}", out.stdout, out.stderr);
    serde_json::from_str(&out.stdout).unwrap()
}

fn lookup_status(ks: &Keystore, raw_key: &str) -> u16 {
    let id = keygate_protocol::key::key_id(raw_key);
    http::get(
        &format!("{}{}", ks.url(), routes::lookup(routes::LOOKUP, &id)),
        &[],
    )
    .unwrap()
    .status
}

fn store() -> Keystore {
    Keystore::start(KeystoreOpts::default()).unwrap()
}

#[test]
fn accounts_users_and_keys_through_the_cli() {
    let ks = store();
    let root = ks.root_key().to_owned();
    let acme = ctl_json(
        &ks,
        &root,
        &["account", "create", "acme", "--admin", "alice"],
    );
    let alice = acme["user_key"].as_str().unwrap().to_owned();
    assert_eq!(acme["account_id"], "acme");

    let bob = ctl_json(
        &ks,
        &alice,
        &["user", "create", "acme", "bob", "--role", "member"],
    );
    let bob_key = bob["user_key"].as_str().unwrap().to_owned();
    let users = ctl(&ks, Some(&alice), &["user", "list", "acme"]);
    assert_eq!(users.code, 0, "{}", users.stderr);
    for word in ["user_id", "alice", "admin", "bob", "member"] {
        assert!(users.stdout.contains(word), "{}", users.stdout);
    }
    ctl_json(&ks, &alice, &["user", "set-role", "acme", "bob", "reader"]);

    // A named key with an expiry and claims (root), listed without the key.
    let ci = ctl_json(
        &ks,
        &root,
        &[
            "key",
            "create",
            "acme",
            "bob",
            "--name",
            "ci",
            "--expires-at",
            "2099-06-30T00:00:00Z",
            "--claim",
            "plan=pro",
        ],
    );
    let ci_key = ci["user_key"].as_str().unwrap().to_owned();
    let ci_ref = ci["key"].as_str().unwrap().to_owned();
    let list = ctl(&ks, Some(&bob_key), &["key", "list", "acme", "bob"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    for word in [
        "ci",
        "default",
        "2099-06-30T00:00:00Z",
        "plan=pro",
        ci_ref.as_str(),
    ] {
        assert!(list.stdout.contains(word), "{word} not in {}", list.stdout);
    }
    assert!(!list.stdout.contains(&ci_key) && !list.stdout.contains(&bob_key));

    let updated = ctl_json(
        &ks,
        &alice,
        &[
            "key",
            "update",
            "acme",
            "bob",
            &ci_ref,
            "--no-expiry",
            "--name",
            "ci2",
        ],
    );
    assert_eq!(updated["expires_at"], Value::Null);
    assert_eq!(updated["name"], "ci2");
    ctl_json(
        &ks,
        &root,
        &["account", "set-claims", "acme", "--claim", "tier=gold"],
    );

    // Revoke the one key: bob's default key keeps working.
    ctl_json(
        &ks,
        &bob_key,
        &["key", "revoke", "acme", "bob", &ci_ref, "--yes"],
    );
    assert_eq!(lookup_status(&ks, &ci_key), 404);
    assert_eq!(lookup_status(&ks, &bob_key), 200);
    ctl_json(&ks, &alice, &["user", "revoke", "acme", "bob", "--yes"]);
    assert_eq!(lookup_status(&ks, &bob_key), 404);
    ctl_json(&ks, &root, &["account", "revoke", "acme", "--yes"]);
    assert_eq!(lookup_status(&ks, &alice), 404);
}

#[test]
fn rotation_with_grace_keeps_the_old_key_until_it_ends() {
    let ks = store();
    let root = ks.root_key().to_owned();
    ctl_json(
        &ks,
        &root,
        &["account", "create", "acme", "--admin", "alice"],
    );
    let bob = ctl_json(
        &ks,
        &root,
        &["user", "create", "acme", "bob", "--role", "member"],
    );
    let old = bob["user_key"].as_str().unwrap().to_owned();
    let listed = ctl_json(&ks, &root, &["key", "list", "acme", "bob"]);
    let old_ref = listed["keys"][0]["key"].as_str().unwrap().to_owned();

    let out = ctl(
        &ks,
        Some(&root),
        &["key", "rotate", "acme", "bob", &old_ref, "--grace", "3600"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("shown only this once"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.contains("user_key") && out.stdout.contains("valid_until"));
    let new = out
        .stdout
        .split_whitespace()
        .find(|w| w.starts_with("kg_") && !w.contains("..."))
        .unwrap()
        .to_owned();
    assert_eq!(lookup_status(&ks, &old), 200, "old key during the grace");
    assert_eq!(lookup_status(&ks, &new), 200, "new key");

    // The whole user, no grace: every other key revoked at once.
    let again = ctl_json(&ks, &root, &["user", "rotate", "acme", "bob"]);
    assert_eq!(lookup_status(&ks, &old), 404);
    assert_eq!(lookup_status(&ks, &new), 404);
    assert_eq!(lookup_status(&ks, again["user_key"].as_str().unwrap()), 200);
}

#[test]
fn the_audit_trail_pages_and_keys_come_from_files() {
    let ks = store();
    let dir = tempfile::tempdir().unwrap();
    let root_file = dir.path().join("root.key");
    std::fs::write(&root_file, format!("{}\n", ks.root_key())).unwrap();
    let legacy = "legacy-5f0c1e9a4b7d42a8b3c6e1f09d2a7b4c";
    let import = dir.path().join("import.key");
    std::fs::write(&import, legacy).unwrap();
    let root_file = root_file.to_str().unwrap();
    let import = import.to_str().unwrap();

    let out = ctl(
        &ks,
        None,
        &[
            "--key-file",
            root_file,
            "--json",
            "account",
            "create",
            "acme",
            "--admin",
            "alice",
            "--import-key-file",
            import,
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(lookup_status(&ks, legacy), 200);
    for user in ["u1", "u2", "u3"] {
        ctl_json(
            &ks,
            legacy,
            &["user", "create", "acme", user, "--role", "member"],
        );
    }
    let all = ctl_json(&ks, ks.root_key(), &["audit", "--limit", "2", "--all"]);
    let actions: Vec<&str> = all["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "root_key.install",
            "account.create",
            "user.create",
            "user.create",
            "user.create"
        ]
    );
    let page = ctl(
        &ks,
        Some(legacy),
        &["audit", "--account", "acme", "--limit", "1"],
    );
    assert_eq!(page.code, 0, "{}", page.stderr);
    assert!(page.stdout.contains("account.create") && page.stdout.contains("_system/root"));
    assert!(page.stdout.contains("more entries"), "{}", page.stdout);
    assert!(!page.stdout.contains(legacy));
}

#[test]
fn failures_exit_non_zero_with_the_api_message() {
    let ks = store();
    let root = ks.root_key().to_owned();
    let acme = ctl_json(
        &ks,
        &root,
        &["account", "create", "acme", "--admin", "alice"],
    );
    let alice = acme["user_key"].as_str().unwrap();

    let cases: [(Option<&str>, &[&str], i32, &str); 6] = [
        (
            Some(alice),
            &["account", "create", "other", "--admin", "x"],
            1,
            "403: forbidden",
        ),
        (
            Some(&root),
            &["user", "list", "nope"],
            1,
            "404: account nope not found",
        ),
        (
            Some(&root),
            &["user", "rotate", "acme", "alice", "--grace", "999999999"],
            1,
            "400: grace_s must be 0 to 604800",
        ),
        (
            Some("kg_wrong"),
            &["user", "list", "acme"],
            1,
            "401: unauthorized",
        ),
        (None, &["user", "list", "acme"], 2, "no credential"),
        (
            Some(&root),
            &[
                "key", "create", "acme", "alice", "--name", "x", "--claim", "novalue",
            ],
            2,
            "expected NAME=VALUE",
        ),
    ];
    for (key, args, code, message) in cases {
        let out = ctl(&ks, key, args);
        assert_eq!(out.code, code, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(message), "{args:?}: {}", out.stderr);
    }
    // There is no flag that takes a key on the command line.
    let out = ctl(&ks, None, &["--key", &root, "user", "list", "acme"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    // An unreachable store: exit 3.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygatectl"));
    let port = keygate_harness::free_port();
    let out = cmd
        .args(["user", "list", "acme"])
        .env("KEYGATE_URL", format!("http://127.0.0.1:{port}"))
        .env("KEYGATE_KEY", &root)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
}

/// Runs keygatectl `--json` with `input` on its standard input; the call must succeed.
fn ctl_stdin(ks: &Keystore, key: &str, args: &[&str], input: &str) -> Value {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keygatectl"))
        .arg("--json")
        .args(args)
        .env("KEYGATE_URL", ks.url())
        .env("KEYGATE_KEY", key)
        .env_remove("KEYGATE_KEY_FILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn keys_users_and_accounts_are_disabled_and_enabled_through_the_cli() {
    let ks = store();
    let root = ks.root_key().to_owned();
    let acme = ctl_json(
        &ks,
        &root,
        &["account", "create", "acme", "--admin", "alice"],
    );
    let alice = acme["user_key"].as_str().unwrap().to_owned();
    let bob = ctl_json(
        &ks,
        &alice,
        &["user", "create", "acme", "bob", "--role", "member"],
    );
    let bob_key = bob["user_key"].as_str().unwrap().to_owned();
    let listed = ctl_json(&ks, &alice, &["key", "list", "acme", "bob"]);
    let bob_ref = listed["keys"][0]["key"].as_str().unwrap().to_owned();

    let key = ctl_json(&ks, &alice, &["key", "disable", "acme", "bob", &bob_ref]);
    assert_eq!(key["enabled"], false);
    assert_eq!(lookup_status(&ks, &bob_key), 404);
    let table = ctl(&ks, Some(&alice), &["key", "list", "acme", "bob"]);
    assert!(
        table.stdout.contains("enabled") && table.stdout.contains("false"),
        "{}",
        table.stdout
    );
    ctl_json(&ks, &alice, &["key", "enable", "acme", "bob", &bob_ref]);
    assert_eq!(lookup_status(&ks, &bob_key), 200);

    let user = ctl_json(&ks, &alice, &["user", "disable", "acme", "bob"]);
    assert_eq!(user["enabled"], false);
    assert_eq!(lookup_status(&ks, &bob_key), 404);
    let users = ctl(&ks, Some(&alice), &["user", "list", "acme"]);
    assert!(users.stdout.contains("false"), "{}", users.stdout);
    ctl_json(&ks, &alice, &["user", "enable", "acme", "bob"]);
    assert_eq!(lookup_status(&ks, &bob_key), 200);

    let account = ctl_json(&ks, &root, &["account", "disable", "acme"]);
    assert_eq!(account["enabled"], false);
    assert_eq!(lookup_status(&ks, &alice), 404);
    let out = ctl(&ks, Some(&alice), &["account", "enable", "acme"]);
    assert_eq!(
        out.code, 1,
        "a disabled account's admin cannot call: {}",
        out.stderr
    );
    assert!(out.stderr.contains("401"), "{}", out.stderr);
    ctl_json(&ks, &root, &["account", "enable", "acme"]);
    assert_eq!(lookup_status(&ks, &bob_key), 200);
}

#[test]
fn a_leaked_key_is_found_and_revoked_from_a_value_file_or_stdin() {
    let ks = store();
    let root = ks.root_key().to_owned();
    let acme = ctl_json(
        &ks,
        &root,
        &["account", "create", "acme", "--admin", "alice"],
    );
    let alice = acme["user_key"].as_str().unwrap().to_owned();
    let bob = ctl_json(
        &ks,
        &alice,
        &["user", "create", "acme", "bob", "--role", "member"],
    );
    let bob_key = bob["user_key"].as_str().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let leaked = dir.path().join("leaked.txt");
    std::fs::write(&leaked, format!("{bob_key}\n")).unwrap();
    let leaked = leaked.to_str().unwrap();

    let found = ctl_json(&ks, &alice, &["key", "find", "--value-file", leaked]);
    assert_eq!(
        (&found["account_id"], &found["user_id"], &found["state"]),
        (
            &Value::from("acme"),
            &Value::from("bob"),
            &Value::from("active")
        )
    );
    let table = ctl(&ks, Some(&root), &["key", "find", "--value-file", leaked]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(table.stdout.contains("state") && !table.stdout.contains(&bob_key));
    // A member may not; another account's admin learns nothing.
    let other = ctl_json(
        &ks,
        &root,
        &["account", "create", "other", "--admin", "oscar"],
    );
    let oscar = other["user_key"].as_str().unwrap();
    let out = ctl(&ks, Some(oscar), &["key", "find", "--value-file", leaked]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("404: no such key"), "{}", out.stderr);
    let out = ctl(
        &ks,
        Some(&bob_key),
        &["key", "revoke", "--value-file", leaked, "--yes"],
    );
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("403"), "{}", out.stderr);

    let revoked = ctl_stdin(
        &ks,
        &alice,
        &["key", "revoke", "--value-file", "-", "-y"],
        &bob_key,
    );
    assert_eq!(revoked["state"], "revoked");
    assert_eq!(lookup_status(&ks, &bob_key), 404);
    // Neither the value nor its location on the command line: usage errors.
    let out = ctl(
        &ks,
        Some(&alice),
        &["key", "revoke", "--value-file", leaked, "acme"],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    let out = ctl(&ks, Some(&alice), &["key", "revoke", "acme", "bob"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
}

#[test]
fn capabilities_are_given_listed_and_roles_sent_in_lowercase() {
    let ks = store();
    let root = ks.root_key().to_owned();
    let acme = ctl_json(
        &ks,
        &root,
        &["account", "create", "acme", "--admin", "alice"],
    );
    let alice = acme["user_key"].as_str().unwrap().to_owned();
    let bob = ctl_json(
        &ks,
        &alice,
        &["user", "create", "acme", "bob", "--role", "MEMBER"],
    );
    assert_eq!(
        bob["capabilities"],
        serde_json::json!(["traffic", "own_keys"])
    );
    let bob_key = bob["user_key"].as_str().unwrap().to_owned();
    let users = ctl_json(&ks, &alice, &["user", "list", "acme"]);
    assert_eq!(users["users"][1]["role"], "member");

    // A traffic-only key for CI: the proxy admits it, the admin API does not.
    let ci = ctl_json(
        &ks,
        &bob_key,
        &[
            "key",
            "create",
            "acme",
            "bob",
            "--name",
            "ci",
            "--capabilities",
            "traffic",
        ],
    );
    assert_eq!(ci["capabilities"], serde_json::json!(["traffic"]));
    let ci_key = ci["user_key"].as_str().unwrap().to_owned();
    assert_eq!(lookup_status(&ks, &ci_key), 200);
    let out = ctl(&ks, Some(&ci_key), &["key", "list", "acme", "bob"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("neither own_keys nor account_admin"),
        "{}",
        out.stderr
    );

    // The table shows each key's capabilities.
    let list = ctl(&ks, Some(&bob_key), &["key", "list", "acme", "bob"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    for word in ["capabilities", "traffic,own_keys", " traffic  "] {
        assert!(
            list.stdout.contains(word),
            "{word:?} not in {}",
            list.stdout
        );
    }
    // More than the calling key has: the store's 403, naming what is missing.
    let out = ctl(
        &ks,
        Some(&bob_key),
        &[
            "key",
            "create",
            "acme",
            "bob",
            "--name",
            "x",
            "--capabilities",
            "traffic,account_admin",
        ],
    );
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("lacks the capability account_admin"),
        "{}",
        out.stderr
    );
}

/// Runs keygatectl with `args` against `url`, the key in the environment.
fn ctl_at(url: &str, key: &str, args: &[&str]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_keygatectl"))
        .args(args)
        .env("KEYGATE_URL", url)
        .env("KEYGATE_KEY", key)
        .env_remove("KEYGATE_ROOT_KEY")
        .env_remove("KEYGATE_KEY_FILE")
        .env_remove("KEYGATE_CA_CERT")
        .output()
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn the_cli_talks_https_to_a_keystore_whose_ca_it_is_given() {
    let ca = keygate_harness::TestCa::new("keygatectl test CA").unwrap();
    let ks = Keystore::start(KeystoreOpts {
        extra_args: vec![
            "--tls-cert".into(),
            ca.server_cert.to_str().unwrap().into(),
            "--tls-key".into(),
            ca.server_key.to_str().unwrap().into(),
        ],
        ..KeystoreOpts::default()
    })
    .unwrap();
    let url = format!("https://localhost:{}", ks.port());
    let ca_cert = ca.ca_cert.to_str().unwrap();
    let out = ctl_at(
        &url,
        ks.root_key(),
        &[
            "--ca-cert",
            ca_cert,
            "--json",
            "account",
            "create",
            "acme",
            "--admin",
            "alice",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let listed = ctl_at(
        &url,
        ks.root_key(),
        &["--ca-cert", ca_cert, "user", "list", "acme"],
    );
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert!(listed.stdout.contains("alice"), "{}", listed.stdout);

    // Without the CA the server is not trusted: a transport error naming the URL once.
    let out = ctl_at(&url, ks.root_key(), &["user", "list", "acme"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stderr.contains("UnknownIssuer"), "{}", out.stderr);
    assert_eq!(out.stderr.matches(&url).count(), 1, "{}", out.stderr);
    // Plain HTTP to the TLS port is no answer either.
    let out = ctl_at(&ks.url(), ks.root_key(), &["user", "list", "acme"]);
    assert_ne!(out.code, 0, "{}", out.stdout);
}

/// A listener that records the head of every request it gets and answers each with `answer`
/// (`{port}` replaced by `target`); returns its port and the recorded heads.
fn recording_server(
    answer: &'static str,
    target: u16,
) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead as _, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            while reader.read_line(&mut head).unwrap_or(0) > 2 && !head.ends_with("\r\n\r\n") {}
            seen.lock().unwrap().push(head.to_ascii_lowercase());
            let answer = answer.replace("{port}", &target.to_string());
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    (port, heads)
}

#[test]
fn a_redirect_to_another_origin_never_gets_the_key() {
    let (other, other_heads) = recording_server(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 12\r\nconnection: close\r\n\r\n{\"users\":[]}",
        0,
    );
    let (redirecting, heads) = recording_server(
        "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.1:{port}/api/v1/admin/accounts/acme/users\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        other,
    );
    let key = "kg_secret_that_must_stay_home";
    let url = format!("http://localhost:{redirecting}");
    let out = ctl_at(&url, key, &["user", "list", "acme"]);
    assert_eq!(out.code, 3, "{}{}", out.stdout, out.stderr);
    let want = format!("redirecting to http://127.0.0.1:{other}/");
    assert!(out.stderr.contains(&want), "{}", out.stderr);
    assert!(!out.stderr.contains(key), "{}", out.stderr);
    assert!(
        heads.lock().unwrap()[0].contains(key),
        "the first hop gets the key"
    );
    let other_heads = other_heads.lock().unwrap();
    assert!(
        other_heads.iter().all(|h| !h.contains(key)),
        "the key went to the other origin: {other_heads:?}"
    );
}

/// Creates acme (admin alice) and bob with two more keys; alice's key and bob's key references.
fn acme_with_keys(ks: &Keystore) -> (String, Vec<String>) {
    let root = ks.root_key();
    let acme = ctl_json(ks, root, &["account", "create", "acme", "--admin", "alice"]);
    let alice = acme["user_key"].as_str().unwrap().to_owned();
    ctl_json(
        ks,
        &alice,
        &["user", "create", "acme", "bob", "--role", "member"],
    );
    for name in ["ci", "laptop"] {
        ctl_json(
            ks,
            &alice,
            &["key", "create", "acme", "bob", "--name", name],
        );
    }
    let keys = ctl_json(ks, &alice, &["key", "list", "acme", "bob"]);
    let refs = keys["keys"].as_array().unwrap().iter();
    let refs = refs
        .map(|k| k["key"].as_str().unwrap().to_owned())
        .collect();
    (alice, refs)
}

#[test]
fn output_to_a_pipe_is_plain_and_a_closed_pipe_ends_it_quietly() {
    let ks = store();
    let (alice, refs) = acme_with_keys(&ks);
    // Captured (not a terminal): no box drawing.
    let table = ctl(&ks, Some(&alice), &["key", "list", "acme", "bob"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(table.stdout.contains("laptop"), "{}", table.stdout);
    let drawing = ['│', '─', '┌', '└', '╭', '═', '|'];
    assert!(!table.stdout.contains(drawing), "{}", table.stdout);
    // `| head -0`: the reader is gone before keygatectl writes.
    let mut child = Command::new(env!("CARGO_BIN_EXE_keygatectl"))
        .args(["key", "list", "acme", "bob"])
        .env("KEYGATE_URL", ks.url())
        .env("KEYGATE_KEY", &alice)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{stderr}"
    );
    // -o name: one reference a line; -o yaml and -o json: the same answer.
    let names = ctl(
        &ks,
        Some(&alice),
        &["key", "list", "acme", "bob", "-o", "name"],
    );
    let named: Vec<String> = refs.iter().map(|r| format!("key/{r}")).collect();
    assert_eq!(names.stdout.lines().collect::<Vec<_>>(), named);
    let yaml = ctl(
        &ks,
        Some(&alice),
        &["-o", "yaml", "key", "list", "acme", "bob"],
    );
    assert_eq!(yaml.code, 0, "{}", yaml.stderr);
    assert!(yaml.stdout.contains("\nkeys:\n- "), "{}", yaml.stdout);
    assert!(
        yaml.stdout.contains(&format!("key: {}", refs[0])),
        "{}",
        yaml.stdout
    );
    let json = ctl(
        &ks,
        Some(&alice),
        &["key", "list", "acme", "bob", "--output", "json"],
    );
    let json: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(json["keys"].as_array().unwrap().len(), 3);
}

#[test]
fn shell_completion_scripts_need_no_credential() {
    let ks = store();
    for (shell, mark) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef keygatectl"),
        ("fish", "complete -c keygatectl"),
    ] {
        let out = ctl(&ks, None, &["completion", shell]);
        assert_eq!(out.code, 0, "{shell}: {}", out.stderr);
        assert!(out.stdout.contains(mark), "{shell}: {}", out.stdout);
        assert!(out.stdout.contains("revoke"), "{shell}");
    }
    assert_eq!(ctl(&ks, None, &["completion", "tcsh"]).code, 2);
}

#[test]
fn durations_are_given_in_units_and_new_keys_written_to_a_private_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let ks = store();
    let (alice, refs) = acme_with_keys(&ks);
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("ci.key");
    let out_path = out_file.to_str().unwrap();
    let now = keygate_harness::unix_now() as i64;
    let rotated = ctl(
        &ks,
        Some(&alice),
        &[
            "key",
            "rotate",
            "acme",
            "bob",
            &refs[1],
            "--grace",
            "1h",
            "--expires-in",
            "30d",
            "--key-out",
            out_path,
            "-o",
            "json",
        ],
    );
    assert_eq!(rotated.code, 0, "{}", rotated.stderr);
    let answer: Value = serde_json::from_str(&rotated.stdout).unwrap();
    assert!(answer.get("user_key").is_none(), "{answer}");
    assert!(rotated.stderr.contains(out_path), "{}", rotated.stderr);
    let mode = std::fs::metadata(&out_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let key = std::fs::read_to_string(&out_file)
        .unwrap()
        .trim()
        .to_owned();
    assert!(key.starts_with("kg_"), "{key}");
    assert_eq!(lookup_status(&ks, &key), 200);
    let expires = time_of(answer["expires_at"].as_str().unwrap());
    let grace_ends = time_of(answer["replaces"]["valid_until"].as_str().unwrap());
    assert!((expires - now - 30 * 86_400).abs() < 120, "{answer}");
    assert!((grace_ends - now - 3_600).abs() < 120, "{answer}");
    // An existing file is not replaced, and no key is made.
    let again = ctl(
        &ks,
        Some(&alice),
        &[
            "key",
            "create",
            "acme",
            "bob",
            "--name",
            "x",
            "--key-out",
            out_path,
        ],
    );
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert_eq!(std::fs::read_to_string(&out_file).unwrap().trim(), key);
    let keys = ctl_json(&ks, &alice, &["key", "list", "acme", "bob"]);
    assert!(keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["name"] != "x"));
    // Plain seconds still work; nonsense is a usage error.
    let out = ctl(
        &ks,
        Some(&alice),
        &[
            "user", "rotate", "acme", "bob", "--grace", "600", "-o", "name",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = ctl(
        &ks,
        Some(&alice),
        &["user", "rotate", "acme", "bob", "--grace", "soon"],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
}

/// Seconds since the epoch of an RFC 3339 UTC time (`YYYY-MM-DDTHH:MM:SSZ`).
fn time_of(text: &str) -> i64 {
    let t = humantime::parse_rfc3339(text).unwrap();
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[test]
fn revoking_asks_for_consent_and_says_what_was_revoked() {
    let ks = store();
    let (alice, refs) = acme_with_keys(&ks);
    let root = ks.root_key();
    // No terminal to ask on: --yes is needed, and nothing is revoked without it.
    let out = ctl(&ks, Some(root), &["account", "revoke", "acme"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("add --yes"), "{}", out.stderr);
    assert!(out.stderr.contains("account acme"), "{}", out.stderr);
    assert_eq!(lookup_status(&ks, &alice), 200);
    let out = ctl(
        &ks,
        Some(&alice),
        &["key", "revoke", "acme", "bob", &refs[0], "--yes"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "revoked: 1 key(s) no longer work");
    let out = ctl(&ks, Some(root), &["account", "revoke", "acme", "--yes"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "revoked: 3 key(s) no longer work");
    assert_eq!(lookup_status(&ks, &alice), 404);
}

#[test]
fn the_credential_variable_is_keygate_key_and_the_old_name_warns() {
    let ks = store();
    let run = |vars: &[(&str, &str)], args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygatectl"));
        cmd.args(args)
            .env_remove("KEYGATE_URL")
            .env_remove("KEYGATE_KEY")
            .env_remove("KEYGATE_ROOT_KEY")
            .env_remove("KEYGATE_KEY_FILE");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let url = ks.url();
    let args = [
        "--url",
        url.as_str(),
        "-o",
        "json",
        "account",
        "create",
        "a1",
        "--admin",
        "x",
    ];
    let (code, stderr) = run(&[("KEYGATE_KEY", ks.root_key())], &args);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("deprecated"), "{stderr}");
    let args = [
        "--url",
        url.as_str(),
        "-o",
        "json",
        "account",
        "create",
        "a2",
        "--admin",
        "x",
    ];
    let (code, stderr) = run(&[("KEYGATE_ROOT_KEY", ks.root_key())], &args);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("KEYGATE_ROOT_KEY is deprecated: use KEYGATE_KEY"),
        "{stderr}"
    );
    // The default URL is the one the docs and manifests use; the transport error names it once.
    let (code, stderr) = run(&[("KEYGATE_KEY", "k")], &["user", "list", "acme"]);
    assert_eq!(code, Some(3), "{stderr}");
    assert_eq!(
        stderr.matches("http://127.0.0.1:8081/").count(),
        1,
        "{stderr}"
    );
    // A URL without a scheme is bad usage, not an unreachable store.
    let (code, stderr) = run(
        &[("KEYGATE_KEY", "k")],
        &["--url", "127.0.0.1:8081", "user", "list", "a"],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("give the scheme"), "{stderr}");
}

#[test]
fn accounts_users_and_keys_are_read_one_by_one_and_name_output_is_kind_slash_id() {
    let ks = store();
    let root = ks.root_key().to_owned();
    // -o name names the object the command made, as kubectl does: the account, not its admin.
    let created = ctl(
        &ks,
        Some(&root),
        &[
            "account", "create", "acme", "--admin", "alice", "-o", "name",
        ],
    );
    assert_eq!(created.code, 0, "{}", created.stderr);
    assert_eq!(created.stdout, "account/acme\n");
    let beta = ctl_json(&ks, &root, &["account", "create", "beta", "--admin", "bo"]);
    let bo = beta["user_key"].as_str().unwrap().to_owned();

    let list = ctl(&ks, Some(&root), &["account", "list", "-o", "name"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    // _system is the root key's account: listed, read-only (the keystore refuses changes).
    assert_eq!(
        list.stdout.lines().collect::<Vec<_>>(),
        ["account/_system", "account/acme", "account/beta"]
    );
    let table = ctl(&ks, Some(&root), &["account", "list"]);
    assert!(table.stdout.starts_with("account_id"), "{}", table.stdout);
    assert!(table.stdout.contains("beta"), "{}", table.stdout);
    // An account's admin reads its own account, not the list.
    let own = ctl_json(&ks, &bo, &["account", "get", "beta"]);
    assert_eq!(
        (own["account_id"].as_str(), own["enabled"].as_bool()),
        (Some("beta"), Some(true))
    );
    assert_eq!(ctl(&ks, Some(&bo), &["account", "list"]).code, 1);

    let user = ctl_json(&ks, &bo, &["user", "get", "beta", "bo"]);
    assert_eq!(user["role"], "admin");
    let name = ctl(&ks, Some(&bo), &["user", "get", "beta", "bo", "-o", "name"]);
    assert_eq!(name.stdout, "user/bo\n");
    let keys = ctl_json(&ks, &bo, &["key", "list", "beta", "bo"]);
    let key_ref = keys["keys"][0]["key"].as_str().unwrap().to_owned();
    let key = ctl_json(&ks, &bo, &["key", "get", "beta", "bo", &key_ref]);
    assert_eq!(key["key"], key_ref.as_str());
    assert!(
        !key.to_string().contains(&bo),
        "the key's value is never shown"
    );
    let missing = ctl(
        &ks,
        Some(&bo),
        &["key", "get", "beta", "bo", "0000000000000000"],
    );
    assert_eq!(missing.code, 1, "{}", missing.stderr);
}
