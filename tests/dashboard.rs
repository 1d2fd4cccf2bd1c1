//! The Grafana dashboard `envoy/grafana/keygate.json` and the alerting rules
//! `envoy/grafana/alerts.yaml`: well-formed, and every metric they query is exported by a real
//! run (Envoy A's `/stats/prometheus` with the real filter, and the real
//! keystore's `/metrics`), so a renamed metric breaks this test rather than a panel.
#![cfg(not(target_arch = "wasm32"))]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use common::*;
use keygate_harness::{
    free_port, http, parse_prometheus, prometheus_names, repo_root, Envoy, EnvoyOpts, TwoInstances,
};
use serde_json::Value;

fn dashboard() -> Value {
    let path = repo_root().join("envoy/grafana/keygate.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The alerting rules without their comment lines.
fn alert_rules() -> String {
    let path = repo_root().join("envoy/grafana/alerts.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    lines.join("\n")
}

/// Every PromQL expression of every panel.
fn expressions(dash: &Value) -> Vec<String> {
    let panels = dash["panels"].as_array().expect("panels");
    panels
        .iter()
        .filter_map(|p| p["targets"].as_array())
        .flatten()
        .map(|t| t["expr"].as_str().expect("expr").to_owned())
        .collect()
}

/// The metric names in PromQL: identifiers with one of our prefixes that are not label names
/// (followed by `=`, `!=` or `=~`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let expr = &without_grouping(expr);
    let mut names = BTreeSet::new();
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    for (i, _) in expr.match_indices(|c: char| c.is_ascii_lowercase()) {
        let before = expr[..i].chars().last();
        // `$labels.envoy_cluster_name` in an annotation is a label, not a metric.
        if before.is_some_and(|c| is_ident(c) || c == '.') {
            continue;
        }
        let word: String = expr[i..].chars().take_while(|c| is_ident(*c)).collect();
        let next = expr[i + word.len()..].trim_start().chars().next();
        if matches!(next, Some('=' | '!')) {
            continue;
        }
        if ["keygate_", "keystore_", "envoy_", "process_"]
            .iter()
            .any(|p| word.starts_with(p))
        {
            names.insert(word);
        }
    }
    names
}

/// `expr` with the label lists of `by (...)` and `without (...)` removed (label names, not
/// metrics).
fn without_grouping(expr: &str) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = ["by (", "without ("]
        .iter()
        .filter_map(|k| rest.find(k).map(|i| i + k.len()))
        .min()
    {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        rest = rest.find(')').map_or("", |end| &rest[end..]);
    }
    out.push_str(rest);
    out
}

#[test]
fn the_dashboard_is_well_formed() {
    let dash = dashboard();
    assert_eq!(dash["uid"], "keygate");
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 30);
    let panels = dash["panels"].as_array().unwrap();
    let ids: HashSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids must be unique");
    for p in panels {
        let title = p["title"].as_str().unwrap();
        let pos = &p["gridPos"];
        assert!(
            pos["x"].as_u64().unwrap() + pos["w"].as_u64().unwrap() <= 24,
            "{title}"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "{title}: use the variable"
        );
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        let refs: HashSet<&str> = targets
            .iter()
            .map(|t| t["refId"].as_str().unwrap())
            .collect();
        assert_eq!(refs.len(), targets.len(), "{title}: refIds must be unique");
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            assert_eq!(
                expr.matches('(').count(),
                expr.matches(')').count(),
                "{title}: {expr}"
            );
            assert_eq!(
                expr.matches('{').count(),
                expr.matches('}').count(),
                "{title}: {expr}"
            );
        }
    }
    // What an operator needs on one screen (issue 13).
    let queried: BTreeSet<String> = expressions(&dash)
        .iter()
        .flat_map(|e| metric_names(e))
        .collect();
    for needed in [
        "keygate_requests_total",
        "keygate_l1_hits_total",
        "keygate_shared_hits_total",
        "keygate_store_lookups_total",
        "keygate_store_errors_total",
        "keygate_sync_lag_ms",
        "keystore_request_duration_seconds_bucket",
        "keystore_db_duration_seconds_bucket",
        "keystore_build_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert!(queried.contains(needed), "no panel queries {needed}");
    }
}

