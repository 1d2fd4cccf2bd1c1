//! What the bench measured, and the figures derived from it.

use crate::envoy::Contender;
use crate::herd::{quantile, HerdResult};
use crate::wrk::WrkResult;

/// The machine and the software, as the report's header shows them.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub envoy_version: String,
    pub wrk_version: String,
    pub kernel: String,
    pub date: String,
    pub load_start: String,
    pub load_end: String,
    pub pinned: bool,
    /// The bench's scheduling priority (nice value; inherited by Envoy, wrk and the keystore).
    pub nice: i32,
}

/// How the bench was run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub smoke: bool,
    /// `--baseline-wasm`: another build of the filter, run as contender G.
    pub baseline_wasm: Option<std::path::PathBuf>,
    pub rounds: usize,
    pub secs: f64,
    pub warmup_secs: f64,
    pub connections: u32,
    pub herd_ns: Vec<usize>,
    pub store_delay_ms: u64,
    pub flood_secs: f64,
    pub flood_rate: u64,
    pub flood_connections: u32,
    pub flood_pairs: usize,
    pub valid_connections: u32,
    pub keygate_config: String,
    pub budget_per_second: u64,
    pub budget_burst: u64,
}

/// One wrk run of one contender in the interleaved phase.
#[derive(Debug, Clone)]
pub struct Sample {
    pub round: usize,
    pub contender: Contender,
    pub wrk: WrkResult,
    /// Envoy's CPU use during the run, in cores (1.0: one core busy all along).
    pub envoy_cpu: f64,
    /// wrk's, likewise.
    pub wrk_cpu: f64,
}

impl Sample {
    /// Envoy CPU microseconds per request in this run.
    pub fn us_per_request(&self) -> f64 {
        self.envoy_cpu * self.wrk.duration_s * 1e6 / self.wrk.requests.max(1) as f64
    }
}

#[derive(Debug, Clone, Default)]
pub struct Throughput {
    /// The contenders measured, in their canonical order.
    pub contenders: Vec<Contender>,
    /// In the order they ran.
    pub samples: Vec<Sample>,
    /// Checks before measuring: contender → (status with the bench key, status with a wrong key).
    pub sanity: Vec<(Contender, u16, Option<u16>)>,
    /// Error lines Envoy logged during the checks (a filter that failed, e.g. a Lua script
    /// error, which Envoy answers 200 to all the same).
    pub envoy_errors: Vec<String>,
    /// keygate's counters over the measured rounds (hit path: lookups should stay 0).
    pub keygate_l1_hits: u64,
    pub keygate_store_lookups: u64,
    pub keygate_allowed: u64,
}

impl Throughput {
    pub fn rps(&self, c: Contender) -> Vec<f64> {
        self.samples
            .iter()
            .filter(|s| s.contender == c)
            .map(|s| s.wrk.rps)
            .collect()
    }

    pub fn median_rps(&self, c: Contender) -> f64 {
        median(&self.rps(c))
    }

