//! The report (`RESULTS.md`), its chart (SVG, drawn with plotters) and the headline figures.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::envoy::Contender;
use crate::model::Results;

pub const REPORT_FILE: &str = "RESULTS.md";
pub const CHART_FILE: &str = "throughput-ratios.svg";

/// Targets (reported, never asserted).
pub const TARGET_VS_FLOOR: f64 = 0.95;
pub const TARGET_VS_EXT_AUTHZ: f64 = 2.5;
pub const TARGET_HERD_LOOKUPS: u64 = 1;
pub const TARGET_HERD_SLACK_MS: f64 = 10.0;
pub const TARGET_FLOOD_VALID: f64 = 0.8;

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**MISSED**"
    }
}

/// `41234.5` → `41.2k`.
fn k(v: f64) -> String {
    if v.is_nan() {
        "n/a".to_string()
    } else if v >= 1000.0 {
        format!("{:.1}k", v / 1000.0)
    } else {
        format!("{v:.0}")
    }
}

fn ms(v: f64) -> String {
    if v.is_nan() {
        "n/a".to_string()
    } else if v < 10.0 {
        format!("{v:.2} ms")
    } else {
        format!("{v:.1} ms")
    }
}

/// Whether each target was met, for the report and the headline.
pub struct Verdicts {
    pub vs_floor: f64,
    pub vs_ext_authz: f64,
    pub herd_lookups_ok: bool,
    pub herd_p99_ok: bool,
    pub flood_budget_ok: bool,
    pub flood_valid_ok: bool,
}

pub fn verdicts(r: &Results) -> Verdicts {
    let t = &r.throughput;
    let p99_limit = r.plan.store_delay_ms as f64 + TARGET_HERD_SLACK_MS;
    Verdicts {
        vs_floor: t.keygate_over(Contender::Floor),
        vs_ext_authz: t.keygate_over(Contender::ExtAuthz),
        herd_lookups_ok: r
            .herd
            .rows
            .iter()
            .all(|h| h.store_lookups <= TARGET_HERD_LOOKUPS),
        herd_p99_ok: r.herd.rows.iter().all(|h| h.p99() <= p99_limit),
        flood_budget_ok: r
            .flood
            .within_budget(r.plan.budget_per_second, r.plan.budget_burst),
        flood_valid_ok: r.flood.valid_ratio() >= TARGET_FLOOD_VALID,
    }
}

/// Writes `RESULTS.md` and the chart into `dir`.
pub fn write(r: &Results, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    chart(r, &dir.join(CHART_FILE)).map_err(|e| std::io::Error::other(format!("chart: {e}")))?;
    std::fs::write(dir.join(REPORT_FILE), markdown(r))
}

