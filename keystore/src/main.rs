//! The `keystore` binary.

use clap::builder::TypedValueParser as _;
use clap::{Args, Parser, Subcommand};
use keystore::{Config, Database};
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

/// The reference key store for keygate.
#[derive(Parser)]
#[command(name = "keystore", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines on stderr as text, or as one JSON object per line (for log collectors: time,
    /// level, message and fields). The start-up line `keystore listening on ADDR` stays plain
    /// text in both: scripts wait for it.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the key-store and admin HTTP API.
    Serve(Box<ServeArgs>),
    /// Print the OpenAPI document (the one GET /openapi.json serves) and exit, e.g. to
    /// generate a client in CI without running a store.
    Openapi,
}

#[derive(Args)]
struct ServeArgs {
    /// SQLite database file (created if missing). The default engine: one keystore process.
    #[arg(long, value_name = "PATH", conflicts_with = "database_url")]
    db: Option<PathBuf>,
    /// PostgreSQL instead of SQLite: postgres://user:password@host:port/dbname (or a libpq
    /// key=value string). Any number of keystore processes may share the database. Without
    /// this option and without --db, the URL comes from KEYSTORE_DATABASE_URL, if set.
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// PostgreSQL connections this process may open.
    #[arg(long, value_name = "N", default_value_t = keystore::DEFAULT_POOL_SIZE,
          value_parser = clap::value_parser!(u16).range(1..=1000).map(usize::from))]
    database_pool_size: usize,
    /// Address to listen on, e.g. 127.0.0.1:8181 (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    listen: String,
    /// File holding the root key (surrounding whitespace is trimmed). Without it the root key
    /// comes from the KEYSTORE_ROOT_KEY environment variable, if set. At most 512 visible ASCII
    /// characters with at least 128 bits of estimated entropy (keystore/README.md).
    #[arg(long, value_name = "PATH")]
    root_key_file: Option<PathBuf>,
    /// File holding the bearer token that GET /v1/keys/..., GET /v1/changes, GET /v1/summary
    /// and POST /v1/usage then require
    /// (`authorization: Bearer <token>`, the filter's store.token). Without it the token comes
    /// from KEYSTORE_PROTOCOL_TOKEN, if set; with neither, those endpoints are open (set one in
    /// production). The same rules as the root key.
    #[arg(long, value_name = "PATH")]
    protocol_token_file: Option<PathBuf>,
    /// Milliseconds to sleep before answering each GET /v1/keys/{key_id}.
    #[arg(long, value_name = "N", default_value_t = 0)]
    lookup_delay_ms: u64,
    /// Change-log rows to keep; older ones are pruned.
    #[arg(long, value_name = "N", default_value_t = keystore::DEFAULT_CHANGES_RETENTION,
          value_parser = clap::value_parser!(u64).range(1..))]
    changes_retention: u64,
    /// Roles an account admin may grant (comma-separated; compared in ASCII lowercase).
    /// Without it: KEYSTORE_ACCOUNT_ROLES, else admin,member,reader.
    #[arg(long, value_name = "ROLES", value_delimiter = ',')]
    account_roles: Option<Vec<String>>,
    /// Roles only root may grant (and only root may change a user holding one), e.g. the
    /// roles a filter's required_roles gives operator-only routes. Without it:
    /// KEYSTORE_OPERATOR_ROLES, else none. `root` is never grantable.
    #[arg(long, value_name = "ROLES", value_delimiter = ',')]
    operator_roles: Option<Vec<String>>,
    /// Bits per key id when the key summary (GET /v1/summary) is built, for the live keys
    /// plus a quarter of headroom: 10 gives about 1 % false positives (7 hashes).
    #[arg(long, value_name = "N", default_value_t = keystore::store::DEFAULT_BITS_PER_KEY,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    summary_bits_per_key: u32,
    /// Rebuild the key summary from the keys table, rather than extend it from the change
    /// log, when the extension would take its estimated false-positive rate past this
    /// (0 < RATE <= 1).
    #[arg(long, value_name = "RATE",
          default_value_t = keystore::store::DEFAULT_MAX_FALSE_POSITIVE_RATE,
          value_parser = parse_rate)]
    summary_max_false_positive_rate: f64,
    /// Rebuild the key summary when it is older than this (which sheds revoked keys):
    /// seconds, or a number with the unit s, m or h (90s, 15m, 1h).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    summary_rebuild_after: Duration,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key); without it, plain HTTP
    /// (behind a mesh or an Envoy that terminates TLS).
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A rate in (0, 1].
fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(r) if r > 0.0 && r <= 1.0 => Ok(r),
        _ => Err(format!("{text:?} is not a rate in (0, 1], e.g. 0.02")),
    }
}

/// Seconds, or a number with the unit `s`, `m` or `h` (`90s`, `15m`, `1h`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let scale: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("{text:?}: the unit is s, m or h (90s, 15m, 1h)")),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is not a duration (90s, 15m, 1h)"))
}

