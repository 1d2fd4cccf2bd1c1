//! Parsers for the keystore's Prometheus text and Envoy's `/stats`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use prometheus_parse::Value as PromValue;

use serde_json::Value;

use crate::error::{Error, Result};

/// Parses the Prometheus text format (and OpenMetrics, as the keystore serves it) with the
/// `prometheus-parse` crate. Keys are series: `name`, or `name{k="v",...}` with the labels in
/// name order; a histogram appears as its `name_bucket{...,le="..."}` series (its `_sum` and
/// `_count` as written). Lines that do not parse are skipped.
pub fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    // Envoy writes a series without labels as `name{} value`, which prometheus-parse 0.2
    // skips (its sample pattern wants at least one label between braces): drop the braces.
    let lines = text.lines().map(|l| Ok(l.replacen("{} ", " ", 1)));
    let Ok(scrape) = prometheus_parse::Scrape::parse(lines) else {
        return HashMap::new();
    };
    let mut out = HashMap::new();
    for sample in scrape.samples {
        let labels: BTreeMap<&str, &str> = sample
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        match &sample.value {
            PromValue::Counter(v) | PromValue::Gauge(v) | PromValue::Untyped(v) => {
                out.insert(series(&sample.metric, &labels, None), *v);
            }
            PromValue::Histogram(buckets) => {
                let name = format!("{}_bucket", sample.metric);
                for b in buckets {
                    let le = format_float(b.less_than);
                    out.insert(series(&name, &labels, Some(("le", &le))), b.count);
                }
            }
            PromValue::Summary(quantiles) => {
                for q in quantiles {
                    let at = format_float(q.quantile);
                    out.insert(
                        series(&sample.metric, &labels, Some(("quantile", &at))),
                        q.count,
                    );
                }
            }
        }
    }
    out
}

/// The metric names (series without labels) in a Prometheus text.
pub fn prometheus_names(text: &str) -> BTreeSet<String> {
    parse_prometheus(text)
        .into_keys()
        .map(|k| k.split('{').next().unwrap_or_default().to_owned())
        .collect()
}

fn format_float(v: f64) -> String {
    if v.is_infinite() {
        "+Inf".to_owned()
    } else {
        v.to_string()
    }
}

/// `name{k="v",...}` (labels sorted, `extra` last), or `name` without labels.
fn series(name: &str, labels: &BTreeMap<&str, &str>, extra: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{}}}", parts.join(","))
    }
}

/// The prefix Envoy's `/stats` puts before the metrics a wasm filter defines (its Prometheus
/// output leaves it out).
pub const WASM_CUSTOM_PREFIX: &str = "wasmcustom.";

/// Also lists each `wasmcustom.NAME` stat under `NAME` (unless Envoy has a stat of that name),
/// so the filter's metrics read by the names it gave them; a name with tags in Istio's encoding
/// (`outcome=.=allowed;.;keygate_requests_total`) is listed as Prometheus names it once the tags
/// are extracted, `keygate_requests_total{outcome="allowed"}`.
fn add_unprefixed(stats: &mut HashMap<String, u64>) {
    let custom: Vec<(String, u64)> = stats
        .iter()
        .filter_map(|(k, v)| Some((untagged(k.strip_prefix(WASM_CUSTOM_PREFIX)?), *v)))
        .collect();
    for (name, value) in custom {
        stats.entry(name).or_insert(value);
    }
}

/// `k1=.=v1;.;k2=.=v2;.;name` as `name{k1="v1",k2="v2"}` (labels sorted); other names as they are.
pub fn untagged(name: &str) -> String {
    let mut labels = BTreeMap::new();
    let mut rest = name;
    while let Some((tag, after)) = rest.split_once(";.;") {
        let Some((k, v)) = tag.split_once("=.=") else {
            break;
        };
        labels.insert(k, v);
        rest = after;
    }
    series(rest, &labels, None)
}

/// Parses Envoy's `/stats?format=json`: counters and gauges (`{"name","value"}` entries) by
/// name; the filter's own metrics under both `wasmcustom.NAME` and `NAME`. Histograms are left
/// out.
pub fn parse_envoy_stats_json(text: &str) -> Result<HashMap<String, u64>> {
    let v: Value = serde_json::from_str(text)?;
    let stats = v
        .get("stats")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::msg("Envoy stats JSON has no \"stats\" array"))?;
    let mut out = HashMap::new();
    for s in stats {
        let (Some(name), Some(value)) = (s.get("name").and_then(Value::as_str), s.get("value"))
        else {
            continue;
        };
        let value = value
            .as_u64()
            .or_else(|| value.as_i64().map(|v| v.max(0) as u64))
            .or_else(|| value.as_f64().map(|v| v.max(0.0) as u64));
        if let Some(value) = value {
            out.insert(name.to_string(), value);
        }
    }
    add_unprefixed(&mut out);
    Ok(out)
}