/// A panel's rectangle on Grafana's 24-column grid: (x, y, w, h).
fn grid(panel: &Value) -> (u64, u64, u64, u64) {
    let pos = &panel["gridPos"];
    let at = |k: &str| {
        pos[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{}: gridPos.{k}", panel["title"]))
    };
    (at("x"), at("y"), at("w"), at("h"))
}

#[test]
fn no_two_panels_overlap_and_every_panel_fits_in_24_columns() {
    let dash = dashboard();
    let panels = dash["panels"].as_array().unwrap();
    for p in panels {
        let (x, _, w, h) = grid(p);
        assert!(
            w > 0 && h > 0 && x + w <= 24,
            "{}: {:?}",
            p["title"],
            grid(p)
        );
    }
    for (i, a) in panels.iter().enumerate() {
        for b in &panels[i + 1..] {
            let ((ax, ay, aw, ah), (bx, by, bw, bh)) = (grid(a), grid(b));
            let apart = ax + aw <= bx || bx + bw <= ax || ay + ah <= by || by + bh <= ay;
            assert!(apart, "panels {} and {} overlap", a["title"], b["title"]);
        }
    }
}

#[test]
fn every_query_honours_the_job_namespace_and_instance_variables() {
    let dash = dashboard();
    let vars: BTreeSet<&str> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    for v in ["datasource", "job", "namespace", "instance"] {
        assert!(vars.contains(v), "no ${v} variable");
    }
    for expr in expressions(&dash) {
        for name in metric_names(&expr) {
            // Every selector of the metric, not only the first.
            for (at, _) in expr.match_indices(name.as_str()) {
                let rest = &expr[at + name.len()..];
                let follows_ident = rest
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
                if follows_ident {
                    continue; // a longer name that starts with this one
                }
                let labels = rest.strip_prefix('{').and_then(|r| r.split_once('}'));
                let labels = labels.map(|(l, _)| l).unwrap_or_default();
                for m in [
                    "job=~\"$job\"",
                    "namespace=~\"$namespace\"",
                    "instance=~\"$instance\"",
                ] {
                    assert!(labels.contains(m), "{name} without {m} in {expr}");
                }
            }
        }
    }
}

#[test]
fn the_dashboard_declares_no_input_it_does_not_use() {
    let dash = dashboard();
    let text = dash.to_string();
    for input in dash["__inputs"].as_array().into_iter().flatten() {
        let name = input["name"].as_str().unwrap();
        assert!(
            text.contains(&format!("${{{name}}}")),
            "__inputs declares {name}, which nothing uses"
        );
    }
}

#[test]
fn every_alert_has_an_expression_a_duration_and_a_severity() {
    let rules = alert_rules();
    let count = |prefix: &str| {
        rules
            .lines()
            .filter(|l| l.trim_start().starts_with(prefix))
            .count()
    };
    let alerts = count("- alert: ");
    assert!(alerts >= 8, "{rules}");
    for field in ["expr: ", "for: ", "labels: { severity: ", "summary: "] {
        assert_eq!(count(field), alerts, "every alert needs {field:?}");
    }
    for needed in [
        "keygate_requests_total",
        "keygate_sync_errors_total",
        "keygate_sync_lag_ms",
        "keystore_request_duration_seconds_bucket",
    ] {
        assert!(
            metric_names(&rules).contains(needed),
            "no alert on {needed}"
        );
    }
}

#[test]
fn every_metric_the_dashboard_queries_is_exported() {
    let env = TwoInstances::start(config()).unwrap();
    // Traffic that makes every series appear: an admin write (through A), lookups of a valid
    // and an unknown key through both Envoys, and a few feed polls.
    let key = env.keystore.create_account("acme", "alice");
    for envoy in env.envoys() {
        assert_eq!(get_with_key(envoy, "/x", &key).status, 200);
        assert_eq!(
            get_with_key(envoy, "/x", "kg_unknown_key_0123456789").status,
            401
        );
    }
    let polls = |e: &keygate_harness::Envoy| e.stat_opt("keygate_sync_polls_total").unwrap_or(0);
    within(Duration::from_secs(20), "two feed polls", || {
        polls(&env.a) >= 2
    });

    let text = |url: String| http::get(&url, &[]).unwrap().body;
    let mut exported = prometheus_names(&text(format!("{}/stats/prometheus", env.a.admin_url())));
    exported.extend(prometheus_names(&text(format!(
        "{}/metrics",
        env.keystore.url()
    ))));

    let dash = dashboard();
    let mut queried: BTreeSet<String> = expressions(&dash)
        .iter()
        .flat_map(|e| metric_names(e))
        .collect();
    // The variables' queries too: a variable over a metric nobody exports lists nothing.
    for v in dash["templating"]["list"].as_array().unwrap() {
        queried.extend(metric_names(v["query"].as_str().unwrap_or_default()));
    }
    queried.extend(metric_names(&alert_rules()));
    let missing: Vec<&String> = queried.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard or the alerts query metrics no real run exports: {missing:?}"
    );
    eprintln!("dashboard: {} metrics queried, all exported", queried.len());
}

