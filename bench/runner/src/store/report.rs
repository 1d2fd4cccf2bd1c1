//! The store bench's report (`STORE.md`), its chart (SVG, plotters) and the headline.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::measure::{Engine, Measure, Size};
use crate::Plan;

pub const REPORT_FILE: &str = "STORE.md";
pub const CHART_FILE: &str = "store-lookups.svg";
pub const FILES: [&str; 2] = [REPORT_FILE, CHART_FILE];

/// Targets (reported, never asserted).
pub const TARGET_FLOOR_FACTOR: f64 = 2.0;
pub const TARGET_P99_MS: f64 = 5.0;
pub const TARGET_POLL_CORES: f64 = 0.5;
pub const TARGET_POLL_ENVOYS: usize = 1000;

pub struct Results {
    pub plan: Plan,
    pub engines: Vec<Engine>,
    pub load: (String, String),
    pub elapsed_s: f64,
    pub date: String,
}

impl Results {
    /// Lookups that errored, polls that failed.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for e in &self.engines {
            for s in &e.sizes {
                for m in s.keystore.iter().chain([&s.paced, &s.fleet, &s.healthz]) {
                    if m.errors > 0 || m.ops == 0 {
                        out.push(format!(
                            "{} {} keys: {} lookups, {} errors",
                            e.name, s.keys, m.ops, m.errors
                        ));
                    }
                }
                if let Some(err) = &s.summary.error {
                    out.push(format!("{} {} keys: key summary: {err}", e.name, s.keys));
                }
                for f in &s.feeds {
                    if f.run.errors > 0 || f.run.polls == 0 {
                        out.push(format!(
                            "{} {} keys, {} Envoys: {} polls, {} errors",
                            e.name, s.keys, f.run.envoys, f.run.polls, f.run.errors
                        ));
                    }
                }
            }
        }
        out
    }
}

pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    quantile(&v, 0.5)
}

fn med(ms: &[Measure], f: impl Fn(&Measure) -> f64) -> f64 {
    median(&ms.iter().map(f).collect::<Vec<_>>())
}

/// Floor lookups per core-second ÷ the keystore's (how many times the driver alone).
pub fn floor_factor(s: &Size) -> f64 {
    med(&s.floor, Measure::per_core) / med(&s.keystore, Measure::per_core)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**MISSED**"
    }
}

