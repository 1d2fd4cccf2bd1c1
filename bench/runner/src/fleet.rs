//! The fleet flood (issue 22): two Envoys (keygate on 2 workers each) sharing one keystore,
//! random keys at many times their combined miss budget (one wrk with `bench/flood.lua` per
//! Envoy), while valid keys are created in the store and each makes its first request once its
//! creation is one sync interval old (plus README's ~250 ms: `sync.interval_ms` + ~250 ms is the
//! bound for a change to reach every worker), through the two Envoys in turn. Runs with the key
//! summary on and off interleaved (on, off, off, on, ...) in one run, each on fresh Envoys.
//!
//! What a run measures: store lookups (the keystore's `keystore_lookups_total`) per second of
//! the flood, the share of new keys answered 200 on their first request, the flood's share that
//! reached the store, and the Envoys' own counters (refusals by the summary, throttled,
//! the summary's estimated false-positive rate).

use std::thread;
use std::time::{Duration, Instant};

use keygate_harness::{free_port, Error, Keystore, KeystoreOpts, Result};
use keygate_protocol::routes::admin;
use keygate_protocol::summary::Summary;
use keygate_protocol::KeyId;

use crate::envoy::{BenchEnvoy, Bootstrap, Contender};
use crate::wrk::{WrkResult, WrkRun};
use crate::{say, Opts};

/// How the fleet flood is run.
#[derive(Debug, Clone)]
pub struct FleetPlan {
    pub envoys: usize,
    /// Random keys per second over all Envoys.
    pub flood_rate: u64,
    pub flood_connections: u32,
    /// Length of each run's flood (whole seconds).
    pub secs: f64,
    /// Each Envoy's miss budget.
    pub per_second: u64,
    pub burst: u64,
    pub interval_ms: u64,
    /// Valid keys created per second during a run.
    pub create_rate: u64,
    /// Keys in the store before the first run (the summary is sized for them).
    pub preload: usize,
    /// Pairs of runs (on, off), interleaved; `0` off runs: the summary on only.
    pub pairs: usize,
    pub with_off: bool,
}

impl FleetPlan {
    pub fn new(smoke: bool) -> FleetPlan {
        FleetPlan {
            envoys: 2,
            flood_rate: 4000,
            flood_connections: 32,
            secs: if smoke { 3.0 } else { 10.0 },
            per_second: 100,
            burst: 200,
            interval_ms: 1000,
            create_rate: 20,
            preload: if smoke { 200 } else { 1000 },
            pairs: if smoke { 1 } else { 2 },
            with_off: !smoke,
        }
    }

    /// When a new key makes its first request, after its creation.
    pub fn first_request_after(&self) -> Duration {
        Duration::from_millis(self.interval_ms + 250)
    }

    /// The filter's configuration for a run.
    pub fn keygate_config(&self, summary: bool) -> String {
        serde_json::json!({
            "store": {"cluster": "keystore", "authority": "keystore", "timeout_ms": 1000},
            "cache": {"ttl_s": 300},
            "sync": {"interval_ms": self.interval_ms},
            "miss_budget": {"per_second": self.per_second, "burst": self.burst},
            "summary": {"enabled": summary}
        })
        .to_string()
    }

    /// The combined miss budget of the Envoys (lookups/s).
    pub fn combined_budget(&self) -> u64 {
        self.per_second * self.envoys as u64
    }
}

/// One run of the fleet flood.
#[derive(Debug, Clone, Default)]
pub struct FleetRun {
    pub summary: bool,
    /// The floods' wrk results, one per Envoy.
    pub floods: Vec<WrkResult>,
    pub store_lookups: u64,
    /// The status of each new key's first request (0: no answer).
    pub first_statuses: Vec<u16>,
    /// Summed over the Envoys, after minus before.
    pub refused_by_summary: u64,
    pub throttled: u64,
    pub denied: u64,
    /// Each Envoy's estimated false-positive rate of its summary (ppm) and its keys, at the end.
    pub fpr_ppm: Vec<u64>,
    pub summary_keys: Vec<u64>,
    /// The exact false-positive rate (mean over its blocks) of the Envoys' summaries at the end
    /// of the run, replayed: the summary the store served once the Envoys had fetched theirs
    /// (the same revision), with the key ids of the keys created during the run inserted, as
    /// the feed inserts them into the Envoys' copies. Random keys passed theirs at most at this
    /// rate (it only grows during the run).
    pub exact_fpr: Option<f64>,
}

