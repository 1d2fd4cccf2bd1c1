//! The subcommands, each one admin API call (the audit trail with `--all`: one per page), and
//! how its answer is shown. The mapping from a subcommand to its method, path and body is the
//! only place that knows the API's routes. A new subcommand: a variant of [`Cmd`] (in its own
//! module if it is more than one call) and its arm in [`run`].

use crate::client::{read_key_file, read_value, Client, Error};
use crate::input::{self, KeyOut};
use crate::output::{self, Format, Object, View};
use clap::{Args, CommandFactory as _, Parser, Subcommand};
use keygate_protocol::routes::admin;
use serde_json::{json, Map, Value};
use std::path::PathBuf;

/// Environment variable holding the caller's key when `--key-file` is not given.
pub const KEY_ENV: &str = "KEYGATE_KEY";
/// The old name of [`KEY_ENV`], still read (with a warning).
pub const DEPRECATED_KEY_ENV: &str = "KEYGATE_ROOT_KEY";

#[derive(Parser)]
#[command(
    name = "keygatectl",
    version,
    about = "Admin CLI for the keygate keystore"
)]
#[command(
    after_help = "The caller's key comes from --key-file (or KEYGATE_KEY_FILE), else \
from the KEYGATE_KEY variable; it is never a command-line argument. Durations: 90s, 15m, 1h, \
30d, 1h30m, or plain seconds. Exit status: 0 done, 1 the API refused, 2 bad usage, 3 the store \
could not be reached."
)]
pub struct Cli {
    /// The keystore (or an Envoy routing /api/v1/admin/ to it).
    #[arg(
        long,
        env = "KEYGATE_URL",
        default_value = "http://127.0.0.1:8081",
        global = true
    )]
    url: String,
    /// File holding the caller's key (root, an account admin, or a user).
    #[arg(long, env = "KEYGATE_KEY_FILE", global = true)]
    key_file: Option<PathBuf>,
    /// PEM file of CA certificates to trust for an https:// --url, besides the system's.
    #[arg(long, env = "KEYGATE_CA_CERT", value_name = "FILE", global = true)]
    ca_cert: Option<PathBuf>,
    /// Output format: table (borders on a terminal only), json (the API's answer), yaml, or
    /// name (the identifier of each object, one a line).
    #[arg(short, long, value_enum, default_value_t = Format::Table, global = true)]
    output: Format,
    /// Same as -o json.
    #[arg(long, global = true, conflicts_with = "output")]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Accounts: create, revoke, set claims, disable, enable.
    #[command(subcommand)]
    Account(AccountCmd),
    /// Users of an account: create, list, set role, rotate all their keys, revoke, disable,
    /// enable.
    #[command(subcommand)]
    User(UserCmd),
    /// A user's named keys: list, create, update (expiry, name, claims), rotate, revoke,
    /// disable, enable; a leaked key by its value: find, revoke --value-file.
    #[command(subcommand)]
    Key(KeyCmd),
    /// The audit trail: everything (root) or one account's (root, its admins).
    Audit(AuditArgs),
    /// Print a shell completion script: `source <(keygatectl completion bash)`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// keygate in front of OpenViking: keep its registry in step (sync), import its keys.
    #[command(subcommand)]
    Openviking(crate::openviking::OpenVikingCmd),
}