pub fn markdown(r: &Results) -> String {
    let m = &r.machine;
    let p = &r.plan;
    let t = &r.throughput;
    let v = verdicts(r);
    let mut s = String::new();
    let _ = writeln!(s, "# keygate bench results\n");
    if p.smoke {
        let _ = writeln!(
            s,
            "> **Smoke run** (`scripts/bench.sh --smoke`): a few seconds per contender, to check \
             that everything answers. These figures are not measurements.\n"
        );
    }
    let _ = writeln!(
        s,
        "Written by `make bench` (`scripts/bench.sh` → `keygate-bench`, bench/runner) in {:.0} s \
         of measuring. Every figure below comes from this one run; the machine is shared and \
         noisy, so only ratios measured side by side in the same interleaved run mean anything.\n",
        r.elapsed_s
    );
    let _ = writeln!(s, "## Machine\n");
    let _ = writeln!(s, "| | |\n| --- | --- |");
    let _ = writeln!(s, "| date | {} |", m.date);
    let _ = writeln!(s, "| `nproc` | {} |", m.nproc);
    let _ = writeln!(s, "| CPU | {} |", m.cpu_model);
    let _ = writeln!(s, "| kernel | {} |", m.kernel);
    let _ = writeln!(s, "| Envoy | {} |", m.envoy_version);
    let _ = writeln!(s, "| wrk | {} |", m.wrk_version);
    let _ = writeln!(
        s,
        "| load average (1, 5, 15 min) | {} at start, {} at the end |",
        m.load_start, m.load_end
    );
    let _ = writeln!(
        s,
        "| priority | nice {} for the bench and everything it starts{} |\n",
        m.nice,
        if m.nice < 0 {
            " (ahead of other work on the machine)"
        } else {
            ""
        }
    );

    // ---- throughput ----
    let _ = writeln!(s, "## Throughput: six contenders in one Envoy\n");
    let pin = if m.pinned {
        "Envoy pinned to CPU 0 (`taskset -c 0`), wrk to CPU 1"
    } else {
        "not pinned (fewer than 2 CPUs)"
    };
    let _ = writeln!(
        s,
        "One Envoy, `--concurrency 1`, {pin}. One listener per contender, every route a \
         `direct_response` 200, so the only difference between listeners is the filter. \
         wrk: 1 thread, {} connections, {} s per run, keep-alive, `x-api-key` set to the bench \
         key. Runs interleaved: A B C D E F, then F E D C B A, {} rounds in all, after a {} s \
         warm-up of each contender. Figures are medians over the rounds.\n",
        p.connections, p.secs, p.rounds, p.warmup_secs
    );
    let _ = writeln!(
        s,
        "- **A** no auth filter (router only).\n\
         - **B** Envoy's native `envoy.filters.http.api_key_auth`, the bench key in its config, \
         forwarding the client name as `x-account-id`.\n\
         - **C** `ext_authz` over HTTP to an auth service that answers from memory: a second \
         listener of the same Envoy (so on the same worker) with a header-matched \
         `direct_response` (200 plus `x-account-id` for the bench key, 401 otherwise).\n\
         - **D** the wasm floor (`bench/floor`): reads `x-api-key`, looks it up in a static map, \
         sets `x-account-id`. Same V8 runtime and release profile as keygate.\n\
         - **E** keygate, hit path: the bench key created through the real keystore's admin \
         API, cached by a first request before measuring. Configuration: `{}`.\n\
         - **F** the filter a team would write by hand (`bench/lua_auth.lua`): Envoy's Lua \
         filter with a per-worker table of key → identity (TTL 300 s) and `httpCall` to the \
         same keystore on a miss (key id: SHA-256 in pure Lua, on a miss only), three identity \
         headers, 401 for an unknown key; the bench key cached by a first request.\n",
        p.keygate_config
    );
    if let Some(b) = &p.baseline_wasm {
        let _ = writeln!(
            s,
            "- **G** keygate (baseline): E's configuration with another build of the filter \
             (`{}`, `--baseline-wasm`), its own VM (`vm_id` `keygate_baseline`), run right \
             after E (before it in reversed rounds).\n",
            b.display()
        );
    }
    let _ = writeln!(
        s,
        "| contender | median req/s | keygate ÷ this | this ÷ keygate | min – max req/s | median p99 | Envoy CPU busy | Envoy CPU µs / request (min – max) | keygate ÷ this, by CPU |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for c in t.contenders.iter().copied() {
        let rps = t.rps(c);
        let lo = rps.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = rps.iter().copied().fold(0.0, f64::max);
        let us: Vec<f64> = t
            .samples
            .iter()
            .filter(|x| x.contender == c)
            .map(crate::model::Sample::us_per_request)
            .collect();
        let us_lo = us.iter().copied().fold(f64::INFINITY, f64::min);
        let us_hi = us.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            s,
            "| {} {} | {:.0} | {:.2}× | {:.2}× | {} – {} | {} | {:.0}% | {:.1} ({:.1} – {:.1}) | {:.2}× |",
            c.letter(),
            c.label(),
            t.median_rps(c),
            t.keygate_over(c),
            1.0 / t.keygate_over(c),
            k(lo),
            k(hi),
            ms(t.median_p99(c)),
            t.median_envoy_cpu(c) * 100.0,
            t.median_us_per_request(c),
            us_lo,
            us_hi,
            t.keygate_over_by_cpu(c)
        );
    }
    let _ = writeln!(
        s,
        "\nThe ratios the targets are written for are the req/s ones (keygate's median ÷ the \
         contender's median). Two columns say how far to trust them. *Envoy CPU busy* is \
         Envoy's CPU time during a run divided by its length (all threads; 100% = the pinned \
         CPU busy throughout). Well below 100%, Envoy was not what limited the run: on this \
         shared virtual machine that means waiting (on wrk, on wake-ups between the two CPUs, \
         on other work), and req/s then follows that noise rather than the filters' cost. \
         *Envoy CPU µs / request* is the same CPU time divided by the requests served, which \
         stays steady when req/s does not (compare the min – max columns); the last column is \
         the contender's µs ÷ keygate's, the capacity ratio these costs imply. It includes \
         Envoy's own per-request work, so it is not the filter's cost alone.\n"
    );
    if let Some(line) = baseline_line(t) {
        let _ = writeln!(s, "{line}\n");
    }
    let _ = writeln!(s, "![throughput relative to keygate]({})\n", CHART_FILE);
    let _ = writeln!(s, "Targets:\n");
    let _ = writeln!(
        s,
        "- keygate ≥ {TARGET_VS_FLOOR}× the wasm floor's req/s: **{:.2}×**, {} (by Envoy CPU \
         per request: {:.2}×).",
        v.vs_floor,
        verdict(v.vs_floor >= TARGET_VS_FLOOR),
        t.keygate_over_by_cpu(Contender::Floor)
    );
    let _ = writeln!(
        s,
        "- keygate ≥ {TARGET_VS_EXT_AUTHZ}× ext_authz's req/s: **{:.2}×**, {} (by Envoy CPU \
         per request: {:.2}×).",
        v.vs_ext_authz,
        verdict(v.vs_ext_authz >= TARGET_VS_EXT_AUTHZ),
        t.keygate_over_by_cpu(Contender::ExtAuthz)
    );
    if v.vs_floor < TARGET_VS_FLOOR {
        let gap =
            t.median_us_per_request(Contender::Keygate) - t.median_us_per_request(Contender::Floor);
        let _ = writeln!(
            s,
            "\nWhat bounds the hit path: keygate costs {gap:.1} µs of Envoy CPU per request more \
             than the floor, for work the floor does not do: two more identity headers (two host \
             calls), the clock, one read of every request header instead of one value (the gate \
             needs them all: forged identity in any spelling, a repeated key, the path's forms), \
             and about 0.2 µs of wasm for the gate's rules and the key-id tag. The shared epoch \
             is read once per millisecond, SHA-256 runs only for keys not seen recently, headers \
             are parsed in place and the counters of a hit are flushed once per millisecond: \
             bench/README.md, \"What the hit path costs\", has each change and what it saved."
        );
    }
    let _ = writeln!(
        s,
        "\nDuring the measured rounds keygate counted {} L1 hits, {} allowed requests and {} \
         store lookups (the hit path makes none){}.\n",
        t.keygate_l1_hits,
        t.keygate_allowed,
        t.keygate_store_lookups,
        if t.contenders.contains(&Contender::KeygateBaseline) {
            "; with G, these add both builds' counters, which share their names"
        } else {
            ""
        }
    );
    let _ = writeln!(s, "Checks before measuring (one request each):\n");
    let _ = writeln!(
        s,
        "| contender | bench key | wrong key |\n| --- | ---: | ---: |"
    );
    for (c, ok, bad) in &t.sanity {
        let bad = bad.map_or("–".to_string(), |b| b.to_string());
        let _ = writeln!(s, "| {} {} | {ok} | {bad} |", c.letter(), c.label());
    }
    let _ = writeln!(s, "\n<details><summary>Every run, in order</summary>\n");
    let _ = writeln!(
        s,
        "| round | contender | requests | req/s | p50 | p99 | non-2xx | socket errors | Envoy CPU busy | wrk CPU busy | Envoy µs / request |\n\
         | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for smp in &t.samples {
        let _ = writeln!(
            s,
            "| {} | {} {} | {} | {:.0} | {} | {} | {} | {} | {:.0}% | {:.0}% | {:.1} |",
            smp.round,
            smp.contender.letter(),
            smp.contender.id(),
            smp.wrk.requests,
            smp.wrk.rps,
            ms(smp.wrk.p50_ms),
            ms(smp.wrk.p99_ms),
            smp.wrk.non2xx,
            smp.wrk.socket_errors,
            smp.envoy_cpu * 100.0,
            smp.wrk_cpu * 100.0,
            smp.us_per_request()
        );
    }
    let _ = writeln!(s, "\n</details>\n");

    // ---- herd ----
    let limit = p.store_delay_ms as f64 + TARGET_HERD_SLACK_MS;
    let _ = writeln!(s, "## Cold-key herd\n");
    let _ = writeln!(
        s,
        "keygate with its normal **2 workers** (`--concurrency 2`, not pinned), one Envoy, a \
         keystore that answers every lookup after {} ms (`keystore serve --lookup-delay-ms {}`). \
         For each N, a fresh Envoy and a key created a moment before through the keystore's \
         admin API (never seen by Envoy); N connections opened first (the kernel spreads them \
         over both workers), then the N requests written back to back by one thread, which \
         timestamps each answer as epoll reports it; each request is timed from its own send \
         to the end of its answer. Store lookups are the keystore's `keystore_lookups_total` \
         after minus before.\n",
        p.store_delay_ms, p.store_delay_ms
    );
    let _ = writeln!(
        s,
        "| N | answered 200 | store lookups | lookups per fresh key | p50 | p99 | max | floor p50 / p99 | p99 above the floor | sends spread over | first send to last answer | keygate: lookups / coalesced / waited on other worker | next request |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for (i, h) in r.herd.rows.iter().enumerate() {
        let floor = r.herd.floor_rows.get(i);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} | {} |",
            h.result.n,
            h.result.ok(),
            h.store_lookups,
            h.store_lookups,
            ms(h.p50()),
            ms(h.p99()),
            ms(h.max()),
            floor.map_or("–".to_string(), |f| format!(
                "{} / {}",
                ms(f.p50()),
                ms(f.p99())
            )),
            floor.map_or("–".to_string(), |f| ms(h.p99() - f.p99())),
            ms(h.result.send_spread_ms),
            ms(h.result.span_ms),
            h.keygate_lookups,
            h.coalesced,
            h.waited_other_worker,
            if h.status_after == 0 {
                "no answer".to_string()
            } else {
                h.status_after.to_string()
            }
        );
    }
    let _ = writeln!(
        s,
        "\n*Next request*: one more request with the same key once the herd is over, to see \
         whether the filter still works. Each N runs on a fresh Envoy (fresh VMs, empty \
         caches). The latency above the store's: the arriving requests themselves (each worker \
         reads its share of the N requests before its root context runs and dispatches the \
         lookup), the lookup slowed by a machine saturated by them, and each worker answering \
         its parked requests one after another, 64 per root callback, which is why it grows \
         with N; the floor below shows how much of it any Envoy pays.\n"
    );
    let _ = writeln!(
        s,
        "*Floor*: the same herd, right after keygate's, on a fresh Envoy of the same kind (2 \
         workers) whose listener has no auth filter: Envoy's fault filter holds every request \
         for the store's delay ({} ms), then the route answers it (`direct_response`, as \
         keygate's herd route does). It is what Envoy and this client cost to hold and answer N \
         simultaneous requests on this machine; *p99 above the floor* is keygate's own share.\n",
        p.store_delay_ms
    );
    let _ = writeln!(
        s,
        "The store's own latency, asked directly (new connection each time, median of a few): \
         **{}**, against the nominal {} ms the target is written for.\n",
        ms(r.herd.store_direct_ms),
        p.store_delay_ms
    );
    let _ = writeln!(s, "Targets:\n");
    let _ = writeln!(
        s,
        "- store lookups per fresh key ≤ {TARGET_HERD_LOOKUPS} per Envoy at every N: {} ({}).",
        verdict(v.herd_lookups_ok),
        r.herd
            .rows
            .iter()
            .map(|h| format!("{} at N = {}", h.store_lookups, h.result.n))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        s,
        "- herd p99 ≤ store latency + {TARGET_HERD_SLACK_MS} ms = {limit} ms: {} ({}).\n",
        verdict(v.herd_p99_ok),
        r.herd
            .rows
            .iter()
            .map(|h| format!("{} at N = {}", ms(h.p99()), h.result.n))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for h in &r.herd.rows {
        let other: Vec<String> = h
            .result
            .statuses
            .iter()
            .filter(|(st, _)| **st != 200)
            .map(|(st, n)| {
                if *st == 0 {
                    format!("{n} without an answer")
                } else {
                    format!("{n} × {st}")
                }
            })
            .collect();
        if !other.is_empty() {
            let _ = writeln!(
                s,
                "- **N = {}: not every request got 200**: {}; the next request got {}.",
                h.result.n,
                other.join(", "),
                if h.status_after == 0 {
                    "no answer".to_string()
                } else {
                    h.status_after.to_string()
                }
            );
        }
        if !h.envoy_errors.is_empty() {
            let _ = writeln!(s, "- N = {}: Envoy logged:", h.result.n);
            for e in &h.envoy_errors {
                let _ = writeln!(s, "  - `{}`", e.replace('`', "'"));
            }
        }
    }

    if r.herd.rows.iter().any(|h| {
        h.envoy_errors
            .iter()
            .any(|e| e.contains("Maximum call stack size"))
    }) {
        let _ = writeln!(
            s,
            "\nThe failure above is the filter's VM trapping (`Maximum call stack size exceeded` \
             in `proxy_on_response_headers`) while the parked requests of one worker are \
             resumed together, after which that Envoy fails every request with 503 until it \
             restarts (`fail_open: false`). Envoy defers each `resume_http_request` made from a \
             root callback to the end of that VM call, and each resumed request calls back into \
             the VM (response headers), which drains the next deferred resume inside that call: \
             resuming k requests at once nests about k calls deep. Resuming a bounded number \
             per tick would avoid it."
        );
    }

    // ---- flood ----
    let _ = writeln!(s, "\n## Flood of random keys\n");
    let _ = writeln!(
        s,
        "A fresh Envoy of the same kind (keygate on 2 workers), the same slow keystore. The flood: wrk with `bench/flood.lua`, a \
         fresh random key (`kg_` + 43 base64url characters) on every request, paced at {} \
         keys/s ({} connections). Beside it, the valid stream: wrk, 1 thread, {} connections, \
         as fast as it goes with the (cached) bench key. Each run {} s; runs without and with \
         the flood interleaved ({} of each). The miss budget is {} lookups/s with a burst of \
         {}; a run is within it when its lookups ≤ {} × window + {}.\n",
        p.flood_rate,
        p.flood_connections,
        p.valid_connections,
        p.flood_secs,
        p.flood_pairs,
        p.budget_per_second,
        p.budget_burst,
        p.budget_per_second,
        p.budget_burst
    );
    let _ = writeln!(
        s,
        "| run | valid req/s | valid p99 | flood keys/s achieved | store lookups | lookups/s | budget allowance | throttled (429) | denied (401) | CPU-s: Envoy / valid wrk / flood wrk |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for (i, fr) in r.flood.runs.iter().enumerate() {
        let label = if fr.flooded { "flood" } else { "no flood" };
        let (rate, allowance) = if fr.flooded {
            (
                format!("{:.0}", fr.flood_rate()),
                format!("{:.0}", fr.allowance(p.budget_per_second, p.budget_burst)),
            )
        } else {
            ("–".to_string(), "–".to_string())
        };
        let _ = writeln!(
            s,
            "| {} {label} | {:.0} | {} | {rate} | {} | {:.1} | {allowance} | {} | {} | {:.2} / {:.2} / {:.2} |",
            i + 1,
            fr.valid.rps,
            ms(fr.valid.p99_ms),
            fr.store_lookups,
            fr.lookups_per_s(),
            fr.throttled,
            fr.denied,
            fr.envoy_cpu_s,
            fr.valid_wrk_cpu_s,
            fr.flood_wrk_cpu_s
        );
    }
    let _ = writeln!(
        s,
        "\nMedians: valid stream {:.0} req/s (p99 {}) without the flood, {:.0} req/s (p99 {}) \
         with it: **{:.2}×**. Flood achieved {:.0} keys/s.\n",
        r.flood.median_valid_rps(false),
        ms(r.flood.median_valid_p99(false)),
        r.flood.median_valid_rps(true),
        ms(r.flood.median_valid_p99(true)),
        r.flood.valid_ratio(),
        r.flood.median_flood_rate()
    );
    let _ = writeln!(s, "Targets:\n");
    let _ = writeln!(
        s,
        "- store lookups within the miss budget: {} (at most {:.1} lookups/s in a flood run).",
        verdict(v.flood_budget_ok),
        r.flood.max_lookups_per_s()
    );
    let _ = writeln!(
        s,
        "- valid stream ≥ {TARGET_FLOOD_VALID}× its no-flood throughput: **{:.2}×**, {}.",
        r.flood.valid_ratio(),
        verdict(v.flood_valid_ok)
    );
    if r.flood.median_flood_rate() < p.flood_rate as f64 * 0.95 {
        let _ = writeln!(
            s,
            "- note: the flood reached only {:.0} of the {} keys/s asked for.",
            r.flood.median_flood_rate(),
            p.flood_rate
        );
    }
    let _ = writeln!(
        s,
        "\nWhere the CPU went: on 2 CPUs the flood's own cost competes with the valid stream for \
         the same cores, so the ratio above measures that as well as keygate's behaviour. Envoy \
         spent {:.1} µs of CPU per valid request without the flood, and about {:.1} µs per \
         flood request (a flooded run's Envoy CPU beyond its valid requests at the no-flood \
         cost, divided by the flood's requests); the flood's wrk used {:.2} of a core.\n",
        r.flood.envoy_us_per_valid(),
        r.flood.envoy_us_per_flood_request(),
        r.flood.flood_wrk_cores()
    );

    lua_section(&mut s, r);
    crate::fleet::section(&mut s, &r.fleet);
    let _ = writeln!(s, "## Reproduce\n");
    let _ = writeln!(
        s,
        "`make bench` (full run, rewrites this file and the chart), or `scripts/bench.sh --smoke` \
         (a short run that only checks every contender answers 200; its report goes to a \
         temporary directory). See `bench/README.md`."
    );
    s
}