/// A secret from `file` (option `option`; surrounding whitespace trimmed) or else from the
/// environment variable `var`, checked by [`keystore::keys::validate_secret`]: the error names
/// where it came from, never the secret.
fn secret(file: Option<&Path>, option: &str, var: &str) -> Result<Option<String>, BoxError> {
    let (value, source) = if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{option}: cannot read {}: {e}", path.display()))?;
        if text.trim().is_empty() {
            return Err(format!("{option}: {} is empty", path.display()).into());
        }
        (
            text.trim().to_owned(),
            format!("{option} {}", path.display()),
        )
    } else {
        match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => (v.trim().to_owned(), var.to_owned()),
            _ => return Ok(None),
        }
    };
    keystore::keys::validate_secret(&source, &value)?;
    Ok(Some(value))
}

/// Completes at the first SIGINT or SIGTERM. The handlers are installed when this is called,
/// before the keystore says it listens: a signal sent once it is ready never meets the
/// default action, which would kill the process instead of shutting it down gracefully.
/// (`tokio::signal::ctrl_c()` would install its handler only when first polled, inside the
/// server's task, possibly after the first request was answered.)
#[cfg(unix)]
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, Signal, SignalKind};
    let listen = |kind: SignalKind, name: &str| match signal(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!("cannot listen for {name}: {e}");
            None
        }
    };
    let mut int = listen(SignalKind::interrupt(), "SIGINT");
    let mut term = listen(SignalKind::terminate(), "SIGTERM");
    async fn received(signal: &mut Option<Signal>) {
        match signal {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    }
    async move {
        tokio::select! {
            () = received(&mut int) => {}
            () = received(&mut term) => {}
        }
        tracing::info!("shutdown requested; finishing in-flight requests");
    }
}

/// Completes at Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
        tracing::info!("shutdown requested; finishing in-flight requests");
    }
}

/// `e` and its sources, `: `-separated, each source left out when the text so far already
/// says it (tokio-postgres' "error connecting to server" alone does not say why).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

/// The database: --db, --database-url, or KEYSTORE_DATABASE_URL (in that order).
fn database(args: &ServeArgs) -> Result<Database, BoxError> {
    if let Some(path) = &args.db {
        return Ok(Database::Sqlite(path.clone()));
    }
    if let Some(url) = &args.database_url {
        return Ok(Database::Postgres(url.clone()));
    }
    match std::env::var("KEYSTORE_DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => Ok(Database::Postgres(url.trim().to_owned())),
        _ => Err("no database: give --db PATH (SQLite) or --database-url URL (PostgreSQL)".into()),
    }
}

/// A role list: the option, else the environment variable (comma-separated), else `default`.
fn role_list(option: Option<&Vec<String>>, var: &str, default: &[&str]) -> Vec<String> {
    if let Some(list) = option {
        return list.clone();
    }
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => v.split(',').map(str::to_owned).collect(),
        _ => default.iter().map(|r| (*r).to_owned()).collect(),
    }
}

/// The role registry from --account-roles / --operator-roles (or their variables).
fn roles(args: &ServeArgs) -> Result<keystore::authority::RoleRegistry, BoxError> {
    let account = role_list(
        args.account_roles.as_ref(),
        "KEYSTORE_ACCOUNT_ROLES",
        &keystore::authority::DEFAULT_ACCOUNT_ROLES,
    );
    let operator = role_list(args.operator_roles.as_ref(), "KEYSTORE_OPERATOR_ROLES", &[]);
    Ok(keystore::authority::RoleRegistry::new(&account, &operator)?)
}

async fn serve(args: ServeArgs) -> Result<(), BoxError> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(keystore::tls::server_config(cert, key)?),
        _ => None,
    };
    let mut config = Config::with_database(database(&args)?);
    config.roles = roles(&args)?;
    config.root_key = secret(
        args.root_key_file.as_deref(),
        "--root-key-file",
        "KEYSTORE_ROOT_KEY",
    )?;
    config.protocol_token = secret(
        args.protocol_token_file.as_deref(),
        "--protocol-token-file",
        "KEYSTORE_PROTOCOL_TOKEN",
    )?;
    config.lookup_delay = Duration::from_millis(args.lookup_delay_ms);
    config.changes_retention = args.changes_retention;
    config.pool_size = args.database_pool_size;
    config.summary = keystore::store::SummarySettings {
        bits_per_key: args.summary_bits_per_key,
        max_false_positive_rate: args.summary_max_false_positive_rate,
        rebuild_after: args.summary_rebuild_after,
    };
    let state = keystore::open(&config).await.map_err(|e| {
        let why = error_chain(&e);
        format!("cannot open database {}: {why}", config.database.describe())
    })?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    match tls {
        Some(tls) => {
            let listener = listener.into_std()?;
            keystore::tls::serve_tls(listener, state, tls, shutdown_signal()).await?;
        }
        None => keystore::serve(listener, state, shutdown_signal()).await?,
    }
    tracing::info!("keystore stopped");
    Ok(())
}

fn print_openapi() -> ExitCode {
    match serde_json::to_string_pretty(keystore::api::openapi()) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("keystore: error: cannot encode the OpenAPI document: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
    let args = match cli.command {
        Command::Serve(args) => *args,
        Command::Openapi => return print_openapi(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keystore: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keystore: error: {e}");
            ExitCode::FAILURE
        }
    }
}