/// A new key: expiry, capabilities and an optional key to import instead of minting one.
#[derive(Args)]
struct NewKeyArgs {
    /// Expiry of the new key (RFC 3339, e.g. 2027-06-30T00:00:00Z); at most the calling key's
    /// and the user's (the default). For `user create`, the user's expiry.
    #[arg(long, conflicts_with = "expires_in")]
    expires_at: Option<String>,
    /// Expiry as a duration from now (e.g. 30d, 12h).
    #[arg(long, value_name = "DURATION", value_parser = input::parse_duration)]
    expires_in: Option<u64>,
    /// Write the new key to this file (created, mode 0600; an existing file is not replaced)
    /// instead of printing it.
    #[arg(long, value_name = "FILE")]
    key_out: Option<PathBuf>,
    /// The new key's capabilities, comma-separated: traffic, own_keys, account_admin
    /// (default: all the calling key has and the role allows).
    #[arg(long, value_delimiter = ',', value_name = "CAPS")]
    capabilities: Vec<String>,
    /// Import the key in this file instead of minting one.
    #[arg(long)]
    import_key_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum AccountCmd {
    /// List the accounts (root). `_system` is listed too: the account of the root key (user
    /// `root`), which exists like any other and can be read, but which the keystore refuses to
    /// change (its configuration manages it).
    List,
    /// Show one account: creation time, claims, whether it is enabled (root, its admins).
    Get {
        /// Account id
        account: String,
    },
    /// Create an account and its admin user (root).
    Create {
        /// Account id
        account: String,
        /// Id of the account's admin user (created with it)
        #[arg(long)]
        admin: String,
        #[command(flatten)]
        key: NewKeyArgs,
    },
    /// Revoke an account, its users and their keys (root). Asks first on a terminal.
    Revoke {
        /// Account id
        account: String,
        #[command(flatten)]
        yes: Yes,
    },
    /// Set the account's claims, NAME=VALUE (none: clear them) (root).
    SetClaims {
        /// Account id
        account: String,
        #[arg(long = "claim", value_name = "NAME=VALUE")]
        claims: Vec<String>,
    },
    /// Disable an account: none of its keys is looked up until it is enabled again (root).
    Disable {
        /// Account id
        account: String,
    },
    /// Enable a disabled account again (root).
    Enable {
        /// Account id
        account: String,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Create a user with a key named "default".
    Create {
        /// Account id
        account: String,
        /// User id
        user: String,
        /// Role (admin administers the account; others from the keystore's role registry;
        /// sent in lowercase)
        #[arg(long)]
        role: String,
        #[command(flatten)]
        key: NewKeyArgs,
    },
    /// List an account's active users.
    List {
        /// Account id
        account: String,
    },
    /// Show one user: role, creation time, expiry, whether it is enabled.
    Get {
        /// Account id
        account: String,
        /// User id
        user: String,
    },
    /// Change a user's role.
    SetRole {
        /// Account id
        account: String,
        /// User id
        user: String,
        role: String,
    },
    /// Replace all of a user's keys by one new key; the old ones expire after --grace seconds.
    Rotate {
        /// Account id
        account: String,
        /// User id
        user: String,
        /// How long the replaced key(s) stay valid: 0 (default: revoked at once) to 7d
        #[arg(long, value_name = "DURATION", value_parser = input::parse_duration)]
        grace: Option<u64>,
        #[command(flatten)]
        key: NewKeyArgs,
    },
    /// Revoke a user and all their keys. Asks first on a terminal.
    Revoke {
        /// Account id
        account: String,
        /// User id
        user: String,
        #[command(flatten)]
        yes: Yes,
    },
    /// Disable a user: its keys are not looked up until it is enabled again.
    Disable {
        /// Account id
        account: String,
        /// User id
        user: String,
    },
    /// Enable a disabled user again.
    Enable {
        /// Account id
        account: String,
        /// User id
        user: String,
    },
}

#[derive(Subcommand)]
enum KeyCmd {
    /// List a user's keys (references and hints, never the keys).
    List {
        /// Account id
        account: String,
        /// User id
        user: String,
    },
    /// Show one key by its reference (what `key list` shows of it, never the key).
    Get(KeyRef),
    /// Add a named key to a user.
    Create {
        /// Account id
        account: String,
        /// User id
        user: String,
        /// Name of the key (e.g. one per deployment)
        #[arg(long)]
        name: String,
        #[arg(long = "claim", value_name = "NAME=VALUE")]
        claims: Vec<String>,
        #[command(flatten)]
        key: NewKeyArgs,
    },
    /// Change a key's name, expiry or claims (KEY: the reference shown by `key list`).
    Update(UpdateArgs),
    /// Rotate one key: a new key with its name and claims; the old one expires after --grace.
    Rotate {
        /// Account id
        account: String,
        /// User id
        user: String,
        /// Key reference (the 16 hex characters `key list` shows)
        key: String,
        /// How long the replaced key(s) stay valid: 0 (default: revoked at once) to 7d
        #[arg(long, value_name = "DURATION", value_parser = input::parse_duration)]
        grace: Option<u64>,
        #[command(flatten)]
        new: NewKeyArgs,
    },
    /// Revoke one key; the user's other keys keep working. Asks first on a terminal.
    Revoke(KeyRevokeArgs),
    /// Disable one key: it is not looked up until it is enabled again.
    Disable(KeyRef),
    /// Enable a disabled key again.
    Enable(KeyRef),
    /// Find a key by its value (a leak report): owner, reference, name and state.
    Find {
        /// File holding the leaked key's value (`-`: standard input).
        #[arg(long)]
        value_file: PathBuf,
    },
}

/// One key of a user.
#[derive(Args)]
struct KeyRef {
    /// Account id
    account: String,
    /// User id
    user: String,
    /// Key reference (the 16 hex characters `key list` shows)
    key: String,
}

/// `key revoke ACCOUNT USER KEY`, or `key revoke --value-file F` (a leaked key, by value).
#[derive(Args)]
struct KeyRevokeArgs {
    /// Account id
    #[arg(required_unless_present = "value_file")]
    account: Option<String>,
    /// User id
    #[arg(required_unless_present = "value_file")]
    user: Option<String>,
    /// Key reference (the 16 hex characters `key list` shows)
    #[arg(required_unless_present = "value_file")]
    key: Option<String>,
    /// Revoke the key whose value is in this file (`-`: standard input) instead.
    #[arg(long, conflicts_with_all = ["account", "user", "key"])]
    value_file: Option<PathBuf>,
    #[command(flatten)]
    yes: Yes,
}

/// Consent to a destructive command.
#[derive(Args)]
struct Yes {
    /// Do it without asking (needed when standard input is not a terminal).
    #[arg(long, short = 'y')]
    yes: bool,
}

#[derive(Args)]
struct UpdateArgs {
    /// Account id
    account: String,
    /// User id
    user: String,
    /// Key reference (the 16 hex characters `key list` shows)
    key: String,
    #[arg(long)]
    name: Option<String>,
    /// New expiry (RFC 3339).
    #[arg(long, conflicts_with_all = ["no_expiry", "expires_in"])]
    expires_at: Option<String>,
    /// New expiry as a duration from now (e.g. 30d).
    #[arg(long, value_name = "DURATION", value_parser = input::parse_duration,
          conflicts_with = "no_expiry")]
    expires_in: Option<u64>,
    /// Remove the expiry.
    #[arg(long)]
    no_expiry: bool,
    /// Replace the key's claims (root only).
    #[arg(
        long = "claim",
        value_name = "NAME=VALUE",
        conflicts_with = "clear_claims"
    )]
    claims: Vec<String>,
    /// Remove the key's claims (root only).
    #[arg(long)]
    clear_claims: bool,
}

