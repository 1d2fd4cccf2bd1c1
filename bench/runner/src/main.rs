//! keygate-bench: the whole of `make bench` after the build (see bench/README.md).
//!
//! 1. Throughput: one Envoy (`--concurrency 1`, pinned to CPU 0) with one listener per
//!    contender, wrk pinned to CPU 1, runs interleaved A B C D E / E D C B A.
//! 2. The cold-key herd: keygate with 2 workers, a keystore that answers after 20 ms, N
//!    simultaneous first requests with a fresh key.
//! 3. The flood: random keys at a fixed rate beside a steady valid stream.
//! 4. The fleet flood (`fleet`): two Envoys sharing one keystore under random keys while new
//!    keys make their first requests; the key summary on and off, interleaved.
//! 5. The report (`RESULTS.md` and a chart) and the headline figures.
//!
//! `--smoke` runs every phase for a few seconds and fails unless every contender answered
//! 200 and the report was written.

mod cpu;
mod envoy;
mod fleet;
mod herd;
mod model;
mod report;
mod wrk;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use keygate_harness::{free_port, process, Error, Keystore, KeystoreOpts, Result};
use keygate_protocol::routes;

use envoy::{BenchEnvoy, Bootstrap, Contender};
use model::{Flood, FloodRun, HerdPhase, HerdRow, Machine, Plan, Results, Sample, Throughput};
use wrk::WrkRun;

const BUDGET_PER_SECOND: u64 = 100;
const BUDGET_BURST: u64 = 200;
const STORE_DELAY_MS: u64 = 20;
/// A key no contender knows (shaped like a real one).
const WRONG_KEY: &str = "kg_0000000000000000000000000000000000000000000";

fn keygate_config() -> String {
    serde_json::json!({
        "store": {"cluster": "keystore", "authority": "keystore", "timeout_ms": 1000},
        "cache": {"ttl_s": 300},
        "miss_budget": {"per_second": BUDGET_PER_SECOND, "burst": BUDGET_BURST}
    })
    .to_string()
}

struct Opts {
    /// Start the throughput phase's keystore and Envoy, print where they are, and wait (for
    /// profiling by hand) instead of measuring.
    serve: bool,
    /// `--only herd`: the herd phase alone (keygate and its floor; no throughput, flood or Lua
    /// contender), its figures printed, no report written.
    herd_only: bool,
    /// `--only fleet`: the fleet flood alone, its section and headline printed, no report.
    fleet_only: bool,
    plan: Plan,
    out: PathBuf,
    floor_wasm: PathBuf,
    lua: PathBuf,
    /// The Lua contender's source.
    lua_auth: PathBuf,
}

const USAGE: &str =
    "usage: keygate-bench [--smoke] [--out DIR] [--rounds N] [--secs S] [--warmup S]
                     [--connections C] [--herd N,N,...] [--flood-secs S] [--flood-rate R]
                     [--flood-pairs P] [--floor-wasm PATH] [--lua PATH]
                     [--lua-auth PATH] [--baseline-wasm PATH] [--serve] [--only herd|fleet]
Full run by default (report in bench/); --smoke: a short run that checks every contender
answers 200 (give --out, or the report goes to a temporary directory). --serve: start the
throughput phase's keystore and Envoy, print their ports and the bench key, and wait (Ctrl-C
ends it), for profiling by hand. --only herd: the herd phase alone (keygate and the herd
floor at each --herd N), figures printed, no report written (for before/after runs).
--only fleet: the fleet flood alone (two Envoys, the key summary on and off), its section
printed, no report written.
--baseline-wasm PATH: one more throughput contender, G keygate (baseline): the same keygate
configuration with the filter built at PATH, interleaved with the others; the report gives
keygate / keygate (baseline) per round.";

