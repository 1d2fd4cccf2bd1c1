//! One engine's run: its database prepared, the keystore started once (it creates the schema)
//! then, for each key count, keys loaded, the keystore restarted and pinned, lookups (keystore
//! and driver floor interleaved), change-feed polls, the key summary and memory measured.

use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keygate_harness::{Error, Keystore, KeystoreOpts, Result};
use keygate_protocol::routes;

use crate::feed::{self, PollRun};
use crate::floor::{self, FloorRun, Rng, Work};
use crate::load;
use crate::proc::{self, PgServer};
use crate::summary::{self, SummaryRun};
use crate::wrk::WrkRun;
use crate::{say, Db, Plan};

/// The bench's own database on a PostgreSQL server (created, and dropped at the end).
const PG_DB: &str = "keygate_store_bench";
/// Users in account `churn` whose keys rotate during the feed runs.
const CHURN_USERS: usize = 10;
/// Key ids in the lookup list (half hits, half misses).
const ID_LIST: usize = 20_000;
/// The serving side's CPU (keystore and database server) and the load generators'.
const SERVER_CPU: usize = 0;
const LOAD_CPU: usize = 1;

/// One measured run of lookups or polls.
#[derive(Debug, Clone, Default)]
pub struct Measure {
    pub ops: u64,
    pub secs: f64,
    /// CPU seconds of the serving side: the keystore (or the floor's driver thread) plus the
    /// PostgreSQL server's processes.
    pub cpu_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Lookups that found a key ÷ all (keystore runs: from its metrics).
    pub hit_ratio: f64,
    /// Answers other than 200/404, socket errors, failed polls.
    pub errors: u64,
}

