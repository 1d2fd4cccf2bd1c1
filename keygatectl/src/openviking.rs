//! `keygatectl openviking`: keygate in front of OpenViking (integrations/openviking/).
//!
//! - `sync` keeps OpenViking's account registry in step with the keystore: it follows the
//!   keystore's audit trail (root only) from a cursor persisted in a state file and, for each
//!   `account.create`, `user.create`, `user.revoke` and `account.revoke`, calls OpenViking's
//!   admin API with OpenViking's root key. Invariant: the cursor moves past an entry only after
//!   OpenViking confirmed it (2xx, or the 409/404 that says it was already done) or refused it
//!   for good (another 4xx, counted as rejected); a transport error or a 5xx is retried with
//!   backoff, forever, so no entry is lost while OpenViking is down. Progress is written to a
//!   Prometheus textfile (`--metrics-file`).
//! - `import` copies the keys of an existing OpenViking deployment (api_key mode, plaintext
//!   keys) into the keystore with their account, user and role, so deployed clients keep them;
//!   keys stored as argon2id hashes cannot be copied, and it says so (`--rotate` mints new ones).

use crate::client::{read_key_file, Client, Error};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Subcommand)]
pub enum OpenVikingCmd {
    /// Keep OpenViking's accounts and users in step with the keystore (runs until stopped).
    Sync(SyncArgs),
    /// Import an OpenViking deployment's users and keys into the keystore (root).
    Import(ImportArgs),
}

/// Where OpenViking is.
#[derive(Args)]
pub struct Target {
    /// OpenViking's base URL (any instance: they share their registry).
    #[arg(long, env = "OPENVIKING_URL")]
    openviking: String,
    /// File holding OpenViking's server.root_api_key.
    #[arg(long, env = "OPENVIKING_ROOT_KEY_FILE")]
    openviking_root_key_file: PathBuf,
}

#[derive(Args)]
pub struct SyncArgs {
    #[command(flatten)]
    target: Target,
    /// File holding the audit cursor (created if missing; written after each applied entry).
    #[arg(long)]
    state: PathBuf,
    /// Prometheus textfile with the sync's counters, rewritten after each step.
    #[arg(long)]
    metrics_file: Option<PathBuf>,
    /// Poll interval of the audit trail, in milliseconds.
    #[arg(long, default_value_t = 250)]
    interval_ms: u64,
    /// Apply what is pending and exit.
    #[arg(long)]
    once: bool,
}

#[derive(Args)]
pub struct ImportArgs {
    #[command(flatten)]
    target: Target,
    /// Keystore role for OpenViking's `user` role (its `admin` stays `admin`).
    #[arg(long, default_value = "member")]
    user_role: String,
    /// For keys OpenViking keeps only as hashes: create the users with new keys, printed once.
    #[arg(long)]
    rotate: bool,
}

pub fn run(store: &Client, cmd: &OpenVikingCmd) -> Result<(), Error> {
    match cmd {
        OpenVikingCmd::Sync(a) => sync(store, a),
        OpenVikingCmd::Import(a) => import(store, a),
    }
}

/// OpenViking's admin API, called with its root key.
struct OpenViking {
    base: String,
    key: String,
    agent: ureq::Agent,
}

/// An answer from OpenViking: a status (0: not reached) and the body.
struct Answer {
    status: u16,
    body: Value,
}

impl OpenViking {
    fn new(t: &Target) -> Result<OpenViking, Error> {
        Ok(OpenViking {
            base: t.openviking.trim_end_matches('/').to_owned(),
            key: read_key_file(&t.openviking_root_key_file, "OpenViking root key file")?,
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(10))
                .build(),
        })
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Answer {
        let req = self
            .agent
            .request(method, &format!("{}{path}", self.base))
            .set("x-api-key", &self.key);
        let res = match body {
            Some(b) => req
                .set("content-type", "application/json")
                .send_string(&b.to_string()),
            None => req.call(),
        };
        let (status, res) = match res {
            Ok(r) => (r.status(), r),
            Err(ureq::Error::Status(s, r)) => (s, r),
            Err(_) => {
                return Answer {
                    status: 0,
                    body: Value::Null,
                }
            }
        };
        let body = res
            .into_string()
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        Answer { status, body }
    }
}