fn parse_args() -> std::result::Result<Opts, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let mut plan = Plan {
        smoke,
        baseline_wasm: None,
        rounds: if smoke { 1 } else { 10 },
        secs: 2.0,
        warmup_secs: 1.0,
        connections: 32,
        herd_ns: if smoke { vec![50] } else { vec![50, 200, 1000] },
        store_delay_ms: STORE_DELAY_MS,
        flood_secs: if smoke { 2.0 } else { 8.0 },
        flood_rate: 5000,
        flood_connections: 64,
        flood_pairs: if smoke { 1 } else { 2 },
        valid_connections: 32,
        keygate_config: keygate_config(),
        budget_per_second: BUDGET_PER_SECOND,
        budget_burst: BUDGET_BURST,
    };
    let root = keygate_harness::repo_root();
    let mut out = None;
    let mut floor_wasm =
        keygate_harness::target_dir().join("wasm32-wasip1/release/keygate_floor.wasm");
    let mut lua = root.join("bench/flood.lua");
    let mut lua_auth = root.join("bench/lua_auth.lua");
    let mut serve = false;
    let mut herd_only = false;
    let mut fleet_only = false;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        let num = |name: &str, v: String| -> std::result::Result<f64, String> {
            v.parse::<f64>()
                .ok()
                .filter(|x| *x > 0.0)
                .ok_or(format!("{name}: not a positive number: {v}"))
        };
        match a.as_str() {
            "--smoke" => {}
            "--serve" => serve = true,
            "--only" => match value("--only")?.as_str() {
                "herd" => herd_only = true,
                "fleet" => fleet_only = true,
                other => {
                    return Err(format!(
                        "--only: unknown phase {other:?} (known: herd, fleet)"
                    ))
                }
            },
            "--out" => out = Some(PathBuf::from(value("--out")?)),
            "--rounds" => plan.rounds = num("--rounds", value("--rounds")?)? as usize,
            "--secs" => plan.secs = num("--secs", value("--secs")?)?.round().max(1.0),
            "--warmup" => plan.warmup_secs = num("--warmup", value("--warmup")?)?.round().max(1.0),
            "--connections" => {
                plan.connections = num("--connections", value("--connections")?)? as u32
            }
            "--herd" => {
                let v = value("--herd")?;
                plan.herd_ns = v
                    .split(',')
                    .map(|n| {
                        n.trim()
                            .parse::<usize>()
                            .map_err(|_| format!("--herd: {v}"))
                    })
                    .collect::<std::result::Result<_, _>>()?;
            }
            "--flood-secs" => {
                plan.flood_secs = num("--flood-secs", value("--flood-secs")?)?
                    .round()
                    .max(1.0)
            }
            "--flood-rate" => plan.flood_rate = num("--flood-rate", value("--flood-rate")?)? as u64,
            "--flood-pairs" => {
                plan.flood_pairs = num("--flood-pairs", value("--flood-pairs")?)? as usize
            }
            "--floor-wasm" => floor_wasm = PathBuf::from(value("--floor-wasm")?),
            "--lua" => lua = PathBuf::from(value("--lua")?),
            "--lua-auth" => lua_auth = PathBuf::from(value("--lua-auth")?),
            "--baseline-wasm" => {
                plan.baseline_wasm = Some(PathBuf::from(value("--baseline-wasm")?))
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let out = match out {
        Some(o) => o,
        None if smoke => {
            std::env::temp_dir().join(format!("keygate-bench-smoke-{}", std::process::id()))
        }
        None => root.join("bench"),
    };
    Ok(Opts {
        serve,
        herd_only,
        fleet_only,
        plan,
        out,
        floor_wasm,
        lua,
        lua_auth,
    })
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// SIGINT, SIGTERM, SIGHUP: kill every child (Envoy, keystore) and exit.
fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
    let _ = thread::Builder::new()
        .name("signal-watcher".into())
        .spawn(|| loop {
            if STOP.load(Ordering::SeqCst) {
                eprintln!("keygate-bench: interrupted; stopping Envoy and the keystore");
                process::kill_all_children(Duration::from_secs(2));
                std::process::exit(130);
            }
            thread::sleep(Duration::from_millis(50));
        });
}

fn say(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("keygate-bench: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    install_signal_handlers();
    match run(&opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("keygate-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs everything; `Ok(false)` when something answered wrong (the report is still written).
fn run(o: &Opts) -> Result<bool> {
    for (what, path) in [
        ("the wasm floor", &o.floor_wasm),
        ("the flood script", &o.lua),
        ("the Lua contender", &o.lua_auth),
    ]
    .into_iter()
    .chain(
        o.plan
            .baseline_wasm
            .as_ref()
            .map(|b| ("the baseline filter", b)),
    ) {
        if !path.is_file() {
            return Err(Error::msg(format!(
                "{what} not found at {} (scripts/bench.sh builds it)",
                path.display()
            )));
        }
    }
    // Fail now, not after minutes, if an artifact is missing (these panic with how to build).
    let envoy_bin = keygate_harness::envoy_path();
    let keygate_wasm = keygate_harness::wasm_path();
    let _ = keygate_harness::keystore_path();

    if o.herd_only {
        return run_herd_only(o, &envoy_bin, &keygate_wasm);
    }
    if o.fleet_only {
        let f = fleet::run(o, &envoy_bin, &keygate_wasm)?;
        let mut section = String::new();
        fleet::section(&mut section, &f);
        println!("{section}{}", fleet::headline(&f));
        return Ok(f.failures().is_empty());
    }
    let lua_code = std::fs::read_to_string(&o.lua_auth)?;
    let started = Instant::now();
    let mut machine = machine(&envoy_bin);
    say(format!(
        "{} CPU(s), {}; {}; load {}",
        machine.nproc, machine.cpu_model, machine.envoy_version, machine.load_start
    ));
    let throughput = throughput(o, &machine, &envoy_bin, &keygate_wasm, &lua_code)?;
    let (herd, flood, lua_flood) = herd_and_flood(o, &envoy_bin, &keygate_wasm, &lua_code)?;
    let fleet = fleet::run(o, &envoy_bin, &keygate_wasm)?;
    machine.load_end = loadavg();
    let results = Results {
        machine,
        plan: o.plan.clone(),
        throughput,
        herd,
        flood,
        lua_flood,
        fleet,
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    report::write(&results, &o.out)
        .map_err(|e| Error::msg(format!("writing the report into {}: {e}", o.out.display())))?;
    let report_path = o.out.join(report::REPORT_FILE);
    println!("{}", report::headline(&results, &report_path));

    let mut failures = results.throughput.failures();
    for f in results
        .flood
        .failures()
        .into_iter()
        .chain(results.fleet.failures())
    {
        eprintln!("keygate-bench: WARNING: {f}; see the report");
    }
    // Herd and flood outcomes are measurements of keygate (in the report), not failures of
    // the bench: only the contenders' answers and the report decide the exit status.
    for h in &results.herd.rows {
        if h.result.ok() != h.result.n {
            eprintln!(
                "keygate-bench: WARNING: herd N = {}: only {} of {} answered 200 ({:?}); see the report",
                h.result.n,
                h.result.ok(),
                h.result.n,
                h.result.statuses
            );
        }
    }
    for f in [report::REPORT_FILE, report::CHART_FILE] {
        let ok = std::fs::metadata(o.out.join(f)).is_ok_and(|m| m.len() > 0);
        if !ok {
            failures.push(format!("{} was not written", o.out.join(f).display()));
        }
    }
    if failures.is_empty() {
        say(format!(
            "ok: every contender answered 200; report written to {} ({:.0} s)",
            o.out.display(),
            started.elapsed().as_secs_f64()
        ));
        Ok(true)
    } else {
        for f in &failures {
            eprintln!("keygate-bench: FAILED: {f}");
        }
        Ok(false)
    }
}

fn cmd_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s
        })
        .unwrap_or_default()
}

use cpu::loadavg;

fn machine(envoy_bin: &Path) -> Machine {
    let nproc = cmd_output("nproc", &[])
        .trim()
        .parse()
        .unwrap_or_else(|_| thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get));
    let cpu_model = cpu::cpu_model().unwrap_or_else(|| "unknown".to_string());
    let envoy_version = cmd_output(&envoy_bin.to_string_lossy(), &["--version"])
        .split("version:")
        .nth(1)
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    let wrk_version = cmd_output("wrk", &["-v"])
        .lines()
        .next()
        .map(|l| l.split(" Copyright").next().unwrap_or(l).trim().to_string())
        .unwrap_or_default();
    Machine {
        nproc,
        cpu_model,
        envoy_version,
        wrk_version,
        kernel: cmd_output("uname", &["-sr"]).trim().to_string(),
        date: cmd_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
            .trim()
            .to_string(),
        load_start: loadavg(),
        load_end: String::new(),
        pinned: nproc >= 2,
        nice: niceness(),
    }
}

/// This process's nice value.
fn niceness() -> i32 {
    // SAFETY: getpriority has no memory-safety preconditions; errno is reset first because -1
    // is also a valid answer.
    unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, 0)
    }
}