impl FleetRun {
    pub fn flood_requests(&self) -> u64 {
        self.floods.iter().map(|f| f.requests).sum()
    }

    /// Random keys per second achieved, over all Envoys.
    pub fn flood_rate(&self) -> f64 {
        self.floods
            .iter()
            .map(|f| f.requests as f64 / f.duration_s.max(1e-9))
            .sum()
    }

    fn flood_secs(&self) -> f64 {
        self.floods
            .iter()
            .map(|f| f.duration_s)
            .fold(0.0, f64::max)
            .max(1e-9)
    }

    pub fn lookups_per_s(&self) -> f64 {
        self.store_lookups as f64 / self.flood_secs()
    }

    pub fn new_keys(&self) -> usize {
        self.first_statuses.len()
    }

    pub fn new_ok(&self) -> usize {
        self.first_statuses.iter().filter(|s| **s == 200).count()
    }

    /// Lookups the flood caused: all of them but the new keys' that were answered (a new key
    /// answered 200 was looked up once; one throttled was not looked up).
    pub fn flood_lookups(&self) -> u64 {
        self.store_lookups.saturating_sub(self.new_ok() as u64)
    }

    /// The share of the flood's keys that reached the store.
    pub fn flood_share(&self) -> f64 {
        self.flood_lookups() as f64 / self.flood_requests().max(1) as f64
    }

    /// The Envoys' estimated false-positive rate of their summaries (fill^k; mean over them).
    pub fn estimated_fpr(&self) -> f64 {
        let n = self.fpr_ppm.len().max(1) as f64;
        self.fpr_ppm.iter().sum::<u64>() as f64 / n / 1e6
    }

    /// The false-positive rate the allowance uses: the exact one, else the estimate.
    pub fn fpr(&self) -> f64 {
        self.exact_fpr.unwrap_or_else(|| self.estimated_fpr())
    }

    /// The target's allowance: the valid misses (the new keys) + the false-positive share of
    /// the flood (FPR × flood requests, plus two standard deviations of that binomial count:
    /// which random keys pass is chance) + what each Envoy's budget lets through before its
    /// gate engages (half its burst, and what refills while the flood takes it).
    pub fn allowance(&self, plan: &FleetPlan) -> f64 {
        let false_positives = self.fpr() * self.flood_requests() as f64;
        let per_envoy_rate = (plan.flood_rate as f64 / plan.envoys.max(1) as f64).max(1.0);
        let half = plan.burst as f64 / 2.0;
        let before_engaged = half + 1.0 + plan.per_second as f64 * half / per_envoy_rate;
        self.new_keys() as f64
            + false_positives
            + 2.0 * false_positives.sqrt()
            + before_engaged * plan.envoys as f64
    }
}

/// The fleet flood's runs, in the order they ran.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub plan: FleetPlan,
    pub runs: Vec<FleetRun>,
}

impl Fleet {
    fn of(&self, summary: bool) -> impl Iterator<Item = &FleetRun> {
        self.runs.iter().filter(move |r| r.summary == summary)
    }

    pub fn has(&self, summary: bool) -> bool {
        self.of(summary).next().is_some()
    }

    pub fn median_lookups_per_s(&self, summary: bool) -> f64 {
        crate::model::median(
            &self
                .of(summary)
                .map(FleetRun::lookups_per_s)
                .collect::<Vec<_>>(),
        )
    }

    pub fn median_flood_rate(&self, summary: bool) -> f64 {
        crate::model::median(
            &self
                .of(summary)
                .map(FleetRun::flood_rate)
                .collect::<Vec<_>>(),
        )
    }

    /// New keys answered 200 on their first request, and new keys, over the runs.
    pub fn first_ok(&self, summary: bool) -> (usize, usize) {
        self.of(summary)
            .fold((0, 0), |(ok, n), r| (ok + r.new_ok(), n + r.new_keys()))
    }

    pub fn first_ok_share(&self, summary: bool) -> f64 {
        let (ok, n) = self.first_ok(summary);
        ok as f64 / n.max(1) as f64
    }

    /// The flood's share that reached the store, over the runs.
    pub fn flood_share(&self, summary: bool) -> f64 {
        let (l, f) = self.of(summary).fold((0, 0), |(l, f), r| {
            (l + r.flood_lookups(), f + r.flood_requests())
        });
        l as f64 / f.max(1) as f64
    }