/// The store cluster's name in an Istio proxy, on another port than the shipped 8081
/// (envoy/kubernetes/wasmplugin.yaml): the matchers must not depend on the Service's port.
const ISTIO_CLUSTER: &str = "outbound|8443||keystore.keygate.svc.cluster.local";

/// The stats settings of Istio's bootstrap that decide what reaches Prometheus: its own
/// `cluster_name` tag instead of Envoy's defaults (the default tag would cut the name at its
/// first dot), and its default inclusion list; plus the proxy config's: `patterns`, the
/// proxyStatsMatcher's, and one tag per `extraStatTags` entry, with the regex Istio's bootstrap
/// template writes for it (tools/packaging/common/envoy_bootstrap.json).
fn istio_stats_config(patterns: &[String], tags: &[String]) -> String {
    let mut out = String::from(concat!(
        "\nstats_config:\n  use_all_default_tags: false\n  stats_tags:\n",
        "  - tag_name: cluster_name\n",
        "    regex: '^cluster\\.((.+?(\\..+?\\.svc\\.cluster\\.local)?)\\.)'\n",
        "  - tag_name: response_code_class\n    regex: '_rq(_(\\dxx))$'\n",
    ));
    for t in tags {
        out.push_str(&format!(
            "  - tag_name: {t}\n    regex: '({t}=\\.=(.*?);\\.;)'\n"
        ));
    }
    out.push_str("  stats_matcher:\n    inclusion_list:\n      patterns:\n");
    for prefix in [
        "cluster_manager",
        "listener_manager",
        "server",
        "cluster.xds-grpc",
        "wasm",
    ] {
        out.push_str(&format!("      - prefix: '{prefix}'\n"));
    }
    for p in patterns {
        out.push_str(&format!("      - {p}\n"));
    }
    out
}

/// envoy/istio/stats-matcher.yaml's proxy config: its proxyStatsMatcher as Envoy string
/// matchers (Istio turns `inclusionPrefixes` into `prefix` and `inclusionRegexps` into
/// `safe_regex`), and its `extraStatTags`.
fn shipped_proxy_config() -> (Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string(repo_root().join("envoy/istio/stats-matcher.yaml")).unwrap();
    let mut kind = "";
    let (mut patterns, mut tags) = (Vec::new(), Vec::new());
    for line in text.lines().map(str::trim) {
        match line {
            "inclusionPrefixes:" => kind = "prefix",
            "inclusionRegexps:" => kind = "regex",
            "extraStatTags:" => kind = "tag",
            _ => match line.strip_prefix("- ") {
                Some(item) if kind == "prefix" => patterns.push(format!("prefix: {item}")),
                Some(item) if kind == "regex" => {
                    patterns.push(format!("safe_regex: {{ regex: {item} }}"))
                }
                Some(item) if kind == "tag" => tags.push(item.to_owned()),
                _ => {}
            },
        }
    }
    assert!(
        patterns.len() >= 2,
        "no proxyStatsMatcher in stats-matcher.yaml"
    );
    (patterns, tags)
}