#[derive(Args)]
struct AuditArgs {
    /// Only this account's entries (root or the account's admins).
    #[arg(long)]
    account: Option<String>,
    /// Entries with an id greater than this.
    #[arg(long, default_value_t = 0)]
    after: u64,
    /// Entries per page (1 to 1000).
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Follow the pages to the end.
    #[arg(long)]
    all: bool,
}

/// One admin call: method, path (segments already escaped), body, and how to show the answer.
struct Call {
    method: &'static str,
    path: String,
    body: Option<Value>,
    view: View,
}

/// Runs the command line.
pub fn run(cli: &Cli) -> Result<(), Error> {
    let format = if cli.json { Format::Json } else { cli.output };
    if let Cmd::Completion { shell } = &cli.cmd {
        let mut script = Vec::new();
        clap_complete::generate(*shell, &mut Cli::command(), "keygatectl", &mut script);
        return output::say(&String::from_utf8_lossy(&script));
    }
    let client = Client::new(&cli.url, caller_key(cli)?, cli.ca_cert.as_deref())?;
    if let Cmd::Openviking(cmd) = &cli.cmd {
        return crate::openviking::run(&client, cmd);
    }
    if let Cmd::Audit(args) = &cli.cmd {
        let page = audit(&client, args)?;
        return output::print(&page, View::Audit, format);
    }
    let call = plan(&cli.cmd)?;
    let destroys = destroys(&cli.cmd);
    if let Some((what, yes)) = &destroys {
        input::confirm(what, *yes)?;
    }
    let key_out = key_out(&cli.cmd).map(KeyOut::create).transpose()?;
    let mut answer = every_page(&client, &call)?;
    if let Some(out) = key_out {
        out.write(&mut answer)?;
    }
    match destroys {
        Some(_) if format == Format::Table => output::say(&revoked(&answer)),
        _ => output::print(&answer, call.view, format),
    }
}