fn url(port: u16, path: &str) -> String {
    format!("http://127.0.0.1:{port}{path}")
}

fn status(port: u16, key: &str) -> Result<u16> {
    Ok(keygate_harness::get(&url(port, "/check"), &[("x-api-key", key)])?.status)
}

fn throughput(
    o: &Opts,
    m: &Machine,
    envoy_bin: &Path,
    keygate_wasm: &Path,
    lua_code: &str,
) -> Result<Throughput> {
    let p = &o.plan;
    say("throughput: starting the keystore and one Envoy (1 worker), one listener per contender");
    let ks = Keystore::start(KeystoreOpts::default())?;
    let bench_key = ks.create_account("bench", "bench-user");
    let contenders = Contender::throughput(p.baseline_wasm.is_some());
    let boot = Bootstrap {
        admin_port: free_port(),
        listeners: contenders.iter().map(|c| (*c, free_port())).collect(),
        authsvc_port: free_port(),
        keystore_port: ks.port(),
        bench_key: bench_key.clone(),
        floor_wasm: o.floor_wasm.clone(),
        keygate_wasm: keygate_wasm.to_path_buf(),
        baseline_wasm: p.baseline_wasm.clone(),
        keygate_config: p.keygate_config.clone(),
        lua_code: lua_code.to_string(),
        herd_delay_ms: p.store_delay_ms,
    };
    let (envoy_cpus, wrk_cpus) = if m.pinned {
        (Some("0"), Some("1".to_string()))
    } else {
        (None, None)
    };
    let mut envoy = BenchEnvoy::start(envoy_bin, &boot, 1, envoy_cpus)?;

    if o.serve {
        println!("bench key: {bench_key}");
        println!("keystore:  http://127.0.0.1:{}", ks.port());
        println!(
            "admin:     {} (envoy pid {})",
            envoy.admin_url(),
            envoy.pid().unwrap_or(0)
        );
        for (c, port) in &boot.listeners {
            println!("{} {:<10} {}", c.letter(), c.id(), url(*port, "/"));
        }
        println!("waiting; Ctrl-C stops Envoy and the keystore");
        loop {
            envoy.check_running()?;
            thread::sleep(Duration::from_millis(500));
        }
    }
    let mut out = Throughput {
        contenders: contenders.clone(),
        ..Throughput::default()
    };
    for (c, port) in &boot.listeners {
        // For keygate, this first request is the miss that fills the cache.
        let ok = status(*port, &bench_key)?;
        let bad = match c {
            Contender::NoAuth => None,
            _ => Some(status(*port, WRONG_KEY)?),
        };
        out.sanity.push((*c, ok, bad));
    }
    out.envoy_errors = envoy.error_lines(5);
    say(format!(
        "checks: {}",
        out.sanity
            .iter()
            .map(|(c, ok, bad)| format!(
                "{} {ok}/{}",
                c.id(),
                bad.map_or("-".into(), |b| b.to_string())
            ))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let port_of = |c: Contender| {
        boot.listeners
            .iter()
            .find(|(x, _)| *x == c)
            .map_or(0, |(_, p)| *p)
    };
    let run_of = |c: Contender, secs: f64| WrkRun {
        url: url(port_of(c), "/"),
        threads: 1,
        connections: p.connections,
        secs,
        headers: vec![format!("x-api-key: {bench_key}")],
        script: None,
        cpus: wrk_cpus.clone(),
    };
    for c in contenders.iter().copied() {
        run_of(c, p.warmup_secs).run()?;
    }
    let before = envoy.stats()?;
    for round in 1..=p.rounds {
        let mut order = contenders.clone();
        if round % 2 == 0 {
            order.reverse();
        }
        for c in order {
            let cpu0 = envoy.cpu_seconds();
            let wrk0 = cpu::children_cpu_seconds();
            let r = run_of(c, p.secs).run()?;
            let envoy_cpu = (envoy.cpu_seconds() - cpu0) / r.duration_s.max(1e-9);
            let wrk_cpu = (cpu::children_cpu_seconds() - wrk0) / r.duration_s.max(1e-9);
            say(format!(
                "round {round}/{} {} {:<10} {:>8.0} req/s  p99 {:.2} ms  non-2xx {}  cpu: envoy {:.0}% wrk {:.0}%",
                p.rounds,
                c.letter(),
                c.id(),
                r.rps,
                r.p99_ms,
                r.non2xx,
                envoy_cpu * 100.0,
                wrk_cpu * 100.0
            ));
            out.samples.push(Sample {
                round,
                contender: c,
                wrk: r,
                envoy_cpu,
                wrk_cpu,
            });
        }
        envoy.check_running()?;
    }
    // keygate keeps the counters of hits in the worker until its next tick (250 ms when idle).
    thread::sleep(Duration::from_millis(300));
    let after = envoy.stats()?;
    let delta = |name: &str| {
        after
            .get(name)
            .copied()
            .unwrap_or(0)
            .saturating_sub(before.get(name).copied().unwrap_or(0))
    };
    out.keygate_l1_hits = delta("keygate_l1_hits_total");
    out.keygate_store_lookups = delta("keygate_store_lookups_total");
    out.keygate_allowed = delta("keygate_requests_total{outcome=\"allowed\"}");
    envoy.stop();
    drop(ks);
    Ok(out)
}

/// Where the herd and the flood run: a keystore answering after `store_delay_ms`, and how to
/// start a fresh 2-worker Envoy with one contender's listener.
struct Stage<'a> {
    o: &'a Opts,
    envoy_bin: &'a Path,
    keygate_wasm: &'a Path,
    lua_code: &'a str,
    ks: Keystore,
}

impl Stage<'_> {
    /// One Envoy per herd (and one per flood): fresh VMs and tables, empty caches, and a herd
    /// that breaks the filter cannot spoil what follows.
    fn start_envoy(&self, c: Contender) -> Result<(BenchEnvoy, u16)> {
        let port = free_port();
        let boot = Bootstrap {
            admin_port: free_port(),
            listeners: vec![(c, port)],
            authsvc_port: 0,
            keystore_port: self.ks.port(),
            bench_key: "unused".to_string(),
            floor_wasm: self.o.floor_wasm.clone(),
            keygate_wasm: self.keygate_wasm.to_path_buf(),
            baseline_wasm: None,
            keygate_config: self.o.plan.keygate_config.clone(),
            lua_code: self.lua_code.to_string(),
            herd_delay_ms: self.o.plan.store_delay_ms,
        };
        let envoy = BenchEnvoy::start(self.envoy_bin, &boot, 2, None)?;
        // Let the filter's first changes-feed poll (a cold start) go by.
        thread::sleep(Duration::from_millis(1200));
        Ok((envoy, port))
    }

    /// The store's real latency, asked directly (a new connection each time, as a callout
    /// after an idle spell would): the herd's floor.
    fn store_direct_ms(&self) -> Result<f64> {
        let mut store_ms = Vec::new();
        let probe = format!(
            "{}{}",
            self.ks.url(),
            routes::lookup(routes::LOOKUP, &"0".repeat(64))
        );
        for _ in 0..7 {
            let t0 = Instant::now();
            let r = keygate_harness::get(&probe, &[])?;
            if r.status == 404 {
                store_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
        }
        Ok(model::median(&store_ms))
    }
}

fn herd_and_flood(
    o: &Opts,
    envoy_bin: &Path,
    keygate_wasm: &Path,
    lua_code: &str,
) -> Result<(HerdPhase, Flood, Flood)> {
    let stage = stage(o, envoy_bin, keygate_wasm, lua_code)?;
    let herd = herd_phase(&stage, true)?;
    let flood = flood_for(&stage, Contender::Keygate)?;
    let lua_flood = flood_for(&stage, Contender::Lua)?;
    Ok((herd, flood, lua_flood))
}

/// The slow keystore the herd and the flood run against, and its latency asked directly.
fn stage<'a>(
    o: &'a Opts,
    envoy_bin: &'a Path,
    keygate_wasm: &'a Path,
    lua_code: &'a str,
) -> Result<Stage<'a>> {
    let p = &o.plan;
    say(format!(
        "herd and flood: keystore answering after {} ms, Envoy with keygate (then the herd floor, the Lua filter) on 2 workers",
        p.store_delay_ms
    ));
    let ks = Keystore::start(KeystoreOpts {
        lookup_delay_ms: Some(p.store_delay_ms),
        ..KeystoreOpts::default()
    })?;
    let _admin = ks.create_account("herd", "herd-admin");
    Ok(Stage {
        o,
        envoy_bin,
        keygate_wasm,
        lua_code,
        ks,
    })
}