/// Horizontal bars, two per contender: its median req/s ÷ keygate's, and the same ratio from
/// Envoy's CPU cost per request (keygate's µs ÷ its µs).
pub fn chart(r: &Results, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let t = &r.throughput;
    let rows: Vec<(Contender, f64, f64, f64)> = t
        .contenders
        .iter()
        .map(|c| {
            (
                *c,
                1.0 / t.keygate_over(*c),
                1.0 / t.keygate_over_by_cpu(*c),
                t.median_rps(*c),
            )
        })
        .collect();
    let max = rows
        .iter()
        .flat_map(|(_, a, b, _)| [*a, *b])
        .filter(|x| x.is_finite())
        .fold(1.0, f64::max);
    let x_max = (max * 1.35).max(1.5);
    let n = rows.len() as i32;

    let root = SVGBackend::new(path, (960, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "Throughput relative to keygate's hit path (1 Envoy worker, median of {} interleaved rounds)",
        r.plan.rounds
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 17))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(230)
        .build_cartesian_2d(0.0..x_max, (0..n - 1).into_segmented())?;
    // Segments 0..=n-1 (plotters counts an integer range's end in); row i from the top is
    // segment n-1-i, labelled at its centre.
    let label_of = |seg: &SegmentValue<i32>| -> String {
        let SegmentValue::CenterOf(y) = seg else {
            return String::new();
        };
        usize::try_from(n - 1 - *y)
            .ok()
            .and_then(|i| rows.get(i))
            .map(|(c, _, _, _)| format!("{} {}", c.letter(), c.label()))
            .unwrap_or_default()
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .max_light_lines(1)
        .x_labels(10)
        .y_labels(rows.len())
        .y_label_formatter(&label_of)
        .x_desc("contender ÷ keygate (keygate = 1.00; below 1: slower than keygate)")
        .x_label_formatter(&|x| format!("{x:.1}×"))
        .axis_desc_style(("sans-serif", 14))
        .label_style(("sans-serif", 13))
        .draw()?;
    let solid = RGBColor(40, 70, 150);
    let light = RGBColor(150, 175, 220);
    // Each row's segment holds two bars, req/s above and by-CPU below. Plotters cannot
    // address a point inside a segment, so each bar spans the segment and pixel margins carve
    // its half out of it.
    for (i, (_, by_rps, by_cpu, rps)) in rows.iter().enumerate() {
        let y = n - 1 - i as i32;
        let bottom_px = chart.backend_coord(&(0.0, SegmentValue::Exact(y))).1;
        let top_px = chart.backend_coord(&(0.0, SegmentValue::Exact(y + 1))).1;
        let h = u32::try_from(bottom_px - top_px).unwrap_or(40).max(20);
        let pad = h / 8;
        let half = h / 2;
        for (value, color, m_top, m_bottom, label) in [
            (
                *by_rps,
                solid,
                pad,
                half,
                format!("{by_rps:.2}×  ({} req/s)", k(*rps)),
            ),
            (
                *by_cpu,
                light,
                half,
                pad,
                format!("{by_cpu:.2}×  by Envoy CPU per request"),
            ),
        ] {
            if !value.is_finite() {
                continue;
            }
            let mut bar = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(y)),
                    (value, SegmentValue::Exact(y + 1)),
                ],
                color.filled(),
            );
            bar.set_margin(m_top, m_bottom, 0, 0);
            chart.draw_series(std::iter::once(bar))?;
            // Text is anchored at its top-left corner: level with its bar.
            let x_px = chart.backend_coord(&(value, SegmentValue::Exact(y))).0;
            let bar_top = top_px + i32::try_from(m_top).unwrap_or(0);
            let bar_h = i32::try_from(h.saturating_sub(m_top + m_bottom)).unwrap_or(0);
            root.draw(&Text::new(
                label,
                (x_px + 6, bar_top + bar_h / 2 - 6),
                ("sans-serif", 12).into_font().color(&BLACK),
            ))?;
        }
    }
    // keygate's line.
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(1.0, SegmentValue::Exact(0)), (1.0, SegmentValue::Exact(n))],
        BLACK.mix(0.6).stroke_width(1),
    )))?;
    root.present()?;
    Ok(())
}