/// What a destructive command revokes (for the question) and whether `--yes` was given.
fn destroys(cmd: &Cmd) -> Option<(String, bool)> {
    match cmd {
        Cmd::Account(AccountCmd::Revoke { account, yes }) => Some((
            format!("account {account}, its users and all their keys"),
            yes.yes,
        )),
        Cmd::User(UserCmd::Revoke { account, user, yes }) => Some((
            format!("user {user} of account {account} and all their keys"),
            yes.yes,
        )),
        Cmd::Key(KeyCmd::Revoke(a)) => Some(match (&a.account, &a.user, &a.key) {
            (Some(account), Some(user), Some(key)) => {
                (format!("key {key} of {account}/{user}"), a.yes.yes)
            }
            _ => ("the key whose value is given".to_owned(), a.yes.yes),
        }),
        _ => None,
    }
}

/// The sentence that reports a revocation: what, and how many keys stopped working.
fn revoked(answer: &Value) -> String {
    let text = |k: &str| answer.get(k).and_then(Value::as_str);
    match (answer.get("revoked").and_then(Value::as_u64), text("key")) {
        (Some(n), _) => format!("revoked: {n} key(s) no longer work"),
        (None, Some(key)) => format!(
            "revoked key {key} of {}/{}",
            text("account_id").unwrap_or("?"),
            text("user_id").unwrap_or("?")
        ),
        _ => format!("revoked: {answer}"),
    }
}

/// The `--key-out` file of a command that makes a key.
fn key_out(cmd: &Cmd) -> Option<&std::path::Path> {
    let args = match cmd {
        Cmd::Account(AccountCmd::Create { key, .. })
        | Cmd::User(UserCmd::Create { key, .. } | UserCmd::Rotate { key, .. })
        | Cmd::Key(KeyCmd::Create { key, .. } | KeyCmd::Rotate { new: key, .. }) => key,
        _ => return None,
    };
    args.key_out.as_deref()
}

/// The answer of `call`; for a list of accounts, users or keys, every page (`next_cursor`) merged.
fn every_page(client: &Client, call: &Call) -> Result<Value, Error> {
    let field = match call.view {
        View::Accounts => "accounts",
        View::Users => "users",
        View::Keys => "keys",
        _ => return client.call(call.method, &call.path, call.body.as_ref()),
    };
    let mut answer = client.call("GET", &format!("{}?limit=1000", call.path), None)?;
    while let Some(cursor) = answer.get("next_cursor").and_then(Value::as_str) {
        let path = format!("{}?limit=1000&cursor={}", call.path, seg(cursor));
        let mut page = client.call("GET", &path, None)?;
        let more = page.get_mut(field).map(Value::take);
        if let (Some(Value::Array(all)), Some(Value::Array(more))) = (answer.get_mut(field), more) {
            all.extend(more);
        }
        if let Some(obj) = answer.as_object_mut() {
            match page.get("next_cursor") {
                Some(next) => obj.insert("next_cursor".into(), next.clone()),
                None => obj.remove("next_cursor"),
            };
        }
    }
    Ok(answer)
}

