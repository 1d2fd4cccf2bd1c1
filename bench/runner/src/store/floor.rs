//! The engine's own floor: the keystore's read statements through the database driver alone
//! (rusqlite, tokio-postgres), no HTTP, no pool, no JSON, on one thread pinned to the CPU the
//! keystore gets. Whatever the keystore costs above this is the keystore's.
//!
//! SQLite runs the statements one after another on one connection (the engine is in-process:
//! one thread is one core). PostgreSQL pipelines `INFLIGHT` queries over one connection so
//! that the server, not round trips, sets the pace; its CPU is counted by the caller.

use std::rc::Rc;
use std::time::{Duration, Instant};

use keygate_harness::{Error, Result};

use crate::load::{CHANGES, LOOKUP};
use crate::proc::{pin_this_thread, thread_cpu_seconds};
use crate::Db;

/// A lookup's row: account, user, role, expiry, account claims, key claims.
type Identity = (
    String,
    String,
    String,
    Option<i64>,
    Option<String>,
    Option<String>,
);

/// Unix seconds, as the keystore passes them for expiry.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Queries in flight on the PostgreSQL floor's connection.
const INFLIGHT: usize = 16;

/// One floor run.
#[derive(Debug, Clone, Default)]
pub struct FloorRun {
    pub ops: u64,
    pub secs: f64,
    /// CPU seconds of the driver's thread (the database server's are added by the caller).
    pub client_cpu_s: f64,
    /// Sorted latencies (ms).
    pub latencies_ms: Vec<f64>,
}

/// What the floor runs: key lookups over `ids`, or change-feed reads from `since`.
#[derive(Debug, Clone)]
pub enum Work {
    Lookups(Rc<Vec<String>>),
    Changes { since: i64 },
}

/// A small PRNG (xorshift64*), enough to pick ids.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as usize % n.max(1)
    }
}

/// Runs `work` against `db` for `secs` on a thread pinned to `cpu`.
pub fn run(db: &Db, work: Work, secs: f64, cpu: Option<usize>) -> Result<FloorRun> {
    let db = db.clone();
    let ids = match &work {
        Work::Lookups(ids) => Some(ids.as_ref().clone()),
        Work::Changes { .. } => None,
    };
    let since = match work {
        Work::Changes { since } => since,
        Work::Lookups(_) => 0,
    };
    std::thread::spawn(move || {
        if let Some(c) = cpu {
            pin_this_thread(c);
        }
        let work = match ids {
            Some(ids) => Work::Lookups(Rc::new(ids)),
            None => Work::Changes { since },
        };
        let deadline = Duration::from_secs_f64(secs);
        match &db {
            Db::Sqlite(path) => sqlite(path, &work, deadline),
            Db::Postgres(url) => block_on(postgres(url, &work, deadline)),
        }
    })
    .join()
    .map_err(|_| Error::msg("the floor's thread panicked"))?
}

fn finish(ops: u64, t0: Instant, cpu0: f64, mut lat: Vec<f64>) -> FloorRun {
    lat.sort_by(f64::total_cmp);
    FloorRun {
        ops,
        secs: t0.elapsed().as_secs_f64(),
        client_cpu_s: thread_cpu_seconds() - cpu0,
        latencies_ms: lat,
    }
}

fn sqlite(path: &std::path::Path, work: &Work, secs: Duration) -> Result<FloorRun> {
    let e = |e: rusqlite::Error| Error::msg(format!("SQLite floor: {e}"));
    let conn = rusqlite::Connection::open(path).map_err(e)?;
    conn.pragma_update(None, "query_only", "ON").map_err(e)?;
    let mut rng = Rng::new(0x5eed);
    let (t0, cpu0) = (Instant::now(), thread_cpu_seconds());
    let mut lat = Vec::new();
    let mut ops = 0u64;
    while t0.elapsed() < secs {
        let q0 = Instant::now();
        match work {
            Work::Lookups(ids) => {
                let id = &ids[rng.below(ids.len())];
                let mut stmt = conn.prepare_cached(&to_sqlite(LOOKUP)).map_err(e)?;
                let mut rows = stmt.query(rusqlite::params![id, now()]).map_err(e)?;
                while let Some(r) = rows.next().map_err(e)? {
                    let _: Identity = (
                        r.get(0).map_err(e)?,
                        r.get(1).map_err(e)?,
                        r.get(2).map_err(e)?,
                        r.get(3).map_err(e)?,
                        r.get(4).map_err(e)?,
                        r.get(5).map_err(e)?,
                    );
                }
            }
            Work::Changes { since } => sqlite_changes(&conn, *since).map_err(e)?,
        }
        lat.push(q0.elapsed().as_secs_f64() * 1000.0);
        ops += 1;
    }
    Ok(finish(ops, t0, cpu0, lat))
}