    /// Every run with the summary on within its allowance.
    pub fn lookups_ok(&self) -> bool {
        self.has(true)
            && self
                .of(true)
                .all(|r| r.store_lookups as f64 <= r.allowance(&self.plan))
    }

    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, r) in self.runs.iter().enumerate() {
            if r.flood_requests() == 0 {
                out.push(format!("fleet run {}: the flood sent no request", i + 1));
            }
            if r.new_keys() == 0 {
                out.push(format!("fleet run {}: no key was created", i + 1));
            }
            let odd: Vec<u16> = r
                .first_statuses
                .iter()
                .copied()
                .filter(|s| *s != 200 && *s != 503)
                .collect();
            if !odd.is_empty() {
                out.push(format!(
                    "fleet run {}: new keys' first requests answered {odd:?}",
                    i + 1
                ));
            }
        }
        out
    }
}

/// A keystore with `plan.preload` keys (4 writers through the admin API).
fn keystore(plan: &FleetPlan) -> Result<Keystore> {
    let ks = Keystore::start(KeystoreOpts::default())?;
    ks.create_account("fleet", "fleet-admin");
    let errors: Vec<Error> = thread::scope(|s| {
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let ks = &ks;
                s.spawn(move || -> Result<()> {
                    for i in (t..plan.preload).step_by(4) {
                        create_user(ks, &format!("old{i}"))?;
                    }
                    Ok(())
                })
            })
            .collect();
        writers
            .into_iter()
            .filter_map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(Error::msg("panicked")))
                    .err()
            })
            .collect()
    });
    match errors.into_iter().next() {
        Some(e) => Err(e.context("fleet: preloading keys")),
        None => Ok(ks),
    }
}

/// Creates a user in the fleet's account; returns its key.
fn create_user(ks: &Keystore, user: &str) -> Result<String> {
    let body = serde_json::json!({"user_id": user, "role": "member"});
    let r = ks.admin("POST", &admin::users("fleet"), Some(&body))?;
    let key = r
        .json()
        .ok()
        .and_then(|v| v.get("user_key")?.as_str().map(str::to_string));
    match (r.status, key) {
        (201, Some(k)) => Ok(k),
        (status, _) => Err(Error::msg(format!("creating {user}: {status} {}", r.body))),
    }
}

/// The fleet flood: a keystore with preloaded keys, then the runs (summary on, off, off, on...).
pub fn run(o: &Opts, envoy_bin: &std::path::Path, keygate_wasm: &std::path::Path) -> Result<Fleet> {
    let plan = FleetPlan::new(o.plan.smoke);
    say(format!(
        "fleet flood: {} Envoys (2 workers each), one keystore with {} keys, {} random keys/s \
         (budget {}/s each, {}x the combined), {} new keys/s, first request {} ms after creation",
        plan.envoys,
        plan.preload,
        plan.flood_rate,
        plan.per_second,
        plan.flood_rate / plan.combined_budget().max(1),
        plan.create_rate,
        plan.first_request_after().as_millis()
    ));
    let ks = keystore(&plan)?;
    let mut order = Vec::new();
    for pair in 0..plan.pairs {
        let on_first = pair % 2 == 0;
        order.push(on_first || !plan.with_off);
        if plan.with_off {
            order.push(!on_first);
        }
    }
    let mut runs = Vec::new();
    for (i, summary) in order.into_iter().enumerate() {
        let r = run_once(o, &plan, &ks, envoy_bin, keygate_wasm, summary, i)?;
        say(format!(
            "fleet {}: flood {:.0} keys/s; {} store lookups ({:.1}/s, allowance {:.0}); new keys {}/{} answered 200 first time; {} refused by the summary, {} throttled; FPR {:.3} % estimated, {:.3} % exact",
            if summary { "summary on " } else { "summary off" },
            r.flood_rate(),
            r.store_lookups,
            r.lookups_per_s(),
            r.allowance(&plan),
            r.new_ok(),
            r.new_keys(),
            r.refused_by_summary,
            r.throttled,
            r.estimated_fpr() * 100.0,
            r.fpr() * 100.0
        ));
        runs.push(r);
    }
    Ok(Fleet { plan, runs })
}