/// The caller's key: `--key-file` (or `KEYGATE_KEY_FILE`), else `KEYGATE_KEY`, else the
/// deprecated `KEYGATE_ROOT_KEY` (with a warning).
fn caller_key(cli: &Cli) -> Result<String, Error> {
    if let Some(path) = &cli.key_file {
        return read_key_file(path, "key file");
    }
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
    };
    if let Some(key) = var(KEY_ENV) {
        return Ok(key);
    }
    if let Some(key) = var(DEPRECATED_KEY_ENV) {
        eprintln!("keygatectl: warning: {DEPRECATED_KEY_ENV} is deprecated: use {KEY_ENV}");
        return Ok(key);
    }
    Err(Error::Usage(format!(
        "no credential: give --key-file PATH (or KEYGATE_KEY_FILE) or set {KEY_ENV}"
    )))
}

/// One path segment, percent-encoded.
fn seg(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn account_path(account: &str) -> String {
    admin::account(&seg(account))
}

fn user_path(account: &str, user: &str) -> String {
    admin::user(&seg(account), &seg(user))
}

fn key_path(account: &str, user: &str, key: &str) -> String {
    admin::key(&seg(account), &seg(user), &seg(key))
}

fn plan(cmd: &Cmd) -> Result<Call, Error> {
    match cmd {
        Cmd::Account(c) => plan_account(c),
        Cmd::User(c) => plan_user(c),
        Cmd::Key(c) => plan_key(c),
        Cmd::Audit(_) | Cmd::Completion { .. } | Cmd::Openviking(_) => Err(Error::Usage(
            "audit, completion and openviking are not one call".into(),
        )),
    }
}

fn call(method: &'static str, path: String, body: Option<Value>, view: View) -> Call {
    Call {
        method,
        path,
        body,
        view,
    }
}

fn plan_account(cmd: &AccountCmd) -> Result<Call, Error> {
    Ok(match cmd {
        AccountCmd::Create {
            account,
            admin,
            key,
        } => {
            if !key.capabilities.is_empty() {
                return Err(Error::Usage(
                    "account create: the admin's first key has every capability; \
                     --capabilities is for user and key commands"
                        .into(),
                ));
            }
            let mut body = new_key_body(key)?;
            body.insert("account_id".into(), json!(account));
            body.insert("admin_user_id".into(), json!(admin));
            let path = admin::ACCOUNTS.to_owned();
            let view = View::NewKey(Object::Account);
            call("POST", path, Some(Value::Object(body)), view)
        }
        AccountCmd::List => call("GET", admin::ACCOUNTS.to_owned(), None, View::Accounts),
        AccountCmd::Get { account } => call(
            "GET",
            account_path(account),
            None,
            View::Fields(Object::Account),
        ),
        AccountCmd::Revoke { account, .. } => call(
            "DELETE",
            account_path(account),
            None,
            View::Fields(Object::Account),
        ),
        AccountCmd::SetClaims { account, claims } => {
            let body = json!({ "claims": parse_claims(claims)? });
            let view = View::Fields(Object::Account);
            call("PATCH", account_path(account), Some(body), view)
        }
        AccountCmd::Disable { account } => enabled(account_path(account), Object::Account, false),
        AccountCmd::Enable { account } => enabled(account_path(account), Object::Account, true),
    })
}

fn plan_user(cmd: &UserCmd) -> Result<Call, Error> {
    Ok(match cmd {
        UserCmd::Create {
            account,
            user,
            role,
            key,
        } => {
            let mut body = new_key_body(key)?;
            body.insert("user_id".into(), json!(user));
            body.insert("role".into(), json!(role.to_ascii_lowercase()));
            let path = admin::users(&seg(account));
            call(
                "POST",
                path,
                Some(Value::Object(body)),
                View::NewKey(Object::User),
            )
        }
        UserCmd::List { account } => {
            let path = admin::users(&seg(account));
            call("GET", path, None, View::Users)
        }
        UserCmd::Get { account, user } => call(
            "GET",
            user_path(account, user),
            None,
            View::Fields(Object::User),
        ),
        UserCmd::SetRole {
            account,
            user,
            role,
        } => {
            let body = json!({ "role": role.to_ascii_lowercase() });
            let view = View::Fields(Object::User);
            call("PATCH", user_path(account, user), Some(body), view)
        }
        UserCmd::Rotate {
            account,
            user,
            grace,
            key,
        } => {
            let mut body = new_key_body(key)?;
            if let Some(g) = grace {
                body.insert("grace_s".into(), json!(g));
            }
            let path = admin::user_key(&seg(account), &seg(user));
            call(
                "POST",
                path,
                Some(Value::Object(body)),
                View::NewKey(Object::Key),
            )
        }
        UserCmd::Revoke { account, user, .. } => call(
            "DELETE",
            user_path(account, user),
            None,
            View::Fields(Object::User),
        ),
        UserCmd::Disable { account, user } => {
            enabled(user_path(account, user), Object::User, false)
        }
        UserCmd::Enable { account, user } => enabled(user_path(account, user), Object::User, true),
    })
}

fn plan_key(cmd: &KeyCmd) -> Result<Call, Error> {
    Ok(match cmd {
        KeyCmd::List { account, user } => {
            let path = admin::keys(&seg(account), &seg(user));
            call("GET", path, None, View::Keys)
        }
        KeyCmd::Get(k) => call(
            "GET",
            key_path(&k.account, &k.user, &k.key),
            None,
            View::Fields(Object::Key),
        ),
        KeyCmd::Create {
            account,
            user,
            name,
            claims,
            key,
        } => {
            let mut body = new_key_body(key)?;
            body.insert("name".into(), json!(name));
            if !claims.is_empty() {
                body.insert("claims".into(), parse_claims(claims)?);
            }
            let path = admin::keys(&seg(account), &seg(user));
            call(
                "POST",
                path,
                Some(Value::Object(body)),
                View::NewKey(Object::Key),
            )
        }
        KeyCmd::Update(args) => plan_update(args)?,
        KeyCmd::Rotate {
            account,
            user,
            key,
            grace,
            new,
        } => {
            let mut body = new_key_body(new)?;
            if let Some(g) = grace {
                body.insert("grace_s".into(), json!(g));
            }
            let path = admin::key_rotate(&seg(account), &seg(user), &seg(key));
            call(
                "POST",
                path,
                Some(Value::Object(body)),
                View::NewKey(Object::Key),
            )
        }
        KeyCmd::Revoke(args) => plan_revoke(args)?,
        KeyCmd::Disable(k) => enabled(key_path(&k.account, &k.user, &k.key), Object::Key, false),
        KeyCmd::Enable(k) => enabled(key_path(&k.account, &k.user, &k.key), Object::Key, true),
        KeyCmd::Find { value_file } => by_value(admin::KEYS_FIND, value_file)?,
    })
}

/// `PATCH path {"enabled": ...}` of `object`.
fn enabled(path: String, object: Object, enabled: bool) -> Call {
    call(
        "PATCH",
        path,
        Some(json!({ "enabled": enabled })),
        View::Fields(object),
    )
}

/// `POST` to `route` (a leak report: [`admin::KEYS_FIND`] or [`admin::KEYS_REVOKE`]) with the
/// key's value (read from `file`) in the body.
fn by_value(route: &str, file: &std::path::Path) -> Result<Call, Error> {
    let body = json!({ "user_key": read_value(file, "value file")? });
    Ok(call(
        "POST",
        route.to_owned(),
        Some(body),
        View::Fields(Object::Key),
    ))
}

fn plan_revoke(a: &KeyRevokeArgs) -> Result<Call, Error> {
    if let Some(file) = &a.value_file {
        return by_value(admin::KEYS_REVOKE, file);
    }
    match (&a.account, &a.user, &a.key) {
        (Some(account), Some(user), Some(key)) => Ok(call(
            "DELETE",
            key_path(account, user, key),
            None,
            View::Fields(Object::Key),
        )),
        _ => Err(Error::Usage(
            "key revoke: give ACCOUNT USER KEY, or --value-file".into(),
        )),
    }
}

fn plan_update(a: &UpdateArgs) -> Result<Call, Error> {
    let mut body = Map::new();
    if let Some(name) = &a.name {
        body.insert("name".into(), json!(name));
    }
    if let Some(at) = &a.expires_at {
        body.insert("expires_at".into(), json!(at));
    } else if let Some(seconds) = a.expires_in {
        body.insert("expires_at".into(), json!(input::from_now(seconds)?));
    } else if a.no_expiry {
        body.insert("expires_at".into(), Value::Null);
    }
    if a.clear_claims {
        body.insert("claims".into(), Value::Null);
    } else if !a.claims.is_empty() {
        body.insert("claims".into(), parse_claims(&a.claims)?);
    }
    let path = key_path(&a.account, &a.user, &a.key);
    Ok(call(
        "PATCH",
        path,
        Some(Value::Object(body)),
        View::Fields(Object::Key),
    ))
}

/// `expires_at` and an imported `user_key`, when given.
fn new_key_body(args: &NewKeyArgs) -> Result<Map<String, Value>, Error> {
    let mut body = Map::new();
    if let Some(at) = &args.expires_at {
        body.insert("expires_at".into(), json!(at));
    } else if let Some(seconds) = args.expires_in {
        body.insert("expires_at".into(), json!(input::from_now(seconds)?));
    }
    if !args.capabilities.is_empty() {
        let caps: Vec<&str> = args.capabilities.iter().map(|c| c.trim()).collect();
        body.insert("capabilities".into(), json!(caps));
    }
    if let Some(path) = &args.import_key_file {
        body.insert(
            "user_key".into(),
            json!(read_key_file(path, "key to import")?),
        );
    }
    Ok(body)
}

/// `NAME=VALUE` pairs as a JSON object (the store checks the names and values).
fn parse_claims(pairs: &[String]) -> Result<Value, Error> {
    let mut claims = Map::new();
    for pair in pairs {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| Error::Usage(format!("--claim {pair:?}: expected NAME=VALUE")))?;
        claims.insert(name.to_owned(), json!(value));
    }
    Ok(Value::Object(claims))
}

/// One page of the audit trail, or with `--all` every page from `--after` on, merged.
fn audit(client: &Client, args: &AuditArgs) -> Result<Value, Error> {
    let base = match &args.account {
        Some(a) => admin::account_audit(&seg(a)),
        None => admin::AUDIT.to_owned(),
    };
    let mut after = args.after;
    let mut entries = Vec::new();
    loop {
        let path = format!("{base}?after={after}&limit={}", args.limit);
        let page = client.call("GET", &path, None)?;
        let more = page.get("more").and_then(Value::as_bool).unwrap_or(false);
        let got = page.get("entries").and_then(Value::as_array).cloned();
        let got = got.unwrap_or_default();
        let last = got.last().and_then(|e| e.get("id")).and_then(Value::as_u64);
        entries.extend(got);
        match last {
            Some(id) if args.all && more => after = id,
            _ => return Ok(json!({ "entries": entries, "more": more && !args.all })),
        }
    }
}