/// For each N: keygate's herd, the herd floor's and (`with_lua`) the Lua contender's.
fn herd_phase(stage: &Stage, with_lua: bool) -> Result<HerdPhase> {
    let store_direct_ms = stage.store_direct_ms()?;
    say(format!(
        "store lookup asked directly: median {store_direct_ms:.1} ms"
    ));
    let mut phase = HerdPhase {
        store_direct_ms,
        ..HerdPhase::default()
    };
    for (i, n) in stage.o.plan.herd_ns.iter().enumerate() {
        let user = format!("fresh-{i}");
        phase
            .rows
            .push(herd_one(stage, Contender::Keygate, *n, &user)?);
        phase.floor_rows.push(herd_one(
            stage,
            Contender::HerdFloor,
            *n,
            &format!("floor-{user}"),
        )?);
        if with_lua {
            phase
                .lua_rows
                .push(herd_one(stage, Contender::Lua, *n, &format!("lua-{user}"))?);
        }
    }
    Ok(phase)
}

/// `--only herd`: the herd phase alone; one line per N on stdout. False if a request of
/// keygate's herd or the floor's was not answered 200.
fn run_herd_only(o: &Opts, envoy_bin: &Path, keygate_wasm: &Path) -> Result<bool> {
    let stage = stage(o, envoy_bin, keygate_wasm, "")?;
    let phase = herd_phase(&stage, false)?;
    let limit = stage.o.plan.store_delay_ms as f64 + report::TARGET_HERD_SLACK_MS;
    println!(
        "herd only: {} (store {} ms, {:.1} ms asked directly; target p99 <= {limit} ms)",
        keygate_wasm.display(),
        stage.o.plan.store_delay_ms,
        phase.store_direct_ms
    );
    let mut ok = true;
    for (h, f) in phase.rows.iter().zip(&phase.floor_rows) {
        println!(
            "N={:>5}  keygate {}/{} ok, {} lookup(s), p50 {:.1} ms, p99 {:.1} ms  |  floor {}/{} ok, p50 {:.1} ms, p99 {:.1} ms  |  keygate p99 - floor p99 {:.1} ms",
            h.result.n,
            h.result.ok(),
            h.result.n,
            h.store_lookups,
            h.p50(),
            h.p99(),
            f.result.ok(),
            f.result.n,
            f.p50(),
            f.p99(),
            h.p99() - f.p99()
        );
        for (name, r) in [("keygate", &h.result), ("floor", &f.result)] {
            let q: Vec<String> = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0]
                .iter()
                .map(|x| format!("{:.1}", herd::quantile(&r.latencies_ms, *x)))
                .collect();
            println!(
                "    {name:<7} min/p10/p25/p50/p75/p90/p99/max ms: {}; sends spread over {:.1} ms",
                q.join(" "),
                r.send_spread_ms
            );
        }
        ok &= h.result.ok() == h.result.n && f.result.ok() == f.result.n;
    }
    Ok(ok)
}