fn sqlite_changes(conn: &rusqlite::Connection, since: i64) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN DEFERRED")?;
    for (i, q) in CHANGES.iter().enumerate() {
        let mut stmt = conn.prepare_cached(&to_sqlite(q))?;
        let mut rows = if i == 1 {
            stmt.query([since])?
        } else {
            stmt.query([])?
        };
        while let Some(r) = rows.next()? {
            let _: i64 = r.get(0)?;
        }
    }
    conn.execute_batch("COMMIT")
}

fn to_sqlite(sql: &str) -> String {
    sql.replace('$', "?")
}

/// Runs a future on a fresh current-thread runtime (on this thread).
pub fn block_on<F: std::future::Future<Output = Result<T>>, T>(f: F) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::msg(format!("tokio runtime: {e}")))?
        .block_on(f)
}

/// A tokio-postgres connection, its driver task spawned on the current runtime.
pub async fn pg_connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| Error::msg(format!("connecting to PostgreSQL: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

async fn postgres(url: &str, work: &Work, secs: Duration) -> Result<FloorRun> {
    let client = Rc::new(pg_connect(url).await?);
    let t0 = Instant::now();
    let cpu0 = thread_cpu_seconds();
    let local = tokio::task::LocalSet::new();
    let mut tasks = Vec::new();
    for seed in 0..INFLIGHT {
        let (client, work) = (Rc::clone(&client), work.clone());
        tasks.push(
            local.spawn_local(
                async move { pg_loop(&client, &work, t0 + secs, seed as u64 + 1).await },
            ),
        );
    }
    let mut lat = Vec::new();
    local
        .run_until(async {
            for t in tasks {
                let mut l = t
                    .await
                    .map_err(|e| Error::msg(format!("floor task: {e}")))??;
                lat.append(&mut l);
            }
            Ok::<_, Error>(())
        })
        .await?;
    Ok(finish(lat.len() as u64, t0, cpu0, lat))
}

async fn pg_loop(
    client: &tokio_postgres::Client,
    work: &Work,
    until: Instant,
    seed: u64,
) -> Result<Vec<f64>> {
    let e = |e: tokio_postgres::Error| Error::msg(format!("PostgreSQL floor: {e}"));
    let mut rng = Rng::new(seed.wrapping_mul(0x9e37_79b9));
    let mut lat = Vec::new();
    let lookup = client.prepare(LOOKUP).await.map_err(e)?;
    let mut changes = Vec::new();
    for q in CHANGES {
        changes.push(client.prepare(q).await.map_err(e)?);
    }
    while Instant::now() < until {
        let q0 = Instant::now();
        match work {
            Work::Lookups(ids) => {
                let id = &ids[rng.below(ids.len())];
                for r in client.query(&lookup, &[id, &now()]).await.map_err(e)? {
                    let _: Identity = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
                }
            }
            Work::Changes { since } => {
                // Pipelined on one connection, a transaction per query set would interleave
                // with the other tasks': the floor reads without one (a lower bound).
                for (i, s) in changes.iter().enumerate() {
                    let rows = if i == 1 {
                        client.query(s, &[since]).await
                    } else {
                        client.query(s, &[]).await
                    };
                    for r in rows.map_err(e)? {
                        let _: i64 = r.get(0);
                    }
                }
            }
        }
        lat.push(q0.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(lat)
}