/// Starts the Envoys of one run (in parallel) and waits until each has polled the feed and,
/// with the summary on, holds a summary of the store.
fn start_envoys(
    o: &Opts,
    plan: &FleetPlan,
    ks: &Keystore,
    envoy_bin: &std::path::Path,
    keygate_wasm: &std::path::Path,
    summary: bool,
) -> Result<Vec<(BenchEnvoy, u16)>> {
    let started: Vec<Result<(BenchEnvoy, u16)>> = thread::scope(|s| {
        let handles: Vec<_> = (0..plan.envoys)
            .map(|_| {
                s.spawn(move || {
                    let port = free_port();
                    let boot = Bootstrap {
                        admin_port: free_port(),
                        listeners: vec![(Contender::Keygate, port)],
                        authsvc_port: 0,
                        keystore_port: ks.port(),
                        bench_key: "unused".to_string(),
                        floor_wasm: o.floor_wasm.clone(),
                        keygate_wasm: keygate_wasm.to_path_buf(),
                        baseline_wasm: None,
                        keygate_config: plan.keygate_config(summary),
                        lua_code: String::new(),
                        herd_delay_ms: 0,
                    };
                    BenchEnvoy::start(envoy_bin, &boot, 2, None).map(|e| (e, port))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::msg("starting an Envoy panicked")))
            })
            .collect()
    });
    let envoys = started.into_iter().collect::<Result<Vec<_>>>()?;
    // The first poll (a cold start), then the summary.
    thread::sleep(Duration::from_millis(plan.interval_ms + 250));
    if summary {
        for (e, _) in &envoys {
            wait_for_summary(e, plan.preload as u64)?;
        }
    }
    Ok(envoys)
}

fn wait_for_summary(envoy: &BenchEnvoy, keys: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let held = envoy.stats()?.get("keygate_summary_keys").copied();
        if held.is_some_and(|k| k >= keys) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::msg(format!(
                "fleet: no summary of {keys} keys after 30 s (keygate_summary_keys {held:?}); envoy log tail:\n{}",
                envoy.log_tail(20)
            )));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Creates keys at `plan.create_rate` from 0.5 s into the flood (the gates engaged) until
/// their first request would come within 0.25 s of its end; each key's first request goes to
/// Envoy `i % n` once its creation is [`FleetPlan::first_request_after`] old. Returns each
/// key and its first request's status.
fn create_during_flood(
    plan: &FleetPlan,
    ks: &Keystore,
    ports: &[u16],
    run: usize,
) -> Result<Vec<(String, u16)>> {
    let start = Instant::now();
    let after = plan.first_request_after();
    let last = Duration::from_secs_f64(plan.secs)
        .saturating_sub(after)
        .saturating_sub(Duration::from_millis(250));
    let every = Duration::from_secs_f64(1.0 / plan.create_rate.max(1) as f64);
    let (tx, rx) = std::sync::mpsc::channel::<(usize, String, Instant)>();
    thread::scope(|s| {
        let creator = s.spawn(move || -> Result<()> {
            let mut due = start + Duration::from_millis(500);
            let mut i = 0;
            while due.duration_since(start) <= last {
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
                let key = create_user(ks, &format!("new-r{run}-{i}"))?;
                let _ = tx.send((i, key, Instant::now()));
                i += 1;
                due += every;
            }
            Ok(())
        });
        let statuses: Vec<(String, u16)> = rx
            .iter()
            .map(|(i, key, created)| {
                if let Some(wait) = (created + after).checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
                let port = ports.get(i % ports.len()).copied().unwrap_or(0);
                let status = crate::status(port, &key).unwrap_or(0);
                (key, status)
            })
            .collect();
        creator
            .join()
            .unwrap_or_else(|_| Err(Error::msg("the key creator panicked")))?;
        Ok(statuses)
    })
}

/// The filter's counters summed over the Envoys.
fn counters(envoys: &[(BenchEnvoy, u16)]) -> Result<[u64; 3]> {
    let mut out = [0u64; 3];
    for (e, _) in envoys {
        let st = e.stats()?;
        let get = |n: &str| st.get(n).copied().unwrap_or(0);
        out[0] += get("keygate_summary_refusals_total");
        out[1] += get("keygate_requests_total{outcome=\"throttled\"}");
        out[2] += get("keygate_requests_total{outcome=\"denied\"}");
    }
    Ok(out)
}