/// Parses Envoy's plain `/stats`: `name: value` lines with integer values (histogram lines,
/// whose values are not integers, are left out); `wasmcustom.NAME` also as `NAME`.
pub fn parse_envoy_stats_text(text: &str) -> HashMap<String, u64> {
    let mut out = text
        .lines()
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(": ")?;
            Some((name.trim().to_string(), value.trim().parse::<u64>().ok()?))
        })
        .collect();
    add_unprefixed(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_counters_labels_and_histograms() {
        // The keystore's OpenMetrics output and Envoy's Prometheus output, in miniature.
        let text = "# HELP keystore_lookups Key lookups.\n\
                    # TYPE keystore_lookups counter\n\
                    keystore_lookups_total 42\n\
                    # TYPE keystore_request_duration_seconds histogram\n\
                    keystore_request_duration_seconds_sum{route=\"/healthz\",status=\"2xx\"} 0.5\n\
                    keystore_request_duration_seconds_count{route=\"/healthz\",status=\"2xx\"} 2\n\
                    keystore_request_duration_seconds_bucket{le=\"0.001\",route=\"/healthz\",status=\"2xx\"} 1\n\
                    keystore_request_duration_seconds_bucket{le=\"+Inf\",route=\"/healthz\",status=\"2xx\"} 2\n\
                    # TYPE keygate_l1_hits_total counter\n\
                    keygate_l1_hits_total{} 7 1700000000000\n\
                    envoy_cluster_upstream_rq{envoy_response_code=\"200\",envoy_cluster_name=\"keystore\"} 3.5\n\
                    broken line here\n\
                    # EOF\n";
        let m = parse_prometheus(text);
        assert_eq!(m.get("keystore_lookups_total"), Some(&42.0));
        assert_eq!(m.get("keygate_l1_hits_total"), Some(&7.0));
        assert_eq!(
            m.get("envoy_cluster_upstream_rq{envoy_cluster_name=\"keystore\",envoy_response_code=\"200\"}"),
            Some(&3.5)
        );
        let h = "keystore_request_duration_seconds";
        assert_eq!(
            m.get(&format!("{h}_count{{route=\"/healthz\",status=\"2xx\"}}")),
            Some(&2.0)
        );
        assert_eq!(
            m.get(&format!(
                "{h}_bucket{{route=\"/healthz\",status=\"2xx\",le=\"+Inf\"}}"
            )),
            Some(&2.0),
            "{m:?}"
        );
        let names = prometheus_names(text);
        for n in [
            "keystore_lookups_total",
            "keygate_l1_hits_total",
            "keystore_request_duration_seconds_bucket",
            "keystore_request_duration_seconds_count",
            "envoy_cluster_upstream_rq",
        ] {
            assert!(names.contains(n), "{n} not in {names:?}");
        }
        assert_eq!(names.len(), 6, "{names:?}");
    }

    #[test]
    fn envoy_json_stats() {
        let text = r#"{"stats":[
            {"name":"wasmcustom.keygate_store_lookups_total","value":7},
            {"name":"wasmcustom.server.live","value":9},
            {"name":"server.live","value":1},
            {"histograms":{"supported_quantiles":[0,50],"computed_quantiles":[]}}
        ]}"#;
        let m = parse_envoy_stats_json(text).unwrap();
        assert_eq!(m.get("keygate_store_lookups_total"), Some(&7));
        assert_eq!(m.get("wasmcustom.keygate_store_lookups_total"), Some(&7));
        // Envoy's own stat wins over an unprefixed custom one.
        assert_eq!(m.get("server.live"), Some(&1));
        assert_eq!(m.get("wasmcustom.server.live"), Some(&9));
        assert_eq!(m.len(), 4);
        assert!(parse_envoy_stats_json("{}").is_err());
        assert!(parse_envoy_stats_json("nope").is_err());
    }

    #[test]
    fn envoy_text_stats() {
        let text = "cluster.keystore.upstream_rq_200: 12\n\
                    wasmcustom.keygate_l1_hits_total: 5\n\
                    cluster.x.upstream_rq_time: P0(nan,1) P25(nan,1.025)\n";
        let m = parse_envoy_stats_text(text);
        assert_eq!(m.get("cluster.keystore.upstream_rq_200"), Some(&12));
        assert_eq!(m.get("keygate_l1_hits_total"), Some(&5));
        assert_eq!(m.get("wasmcustom.keygate_l1_hits_total"), Some(&5));
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn tags_in_istio_encoding_read_as_prometheus_labels() {
        let text = "wasmcustom.outcome=.=allowed;.;keygate_requests_total: 4\n\
                    wasmcustom.b=.=2;.;a=.=1;.;keygate_x_total: 1\n";
        let m = parse_envoy_stats_text(text);
        assert_eq!(
            m.get("keygate_requests_total{outcome=\"allowed\"}"),
            Some(&4)
        );
        assert_eq!(m.get("keygate_x_total{a=\"1\",b=\"2\"}"), Some(&1));
        assert_eq!(untagged("keygate_l1_hits_total"), "keygate_l1_hits_total");
    }
}
