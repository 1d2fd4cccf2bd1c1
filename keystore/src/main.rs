//! The `keystore` binary.

use clap::{Args, Parser, Subcommand};
use keystore::Config;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

/// The reference key store for keygate.
#[derive(Parser)]
#[command(name = "keystore", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the key-store and admin HTTP API.
    Serve(ServeArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// SQLite database file (created if missing).
    #[arg(long, value_name = "PATH")]
    db: PathBuf,
    /// Address to listen on, e.g. 127.0.0.1:8181 (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    listen: String,
    /// File holding the root key (surrounding whitespace is trimmed). Without it the root key
    /// comes from the KEYSTORE_ROOT_KEY environment variable, if set.
    #[arg(long, value_name = "PATH")]
    root_key_file: Option<PathBuf>,
    /// Milliseconds to sleep before answering each GET /v1/keys/{key_id}.
    #[arg(long, value_name = "N", default_value_t = 0)]
    lookup_delay_ms: u64,
    /// Change-log rows to keep; older ones are pruned.
    #[arg(long, value_name = "N", default_value_t = keystore::DEFAULT_CHANGES_RETENTION,
          value_parser = clap::value_parser!(u64).range(1..))]
    changes_retention: u64,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn root_key(args: &ServeArgs) -> Result<Option<String>, BoxError> {
    if let Some(path) = &args.root_key_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read root key file {}: {e}", path.display()))?;
        let key = text.trim();
        if key.is_empty() {
            return Err(format!("root key file {} is empty", path.display()).into());
        }
        return Ok(Some(key.to_owned()));
    }
    match std::env::var("KEYSTORE_ROOT_KEY") {
        Ok(v) if !v.trim().is_empty() => Ok(Some(v.trim().to_owned())),
        _ => Ok(None),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for SIGINT: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}

async fn serve(args: ServeArgs) -> Result<(), BoxError> {
    let mut config = Config::new(args.db.clone());
    config.root_key = root_key(&args)?;
    config.lookup_delay = Duration::from_millis(args.lookup_delay_ms);
    config.changes_retention = args.changes_retention;
    let state = keystore::open(&config)
        .await
        .map_err(|e| format!("cannot open database {}: {e}", args.db.display()))?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    keystore::serve(listener, state, shutdown_signal()).await?;
    tracing::info!("keystore stopped");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let Command::Serve(args) = cli.command;
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