fn run_once(
    o: &Opts,
    plan: &FleetPlan,
    ks: &Keystore,
    envoy_bin: &std::path::Path,
    keygate_wasm: &std::path::Path,
    summary: bool,
    index: usize,
) -> Result<FleetRun> {
    let mut envoys = start_envoys(o, plan, ks, envoy_bin, keygate_wasm, summary)?;
    let replica = if summary {
        Some(store_summary(ks)?)
    } else {
        None
    };
    let ports: Vec<u16> = envoys.iter().map(|(_, p)| *p).collect();
    let per_envoy = plan.flood_rate / plan.envoys.max(1) as u64;
    let floods: Vec<WrkRun> = ports
        .iter()
        .map(|port| WrkRun {
            url: crate::url(*port, "/flood"),
            threads: 1,
            connections: plan.flood_connections,
            secs: plan.secs,
            headers: vec![],
            script: Some((o.lua.clone(), vec![per_envoy.to_string(), "1".to_string()])),
            cpus: None,
        })
        .collect();
    let c0 = counters(&envoys)?;
    let ks0 = ks.lookups();
    let children = floods
        .iter()
        .map(WrkRun::spawn)
        .collect::<Result<Vec<_>>>()?;
    let created = create_during_flood(plan, ks, &ports, index);
    let results: Vec<Result<WrkResult>> = floods
        .iter()
        .zip(children)
        .map(|(f, c)| f.wait(c))
        .collect();
    let store_lookups = ks.lookups().saturating_sub(ks0);
    let created = created?;
    let c1 = counters(&envoys)?;
    let mut fpr_ppm = Vec::new();
    let mut summary_keys = Vec::new();
    for (e, _) in &envoys {
        let st = e.stats()?;
        fpr_ppm.push(
            st.get("keygate_summary_false_positive_rate_ppm")
                .copied()
                .unwrap_or(0),
        );
        summary_keys.push(st.get("keygate_summary_keys").copied().unwrap_or(0));
    }
    let exact_fpr = replica.map(|mut r| {
        for (key, _) in &created {
            r.insert(&KeyId::of(key.as_bytes()));
        }
        r.false_positive_rate()
    });
    for (e, _) in &mut envoys {
        e.check_running()
            .map_err(|err| err.context(format!("fleet run {}", index + 1)))?;
        e.stop();
    }
    Ok(FleetRun {
        summary,
        floods: results.into_iter().collect::<Result<Vec<_>>>()?,
        store_lookups,
        first_statuses: created.iter().map(|(_, s)| *s).collect(),
        refused_by_summary: c1[0].saturating_sub(c0[0]),
        throttled: c1[1].saturating_sub(c0[1]),
        denied: c1[2].saturating_sub(c0[2]),
        fpr_ppm,
        summary_keys,
        exact_fpr,
    })
}

/// The summary the store serves now.
fn store_summary(ks: &Keystore) -> Result<Summary> {
    let url = format!("{}{}", ks.url(), keygate_protocol::routes::SUMMARY);
    let client = keygate_harness::Client::new(Duration::from_secs(10));
    let (status, body) = client.get_bytes(&url, &[])?;
    if status != 200 {
        return Err(Error::msg(format!("{url}: status {status}")));
    }
    Summary::decode(&body).map_err(|e| Error::msg(format!("{url}: not a summary: {e:?}")))
}

/// Share of new keys answered 200 on their first request (target, with the summary on).
pub const TARGET_FIRST_OK: f64 = 0.99;

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**MISSED**"
    }
}