fn seg(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// OpenViking's role for a keystore role: it knows only `admin` and `user`.
pub fn openviking_role(role: &str) -> &'static str {
    if role == "admin" {
        "admin"
    } else {
        "user"
    }
}

/// What one audit entry asks of OpenViking: method, path, body, and the statuses that mean
/// "already so" (done before a restart, or by hand).
#[derive(Debug, PartialEq)]
pub struct Step {
    pub method: &'static str,
    pub path: String,
    pub body: Option<Value>,
    pub already: u16,
}

/// The OpenViking call for an audit entry; None for entries that change nothing there (keys,
/// claims, refusals, the `_system` account).
pub fn step(entry: &Value) -> Option<Step> {
    let account = entry.get("account_id")?.as_str()?;
    if account.is_empty() || account == "_system" {
        return None;
    }
    let object = entry.get("object")?.as_str()?;
    let user = || object.strip_prefix(account)?.strip_prefix('/');
    let base = format!("/api/v1/admin/accounts/{}", seg(account));
    let s = match entry.get("action")?.as_str()? {
        "account.create" => {
            let admin = entry.get("detail")?.get("admin_user_id")?.as_str()?;
            Step {
                method: "POST",
                path: "/api/v1/admin/accounts".to_owned(),
                body: Some(json!({"account_id": account, "admin_user_id": admin})),
                already: 409,
            }
        }
        "user.create" => {
            let role = entry.get("detail")?.get("role")?.as_str()?;
            Step {
                method: "POST",
                path: format!("{base}/users"),
                body: Some(json!({"user_id": user()?, "role": openviking_role(role)})),
                already: 409,
            }
        }
        "user.revoke" => Step {
            method: "DELETE",
            path: format!("{base}/users/{}", seg(user()?)),
            body: None,
            already: 404,
        },
        "account.revoke" => Step {
            method: "DELETE",
            path: base,
            body: None,
            already: 404,
        },
        _ => return None,
    };
    Some(s)
}

/// What happened to an entry.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// OpenViking refused it for good (a 4xx that is not "already so"): counted, not retried.
    Rejected,
    /// Not reached, or a 5xx: retry.
    Retry,
}

pub fn outcome(status: u16, already: u16) -> Outcome {
    match status {
        200..=299 => Outcome::Applied,
        s if s == already => Outcome::Applied,
        400..=499 => Outcome::Rejected,
        _ => Outcome::Retry,
    }
}

/// The sync's counters, written as a Prometheus textfile.
#[derive(Default)]
struct Metrics {
    cursor: u64,
    applied: u64,
    rejected: u64,
    failures: u64,
    /// 1 while an entry waits for OpenViking to come back.
    retrying: u64,
}

impl Metrics {
    fn write(&self, path: Option<&Path>) {
        let Some(path) = path else { return };
        let text = format!(
            "# HELP keygate_openviking_sync_cursor Id of the last audit entry handled.\n\
             # TYPE keygate_openviking_sync_cursor gauge\nkeygate_openviking_sync_cursor {}\n\
             # HELP keygate_openviking_sync_applied_total Entries OpenViking applied.\n\
             # TYPE keygate_openviking_sync_applied_total counter\nkeygate_openviking_sync_applied_total {}\n\
             # HELP keygate_openviking_sync_rejected_total Entries OpenViking refused for good (4xx).\n\
             # TYPE keygate_openviking_sync_rejected_total counter\nkeygate_openviking_sync_rejected_total {}\n\
             # HELP keygate_openviking_sync_failures_total Calls that did not reach OpenViking or got a 5xx (retried).\n\
             # TYPE keygate_openviking_sync_failures_total counter\nkeygate_openviking_sync_failures_total {}\n\
             # HELP keygate_openviking_sync_retrying 1 while an entry waits for OpenViking.\n\
             # TYPE keygate_openviking_sync_retrying gauge\nkeygate_openviking_sync_retrying {}\n",
            self.cursor, self.applied, self.rejected, self.failures, self.retrying
        );
        if let Err(e) = write_atomically(path, &text) {
            eprintln!("keygatectl: writing {}: {e}", path.display());
        }
    }
}