impl Measure {
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.secs.max(1e-9)
    }
    /// Operations per CPU-second of the serving side.
    pub fn per_core(&self) -> f64 {
        self.ops as f64 / self.cpu_s.max(1e-9)
    }
    /// Cores the serving side kept busy.
    pub fn cores(&self) -> f64 {
        self.cpu_s / self.secs.max(1e-9)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Feed {
    pub run: PollRun,
    pub m: Measure,
}

#[derive(Debug, Clone, Default)]
pub struct Size {
    pub keys: usize,
    pub load_s: f64,
    pub db_bytes: u64,
    pub rss_idle_kib: u64,
    pub rss_after_kib: u64,
    pub hwm_kib: u64,
    pub pg_rss_kib: u64,
    pub floor: Vec<Measure>,
    pub keystore: Vec<Measure>,
    /// `GET /healthz` saturated: the keystore's HTTP path and its way to the database with a
    /// trivial `SELECT 1` (what a lookup costs beyond its query).
    pub healthz: Measure,
    /// Keystore lookups paced at half its saturated rate.
    pub paced: Measure,
    pub paced_rate: f64,
    /// Keystore lookups paced at the fleet rate (`Plan::fleet_rate`).
    pub fleet: Measure,
    pub feeds: Vec<Feed>,
    pub feed_floor: Measure,
    /// The key summary: build, fetch, extension.
    pub summary: SummaryRun,
}

#[derive(Debug, Clone, Default)]
pub struct Engine {
    pub name: &'static str,
    pub sizes: Vec<Size>,
}

pub use crate::cpu::loadavg;

pub fn date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// `url` with its database name replaced by `db` (URL form only).
fn with_database(url: &str, db: &str) -> Result<String> {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .ok_or_else(|| Error::msg("--database-url: only postgres://... URLs are supported"))?;
    let scheme_len = url.len() - rest.len();
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let host_end = base[scheme_len..]
        .find('/')
        .map_or(base.len(), |i| i + scheme_len);
    Ok(format!("{}/{db}{query}", &base[..host_end]))
}

/// Creates (dropping any leftover) the bench's database on the server at `url`.
fn pg_fresh_database(url: &str, drop_only: bool) -> Result<String> {
    floor::block_on(async {
        let c = floor::pg_connect(url).await?;
        let e = |e: tokio_postgres::Error| Error::msg(format!("PostgreSQL: {e}"));
        c.batch_execute(&format!("DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)"))
            .await
            .map_err(e)?;
        if !drop_only {
            c.batch_execute(&format!("CREATE DATABASE {PG_DB}"))
                .await
                .map_err(e)?;
        }
        Ok(())
    })?;
    with_database(url, PG_DB)
}

fn pg_server(url: &str) -> Result<(PgServer, u64)> {
    floor::block_on(async {
        let c = floor::pg_connect(url).await?;
        let e = |e: tokio_postgres::Error| Error::msg(format!("PostgreSQL: {e}"));
        let row = c
            .query_one(
                "SELECT pg_backend_pid(), pg_database_size(current_database())",
                &[],
            )
            .await
            .map_err(e)?;
        let pid: i32 = row.get(0);
        let size: i64 = row.get(1);
        let server = PgServer::from_backend(pid as u32)
            .ok_or_else(|| Error::msg("cannot find the PostgreSQL server's processes"))?;
        Ok((server, size as u64))
    })
}

/// The whole run for one engine: SQLite when `pg` is `None`.
pub fn engine(plan: &Plan, pg: Option<&String>) -> Result<Engine> {
    let url = match pg {
        Some(u) => Some(pg_fresh_database(u, false)?),
        None => None,
    };
    let mut ks = Keystore::start(KeystoreOpts {
        database_url: url.clone(),
        extra_args: vec!["--database-pool-size".to_owned(), plan.pg_pool.to_string()],
        binary: plan.keystore.clone(),
        env: if plan.workers > 0 {
            vec![("TOKIO_WORKER_THREADS".to_owned(), plan.workers.to_string())]
        } else {
            vec![]
        },
        ..KeystoreOpts::default()
    })?;
    let db = match &url {
        Some(u) => Db::Postgres(u.clone()),
        None => Db::Sqlite(ks.db_path().to_path_buf()),
    };
    say(format!("{}: keystore started, schema created", db.engine()));
    ks.create_account("churn", "churn-admin");
    for i in 0..CHURN_USERS {
        ks.create_user("churn", &format!("churn-{i}"), "member");
    }
    let mut out = Engine {
        name: db.engine(),
        sizes: Vec::new(),
    };
    let mut loaded = 0;
    for &k in &plan.sizes {
        out.sizes.push(size(plan, &mut ks, &db, loaded, k)?);
        loaded = k.max(loaded);
    }
    ks.stop();
    if let Some(u) = pg {
        pg_fresh_database(u, true)?;
    }
    Ok(out)
}

fn ids_file(dir: &Path, keys: usize) -> Result<(std::path::PathBuf, Vec<String>)> {
    let mut rng = Rng::new(keys as u64);
    let ids: Vec<String> = (0..ID_LIST)
        .map(|i| {
            if i % 2 == 0 {
                load::key_id(rng.below(keys))
            } else {
                load::miss_id(i)
            }
        })
        .collect();
    let path = dir.join(format!("ids-{keys}.txt"));
    std::fs::write(&path, ids.join("\n") + "\n")?;
    Ok((path, ids))
}

fn size(plan: &Plan, ks: &mut Keystore, db: &Db, loaded: usize, keys: usize) -> Result<Size> {
    ks.stop();
    let t0 = Instant::now();
    if keys > loaded {
        load::load(db, loaded, keys)?;
    }
    let load_s = t0.elapsed().as_secs_f64();
    say(format!(
        "{}: {keys} keys loaded in {load_s:.1} s",
        db.engine()
    ));
    ks.restart()?;
    let pg = match db {
        Db::Postgres(u) => Some(pg_server(u)?),
        Db::Sqlite(_) => None,
    };
    let mut s = Size {
        keys,
        load_s,
        db_bytes: match (db, &pg) {
            (Db::Sqlite(p), _) => std::fs::metadata(p).map_or(0, |m| m.len()),
            (_, Some((_, bytes))) => *bytes,
            _ => 0,
        },
        ..Size::default()
    };
    let side = Side {
        pid: ks.pid().unwrap_or(0),
        pg: pg.map(|(p, _)| p),
        cpus: plan.pinned,
    };
    side.pin();
    lookups(plan, ks, db, &side, &mut s)?;
    feeds(plan, ks, db, &side, &mut s)?;
    s.summary = summary::run(ks, "churn", keys, plan.summary_new_keys)?;
    let m = &s.summary;
    say(format!(
        "{} {keys} keys: summary {} bytes ({} keys, FPR {:.4}); build {:.2} s (GET {:.2} s), held GET {:.3} s; {} keys created in {:.1} s, extension {:.3} s (GET {:.3} s){}",
        db.engine(), m.bytes, m.keys, m.fpr, m.build_s, m.build_get_s, m.fetch_get_s,
        m.created, m.create_s, m.extend_s, m.extend_get_s,
        m.error.as_deref().map_or(String::new(), |e| format!("; FAILED: {e}"))
    ));
    s.rss_after_kib = proc::status_kib(side.pid, "VmRSS");
    s.hwm_kib = proc::status_kib(side.pid, "VmHWM");
    s.pg_rss_kib = side.pg.map_or(0, |p| p.rss_kib());
    Ok(s)
}

/// The serving side: the keystore's process and the PostgreSQL server's.
struct Side {
    pid: u32,
    pg: Option<PgServer>,
    cpus: bool,
}

impl Side {
    fn pin(&self) {
        if self.cpus {
            let cpu = SERVER_CPU.to_string();
            proc::pin_pid(self.pid, &cpu);
            if let Some(p) = &self.pg {
                p.pin(&cpu);
            }
        }
    }
    fn keystore_cpu(&self) -> f64 {
        crate::cpu::process_cpu_seconds(self.pid)
    }
    fn db_cpu(&self) -> f64 {
        self.pg.map_or(0.0, |p| p.cpu_seconds())
    }
    fn cpu(&self, what: Option<usize>) -> Option<usize> {
        if self.cpus {
            what
        } else {
            None
        }
    }
}

fn wrk_lookups(plan: &Plan, ks: &Keystore, ids: &Path, rate: f64, secs: f64) -> WrkRun {
    WrkRun {
        url: format!("{}/", ks.url()),
        threads: 1,
        connections: plan.wrk_connections,
        secs,
        headers: vec![],
        script: Some((
            plan.lua.clone(),
            vec![ids.to_string_lossy().into_owned(), format!("{rate:.0}")],
        )),
        cpus: plan.pinned.then(|| LOAD_CPU.to_string()),
    }
}

/// One wrk run against the keystore, with the serving side's CPU and the hit ratio.
fn keystore_run(ks: &Keystore, side: &Side, run: &WrkRun) -> Result<Measure> {
    let m0 = ks.try_metrics()?;
    let cpu0 = side.keystore_cpu() + side.db_cpu();
    let r = run.run()?;
    let cpu1 = side.keystore_cpu() + side.db_cpu();
    let m1 = ks.try_metrics()?;
    let d = |n: &str| m1.get(n).copied().unwrap_or(0.0) - m0.get(n).copied().unwrap_or(0.0);
    let lookups = d("keystore_lookups_total");
    let found = d("keystore_lookups_found_total");
    Ok(Measure {
        ops: r.requests,
        secs: r.duration_s,
        cpu_s: cpu1 - cpu0,
        p50_ms: r.p50_ms,
        p99_ms: r.p99_ms,
        hit_ratio: found / lookups.max(1.0),
        // 404s are wrk's non-2xx; only lookups the keystore did not count are errors.
        errors: r.socket_errors + (r.requests as f64 - lookups).max(0.0) as u64,
    })
}

/// `GET /healthz` at saturation: HTTP, routing, the database path, `SELECT 1`, JSON.
fn healthz_run(plan: &Plan, ks: &Keystore, side: &Side) -> Result<Measure> {
    let run = WrkRun {
        url: format!("{}/healthz", ks.url()),
        threads: 1,
        connections: plan.wrk_connections,
        secs: plan.secs,
        headers: vec![],
        script: None,
        cpus: plan.pinned.then(|| LOAD_CPU.to_string()),
    };
    let cpu0 = side.keystore_cpu() + side.db_cpu();
    let r = run.run()?;
    Ok(Measure {
        ops: r.requests,
        secs: r.duration_s,
        cpu_s: side.keystore_cpu() + side.db_cpu() - cpu0,
        p50_ms: r.p50_ms,
        p99_ms: r.p99_ms,
        hit_ratio: f64::NAN,
        errors: r.non2xx + r.socket_errors,
    })
}

fn floor_measure(db: &Db, side: &Side, work: Work, secs: f64) -> Result<Measure> {
    let db0 = side.db_cpu();
    let f: FloorRun = floor::run(db, work, secs, side.cpu(Some(SERVER_CPU)))?;
    let q = |p: f64| crate::report::quantile(&f.latencies_ms, p);
    Ok(Measure {
        ops: f.ops,
        secs: f.secs,
        cpu_s: f.client_cpu_s + side.db_cpu() - db0,
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        hit_ratio: f64::NAN,
        errors: 0,
    })
}

fn lookups(plan: &Plan, ks: &Keystore, db: &Db, side: &Side, s: &mut Size) -> Result<()> {
    let (path, ids) = ids_file(ks.db_path().parent().unwrap_or(Path::new("/tmp")), s.keys)?;
    let ids = Rc::new(ids);
    wrk_lookups(plan, ks, &path, 0.0, 1.0).run()?;
    s.rss_idle_kib = proc::status_kib(side.pid, "VmRSS");
    for round in 0..plan.rounds {
        for floor_first in [round % 2 == 0, round % 2 != 0] {
            if floor_first {
                s.floor.push(floor_measure(
                    db,
                    side,
                    Work::Lookups(Rc::clone(&ids)),
                    plan.secs,
                )?);
            } else {
                s.keystore.push(keystore_run(
                    ks,
                    side,
                    &wrk_lookups(plan, ks, &path, 0.0, plan.secs),
                )?);
            }
        }
    }
    s.healthz = healthz_run(plan, ks, side)?;
    let sat = crate::report::median(&s.keystore.iter().map(Measure::rate).collect::<Vec<_>>());
    s.paced_rate = (sat / 2.0).max(10.0).round();
    let secs = plan.secs.max(3.0);
    s.paced = keystore_run(ks, side, &wrk_lookups(plan, ks, &path, s.paced_rate, secs))?;
    s.fleet = keystore_run(
        ks,
        side,
        &wrk_lookups(plan, ks, &path, plan.fleet_rate, secs),
    )?;
    let (f, k) = (
        s.floor.last().cloned().unwrap_or_default(),
        s.keystore.last().cloned().unwrap_or_default(),
    );
    say(format!(
        "{} {} keys: floor {:.0}/s ({:.0}/core-s, p99 {:.2} ms); keystore {:.0}/s ({:.0}/core-s, p99 {:.2} ms, hits {:.0}%); at {:.0}/s p99 {:.2} ms; at {:.0}/s p99 {:.2} ms (got {:.0}/s); load {}",
        db.engine(), s.keys, f.rate(), f.per_core(), f.p99_ms, k.rate(), k.per_core(), k.p99_ms,
        k.hit_ratio * 100.0, s.paced_rate, s.paced.p99_ms, plan.fleet_rate, s.fleet.p99_ms,
        s.fleet.rate(), loadavg()
    ));
    Ok(())
}

fn current_revision(ks: &Keystore) -> Result<i64> {
    let r = keygate_harness::get(
        &format!("{}{}", ks.url(), routes::changes(routes::CHANGES, 0)),
        &[],
    )?;
    r.json()?
        .get("revision")
        .and_then(serde_json::Value::as_i64)
        .ok_or_else(|| Error::msg("no revision in /v1/changes"))
}

fn feeds(plan: &Plan, ks: &Keystore, db: &Db, side: &Side, s: &mut Size) -> Result<()> {
    if plan.envoys.is_empty() {
        return Ok(());
    }
    for &envoys in &plan.envoys {
        let stop = AtomicBool::new(false);
        let done = AtomicU64::new(0);
        let port = ks.port();
        let (run, cpu_s) = std::thread::scope(|sc| {
            sc.spawn(|| feed::churn(ks, CHURN_USERS, plan.churn_per_s, &stop, &done));
            let cpu0 = side.keystore_cpu() + side.db_cpu();
            let r = feed::poll(port, envoys, plan.poll_secs, side.cpu(Some(LOAD_CPU)));
            let cpu1 = side.keystore_cpu() + side.db_cpu();
            stop.store(true, Ordering::SeqCst);
            (r, cpu1 - cpu0)
        });
        let mut run = run?;
        run.rotations = done.load(Ordering::SeqCst);
        let q = |p: f64| crate::report::quantile(&run.latencies_ms, p);
        let m = Measure {
            ops: run.polls,
            secs: plan.poll_secs,
            cpu_s,
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            hit_ratio: f64::NAN,
            errors: run.errors,
        };
        say(format!(
            "{} {} keys, {envoys} Envoys: {:.0} polls/s, p99 {:.2} ms, serving side {:.0}% of a core ({} rotations, {} late, {} errors)",
            db.engine(), s.keys, m.rate(), m.p99_ms, m.cores() * 100.0, run.rotations, run.late, run.errors
        ));
        s.feeds.push(Feed { run, m });
    }
    let since = (current_revision(ks)? - 2 * plan.churn_per_s as i64).max(1);
    s.feed_floor = floor_measure(db, side, Work::Changes { since }, plan.secs)?;
    std::thread::sleep(Duration::from_millis(100));
    Ok(())
}