/// The report's section.
pub fn section(s: &mut String, f: &Fleet) {
    use std::fmt::Write as _;
    let p = &f.plan;
    let _ = writeln!(s, "## Fleet flood: the key summary on and off\n");
    let _ = writeln!(
        s,
        "{} Envoys (keygate on 2 workers each, not pinned) sharing one keystore (SQLite, no \
         delay) that holds {} keys before the first run. Each run starts fresh Envoys and floods \
         them with {} random keys/s in all (`bench/flood.lua`, one wrk per Envoy, {} connections \
         each) for {} s: {}× their combined miss budget ({}/s each, burst {}). From 0.5 s in, {} \
         valid keys/s are created through the keystore's admin API; each makes its first \
         request, through the Envoys in turn, {} ms after its creation (`sync.interval_ms` {} + \
         250 ms, README's bound for a change to reach every worker). Runs with the summary on \
         (`summary.enabled`, the default) and off interleaved{}.\n",
        p.envoys,
        p.preload,
        p.flood_rate,
        p.flood_connections,
        p.secs,
        p.flood_rate / p.combined_budget().max(1),
        p.per_second,
        p.burst,
        p.create_rate,
        p.first_request_after().as_millis(),
        p.interval_ms,
        if p.with_off {
            ""
        } else {
            " (here the summary on only: the smoke run leaves the contrast out)"
        }
    );
    let _ = writeln!(
        s,
        "| run | summary | flood keys/s achieved | store lookups | lookups/s | flood share to the store | new keys: 200 first time | refused by summary (503) | throttled (503) | looked up, unknown (401) | summary: keys, est. FPR (exact) | allowance |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for (i, r) in f.runs.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {} | {:.1} | {:.2} % | {} / {} | {} | {} | {} | {} | {:.0} |",
            i + 1,
            if r.summary { "on" } else { "off" },
            r.flood_rate(),
            r.store_lookups,
            r.lookups_per_s(),
            r.flood_share() * 100.0,
            r.new_ok(),
            r.new_keys(),
            r.refused_by_summary,
            r.throttled,
            r.denied,
            if r.summary {
                format!(
                    "{:?}, {:.3} % ({:.3} % exact)",
                    r.summary_keys,
                    r.estimated_fpr() * 100.0,
                    r.fpr() * 100.0
                )
            } else {
                "–".to_string()
            },
            r.allowance(p)
        );
    }
    let (ok_on, n_on) = f.first_ok(true);
    let _ = writeln!(s);
    for summary in [true, false].into_iter().filter(|x| f.has(*x)) {
        let (ok, n) = f.first_ok(summary);
        let _ = writeln!(
            s,
            "- summary {}: median {:.1} store lookups/s under {:.0} random keys/s; {ok} of {n} new \
             keys ({:.1} %) answered 200 on their first request; {:.2} % of the flood reached the store.",
            if summary { "on" } else { "off" },
            f.median_lookups_per_s(summary),
            f.median_flood_rate(summary),
            f.first_ok_share(summary) * 100.0,
            f.flood_share(summary) * 100.0
        );
    }
    let _ = writeln!(s, "\nTargets (summary on):\n");
    let _ = writeln!(
        s,
        "- store lookups ≤ the valid misses + the false-positive share of the flood, in every \
         run: {}. The allowance column: the new keys (each looked up once) + the summary's \
         false-positive rate × the flood's requests, plus two standard deviations of that \
         binomial count + what each Envoy's budget lets through before its gate engages (half \
         its burst, and what refills meanwhile). The rate is the exact one (mean over blocks of \
         fill^k) of the Envoys' summaries at the end of the run, replayed: the store's summary \
         fetched right after theirs, with the keys created during the run inserted; the \
         Envoys' own estimate (overall fill^k, \
         `keygate_summary_false_positive_rate_ppm`) reads lower, since the fill varies between \
         blocks.",
        verdict(f.lookups_ok())
    );
    let _ = writeln!(
        s,
        "- ≥ {:.0} % of new keys answered 200 on their first request: {ok_on} of {n_on} \
         ({:.1} %), {}.\n",
        TARGET_FIRST_OK * 100.0,
        f.first_ok_share(true) * 100.0,
        verdict(n_on > 0 && f.first_ok_share(true) >= TARGET_FIRST_OK)
    );
}

/// The headline's line.
pub fn headline(f: &Fleet) -> String {
    let p = &f.plan;
    let side = |summary: bool| {
        if !f.has(summary) {
            return "not run".to_string();
        }
        let (ok, n) = f.first_ok(summary);
        format!(
            "{:.1} lookups/s, new keys 200 first time {ok}/{n} ({:.1}%), flood share to store {:.2}%",
            f.median_lookups_per_s(summary),
            f.first_ok_share(summary) * 100.0,
            f.flood_share(summary) * 100.0
        )
    };
    let plain = |ok: bool| if ok { "met" } else { "MISSED" };
    format!(
        "fleet flood ({} Envoys, {} keys/s, budget {}/s each): summary on: {} (lookups target: {}; >= {:.0}%: {}); summary off: {}",
        p.envoys,
        p.flood_rate,
        p.per_second,
        side(true),
        plain(f.lookups_ok()),
        TARGET_FIRST_OK * 100.0,
        plain(f.first_ok(true).1 > 0 && f.first_ok_share(true) >= TARGET_FIRST_OK),
        side(false)
    )
}