/// The few lines printed at the end.
pub fn headline(r: &Results, report: &Path) -> String {
    let t = &r.throughput;
    let v = verdicts(r);
    let p = &r.plan;
    let limit = p.store_delay_ms as f64 + TARGET_HERD_SLACK_MS;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "keygate bench{}: {} rounds x {} s per contender, 1 Envoy worker",
        if p.smoke {
            " (SMOKE: not measurements)"
        } else {
            ""
        },
        p.rounds,
        p.secs
    );
    for c in t.contenders.iter().copied() {
        let _ = writeln!(
            s,
            "  {} {:<30} {:>9.0} req/s   keygate/this {:.2}x   Envoy {:.1} us/request",
            c.letter(),
            c.label(),
            t.median_rps(c),
            t.keygate_over(c),
            t.median_us_per_request(c)
        );
    }
    if let Some(line) = baseline_line(t) {
        let _ = writeln!(s, "  {line}");
    }
    let _ = writeln!(
        s,
        "  keygate vs floor {:.2}x (target >= {TARGET_VS_FLOOR}: {}; by Envoy CPU/request {:.2}x), vs ext_authz {:.2}x (target >= {TARGET_VS_EXT_AUTHZ}: {}; by CPU {:.2}x)",
        v.vs_floor,
        plain(v.vs_floor >= TARGET_VS_FLOOR),
        t.keygate_over_by_cpu(Contender::Floor),
        v.vs_ext_authz,
        plain(v.vs_ext_authz >= TARGET_VS_EXT_AUTHZ),
        t.keygate_over_by_cpu(Contender::ExtAuthz)
    );
    let herd: Vec<String> = r
        .herd
        .rows
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let floor = r
                .herd
                .floor_rows
                .get(i)
                .map_or(String::new(), |f| format!(" (floor p99 {:.1} ms)", f.p99()));
            format!(
                "N={}: {}/{} ok, {} lookup(s), p50 {:.1} ms, p99 {:.1} ms{floor}",
                h.result.n,
                h.result.ok(),
                h.result.n,
                h.store_lookups,
                h.p50(),
                h.p99()
            )
        })
        .collect();
    let _ = writeln!(
        s,
        "  herd (2 workers, store {} ms, {:.1} ms asked directly): {} (lookups <= 1: {}, p99 <= {limit} ms: {})",
        p.store_delay_ms,
        r.herd.store_direct_ms,
        herd.join("; "),
        plain(v.herd_lookups_ok),
        plain(v.herd_p99_ok)
    );
    let _ = writeln!(
        s,
        "  flood {:.0} keys/s: max {:.1} lookups/s (budget {}/s + burst {}: {}), valid stream {:.2}x of no-flood (target >= {TARGET_FLOOD_VALID}: {}), p99 {:.2} -> {:.2} ms",
        r.flood.median_flood_rate(),
        r.flood.max_lookups_per_s(),
        p.budget_per_second,
        p.budget_burst,
        plain(v.flood_budget_ok),
        r.flood.valid_ratio(),
        plain(v.flood_valid_ok),
        r.flood.median_valid_p99(false),
        r.flood.median_valid_p99(true)
    );
    let lua_herd: Vec<String> = r
        .herd
        .lua_rows
        .iter()
        .map(|h| {
            format!(
                "N={}: {}/{} ok, {} lookup(s), p99 {:.1} ms",
                h.result.n,
                h.result.ok(),
                h.result.n,
                h.store_lookups,
                h.p99()
            )
        })
        .collect();
    let _ = writeln!(
        s,
        "  Lua filter: herd {}; flood: max {:.1} lookups/s (nothing bounds them), valid stream {:.2}x of no-flood",
        lua_herd.join("; "),
        r.lua_flood.max_lookups_per_s(),
        r.lua_flood.valid_ratio()
    );
    let _ = writeln!(s, "  {}", crate::fleet::headline(&r.fleet));
    let _ = writeln!(s, "  report: {}", report.display());
    s
}

