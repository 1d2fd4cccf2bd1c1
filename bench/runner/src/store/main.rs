//! keygate-store-bench: the keystore at fleet scale, `make bench-store` (bench/STORE.md).
//!
//! For each engine (SQLite; PostgreSQL when a database URL is given) and each key count
//! (10^4, 10^5, 10^6, loaded in bulk straight into the keystore's tables, see `load.rs`):
//! 1. key lookups, the keystore pinned to CPU 0 (with the PostgreSQL server), wrk on CPU 1,
//!    half hits, interleaved with the driver floor (the same statement through the driver
//!    alone, on CPU 0): lookups per second per core and p99, saturated and at half load;
//! 2. change-feed polls from 100 and 1,000 simulated Envoys, once a second each, while keys
//!    rotate at 10/s: polls served, their latency, the CPU they cost;
//! 3. the key summary (`GET /v1/summary`): its build, a fetch, its extension after new keys;
//! 4. the keystore's resident memory.
//!
//! Figures are reported, never asserted: the run fails only when something answered wrong
//! (a lookup that was neither 200 nor 404, a poll that failed, a report not written).

#[path = "../cpu.rs"]
#[allow(dead_code)] // children_cpu_seconds is the throughput bench's
mod cpu;
mod feed;
mod floor;
mod load;
mod measure;
mod proc;
mod report;
mod summary;
#[path = "../wrk.rs"]
mod wrk;

use std::path::PathBuf;
use std::process::ExitCode;

use keygate_harness::{Error, Result};

/// Where the keys go.
#[derive(Debug, Clone)]
pub enum Db {
    Sqlite(PathBuf),
    /// A connection URL to a database of the bench's own.
    Postgres(String),
}

impl Db {
    pub fn engine(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "SQLite",
            Db::Postgres(_) => "PostgreSQL",
        }
    }
}

/// How the bench is run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub smoke: bool,
    pub sizes: Vec<usize>,
    /// Seconds per lookup run (floor and keystore alike).
    pub secs: f64,
    /// Interleaved rounds: floor, keystore / keystore, floor.
    pub rounds: usize,
    pub wrk_connections: u32,
    pub envoys: Vec<usize>,
    pub poll_secs: f64,
    pub churn_per_s: f64,
    /// PostgreSQL server URL (any database; the bench creates its own beside it).
    pub postgres: Option<String>,
    pub out: PathBuf,
    pub lua: PathBuf,
    pub pinned: bool,
    /// Run SQLite (and PostgreSQL, when a server is given).
    pub sqlite: bool,
    pub postgresql: bool,
    /// The keystore's PostgreSQL connections (`--database-pool-size`).
    pub pg_pool: usize,
    /// The fixed lookup rate for the operational p99 (see [`FLEET_RATE`]).
    pub fleet_rate: f64,
    /// The keystore binary (`None`: the release build).
    pub keystore: Option<PathBuf>,
    /// Keys created between the summary's build and its extension (see `summary.rs`).
    pub summary_new_keys: usize,
    /// The keystore's async workers (`TOKIO_WORKER_THREADS`; 0: tokio's default, one per CPU
    /// it may run on at start-up, before the bench pins it).
    pub workers: usize,
}

/// The lookup rate of README's fleet example ("Cost at fleet scale"): E = 500 Envoys,
/// A = 5,000 keys in use per Envoy, T = `cache.ttl_s` = 300 s: E × A / T lookups/s.
pub const FLEET_RATE: f64 = 500.0 * 5000.0 / 300.0;
/// The keystore's PostgreSQL connections in the bench: the serving side has one core, and
/// more server processes than that only take turns on it (see bench/README.md).
pub const PG_POOL: usize = 4;

const USAGE: &str = "usage: keygate-store-bench [--smoke] [--out DIR] [--database-url URL]
                           [--sizes N,N,...] [--secs S] [--rounds N] [--envoys N,N,...]
                           [--poll-secs S] [--engines sqlite,pg] [--pool-size N]
                           [--fleet-rate R] [--keystore PATH] [--workers N]
--envoys 0 skips the feed runs. Full run by default (10^4, 10^5, 10^6 keys; report in bench/STORE.md). --smoke: 10^4 keys,
a second per run, the report in a temporary directory (or --out). PostgreSQL runs when
--database-url or KEYSTORE_TEST_DATABASE_URL names a server (the bench creates and drops a
database of its own there, keygate_store_bench); otherwise only SQLite runs.";

fn list(v: &str) -> std::result::Result<Vec<usize>, String> {
    v.split(',')
        .map(|n| {
            n.trim()
                .parse::<usize>()
                .map_err(|_| format!("not a list of counts: {v}"))
        })
        .collect()
}