/// One herd of `n` first requests for a fresh key through contender `c`.
fn herd_one(stage: &Stage, c: Contender, n: usize, user: &str) -> Result<HerdRow> {
    // A key nobody has asked for yet.
    let key = stage.ks.create_user("herd", user, "member");
    let (mut envoy, port) = stage.start_envoy(c)?;
    let ks0 = stage.ks.lookups();
    let st0 = envoy.stats()?;
    let result = herd::fire(port, "/herd", &key, n)?;
    // A late duplicate lookup must be counted too.
    thread::sleep(Duration::from_millis(300));
    let ks1 = stage.ks.lookups();
    let st1 = envoy.stats().unwrap_or_default();
    let d = |name: &str| {
        st1.get(name)
            .copied()
            .unwrap_or(0)
            .saturating_sub(st0.get(name).copied().unwrap_or(0))
    };
    // After the herd: does the filter still answer? (A broken VM fails every request.)
    let after = status(port, &key).unwrap_or(0);
    let row = HerdRow {
        store_lookups: ks1.saturating_sub(ks0),
        keygate_lookups: d("keygate_store_lookups_total"),
        coalesced: d("keygate_lookups_coalesced_total"),
        waited_other_worker: d("keygate_lookups_waited_other_worker_total"),
        status_after: after,
        envoy_errors: envoy.error_lines(3),
        result,
    };
    say(format!(
        "herd {} N={n}: statuses {:?}, {} store lookup(s), p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; next request {}",
        c.id(),
        row.result.statuses,
        row.store_lookups,
        row.p50(),
        row.p99(),
        row.max(),
        row.status_after
    ));
    for line in &row.envoy_errors {
        say(format!("  envoy: {line}"));
    }
    envoy.stop();
    Ok(row)
}

