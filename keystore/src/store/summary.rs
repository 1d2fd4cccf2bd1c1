//! The key summary the store serves (`GET /v1/summary`): a Bloom filter of the live key ids
//! (`keygate_protocol::summary`), kept in memory as an immutable snapshot and brought up to
//! date on request.
//!
//! Invariant: **a summary answered at revision R holds every key id live at R**, and R is the
//! store's current revision when the request is answered (so R is at least any revision a
//! change-feed page reported before the request). It may also hold key ids no longer live
//! (revoked, expired, disabled): they only cost lookups, and a rebuild sheds them.
//!
//! How: a build reads the revision and every live key id in one snapshot ([`BuildSummary`]:
//! every key itself unrevoked, enabled and unexpired, a superset of what the lookup answers:
//! keys of disabled or expired users and of disabled accounts, and admin-only keys without
//! the `traffic` capability, are included; they only cost lookups). A later request
//! *extends* the snapshot instead: a copy, with every key id the change feed reports since
//! the snapshot's revision inserted (page by page, the feed's own job), at the feed's
//! revision; a key that became live after R has a change-log row after R, so it is
//! inserted. It rebuilds instead when the log no longer reaches back (a feed reset; also a
//! snapshot at revision 0, which the feed cannot extend), when the estimated false-positive
//! rate after extension passes the limit, or when the snapshot is older than
//! `rebuild_after` (which sheds dead key ids). Requests take turns on one lock: concurrent
//! requests share one build (single flight), and each answers a snapshot at least as new as
//! the store's revision when it took the lock. The work runs in a task of its own, so a
//! client that gives up does not cancel a build.

use super::engine::{Arg, Db, Job};
use super::error::StoreError;
use super::{sql, Changes, Store};
use crate::metrics::Metrics;
use axum::body::Bytes;
use keygate_protocol::summary::{blocks_for, hashes_for, Summary};
use keygate_protocol::KeyId;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Default bits per key id at a build (about 1 % false positives with 7 hashes).
pub const DEFAULT_BITS_PER_KEY: u32 = 10;
/// Default limit of the estimated false-positive rate after an extension.
pub const DEFAULT_MAX_FALSE_POSITIVE_RATE: f64 = 0.01;
/// Default age after which a snapshot is rebuilt rather than extended.
pub const DEFAULT_REBUILD_AFTER: Duration = Duration::from_secs(3600);
/// Live key ids read per statement of a build.
pub(super) const BUILD_PAGE: i64 = 20_000;

/// How summaries are sized and when they are rebuilt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SummarySettings {
    /// Bits per key id at a build, for the live keys plus a quarter of headroom.
    pub bits_per_key: u32,
    /// Rebuild when an extension would take the estimated false-positive rate past this.
    pub max_false_positive_rate: f64,
    /// Rebuild a snapshot this old instead of extending it.
    pub rebuild_after: Duration,
}

impl Default for SummarySettings {
    fn default() -> Self {
        SummarySettings {
            bits_per_key: DEFAULT_BITS_PER_KEY,
            max_false_positive_rate: DEFAULT_MAX_FALSE_POSITIVE_RATE,
            rebuild_after: DEFAULT_REBUILD_AFTER,
        }
    }
}

/// One summary as served: immutable, shared by every request that answers it.
#[derive(Debug)]
pub struct Snapshot {
    /// The summary (its header's revision is the R of the invariant).
    pub summary: Summary,
    /// Its wire form, the body of `GET /v1/summary`.
    pub encoded: Bytes,
    /// When it was built (extensions keep the time of the build they extend).
    built_at: Instant,
}

impl Snapshot {
    fn new(summary: Summary, built_at: Instant) -> Arc<Snapshot> {
        let encoded = Bytes::from(summary.encode());
        Arc::new(Snapshot {
            summary,
            encoded,
            built_at,
        })
    }

    fn revision(&self) -> u64 {
        self.summary.header.revision
    }
}

/// Why a summary was built rather than extended: a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildReason {
    /// None yet (or one at revision 0, which the feed cannot extend).
    First,
    /// The change log no longer reaches back to the snapshot (a feed reset).
    Pruned,
    /// An extension would pass the false-positive limit.
    FalsePositiveRate,
    /// The snapshot is older than `rebuild_after`.
    Age,
}

impl BuildReason {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            BuildReason::First => "first",
            BuildReason::Pruned => "pruned",
            BuildReason::FalsePositiveRate => "false_positive_rate",
            BuildReason::Age => "age",
        }
    }
}