    pub fn median_envoy_cpu(&self, c: Contender) -> f64 {
        let v: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.contender == c)
            .map(|s| s.envoy_cpu)
            .collect();
        median(&v)
    }

    pub fn median_p99(&self, c: Contender) -> f64 {
        let v: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.contender == c)
            .map(|s| s.wrk.p99_ms)
            .collect();
        median(&v)
    }

    /// Envoy CPU microseconds per request (median over the rounds).
    pub fn median_us_per_request(&self, c: Contender) -> f64 {
        let v: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.contender == c)
            .map(Sample::us_per_request)
            .collect();
        median(&v)
    }

    /// Like [`Throughput::keygate_over`], from CPU cost instead of req/s: `c`'s µs per
    /// request ÷ keygate's (how many of keygate's requests one of `c`'s costs).
    pub fn keygate_over_by_cpu(&self, c: Contender) -> f64 {
        self.median_us_per_request(c) / self.median_us_per_request(Contender::Keygate)
    }

    /// keygate's req/s ÷ `c`'s in each round (both ran in it, next to each other when `c` is
    /// the baseline): the spread of the ratio across rounds.
    pub fn keygate_over_per_round(&self, c: Contender) -> Vec<f64> {
        let of = |who: Contender, round: usize| {
            self.samples
                .iter()
                .find(|s| s.contender == who && s.round == round)
                .map(|s| s.wrk.rps)
        };
        let rounds = self.samples.iter().map(|s| s.round).max().unwrap_or(0);
        (1..=rounds)
            .filter_map(|r| Some(of(Contender::Keygate, r)? / of(c, r)?))
            .collect()
    }

    /// keygate's median ÷ `c`'s median.
    pub fn keygate_over(&self, c: Contender) -> f64 {
        self.median_rps(Contender::Keygate) / self.median_rps(c)
    }

    /// Every sample that answered something other than 2xx, or nothing.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for s in &self.samples {
            if s.wrk.requests == 0 || s.wrk.non2xx > 0 {
                out.push(format!(
                    "round {} {}: {} requests, {} non-2xx, {} socket errors",
                    s.round,
                    s.contender.id(),
                    s.wrk.requests,
                    s.wrk.non2xx,
                    s.wrk.socket_errors
                ));
            }
        }
        for e in &self.envoy_errors {
            out.push(format!("Envoy logged an error during the checks: {e}"));
        }
        for (c, ok, bad) in &self.sanity {
            if *ok != 200 {
                out.push(format!("{}: the bench key got {ok}, not 200", c.id()));
            }
            if let Some(bad) = bad {
                if *bad != 401 {
                    out.push(format!("{}: a wrong key got {bad}, not 401", c.id()));
                }
            }
        }
        out
    }
}

/// One herd: N first requests with a fresh key.
#[derive(Debug, Clone)]
pub struct HerdRow {
    pub result: HerdResult,
    /// `keystore_lookups_total` after minus before.
    pub store_lookups: u64,
    /// keygate's counters, after minus before.
    pub keygate_lookups: u64,
    pub coalesced: u64,
    pub waited_other_worker: u64,
    /// The status of one more request with the same key after the herd (0: no answer).
    pub status_after: u16,
    /// Error lines Envoy logged (first few distinct).
    pub envoy_errors: Vec<String>,
}

impl HerdRow {
    pub fn p50(&self) -> f64 {
        quantile(&self.result.latencies_ms, 0.50)
    }
    pub fn p99(&self) -> f64 {
        quantile(&self.result.latencies_ms, 0.99)
    }
    pub fn max(&self) -> f64 {
        self.result.latencies_ms.last().copied().unwrap_or(f64::NAN)
    }
}

/// The herds, and the store's latency asked directly.
#[derive(Debug, Clone, Default)]
pub struct HerdPhase {
    /// keygate's herds.
    pub rows: Vec<HerdRow>,
    /// The Lua contender's, same N, each right after keygate's.
    pub lua_rows: Vec<HerdRow>,
    /// The herd floor's ([`crate::envoy::Contender::HerdFloor`]), same N, right after keygate's.
    pub floor_rows: Vec<HerdRow>,
    /// Median of a few lookups sent straight to the keystore (ms).
    pub store_direct_ms: f64,
}

/// One run of the valid stream, with or without the flood beside it.
#[derive(Debug, Clone)]
pub struct FloodRun {
    pub flooded: bool,
    pub valid: WrkResult,
    pub flood: Option<WrkResult>,
    /// `keystore_lookups_total` after minus before.
    pub store_lookups: u64,
    /// Seconds between the two metric reads.
    pub window_s: f64,
    pub throttled: u64,
    pub denied: u64,
    /// CPU seconds over the run: Envoy (all threads), the valid stream's wrk, the flood's wrk.
    pub envoy_cpu_s: f64,
    pub valid_wrk_cpu_s: f64,
    pub flood_wrk_cpu_s: f64,
}

impl FloodRun {
    /// The flood's achieved rate (requests/s).
    pub fn flood_rate(&self) -> f64 {
        self.flood
            .as_ref()
            .map_or(0.0, |f| f.requests as f64 / f.duration_s.max(1e-9))
    }