/// The steady stream's key must pass before the flood starts.
fn check_steady(envoy: &BenchEnvoy, port: u16, key: &str) -> Result<()> {
    let first = status(port, key)?;
    if first == 200 {
        return Ok(());
    }
    let stats = envoy.stats().unwrap_or_default();
    let mut keygate: Vec<String> = stats
        .iter()
        .filter(|(k, v)| k.starts_with("keygate_") && **v > 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    keygate.sort();
    Err(Error::msg(format!(
        "flood: the steady stream's key got {first}, not 200; keygate stats: {}; envoy log tail:\n{}",
        keygate.join(" "),
        envoy.log_tail(30)
    )))
}

/// The flood's connections: enough to keep its schedule (rate × latency). keygate answers an
/// unknown key at once (401 or 429); the Lua filter holds each one for a store lookup, so it
/// needs rate × twice the store's delay.
fn flood_connections(p: &Plan, c: Contender) -> u32 {
    match c {
        Contender::Lua => {
            let need = p.flood_rate.saturating_mul(2 * p.store_delay_ms) / 1000;
            p.flood_connections
                .max(u32::try_from(need).unwrap_or(u32::MAX))
        }
        _ => p.flood_connections,
    }
}

/// The flood through contender `c`: runs without and with it, interleaved.
fn flood_for(stage: &Stage, c: Contender) -> Result<Flood> {
    let p = &stage.o.plan;
    let valid = stage
        .ks
        .create_user("herd", &format!("steady-{}", c.id()), "member");
    let (mut envoy, port) = stage.start_envoy(c)?;
    check_steady(&envoy, port, &valid)?;
    let valid_run = WrkRun {
        url: url(port, "/steady"),
        threads: 1,
        connections: p.valid_connections,
        secs: p.flood_secs,
        headers: vec![format!("x-api-key: {valid}")],
        script: None,
        cpus: None,
    };
    let flood_run = WrkRun {
        url: url(port, "/flood"),
        threads: 1,
        connections: flood_connections(p, c),
        secs: p.flood_secs,
        headers: vec![],
        script: Some((
            stage.o.lua.clone(),
            vec![p.flood_rate.to_string(), "1".to_string()],
        )),
        cpus: None,
    };
    let mut flood = Flood::default();
    for pair in 0..p.flood_pairs {
        let order = if pair % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for flooded in order {
            let run = flood_run_once(stage, &envoy, &valid_run, flooded.then_some(&flood_run))?;
            say(format!(
                "{} {}: valid {:.0} req/s p99 {:.2} ms; flood {:.0} keys/s; {} store lookups ({:.1}/s); {} throttled; CPU-s envoy {:.2}, wrk {:.2} + {:.2}",
                c.id(),
                if flooded { "flood   " } else { "no flood" },
                run.valid.rps,
                run.valid.p99_ms,
                run.flood_rate(),
                run.store_lookups,
                run.lookups_per_s(),
                run.throttled,
                run.envoy_cpu_s,
                run.valid_wrk_cpu_s,
                run.flood_wrk_cpu_s
            ));
            flood.runs.push(run);
            envoy.check_running()?;
        }
    }
    envoy.stop();
    Ok(flood)
}

fn flood_run_once(
    stage: &Stage,
    envoy: &BenchEnvoy,
    valid_run: &WrkRun,
    flood_run: Option<&WrkRun>,
) -> Result<FloodRun> {
    let ks0 = stage.ks.lookups();
    let st0 = envoy.stats()?;
    let t0 = Instant::now();
    let envoy_cpu0 = envoy.cpu_seconds();
    let child = match flood_run {
        Some(f) => Some(f.spawn()?),
        None => None,
    };
    let children0 = cpu::children_cpu_seconds();
    let valid_res = valid_run.run()?;
    let children1 = cpu::children_cpu_seconds();
    let flood_res = match (child, flood_run) {
        (Some(c), Some(f)) => Some(f.wait(c)?),
        _ => None,
    };
    let children2 = cpu::children_cpu_seconds();
    let envoy_cpu_s = envoy.cpu_seconds() - envoy_cpu0;
    let window_s = t0.elapsed().as_secs_f64();
    let ks1 = stage.ks.lookups();
    let st1 = envoy.stats()?;
    let d = |name: &str| {
        st1.get(name)
            .copied()
            .unwrap_or(0)
            .saturating_sub(st0.get(name).copied().unwrap_or(0))
    };
    Ok(FloodRun {
        flooded: flood_run.is_some(),
        valid: valid_res,
        flood: flood_res,
        store_lookups: ks1.saturating_sub(ks0),
        window_s,
        throttled: d("keygate_requests_total{outcome=\"throttled\"}"),
        denied: d("keygate_requests_total{outcome=\"denied\"}"),
        envoy_cpu_s,
        valid_wrk_cpu_s: children1 - children0,
        flood_wrk_cpu_s: children2 - children1,
    })
}