/// `sqlite`, `pg` (or `postgres`, `postgresql`), comma-separated: (SQLite, PostgreSQL).
fn engines(v: &str) -> std::result::Result<(bool, bool), String> {
    let (mut sqlite, mut pg) = (false, false);
    for e in v.split(',').map(str::trim) {
        match e.to_ascii_lowercase().as_str() {
            "sqlite" => sqlite = true,
            "pg" | "postgres" | "postgresql" => pg = true,
            _ => return Err(format!("unknown engine {e:?} (sqlite, pg)")),
        }
    }
    Ok((sqlite, pg))
}

fn parse_args() -> std::result::Result<Plan, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let root = keygate_harness::repo_root();
    let mut p = Plan {
        smoke,
        sizes: if smoke {
            vec![10_000]
        } else {
            vec![10_000, 100_000, 1_000_000]
        },
        secs: if smoke { 1.0 } else { 4.0 },
        rounds: if smoke { 1 } else { 2 },
        wrk_connections: 16,
        envoys: vec![100, 1000],
        poll_secs: if smoke { 3.0 } else { 10.0 },
        churn_per_s: 10.0,
        postgres: std::env::var("KEYSTORE_TEST_DATABASE_URL")
            .ok()
            .filter(|s| !s.is_empty()),
        out: if smoke {
            std::env::temp_dir().join(format!("keygate-store-smoke-{}", std::process::id()))
        } else {
            root.join("bench")
        },
        lua: root.join("bench/lookup.lua"),
        pinned: std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2,
        sqlite: true,
        postgresql: true,
        pg_pool: PG_POOL,
        fleet_rate: FLEET_RATE,
        keystore: None,
        summary_new_keys: if smoke { 100 } else { 1000 },
        workers: 0,
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        let secs = |v: String| {
            v.parse::<f64>()
                .ok()
                .filter(|x| *x > 0.0)
                .ok_or(format!("not seconds: {v}"))
        };
        match a.as_str() {
            "--smoke" => {}
            "--out" => p.out = PathBuf::from(value("--out")?),
            "--database-url" => p.postgres = Some(value("--database-url")?),
            "--sizes" => p.sizes = list(&value("--sizes")?)?,
            "--envoys" => {
                p.envoys = list(&value("--envoys")?)?;
                p.envoys.retain(|&e| e > 0);
            }
            "--secs" => p.secs = secs(value("--secs")?)?.round().max(1.0),
            "--poll-secs" => p.poll_secs = secs(value("--poll-secs")?)?,
            "--rounds" => p.rounds = secs(value("--rounds")?)? as usize,
            "--engines" => (p.sqlite, p.postgresql) = engines(&value("--engines")?)?,
            "--pool-size" => p.pg_pool = secs(value("--pool-size")?)? as usize,
            "--fleet-rate" => p.fleet_rate = secs(value("--fleet-rate")?)?,
            "--workers" => p.workers = list(&value("--workers")?)?.first().copied().unwrap_or(0),
            "--keystore" => p.keystore = Some(PathBuf::from(value("--keystore")?)),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(p)
}

pub fn say(msg: impl AsRef<str>) {
    eprintln!("[store-bench] {}", msg.as_ref());
}

fn main() -> ExitCode {
    let plan = match parse_args() {
        Ok(p) => p,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("keygate-store-bench: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&plan) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("keygate-store-bench: {e}");
            keygate_harness::process::kill_all_children(std::time::Duration::from_secs(2));
            ExitCode::FAILURE
        }
    }
}

fn run(plan: &Plan) -> Result<bool> {
    if !plan.lua.is_file() {
        return Err(Error::msg(format!("{} not found", plan.lua.display())));
    }
    let _ = keygate_harness::keystore_path();
    let started = std::time::Instant::now();
    let load_start = measure::loadavg();
    let mut engines = Vec::new();
    if plan.sqlite {
        engines.push(measure::engine(plan, None)?);
    }
    match &plan.postgres {
        Some(url) if plan.postgresql => engines.push(measure::engine(plan, Some(url))?),
        Some(_) => say("PostgreSQL skipped: --engines"),
        None => say("PostgreSQL skipped: no --database-url or KEYSTORE_TEST_DATABASE_URL"),
    }
    let results = report::Results {
        plan: plan.clone(),
        engines,
        load: (load_start, measure::loadavg()),
        elapsed_s: started.elapsed().as_secs_f64(),
        date: measure::date(),
    };
    std::fs::create_dir_all(&plan.out)?;
    report::write(&results, &plan.out).map_err(|e| {
        Error::msg(format!(
            "writing the report into {}: {e}",
            plan.out.display()
        ))
    })?;
    let failures = results.failures();
    for f in &failures {
        eprintln!("keygate-store-bench: FAILED: {f}");
    }
    let ok = report::FILES
        .iter()
        .all(|f| std::fs::metadata(plan.out.join(f)).is_ok_and(|m| m.len() > 0));
    say(format!(
        "{} in {:.0} s; report in {}",
        if ok && failures.is_empty() {
            "ok"
        } else {
            "FAILED"
        },
        started.elapsed().as_secs_f64(),
        plan.out.join(report::REPORT_FILE).display()
    ));
    println!("{}", report::headline(&results));
    Ok(ok && failures.is_empty())
}