/// The summary of one keystore process: the current snapshot behind the single-flight lock.
#[derive(Debug, Default)]
pub struct Summaries {
    settings: SummarySettings,
    current: tokio::sync::Mutex<Option<Arc<Snapshot>>>,
}

/// What to do with the snapshot at hand.
enum Next {
    Serve(Arc<Snapshot>),
    Build(BuildReason),
}

impl Summaries {
    pub fn new(settings: SummarySettings) -> Summaries {
        Summaries {
            settings,
            current: tokio::sync::Mutex::default(),
        }
    }

    /// The settings it was made with.
    pub fn settings(&self) -> SummarySettings {
        self.settings
    }

    /// A summary holding every key id live at the store's current revision (its revision),
    /// extended or rebuilt as needed (see the module doc). The work runs in a task of its
    /// own: a client that gives up (a fetch timeout shorter than a build at 10^7 keys) does
    /// not cancel it, so the next request finds it done instead of starting over.
    pub async fn current(self: &Arc<Self>, store: &Store) -> Result<Arc<Snapshot>, StoreError> {
        let (this, store) = (Arc::clone(self), store.clone());
        tokio::spawn(async move { this.update(&store).await })
            .await
            .map_err(|e| StoreError::Internal(format!("key summary task failed: {e}")))?
    }

    async fn update(&self, store: &Store) -> Result<Arc<Snapshot>, StoreError> {
        let mut held = self.current.lock().await;
        let next = match held.as_ref() {
            None => Next::Build(BuildReason::First),
            Some(s) if s.revision() == 0 => Next::Build(BuildReason::First),
            Some(s) if s.built_at.elapsed() >= self.settings.rebuild_after => {
                Next::Build(BuildReason::Age)
            }
            Some(s) => self.extend(store, s).await?,
        };
        let snapshot = match next {
            Next::Serve(s) => s,
            Next::Build(reason) => self.build(store, reason).await?,
        };
        *held = Some(Arc::clone(&snapshot));
        Ok(snapshot)
    }

    /// `snapshot` with the key ids changed since its revision, or why to rebuild instead.
    async fn extend(&self, store: &Store, snapshot: &Arc<Snapshot>) -> Result<Next, StoreError> {
        let started = Instant::now();
        let mut since = snapshot.revision();
        let mut copy: Option<Summary> = None;
        loop {
            let (revision, changed, more) = match store.changes(since).await? {
                Changes::Reset { .. } => return Ok(Next::Build(BuildReason::Pruned)),
                Changes::Changed {
                    revision,
                    changed,
                    more,
                    ..
                } => (revision, changed, more),
            };
            let revision = u64::try_from(revision)
                .map_err(|_| StoreError::Internal(format!("negative revision {revision}")))?;
            if revision != since || !changed.is_empty() {
                let summary = copy.get_or_insert_with(|| snapshot.summary.clone());
                for key_id in changed.iter().filter_map(|k| KeyId::from_hex(k)) {
                    summary.insert(&key_id);
                }
                summary.header.revision = revision;
            }
            since = revision;
            if !more {
                break;
            }
        }
        let Some(summary) = copy else {
            return Ok(Next::Serve(Arc::clone(snapshot)));
        };
        let fpr = summary.header.estimated_false_positive_rate();
        if fpr > self.settings.max_false_positive_rate {
            return Ok(Next::Build(BuildReason::FalsePositiveRate));
        }
        let extended = Snapshot::new(summary, snapshot.built_at);
        observe(store.metrics(), &extended);
        store.metrics().summary_extensions.inc();
        store
            .metrics()
            .summary_extension_seconds
            .set(started.elapsed().as_secs_f64());
        Ok(Next::Serve(extended))
    }

    async fn build(&self, store: &Store, reason: BuildReason) -> Result<Arc<Snapshot>, StoreError> {
        let started = Instant::now();
        let summary = store.build_summary(self.settings.bits_per_key).await?;
        let snapshot = Snapshot::new(summary, started);
        let metrics = store.metrics();
        observe(metrics, &snapshot);
        metrics
            .summary_builds
            .get_or_create(&crate::metrics::ReasonLabels {
                reason: reason.label().to_owned(),
            })
            .inc();
        metrics
            .summary_build_seconds
            .set(started.elapsed().as_secs_f64());
        tracing::info!(
            reason = reason.label(),
            revision = snapshot.revision(),
            keys = snapshot.summary.header.keys,
            bytes = snapshot.encoded.len(),
            seconds = started.elapsed().as_secs_f64(),
            "key summary built"
        );
        Ok(snapshot)
    }
}