fn plain(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

fn herd_cells(h: Option<&crate::model::HerdRow>) -> String {
    match h {
        Some(h) => format!(
            "{} / {} | {} | {} | {}",
            h.result.ok(),
            h.result.n,
            h.store_lookups,
            ms(h.p50()),
            ms(h.p99())
        ),
        None => "– | – | – | –".to_string(),
    }
}

fn flood_row(s: &mut String, name: &str, f: &crate::model::Flood, budget: &str) {
    let _ = writeln!(
        s,
        "| {name} | {:.0} | {:.0} | {:.2}× | {} → {} | {:.0} | {:.1} | {budget} |",
        f.median_valid_rps(false),
        f.median_valid_rps(true),
        f.valid_ratio(),
        ms(f.median_valid_p99(false)),
        ms(f.median_valid_p99(true)),
        f.median_flood_rate(),
        f.max_lookups_per_s(),
    );
}

/// The Lua contender beside keygate: the herd and the flood.
fn lua_section(s: &mut String, r: &Results) {
    let t = &r.throughput;
    let _ = writeln!(s, "## The Lua contender beside keygate\n");
    let _ = writeln!(
        s,
        "Hit path (throughput above): the Lua filter {:.0} req/s, keygate {:.0} (Lua ÷ keygate \
         {:.2}×); Envoy CPU per request {:.1} µs against keygate's {:.1} µs. The same herds and \
         the same flood, each on a fresh Envoy with the Lua filter on 2 workers, right after \
         keygate's on the same slow keystore ({} ms).\n",
        t.median_rps(Contender::Lua),
        t.median_rps(Contender::Keygate),
        1.0 / t.keygate_over(Contender::Lua),
        t.median_us_per_request(Contender::Lua),
        t.median_us_per_request(Contender::Keygate),
        r.plan.store_delay_ms
    );
    let _ = writeln!(
        s,
        "| N | keygate: answered 200 | store lookups | p50 | p99 | Lua: answered 200 | store lookups | p50 | p99 |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for (i, h) in r.herd.rows.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {} | {} | {} |",
            h.result.n,
            herd_cells(Some(h)),
            herd_cells(r.herd.lua_rows.get(i))
        );
    }
    let _ = writeln!(
        s,
        "\nThe Lua filter has no single-flight: every first request for a key that finds no \
         entry in its worker's table makes its own store lookup, so N concurrent first requests \
         make up to N lookups (keygate: one per Envoy).\n"
    );
    let _ = writeln!(
        s,
        "| flood ({} random keys/s) | valid req/s, no flood | with flood | ratio | valid p99 | flood keys/s achieved | store lookups/s (max) | what protects the store |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        r.plan.flood_rate
    );
    let budget = format!(
        "miss budget {}/s, burst {}",
        r.plan.budget_per_second, r.plan.budget_burst
    );
    flood_row(s, "keygate", &r.flood, &budget);
    flood_row(
        s,
        "Lua filter",
        &r.lua_flood,
        "nothing: one lookup per unknown key",
    );
    let _ = writeln!(s);
}

/// keygate ÷ keygate (baseline): medians, the per-round spread and the CPU cross-check;
/// `None` without a baseline.
pub fn baseline_line(t: &crate::model::Throughput) -> Option<String> {
    let b = Contender::KeygateBaseline;
    if !t.contenders.contains(&b) {
        return None;
    }
    let rounds = t.keygate_over_per_round(b);
    let lo = rounds.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = rounds.iter().copied().fold(0.0, f64::max);
    let each: Vec<String> = rounds.iter().map(|r| format!("{r:.3}")).collect();
    Some(format!(
        "keygate / keygate (baseline): req/s {:.3}x (medians {:.0} / {:.0}; per round {:.3} - {:.3}, median {:.3}: {}), p99 {:.2} / {:.2} ms, Envoy CPU us/request {:.2} / {:.2} (baseline / keygate by CPU {:.3}x)",
        t.keygate_over(b),
        t.median_rps(Contender::Keygate),
        t.median_rps(b),
        lo,
        hi,
        crate::model::median(&rounds),
        each.join(" "),
        t.median_p99(Contender::Keygate),
        t.median_p99(b),
        t.median_us_per_request(Contender::Keygate),
        t.median_us_per_request(b),
        t.keygate_over_by_cpu(b)
    ))
}