/// Writes `text` to a temporary file beside `path`, syncs it and renames it over `path`.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

fn read_cursor(path: &Path) -> Result<u64, Error> {
    match std::fs::read_to_string(path) {
        Ok(t) => t.trim().parse().map_err(|_| {
            Error::Usage(format!(
                "{}: not an audit cursor: {:?}",
                path.display(),
                t.trim()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(Error::Usage(format!("reading {}: {e}", path.display()))),
    }
}

fn sync(store: &Client, a: &SyncArgs) -> Result<(), Error> {
    let ov = OpenViking::new(&a.target)?;
    let mut m = Metrics {
        cursor: read_cursor(&a.state)?,
        ..Metrics::default()
    };
    let interval = Duration::from_millis(a.interval_ms.clamp(10, 60_000));
    loop {
        let page = store.call(
            "GET",
            &format!("/api/v1/admin/audit?after={}&limit=100", m.cursor),
            None,
        );
        let page = match page {
            Ok(p) => p,
            Err(e @ Error::Api(401 | 403, _)) => return Err(e),
            Err(e) => {
                eprintln!("keygatectl: reading the audit trail: {e}");
                std::thread::sleep(interval);
                continue;
            }
        };
        let entries = page.get("entries").and_then(Value::as_array);
        for entry in entries.into_iter().flatten() {
            let Some(id) = entry.get("id").and_then(Value::as_u64) else {
                continue;
            };
            if let Some(s) = step(entry) {
                apply(&ov, &s, id, &mut m, a.metrics_file.as_deref());
            }
            m.cursor = id;
            write_atomically(&a.state, &format!("{id}\n"))
                .map_err(|e| Error::Usage(format!("writing {}: {e}", a.state.display())))?;
            m.write(a.metrics_file.as_deref());
        }
        let more = page.get("more").and_then(Value::as_bool).unwrap_or(false);
        m.write(a.metrics_file.as_deref());
        if !more {
            if a.once {
                return Ok(());
            }
            std::thread::sleep(interval);
        }
    }
}

/// Calls OpenViking for one entry until it is applied or rejected (backoff 0.25 s to 5 s).
fn apply(ov: &OpenViking, s: &Step, id: u64, m: &mut Metrics, metrics: Option<&Path>) {
    let mut wait = Duration::from_millis(250);
    let started = Instant::now();
    loop {
        let answer = ov.call(s.method, &s.path, s.body.as_ref());
        match outcome(answer.status, s.already) {
            Outcome::Applied => {
                m.applied = m.applied.saturating_add(1);
                break;
            }
            Outcome::Rejected => {
                eprintln!(
                    "keygatectl: audit entry {id}: OpenViking refused {} {} with {}: {}",
                    s.method, s.path, answer.status, answer.body
                );
                m.rejected = m.rejected.saturating_add(1);
                break;
            }
            Outcome::Retry => {
                m.failures = m.failures.saturating_add(1);
                m.retrying = 1;
                m.write(metrics);
                eprintln!(
                    "keygatectl: audit entry {id}: {} {}: {} ({} s so far); retrying",
                    s.method,
                    s.path,
                    if answer.status == 0 {
                        "OpenViking unreachable".to_owned()
                    } else {
                        answer.status.to_string()
                    },
                    started.elapsed().as_secs()
                );
                std::thread::sleep(wait);
                wait = (wait.saturating_mul(2)).min(Duration::from_secs(5));
            }
        }
    }
    m.retrying = 0;
}

/// A user as OpenViking lists it, and its key when OpenViking keeps it in plaintext.
#[derive(Debug, PartialEq)]
pub struct OvUser {
    pub user_id: String,
    pub role: String,
    pub key: Key,
}

#[derive(Debug, PartialEq)]
pub enum Key {
    Plain(String),
    /// Stored as an argon2id hash (`encryption.api_key_hashing`): the key cannot be read.
    Hashed,
}

/// The users of `GET /api/v1/admin/accounts/{a}/users` (`result`).
pub fn ov_users(answer: &Value) -> Vec<OvUser> {
    let list = answer.get("result").and_then(Value::as_array);
    list.into_iter()
        .flatten()
        .filter_map(|u| {
            let key = match u.get("api_key").and_then(Value::as_str) {
                Some(k) if !k.is_empty() && !k.starts_with("$argon2") => Key::Plain(k.to_owned()),
                _ => Key::Hashed,
            };
            Some(OvUser {
                user_id: u.get("user_id")?.as_str()?.to_owned(),
                role: u.get("role")?.as_str()?.to_owned(),
                key,
            })
        })
        .collect()
}

fn import(store: &Client, a: &ImportArgs) -> Result<(), Error> {
    let ov = OpenViking::new(&a.target)?;
    let accounts = ov.call("GET", "/api/v1/admin/accounts", None);
    if accounts.status != 200 {
        return Err(Error::Api(
            accounts.status,
            format!("listing OpenViking's accounts: {}", accounts.body),
        ));
    }
    let ids = accounts.body.get("result").and_then(Value::as_array);
    let mut hashed = 0u32;
    for id in ids
        .into_iter()
        .flatten()
        .filter_map(|x| x.get("account_id")?.as_str())
    {
        let answer = ov.call(
            "GET",
            &format!("/api/v1/admin/accounts/{}/users", seg(id)),
            None,
        );
        let mut users = ov_users(&answer.body);
        // The account's admin first: the keystore creates an account with its admin user.
        users.sort_by_key(|u| u.role != "admin");
        for (n, u) in users.iter().enumerate() {
            if u.key == Key::Hashed && !a.rotate {
                hashed = hashed.saturating_add(1);
                println!("{id}/{}: key stored hashed (argon2id) in OpenViking: not imported; it must be rotated (--rotate mints a new key)", u.user_id);
                continue;
            }
            import_user(store, id, u, n == 0, &a.user_role)?;
        }
    }
    if hashed > 0 {
        return Err(Error::Api(
            409,
            format!("{hashed} key(s) are stored as hashes and were not imported: run again with --rotate to give those users new keys"),
        ));
    }
    Ok(())
}

/// Creates one user (the account too, for its first user) in the keystore with its key.
fn import_user(
    store: &Client,
    account: &str,
    u: &OvUser,
    first: bool,
    user_role: &str,
) -> Result<(), Error> {
    let role = if u.role == "admin" {
        "admin"
    } else {
        user_role
    };
    let (path, mut body) = if first && role == "admin" {
        (
            "/api/v1/admin/accounts".to_owned(),
            json!({"account_id": account, "admin_user_id": u.user_id}),
        )
    } else {
        (
            format!("/api/v1/admin/accounts/{}/users", seg(account)),
            json!({"user_id": u.user_id, "role": role}),
        )
    };
    if let (Key::Plain(k), Some(fields)) = (&u.key, body.as_object_mut()) {
        fields.insert("user_key".to_owned(), json!(k));
    }
    let what = format!("{account}/{} ({role})", u.user_id);
    match store.call("POST", &path, Some(&body)) {
        Ok(created) => match (&u.key, created.get("user_key").and_then(Value::as_str)) {
            (Key::Plain(_), _) => println!("{what}: imported with its OpenViking key"),
            (Key::Hashed, Some(new)) => println!("{what}: NEW KEY (shown once): {new}"),
            (Key::Hashed, None) => println!("{what}: created"),
        },
        Err(Error::Api(409, _)) => println!("{what}: already in the keystore"),
        Err(e) => return Err(e),
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn entry(action: &str, account: &str, object: &str, detail: Value) -> Value {
        json!({"id": 7, "action": action, "account_id": account, "object": object, "detail": detail})
    }

    #[test]
    fn each_registry_change_becomes_one_openviking_admin_call() {
        let s = step(&entry(
            "account.create",
            "acme",
            "acme",
            json!({"admin_user_id": "alice"}),
        ))
        .unwrap();
        assert_eq!(
            (s.method, s.path.as_str(), s.already),
            ("POST", "/api/v1/admin/accounts", 409)
        );
        assert_eq!(
            s.body,
            Some(json!({"account_id": "acme", "admin_user_id": "alice"}))
        );
        let s = step(&entry(
            "user.create",
            "acme",
            "acme/bob",
            json!({"role": "member"}),
        ))
        .unwrap();
        assert_eq!(s.path, "/api/v1/admin/accounts/acme/users");
        assert_eq!(s.body, Some(json!({"user_id": "bob", "role": "user"})));
        let s = step(&entry("user.revoke", "acme", "acme/b.o-b", json!({}))).unwrap();
        assert_eq!(
            (s.method, s.path.as_str(), s.already),
            ("DELETE", "/api/v1/admin/accounts/acme/users/b%2Eo%2Db", 404)
        );
        let s = step(&entry("account.revoke", "acme", "acme", json!({}))).unwrap();
        assert_eq!(
            (s.method, s.path.as_str()),
            ("DELETE", "/api/v1/admin/accounts/acme")
        );
    }

    #[test]
    fn key_changes_refusals_and_the_system_account_change_nothing_in_openviking() {
        for e in [
            entry("key.create", "acme", "acme/bob/keys/x", json!({})),
            entry(
                "admin.refused",
                "acme",
                "/api/v1/admin/accounts/{account}",
                json!({}),
            ),
            entry("root_key.install", "_system", "_system/root", json!({})),
            entry(
                "user.create",
                "_system",
                "_system/x",
                json!({"role": "root"}),
            ),
            entry(
                "user.create",
                "acme",
                "other/bob",
                json!({"role": "member"}),
            ),
            json!({"id": 1}),
        ] {
            assert_eq!(step(&e), None, "{e}");
        }
    }

    #[test]
    fn unreachable_or_5xx_is_retried_already_done_is_applied_other_4xx_is_rejected() {
        assert_eq!(outcome(200, 409), Outcome::Applied);
        assert_eq!(outcome(202, 404), Outcome::Applied);
        assert_eq!(outcome(409, 409), Outcome::Applied);
        assert_eq!(outcome(404, 404), Outcome::Applied);
        assert_eq!(outcome(404, 409), Outcome::Rejected);
        assert_eq!(outcome(400, 409), Outcome::Rejected);
        assert_eq!(outcome(0, 409), Outcome::Retry);
        assert_eq!(outcome(503, 409), Outcome::Retry);
    }

    #[test]
    fn hashed_or_missing_keys_are_told_apart_from_plaintext_ones() {
        let answer = json!({"result": [
            {"user_id": "alice", "role": "admin", "api_key": "YWNtZQ.YWxpY2U.abc"},
            {"user_id": "bob", "role": "user", "api_key": "$argon2id$v=19$m=65536,t=3,p=2$x"},
            {"user_id": "carol", "role": "user", "key_prefix": "YWNtZQ"},
            {"role": "user"}
        ]});
        let users = ov_users(&answer);
        assert_eq!(users.len(), 3);
        assert_eq!(users[0].key, Key::Plain("YWNtZQ.YWxpY2U.abc".into()));
        assert_eq!(users[1].key, Key::Hashed);
        assert_eq!(users[2].key, Key::Hashed);
    }
}