/// The gauges of the summary now served.
fn observe(metrics: &Metrics, snapshot: &Snapshot) {
    let header = &snapshot.summary.header;
    let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    metrics.summary_bytes.set(gauge(
        u64::try_from(snapshot.encoded.len()).unwrap_or(u64::MAX),
    ));
    metrics.summary_keys.set(gauge(header.keys));
    metrics.summary_revision.set(gauge(header.revision));
    metrics
        .summary_false_positive_rate
        .set(header.estimated_false_positive_rate());
}

/// Reads the revision and every live key id in one snapshot and builds their summary:
/// `blocks_for(live × 5/4, bits_per_key)` blocks (a quarter of headroom for the keys
/// extensions add), `hashes_for(bits_per_key)` hashes.
pub(super) struct BuildSummary {
    pub(super) bits_per_key: u32,
    /// Key ids read per statement ([`BUILD_PAGE`]).
    pub(super) page: i64,
}

impl Job for BuildSummary {
    type Out = Summary;
    // The revision and the key ids must come from the same snapshot.
    const SNAPSHOT: bool = true;

    async fn run<D: Db>(self, db: &mut D, at: i64) -> Result<Summary, StoreError> {
        let revision = super::blocks::current_revision(db).await?;
        let revision = u64::try_from(revision)
            .map_err(|_| StoreError::Internal(format!("negative revision {revision}")))?;
        let ids = live_key_ids(db, at, self.page).await?;
        let count = u64::try_from(ids.len()).unwrap_or(u64::MAX);
        let sized = count.saturating_add(count / 4);
        let mut summary = Summary::new(
            revision,
            blocks_for(sized, self.bits_per_key),
            hashes_for(self.bits_per_key),
        );
        for id in &ids {
            summary.insert(id);
        }
        Ok(summary)
    }
}

/// Every key id live at `at` (`sql::LIVE_KEY_IDS_AFTER`: a superset of the lookup's), page
/// by page in key-id order (the order of the engine's primary-key index: paging needs only
/// that each engine agrees with itself).
async fn live_key_ids<D: Db>(db: &mut D, at: i64, page: i64) -> Result<Vec<KeyId>, StoreError> {
    let mut ids = Vec::new();
    let mut after = String::new();
    loop {
        let args = [Arg::Text(&after), Arg::Int(at), Arg::Int(page)];
        let rows = db.rows(sql::LIVE_KEY_IDS_AFTER, &args).await?;
        let full = i64::try_from(rows.len()).is_ok_and(|n| n >= page);
        let Some(last) = rows.last() else { break };
        let last = last.text(0)?;
        for row in &rows {
            // A key id that is not 64 lowercase hex characters is never looked up.
            if let Some(id) = KeyId::from_hex(&row.text(0)?) {
                ids.push(id);
            }
        }
        if !full {
            break;
        }
        after = last;
    }
    Ok(ids)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    fn id(n: u32) -> String {
        KeyId::of(format!("key-{n}").as_bytes()).hex()
    }

    #[tokio::test]
    async fn a_build_reads_every_page_of_live_keys_and_sizes_for_a_quarter_more() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ks.db");
        let store = Store::open(&path, 100).unwrap();
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "INSERT INTO accounts (account_id, created_at) VALUES ('a', 0);
             INSERT INTO users (account_id, user_id, role, created_at) VALUES ('a', 'u', 'member', 0);",
        )
        .unwrap();
        let insert = |n: u32, revoked: Option<i64>, expires: Option<i64>| {
            conn.execute(
                "INSERT INTO keys (key_id, account_id, user_id, created_at, revoked_at, expires_at)
                 VALUES (?1, 'a', 'u', 0, ?2, ?3)",
                rusqlite::params![id(n), revoked, expires],
            )
            .unwrap();
        };
        for n in 0..25 {
            insert(n, None, None);
        }
        insert(100, Some(1), None);
        insert(101, None, Some(1));
        let s = store
            .read(BuildSummary {
                bits_per_key: 40,
                page: 4,
            })
            .await
            .unwrap();
        assert_eq!(s.header.keys, 25, "every page, only live keys");
        for n in 0..25 {
            assert!(s.may_contain(&KeyId::from_hex(&id(n)).unwrap()), "key {n}");
        }
        // 25 keys + a quarter = 31 keys at 40 bits: 1240 bits, 3 blocks (25 keys: 2).
        assert_eq!(s.header.blocks, 3);
        assert_eq!(s.header.hashes, hashes_for(40));
    }
}