    /// Lookups per second over the flood's duration.
    pub fn lookups_per_s(&self) -> f64 {
        let secs = self
            .flood
            .as_ref()
            .map_or(self.window_s, |f| f.duration_s.max(1e-9));
        self.store_lookups as f64 / secs
    }

    /// The most lookups the budget allows in this run's window: rate × window + burst.
    pub fn allowance(&self, per_second: u64, burst: u64) -> f64 {
        per_second as f64 * self.window_s + burst as f64
    }
}

#[derive(Debug, Clone, Default)]
pub struct Flood {
    pub runs: Vec<FloodRun>,
}

impl Flood {
    fn of(&self, flooded: bool) -> impl Iterator<Item = &FloodRun> {
        self.runs.iter().filter(move |r| r.flooded == flooded)
    }
    pub fn median_valid_rps(&self, flooded: bool) -> f64 {
        median(&self.of(flooded).map(|r| r.valid.rps).collect::<Vec<_>>())
    }
    pub fn median_valid_p99(&self, flooded: bool) -> f64 {
        median(&self.of(flooded).map(|r| r.valid.p99_ms).collect::<Vec<_>>())
    }
    pub fn median_flood_rate(&self) -> f64 {
        median(&self.of(true).map(FloodRun::flood_rate).collect::<Vec<_>>())
    }
    pub fn max_lookups_per_s(&self) -> f64 {
        self.of(true)
            .map(FloodRun::lookups_per_s)
            .fold(0.0, f64::max)
    }
    pub fn within_budget(&self, per_second: u64, burst: u64) -> bool {
        self.of(true)
            .all(|r| r.store_lookups as f64 <= r.allowance(per_second, burst))
    }
    /// Envoy CPU microseconds per valid request without the flood (median over those runs).
    pub fn envoy_us_per_valid(&self) -> f64 {
        median(
            &self
                .of(false)
                .map(|r| r.envoy_cpu_s * 1e6 / r.valid.requests.max(1) as f64)
                .collect::<Vec<_>>(),
        )
    }

    /// Envoy CPU microseconds per flood request: what a flooded run used beyond its valid
    /// requests (at the no-flood cost each), divided by the flood's requests.
    pub fn envoy_us_per_flood_request(&self) -> f64 {
        let per_valid = self.envoy_us_per_valid();
        median(
            &self
                .of(true)
                .filter_map(|r| {
                    let f = r.flood.as_ref()?;
                    let extra = r.envoy_cpu_s * 1e6 - per_valid * r.valid.requests as f64;
                    Some(extra / f.requests.max(1) as f64)
                })
                .collect::<Vec<_>>(),
        )
    }

    /// Median CPU seconds per second of the flood's wrk.
    pub fn flood_wrk_cores(&self) -> f64 {
        median(
            &self
                .of(true)
                .filter_map(|r| Some(r.flood_wrk_cpu_s / r.flood.as_ref()?.duration_s.max(1e-9)))
                .collect::<Vec<_>>(),
        )
    }

    pub fn valid_ratio(&self) -> f64 {
        self.median_valid_rps(true) / self.median_valid_rps(false)
    }
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for r in &self.runs {
            if r.valid.requests == 0 || r.valid.non2xx > 0 {
                out.push(format!(
                    "valid stream ({}): {} requests, {} non-2xx",
                    if r.flooded { "flood" } else { "no flood" },
                    r.valid.requests,
                    r.valid.non2xx
                ));
            }
            if let Some(f) = &r.flood {
                if f.requests == 0 {
                    out.push("the flood sent no request".to_string());
                }
            }
        }
        out
    }
}

/// Everything, for the report.
#[derive(Debug, Clone)]
pub struct Results {
    pub machine: Machine,
    pub plan: Plan,
    pub throughput: Throughput,
    pub herd: HerdPhase,
    /// keygate's flood, and the Lua contender's.
    pub flood: Flood,
    pub lua_flood: Flood,
    /// The fleet flood: two Envoys, the key summary on and off.
    pub fleet: crate::fleet::Fleet,
    pub elapsed_s: f64,
}

/// The median (mean of the middle two for an even count); NaN for none.
pub fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