fn k(v: f64) -> String {
    if !v.is_finite() {
        "n/a".into()
    } else if v >= 10_000.0 {
        format!("{:.1}k", v / 1000.0)
    } else {
        format!("{v:.0}")
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// A size in KiB below 1 MiB, else in MiB.
fn size_bytes(b: u64) -> String {
    if b < 1024 * 1024 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        mib(b / 1024)
    }
}

fn keys(n: usize) -> String {
    match n {
        10_000 => "10^4".into(),
        100_000 => "10^5".into(),
        1_000_000 => "10^6".into(),
        n => n.to_string(),
    }
}

pub fn write(r: &Results, out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::write(out.join(REPORT_FILE), markdown(r))?;
    chart(r, &out.join(CHART_FILE))?;
    Ok(())
}

fn markdown(r: &Results) -> String {
    let p = &r.plan;
    let mut s = String::new();
    let _ = writeln!(s, "# keystore at fleet scale\n");
    let _ = writeln!(s, "Written by `make bench-store` (`keygate-store-bench`, bench/runner/src/store){} on {} in {:.0} s. Load average {} at the start, {} at the end (2 CPUs, shared with other work: compare figures only within a run).\n",
        if p.smoke { " in **smoke mode** (figures are not measurements)" } else { "" }, r.date, r.elapsed_s, r.load.0, r.load.1);
    method(&mut s, p);
    lookups_table(&mut s, r);
    feed_table(&mut s, r);
    summary_table(&mut s, r);
    memory_table(&mut s, r);
    targets(&mut s, r);
    s
}

fn method(s: &mut String, p: &Plan) {
    let _ = writeln!(s, "## Method\n");
    let _ = writeln!(s, "- **Keys**: {} keys, written in bulk straight into the keystore's tables (schema created by the keystore itself at its first start; `bench/runner/src/store/load.rs`), one user per key, 1,000 users per account. Sizes grow in one database (each size adds keys to the last).", p.sizes.iter().map(|n| keys(*n)).collect::<Vec<_>>().join(", "));
    let _ = writeln!(s, "- **Serving side on one core**: the keystore (and, for PostgreSQL, every server process) pinned to CPU 0; wrk and the pollers on CPU 1. The keystore keeps at most {} PostgreSQL connections (`--database-pool-size`): on one core, more server processes only take turns on it. *Per core-s* divides operations by the serving side's CPU seconds (keystore + database server), so it reads as the rate one fully busy core would sustain.", p.pg_pool);
    let _ = writeln!(s, "- **Lookups**: wrk (1 thread, {} connections, keep-alive) with `bench/lookup.lua`: `GET /v1/keys/{{id}}` over a list of {} ids, half of them loaded keys (random), half never loaded, each request a random entry. {} s per run, {} interleaved round(s) of floor and keystore (floor first, then keystore first). Then two paced runs, for a latency that is not queueing behind wrk's connections: one at half the keystore's saturated rate (a stress reading: it varies with the run's own saturated rate), one at the fixed rate of {:.0} lookups/s, README's fleet example (\"Cost at fleet scale\": 500 Envoys × 5,000 keys in use ÷ `cache.ttl_s` 300 s), the same for every engine, size and run: the p99 target's reading.", p.wrk_connections, 20_000, p.secs, p.rounds, p.fleet_rate);
    let _ = writeln!(s, "- **`/healthz`**: the same wrk against `GET /healthz` (the keystore's HTTP path, its way to the database, `SELECT 1`, a JSON answer): what a lookup costs beyond its query.");
    let _ = writeln!(s, "- **Driver floor**: the keystore's own lookup statement (the three-table join of `keystore/src/store/sql.rs`), prepared, over the same id list, through the driver alone on one thread pinned to CPU 0: rusqlite, one query after another; tokio-postgres, 16 queries pipelined on one connection. No HTTP, no pool, no JSON.");
    let _ = writeln!(s, "- **Feed polls**: {} simulated Envoys, each on its own keep-alive connection, `GET /v1/changes?since=R` once a second (starts spread over the first second; `more` pages followed at once), for {} s, while a thread rotates keys at {}/s (each rotation is two change rows). The floor: the feed's three statements (pruning mark, page after R, current revision) through the driver.", p.envoys.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(" and "), p.poll_secs, p.churn_per_s);
    let _ = writeln!(s, "- **Key summary** (`GET /v1/summary`, issue 22): after the polls, the keystore builds its summary of every live key id at the first GET (10 bits per key plus a quarter of headroom, the defaults); three more GETs fetch the summary it holds; then {} keys are created through the admin API (one user each) and one more GET extends the summary with them from the change log. Each GET is a `curl` (total time and bytes, as a client sees them, loopback); *build* and *extension* are the keystore's own timing (`keystore_summary_build_seconds`, `keystore_summary_extension_seconds`: reading the database included). The run fails unless the extended summary holds every new key.", p.summary_new_keys);
    let _ = writeln!(s, "- **Memory**: the keystore's resident set (VmRSS) after start-up and one second of lookups, after all runs, and its peak (VmHWM). PostgreSQL's processes are listed apart (their RSS summed, shared buffers counted in each process that touched them: an upper bound).\n");
}

fn lookups_table(s: &mut String, r: &Results) {
    let _ = writeln!(s, "## Lookups\n");
    let _ = writeln!(s, "| engine | keys | DB size | load | floor lookups/s | floor per core-s | keystore lookups/s | keystore per core-s | floor ÷ keystore (per core) | `/healthz` per core-s | keystore p99 (saturated) | keystore p99 at half load | keystore p99 at the fleet rate | floor p99 | hits |");
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for e in &r.engines {
        for z in &e.sizes {
            let _ = writeln!(s, "| {} | {} | {} | {:.1} s | {} | {} | {} | {} | {:.2}× | {} | {:.2} ms | {:.2} ms ({} /s) | {:.2} ms ({} /s) | {:.2} ms | {:.0}% |",
                e.name, keys(z.keys), mib(z.db_bytes / 1024), z.load_s,
                k(med(&z.floor, Measure::rate)), k(med(&z.floor, Measure::per_core)),
                k(med(&z.keystore, Measure::rate)), k(med(&z.keystore, Measure::per_core)),
                floor_factor(z), k(z.healthz.per_core()), med(&z.keystore, |m| m.p99_ms), z.paced.p99_ms, k(z.paced_rate),
                z.fleet.p99_ms, k(z.fleet.rate()), med(&z.floor, |m| m.p99_ms), med(&z.keystore, |m| m.hit_ratio) * 100.0);
        }
    }
    let _ = writeln!(
        s,
        "\n![lookups per core-second: keystore and driver floor]({CHART_FILE})\n"
    );
}

fn feed_table(s: &mut String, r: &Results) {
    let _ = writeln!(s, "## Change-feed polls\n");
    let _ = writeln!(s, "| engine | keys | Envoys | polls/s | p50 | p99 | serving side CPU | polls per core-s | floor reads per core-s | rotations | late / failed |");
    let _ = writeln!(
        s,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for e in &r.engines {
        for z in &e.sizes {
            for f in &z.feeds {
                let _ = writeln!(s, "| {} | {} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.0}% of a core | {} | {} | {} | {} / {} |",
                    e.name, keys(z.keys), f.run.envoys, f.m.rate(), f.m.p50_ms, f.m.p99_ms,
                    f.m.cores() * 100.0, k(f.m.per_core()), k(z.feed_floor.per_core()),
                    f.run.rotations, f.run.late, f.run.errors);
            }
        }
    }
    let _ = writeln!(s);
}

fn summary_table(s: &mut String, r: &Results) {
    let _ = writeln!(s, "## Key summary\n");
    let _ = writeln!(s, "| engine | keys | summary bytes | key ids in it | estimated FPR | build (keystore) | first GET (build + transfer) | GET of the held summary | new keys (admin API) | extension (keystore) | GET that extends |");
    let _ = writeln!(
        s,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for e in &r.engines {
        for z in &e.sizes {
            let m = &z.summary;
            let _ = writeln!(s, "| {} | {} | {} | {} | {:.2}% | {:.3} s | {:.3} s | {:.1} ms | {} in {:.1} s | {:.1} ms | {:.1} ms |",
                e.name, keys(z.keys), size_bytes(m.bytes), m.keys, m.fpr * 100.0, m.build_s,
                m.build_get_s, m.fetch_get_s * 1000.0, m.created, m.create_s, m.extend_s * 1000.0,
                m.extend_get_s * 1000.0);
        }
    }
    let _ = writeln!(s);
}

fn memory_table(s: &mut String, r: &Results) {
    let _ = writeln!(s, "## Memory\n");
    let _ = writeln!(s, "| engine | keys | keystore RSS after start-up | after all runs | peak | PostgreSQL processes (sum) |");
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: | ---: |");
    for e in &r.engines {
        for z in &e.sizes {
            let pg = if z.pg_rss_kib > 0 {
                mib(z.pg_rss_kib)
            } else {
                "–".into()
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {pg} |",
                e.name,
                keys(z.keys),
                mib(z.rss_idle_kib),
                mib(z.rss_after_kib),
                mib(z.hwm_kib)
            );
        }
    }
    let _ = writeln!(s);
}

fn targets(s: &mut String, r: &Results) {
    let _ = writeln!(s, "## Targets\n");
    for e in &r.engines {
        for z in &e.sizes {
            let f = floor_factor(z);
            let _ = writeln!(s, "- {} {} keys: lookups within {TARGET_FLOOR_FACTOR}× the driver floor per core: {:.2}×, {}.", e.name, keys(z.keys), f, verdict(f <= TARGET_FLOOR_FACTOR));
        }
        if let Some(z) = e.sizes.iter().find(|z| z.keys == 1_000_000) {
            let _ = writeln!(s, "- {} 10^6 keys: p99 < {TARGET_P99_MS} ms at the fleet rate ({:.0} lookups/s): {:.2} ms, {}; at half load ({} /s): {:.2} ms, {}; saturated with {} connections: {:.2} ms.", e.name, z.fleet.rate(), z.fleet.p99_ms, verdict(z.fleet.p99_ms < TARGET_P99_MS), k(z.paced_rate), z.paced.p99_ms, verdict(z.paced.p99_ms < TARGET_P99_MS), r.plan.wrk_connections, med(&z.keystore, |m| m.p99_ms));
        }
        for z in &e.sizes {
            if let Some(f) = z.feeds.iter().find(|f| f.run.envoys == TARGET_POLL_ENVOYS) {
                let _ = writeln!(s, "- {} {} keys: {} Envoys' polls on one core with room to spare (≤ {:.0}% of it): {:.0}% ({:.0} polls/s, p99 {:.2} ms), {}.", e.name, keys(z.keys), TARGET_POLL_ENVOYS, TARGET_POLL_CORES * 100.0, f.m.cores() * 100.0, f.m.rate(), f.m.p99_ms, verdict(f.m.cores() <= TARGET_POLL_CORES && f.run.late == 0));
            }
        }
    }
    let _ = writeln!(
        s,
        "\nWhere a lookup's CPU goes (the `/healthz` column is the keystore's fixed path to the \
         database), why the targets above are missed and what would close the gap: \
         bench/README.md, \"What the store costs\".\n"
    );
}

/// The headline for the terminal.
pub fn headline(r: &Results) -> String {
    let mut s = String::new();
    for e in &r.engines {
        for z in &e.sizes {
            let polls = z.feeds.last().map_or(String::new(), |f| {
                format!(
                    "; {} Envoys' polls: {:.0}% of a core",
                    f.run.envoys,
                    f.m.cores() * 100.0
                )
            });
            let _ = writeln!(s, "{} {}: keystore {} lookups/core-s ({:.2}× below the driver floor), p99 {:.2} ms at half load, {:.2} ms at {:.0}/s{polls}; summary {} built in {:.2} s, fetched in {:.3} s; RSS {}", e.name, keys(z.keys), k(med(&z.keystore, Measure::per_core)), floor_factor(z), z.paced.p99_ms, z.fleet.p99_ms, z.fleet.rate(), size_bytes(z.summary.bytes), z.summary.build_s, z.summary.fetch_get_s, mib(z.rss_after_kib));
        }
    }
    s
}

/// Horizontal bars: lookups per core-second, keystore and floor, per engine and size.
fn chart(r: &Results, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut rows: Vec<(String, f64, bool)> = Vec::new();
    for e in &r.engines {
        for z in &e.sizes {
            rows.push((
                format!("{} {} driver floor", e.name, keys(z.keys)),
                med(&z.floor, Measure::per_core),
                false,
            ));
            rows.push((
                format!("{} {} keystore", e.name, keys(z.keys)),
                med(&z.keystore, Measure::per_core),
                true,
            ));
        }
    }
    let max = rows
        .iter()
        .map(|r| r.1)
        .filter(|x| x.is_finite())
        .fold(1.0, f64::max);
    let n = rows.len().max(1) as i32;
    let root = SVGBackend::new(path, (960, 120 + 28 * n as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Key lookups per core-second (serving side pinned to one CPU)",
            ("sans-serif", 17),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(230)
        .build_cartesian_2d(0.0..max * 1.3, (0..n - 1).into_segmented())?;
    let label_of = |seg: &SegmentValue<i32>| -> String {
        let SegmentValue::CenterOf(y) = seg else {
            return String::new();
        };
        usize::try_from(n - 1 - *y)
            .ok()
            .and_then(|i| rows.get(i))
            .map(|r| r.0.clone())
            .unwrap_or_default()
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .max_light_lines(1)
        .y_labels(rows.len())
        .y_label_formatter(&label_of)
        .x_desc("lookups per CPU-second of keystore + database server")
        .x_label_formatter(&|x| k(*x))
        .label_style(("sans-serif", 13))
        .draw()?;
    for (i, (_, v, ks)) in rows.iter().enumerate() {
        if !v.is_finite() {
            continue;
        }
        let y = n - 1 - i as i32;
        let color = if *ks {
            RGBColor(40, 70, 150)
        } else {
            RGBColor(150, 175, 220)
        };
        let mut bar = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(y)),
                (*v, SegmentValue::Exact(y + 1)),
            ],
            color.filled(),
        );
        bar.set_margin(4, 4, 0, 0);
        chart.draw_series(std::iter::once(bar))?;
        chart.draw_series(std::iter::once(Text::new(
            k(*v),
            (*v + max * 0.01, SegmentValue::CenterOf(y)),
            ("sans-serif", 12),
        )))?;
    }
    root.present()?;
    Ok(())
}
