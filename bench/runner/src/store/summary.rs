//! The key summary at each size (`GET /v1/summary`, issue 22): its build from the keys table,
//! a fetch of the summary held in memory, and its extension after new keys are created, each
//! fetched with curl (total seconds and bytes, as a client sees them) beside the keystore's
//! own timing (`keystore_summary_build_seconds`, `keystore_summary_extension_seconds`).
//!
//! Invariant checked (a failure of the run, not a figure): the summary after the extension
//! holds every key created for it, at a later revision, extended rather than rebuilt.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use keygate_harness::{Error, Keystore, Result};
use keygate_protocol::summary::Summary;
use keygate_protocol::{routes, KeyId};

/// Held-summary fetches per size (the median is reported).
const FETCHES: usize = 3;

#[derive(Debug, Clone, Default)]
pub struct SummaryRun {
    /// Wire-form bytes and key ids of the built summary.
    pub bytes: u64,
    pub keys: u64,
    pub fpr: f64,
    /// The keystore's build time (its metric) and the first GET's total time (curl).
    pub build_s: f64,
    pub build_get_s: f64,
    /// A GET of the summary held in memory (curl, median of [`FETCHES`]).
    pub fetch_get_s: f64,
    /// Keys created through the admin API after the build, and how long that took.
    pub created: usize,
    pub create_s: f64,
    /// The keystore's extension time (its metric) and the GET's total time (curl).
    pub extend_s: f64,
    pub extend_get_s: f64,
    /// Bytes after the extension (the same blocks: extensions do not resize).
    pub extended_bytes: u64,
    /// What went wrong, if anything (the run fails).
    pub error: Option<String>,
}

/// One `curl` GET of the summary into `file`: (total seconds, bytes).
fn curl(ks: &Keystore, file: &Path) -> Result<(f64, u64)> {
    let url = format!("{}{}", ks.url(), routes::SUMMARY);
    let out = Command::new("curl")
        .args(["-sS", "-o"])
        .arg(file)
        .args(["-w", "%{time_total} %{size_download} %{http_code}", &url])
        .output()
        .map_err(|e| Error::msg(format!("curl: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut it = text.split_whitespace();
    let (secs, bytes, code) = (it.next(), it.next(), it.next());
    match (
        secs.and_then(|s| s.parse::<f64>().ok()),
        bytes.and_then(|b| b.parse::<u64>().ok()),
        code,
    ) {
        (Some(s), Some(b), Some("200")) => Ok((s, b)),
        _ => Err(Error::msg(format!(
            "GET {url}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        ))),
    }
}

fn decode(file: &Path) -> Result<Summary> {
    let bytes = std::fs::read(file)?;
    Summary::decode(&bytes).map_err(|e| Error::msg(format!("the summary does not decode: {e}")))
}

/// Build, fetch, create `new_keys` keys (users `sum-{tag}-{i}` of account `account`), extend.
pub fn run(ks: &Keystore, account: &str, tag: usize, new_keys: usize) -> Result<SummaryRun> {
    let dir = ks
        .db_path()
        .parent()
        .unwrap_or(Path::new("/tmp"))
        .to_path_buf();
    let file = dir.join("summary.bin");
    let builds0 = builds(ks)?;
    let (build_get_s, bytes) = curl(ks, &file)?;
    let built = decode(&file)?;
    let mut out = SummaryRun {
        bytes,
        keys: built.header.keys,
        fpr: built.header.estimated_false_positive_rate(),
        build_s: ks
            .try_metrics()?
            .get("keystore_summary_build_seconds")
            .copied()
            .unwrap_or(f64::NAN),
        build_get_s,
        created: new_keys,
        ..SummaryRun::default()
    };
    let mut fetches: Vec<f64> = (0..FETCHES)
        .map(|_| curl(ks, &file).map(|(s, _)| s))
        .collect::<Result<_>>()?;
    fetches.sort_by(f64::total_cmp);
    out.fetch_get_s = fetches.get(FETCHES / 2).copied().unwrap_or(f64::NAN);
    let t0 = Instant::now();
    let raw: Vec<String> = (0..new_keys)
        .map(|i| ks.create_user(account, &format!("sum-{tag}-{i}"), "member"))
        .collect();
    out.create_s = t0.elapsed().as_secs_f64();
    let extensions0 = metric(ks, "keystore_summary_extensions_total")?;
    let (extend_get_s, extended_bytes) = curl(ks, &file)?;
    out.extend_get_s = extend_get_s;
    out.extended_bytes = extended_bytes;
    out.extend_s = metric(ks, "keystore_summary_extension_seconds")?;
    let extended = decode(&file)?;
    let missing = raw
        .iter()
        .filter(|k| !extended.may_contain(&KeyId::of(k.as_bytes())))
        .count();
    let extensions = metric(ks, "keystore_summary_extensions_total")? - extensions0;
    let rebuilt = builds(ks)? - builds0 - 1.0;
    if missing > 0 || extended.header.revision <= built.header.revision {
        out.error = Some(format!(
            "{missing} of {new_keys} new keys missing from the summary (revision {} after {})",
            extended.header.revision, built.header.revision
        ));
    } else if extensions != 1.0 || rebuilt != 0.0 {
        out.error = Some(format!(
            "expected one extension and no rebuild: {extensions} extensions, {rebuilt} rebuilds"
        ));
    }
    Ok(out)
}

fn metric(ks: &Keystore, name: &str) -> Result<f64> {
    Ok(ks.try_metrics()?.get(name).copied().unwrap_or(0.0))
}

/// Builds so far, whatever the reason.
fn builds(ks: &Keystore) -> Result<f64> {
    Ok(ks
        .try_metrics()?
        .iter()
        .filter(|(k, _)| k.starts_with("keystore_summary_builds_total"))
        .map(|(_, v)| *v)
        .sum())
}
