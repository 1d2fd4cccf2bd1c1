//! The key store, started from its release binary.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use keygate_protocol::routes::admin;
use serde_json::{json, Value};

use crate::error::{fail, Error, Result};
use crate::http::{self, Response};
use crate::process::{file_len, read_log, tail, wait_for_log_line, Proc};
use crate::tmp::TempDir;

/// How to start a [`Keystore`].
#[derive(Debug, Clone)]
pub struct KeystoreOpts {
    /// Port to listen on; `None` lets the keystore pick one (`127.0.0.1:0`).
    pub port: Option<u16>,
    /// `--lookup-delay-ms`: sleep before answering each key lookup.
    pub lookup_delay_ms: Option<u64>,
    /// The root key; `None` generates a random one.
    pub root_key: Option<String>,
    /// Pass the root key with `--root-key-file` instead of `KEYSTORE_ROOT_KEY`.
    pub root_key_via_file: bool,
    /// `--protocol-token-file`: the bearer token `/v1/keys/` and `/v1/changes` then require
    /// (the filter's `store.token`); `None`: those endpoints are open.
    pub protocol_token: Option<String>,
    /// `--database-url`: run on PostgreSQL instead of a fresh SQLite file (several keystores
    /// given the same URL are replicas of one store).
    pub database_url: Option<String>,
    /// More arguments after `serve ...`.
    pub extra_args: Vec<String>,
    /// More environment variables (e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// How long to wait for the ready line.
    pub ready_timeout: Duration,
    /// The binary; `None` is [`crate::keystore_path`].
    pub binary: Option<PathBuf>,
}

impl Default for KeystoreOpts {
    fn default() -> Self {
        KeystoreOpts {
            port: None,
            lookup_delay_ms: None,
            root_key: None,
            root_key_via_file: false,
            protocol_token: None,
            database_url: None,
            extra_args: Vec::new(),
            env: Vec::new(),
            ready_timeout: Duration::from_secs(20),
            binary: None,
        }
    }
}

/// A running `keystore serve` with its own database in a temp dir; killed on drop.
#[derive(Debug)]
pub struct Keystore {
    // Field order is drop order: the process goes before its directory.
    proc: Option<Proc>,
    opts: KeystoreOpts,
    binary: PathBuf,
    root_key: String,
    port: u16,
    db: PathBuf,
    log: PathBuf,
    dir: TempDir,
}

const READY_PREFIX: &str = "keystore listening on ";

impl Keystore {
    /// Starts a keystore on a fresh database and waits for `keystore listening on ADDR`.
    pub fn start(opts: KeystoreOpts) -> Result<Keystore> {
        let binary = opts.binary.clone().unwrap_or_else(crate::keystore_path);
        let dir = TempDir::new("keystore")?;
        let root_key = match &opts.root_key {
            Some(k) => k.clone(),
            None => random_root_key()?,
        };
        let mut ks = Keystore {
            proc: None,
            binary,
            root_key,
            port: opts.port.unwrap_or(0),
            db: dir.path().join("keystore.db"),
            log: dir.path().join("keystore.log"),
            opts,
            dir,
        };
        ks.spawn()?;
        Ok(ks)
    }

    fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("serve");
        match &self.opts.database_url {
            Some(url) => cmd.arg("--database-url").arg(url),
            None => cmd.arg("--db").arg(&self.db),
        };
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .env_remove("KEYSTORE_DATABASE_URL");
        if let Some(ms) = self.opts.lookup_delay_ms {
            cmd.arg("--lookup-delay-ms").arg(ms.to_string());
        }
        if self.opts.root_key_via_file {
            let file = self.dir.path().join("root.key");
            std::fs::write(&file, &self.root_key)?;
            cmd.arg("--root-key-file")
                .arg(file)
                .env_remove("KEYSTORE_ROOT_KEY");
        } else {
            cmd.env("KEYSTORE_ROOT_KEY", &self.root_key);
        }
        cmd.env_remove("KEYSTORE_PROTOCOL_TOKEN");
        if let Some(token) = &self.opts.protocol_token {
            let file = self.dir.path().join("protocol.token");
            std::fs::write(&file, token)?;
            cmd.arg("--protocol-token-file").arg(file);
        }
        cmd.args(&self.opts.extra_args);
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        let from = file_len(&self.log);
        let mut proc = Proc::spawn("keystore", cmd, &self.log)?;
        let addr = wait_for_log_line(&mut proc, from, self.opts.ready_timeout, |line| {
            let at = line.find(READY_PREFIX)?;
            let rest = line.get(at + READY_PREFIX.len()..)?;
            rest.split_whitespace().next().map(str::to_string)
        })?;
        let port = addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .ok_or_else(|| Error::msg(format!("keystore: cannot parse a port in {addr:?}")))?;
        self.port = port;
        self.proc = Some(proc);
        Ok(())
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port it listens on (kept across [`Keystore::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The root key (sent as `x-api-key` by the admin helpers).
    pub fn root_key(&self) -> &str {
        &self.root_key
    }

    /// The SQLite database file (not used when [`KeystoreOpts::database_url`] is set).
    pub fn db_path(&self) -> &Path {
        &self.db
    }

    /// The log file (stdout and stderr of every run).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything it logged so far, across restarts.
    pub fn log_text(&self) -> String {
        read_log(&self.log)
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Proc::is_running)
    }

    /// SIGTERM, up to 5 s to exit, then SIGKILL.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.terminate(Duration::from_secs(5));
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Stops it if running, then starts it again on the same database, port and root key.
    /// Retries for up to 5 s while the port is still taken.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() < deadline && e.0.contains("in use") => {
                    thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e.context("keystore restart")),
            }
        }
    }

    /// `GET /metrics`, parsed. Panics if the keystore does not answer 200.
    pub fn metrics(&self) -> HashMap<String, f64> {
        match self.try_metrics() {
            Ok(m) => m,
            Err(e) => fail(e),
        }
    }

    /// `GET /metrics`, parsed.
    pub fn try_metrics(&self) -> Result<HashMap<String, f64>> {
        let r = http::get(&format!("{}/metrics", self.url()), &[])?;
        if r.status != 200 {
            return Err(Error::msg(format!(
                "keystore /metrics: {} {}",
                r.status, r.body
            )));
        }
        Ok(crate::parse_prometheus(&r.body))
    }

    /// One metric (a series as written, e.g. `keystore_lookups_total`); 0 if absent.
    pub fn metric(&self, name: &str) -> f64 {
        self.metrics().get(name).copied().unwrap_or(0.0)
    }

    /// `keystore_lookups_total`: key lookups served so far.
    pub fn lookups(&self) -> u64 {
        self.metric("keystore_lookups_total") as u64
    }

    /// `keystore_changes_requests_total`.
    pub fn changes_requests(&self) -> u64 {
        self.metric("keystore_changes_requests_total") as u64
    }

    /// Sends an admin request straight to the keystore with the root key; any status is `Ok`.
    pub fn admin(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Response> {
        let url = format!("{}{path}", self.url());
        let key = [("x-api-key", self.root_key.as_str())];
        match body {
            Some(b) => http::send_json(method, &url, &key, b),
            None => http::request(method, &url, &key, None),
        }
    }

    /// Creates an account and its admin user; returns the admin's key. Panics unless 201.
    pub fn create_account(&self, account: &str, admin_user: &str) -> String {
        let body = json!({"account_id": account, "admin_user_id": admin_user});
        let r = self.admin_ok("POST", admin::ACCOUNTS, Some(&body), 201);
        user_key(&r)
    }

    /// Creates a user with `role` in `account`; returns its key. Panics unless 201.
    pub fn create_user(&self, account: &str, user: &str, role: &str) -> String {
        let body = json!({"user_id": user, "role": role});
        let path = admin::users(account);
        let r = self.admin_ok("POST", &path, Some(&body), 201);
        user_key(&r)
    }

    /// Rotates a user's key; returns the new key. Panics unless 2xx.
    pub fn rotate(&self, account: &str, user: &str) -> String {
        let path = admin::user_key(account, user);
        let r = self.admin_ok("POST", &path, None, 0);
        user_key(&r)
    }

    /// Changes a user's role. Panics unless 2xx.
    pub fn set_role(&self, account: &str, user: &str, role: &str) {
        let path = admin::user(account, user);
        self.admin_ok("PATCH", &path, Some(&json!({"role": role})), 0);
    }

    /// Deletes a user (its key stops working). Panics unless 2xx.
    pub fn revoke_user(&self, account: &str, user: &str) {
        let path = admin::user(account, user);
        self.admin_ok("DELETE", &path, None, 0);
    }

    /// Deletes an account and all its users. Panics unless 2xx.
    pub fn revoke_account(&self, account: &str) {
        let path = admin::account(account);
        self.admin_ok("DELETE", &path, None, 0);
    }

    /// Adds a named key to a user (`body`: `{"name"[,"expires_at"][,"claims"][,"user_key"]}`);
    /// returns the whole answer: `"key"` (the key reference), `"user_key"` (the raw key), ...
    /// Panics unless 201.
    pub fn create_key(&self, account: &str, user: &str, body: &Value) -> Value {
        let path = admin::keys(account, user);
        json_of(&self.admin_ok("POST", &path, Some(body), 201))
    }

    /// The user's unrevoked keys as listed (`key`, `name`, `hint`, `expires_at`,
    /// `last_used_at`, ...). Panics unless 2xx.
    pub fn list_keys(&self, account: &str, user: &str) -> Vec<Value> {
        let path = admin::keys(account, user);
        let v = json_of(&self.admin_ok("GET", &path, None, 0));
        v.get("keys")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    /// The key reference of the user's (first) key named `name`. Panics if there is none.
    pub fn key_ref(&self, account: &str, user: &str, name: &str) -> String {
        let keys = self.list_keys(account, user);
        match keys
            .iter()
            .find(|k| k.get("name").and_then(Value::as_str) == Some(name))
            .and_then(|k| k.get("key")?.as_str().map(str::to_string))
        {
            Some(r) => r,
            None => fail(Error::msg(format!(
                "no key named {name} for {account}/{user}: {keys:?}"
            ))),
        }
    }

    /// Rotates one key (by key reference) keeping the old one valid for `grace_s` seconds;
    /// returns the new raw key. Panics unless 2xx.
    pub fn rotate_key_with_grace(
        &self,
        account: &str,
        user: &str,
        key: &str,
        grace_s: u64,
    ) -> String {
        let path = admin::key_rotate(account, user, key);
        let r = self.admin_ok("POST", &path, Some(&json!({"grace_s": grace_s})), 0);
        user_key(&r)
    }

    /// Rotates a user's key(s) keeping the old ones valid for `grace_s` seconds; returns the
    /// new raw key. Panics unless 2xx.
    pub fn rotate_with_grace(&self, account: &str, user: &str, grace_s: u64) -> String {
        let path = admin::user_key(account, user);
        let r = self.admin_ok("POST", &path, Some(&json!({"grace_s": grace_s})), 0);
        user_key(&r)
    }

    /// Sets a key's expiry (RFC 3339; `None` removes it). Panics unless 2xx.
    pub fn set_key_expiry(&self, account: &str, user: &str, key: &str, expires_at: Option<&str>) {
        let path = admin::key(account, user, key);
        self.admin_ok("PATCH", &path, Some(&json!({"expires_at": expires_at})), 0);
    }

    /// Sets a key's claims (`{"plan": "pro"}`; `null` clears). Panics unless 2xx.
    pub fn set_key_claims(&self, account: &str, user: &str, key: &str, claims: &Value) {
        let path = admin::key(account, user, key);
        self.admin_ok("PATCH", &path, Some(&json!({"claims": claims})), 0);
    }

    /// Sets an account's claims (`{"plan": "pro"}`; `null` clears). Panics unless 2xx.
    pub fn set_account_claims(&self, account: &str, claims: &Value) {
        let path = admin::account(account);
        self.admin_ok("PATCH", &path, Some(&json!({"claims": claims})), 0);
    }

    /// [`Keystore::admin`], panicking unless the status is `want` (0: any 2xx).
    fn admin_ok(&self, method: &str, path: &str, body: Option<&Value>, want: u16) -> Response {
        let r = match self.admin(method, path, body) {
            Ok(r) => r,
            Err(e) => fail(e.context(format!("keystore admin {method} {path}"))),
        };
        let ok = if want == 0 {
            (200..300).contains(&r.status)
        } else {
            r.status == want
        };
        if !ok {
            fail(Error::msg(format!(
                "keystore admin {method} {path}: status {} (wanted {}), body {}\nkeystore log tail:\n{}",
                r.status,
                if want == 0 { "2xx".to_string() } else { want.to_string() },
                r.body,
                tail(&self.log_text(), 20)
            )));
        }
        r
    }
}

/// The JSON body of an admin answer; panics if it is not JSON.
fn json_of(r: &Response) -> Value {
    match r.json() {
        Ok(v) => v,
        Err(e) => fail(e.context(format!("keystore admin answer {}: {}", r.status, r.body))),
    }
}

/// The `user_key` of an admin answer; panics if absent.
fn user_key(r: &Response) -> String {
    match r
        .json()
        .ok()
        .and_then(|v| v.get("user_key")?.as_str().map(str::to_string))
    {
        Some(k) => k,
        None => fail(Error::msg(format!(
            "keystore admin answer {} has no user_key: {}",
            r.status, r.body
        ))),
    }
}

/// A random root key: `kgroot_` and 32 random bytes in hex (from /dev/urandom).
fn random_root_key() -> Result<String> {
    random_secret("kgroot_")
}

/// `prefix` and 32 random bytes in hex (from /dev/urandom): a secret that passes the
/// keystore's entropy rule (root keys, protocol tokens).
/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unix seconds as RFC 3339 (UTC), as the keystore's admin API takes times.
pub fn rfc3339(unix_secs: u64) -> String {
    let t = i64::try_from(unix_secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub fn random_secret(prefix: &str) -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let mut key = String::from(prefix);
    for b in bytes {
        key.push_str(&format!("{b:02x}"));
    }
    Ok(key)
}
