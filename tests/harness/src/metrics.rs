//! Parsers for the keystore's Prometheus text and Envoy's `/stats`.

use std::collections::HashMap;

use serde_json::Value;

use crate::error::{Error, Result};

/// Parses Prometheus text exposition: `name{labels} value [timestamp]` per line, `#` lines
/// skipped. Keys are the series as written (`name` or `name{labels}`, labels verbatim).
/// Lines that do not parse are skipped.
pub fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((series, rest)) = split_series(line) else {
            continue;
        };
        let Some(value) = rest.split_whitespace().next() else {
            continue;
        };
        let value = match value {
            "+Inf" | "Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => match v.parse::<f64>() {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        out.insert(series.to_string(), value);
    }
    out
}

/// Splits `name{labels} rest` or `name rest` into the series and the rest.
fn split_series(line: &str) -> Option<(&str, &str)> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    if name_end == 0 {
        return None;
    }
    if !line.get(name_end..)?.starts_with('{') {
        return Some((line.get(..name_end)?, line.get(name_end..)?));
    }
    // Find the closing brace outside quoted label values (which may hold `}` or `\"`).
    let mut in_quote = false;
    let mut escaped = false;
    for (i, c) in line.char_indices().skip_while(|(i, _)| *i <= name_end) {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            '}' if !in_quote => return Some((line.get(..=i)?, line.get(i + 1..)?)),
            _ => {}
        }
    }
    None
}

/// The prefix Envoy's `/stats` puts before the metrics a wasm filter defines (its Prometheus
/// output leaves it out).
pub const WASM_CUSTOM_PREFIX: &str = "wasmcustom.";

/// Also lists each `wasmcustom.NAME` stat under `NAME` (unless Envoy has a stat of that name),
/// so the filter's metrics read by the names it gave them.
fn add_unprefixed(stats: &mut HashMap<String, u64>) {
    let custom: Vec<(String, u64)> = stats
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(WASM_CUSTOM_PREFIX)?.to_string(), *v)))
        .collect();
    for (name, value) in custom {
        stats.entry(name).or_insert(value);
    }
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
    fn prometheus_plain_labels_comments() {
        let text = "# HELP keystore_lookups_total Key lookups.\n\
                    # TYPE keystore_lookups_total counter\n\
                    keystore_lookups_total 42\n\
                    keystore_lookups_found_total 40 1700000000000\n\
                    req{path=\"/a b}\",code=\"200\"} 3.5\n\
                    weird{q=\"x\\\"}\"} 1e3\n\
                    \n\
                    up +Inf\n\
                    broken_line\n\
                    nan_metric NaN\n";
        let m = parse_prometheus(text);
        assert_eq!(m.get("keystore_lookups_total"), Some(&42.0));
        assert_eq!(m.get("keystore_lookups_found_total"), Some(&40.0));
        assert_eq!(m.get("req{path=\"/a b}\",code=\"200\"}"), Some(&3.5));
        assert_eq!(m.get("weird{q=\"x\\\"}\"}"), Some(&1000.0));
        assert_eq!(m.get("up"), Some(&f64::INFINITY));
        assert!(m.get("nan_metric").is_some_and(|v| v.is_nan()));
        assert!(!m.contains_key("broken_line"));
        assert_eq!(m.len(), 6);
    }

    #[test]
    fn envoy_json_stats() {
        let text = r#"{"stats":[
            {"name":"wasmcustom.keygate_store_lookups","value":7},
            {"name":"wasmcustom.server.live","value":9},
            {"name":"server.live","value":1},
            {"histograms":{"supported_quantiles":[0,50],"computed_quantiles":[]}}
        ]}"#;
        let m = parse_envoy_stats_json(text).unwrap();
        assert_eq!(m.get("keygate_store_lookups"), Some(&7));
        assert_eq!(m.get("wasmcustom.keygate_store_lookups"), Some(&7));
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
                    wasmcustom.keygate_l1_hits: 5\n\
                    cluster.x.upstream_rq_time: P0(nan,1) P25(nan,1.025)\n";
        let m = parse_envoy_stats_text(text);
        assert_eq!(m.get("cluster.keystore.upstream_rq_200"), Some(&12));
        assert_eq!(m.get("keygate_l1_hits"), Some(&5));
        assert_eq!(m.get("wasmcustom.keygate_l1_hits"), Some(&5));
        assert_eq!(m.len(), 3);
    }
}