/// The template's own `stats_config` block (Istio's bootstrap replaces it).
fn without_stats_config(template: &str) -> String {
    let start = template
        .find("stats_config:\n")
        .expect("the template's stats_config");
    let end = start
        + template[start..]
            .find("\nadmin:\n")
            .expect("admin after stats_config");
    format!("{}{}", &template[..start], &template[end + 1..])
}

/// The Prometheus series of one Envoy run as an Istio proxy would be (store cluster named
/// [`ISTIO_CLUSTER`], Istio's stats settings with `patterns` and `tags`), after one request
/// without a key (401) and two feed polls.
fn series_as_an_istio_proxy(patterns: &[String], tags: &[String]) -> Vec<String> {
    let template = std::fs::read_to_string(repo_root().join("envoy/envoy.yaml.tmpl")).unwrap();
    let template = without_stats_config(&template)
        .replace(
            "  - name: keystore\n",
            &format!("  - name: \"{ISTIO_CLUSTER}\"\n"),
        )
        .replace(
            "cluster_name: keystore\n",
            &format!("cluster_name: \"{ISTIO_CLUSTER}\"\n"),
        )
        .replace(
            "cluster: keystore\n",
            &format!("cluster: \"{ISTIO_CLUSTER}\"\n"),
        )
        + &istio_stats_config(patterns, tags);
    let filter = config_with(serde_json::json!({
        "store": { "cluster": ISTIO_CLUSTER, "authority": "keystore.keygate.svc.cluster.local" }
    }));
    // No keystore listens: the cluster is there, its host unhealthy, the feed failing.
    let mut opts = EnvoyOpts::new("istio-like", filter, free_port(), free_port());
    opts.template = Some(template);
    opts.concurrency = 1;
    let envoy = Envoy::start(opts).unwrap();
    assert_eq!(
        http::get(&format!("{}/x", envoy.url()), &[])
            .unwrap()
            .status,
        401
    );
    within(Duration::from_secs(20), "two feed polls", || {
        envoy.stat_opt("keygate_sync_polls_total").unwrap_or(0) >= 2
    });
    let text = http::get(&format!("{}/stats/prometheus", envoy.admin_url()), &[])
        .unwrap()
        .body;
    parse_prometheus(&text).into_keys().collect()
}

#[test]
fn under_istio_the_shipped_stats_matcher_exports_what_the_keystore_alerts_read() {
    let wanted = [
        format!("envoy_cluster_membership_healthy{{cluster_name=\"{ISTIO_CLUSTER}\"}}"),
        format!("envoy_cluster_membership_total{{cluster_name=\"{ISTIO_CLUSTER}\"}}"),
    ];
    // Istio's defaults alone drop the cluster's stats: the alerts would stay silent.
    let default = series_as_an_istio_proxy(&[], &[]);
    for w in &wanted {
        assert!(!default.contains(w), "Istio's default list keeps {w}");
    }
    let (patterns, tags) = shipped_proxy_config();
    let patched = series_as_an_istio_proxy(&patterns, &tags);
    for w in &wanted {
        assert!(patched.contains(w), "{w} missing from {patched:?}");
    }
    assert!(
        patched.iter().any(|s| s == "keygate_sync_polls_total"),
        "{patched:?}"
    );
    // extraStatTags makes the request outcome a label, as the template's stats_tags does.
    let denied = "keygate_requests_total{outcome=\"denied\"}";
    assert!(patched.iter().any(|s| s == denied), "{patched:?}");
    assert!(!default.iter().any(|s| s == denied), "{default:?}");
    // The alerts' and the dashboard's matcher for that label matches this name.
    let matcher = "cluster_name=~\"outbound[|][0-9]+[|][|]keystore[.].+\"";
    assert!(alert_rules().contains(matcher));
    assert!(serde_json::to_string(&dashboard())
        .unwrap()
        .contains(&matcher.replace('"', "\\\"")));
    assert!(ISTIO_CLUSTER.starts_with("outbound|8443||keystore."));
}
