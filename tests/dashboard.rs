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
use keygate_harness::{http, prometheus_names, repo_root, TwoInstances};
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
    let mut names = BTreeSet::new();
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    for (i, _) in expr.match_indices(|c: char| c.is_ascii_lowercase()) {
        let before = expr[..i].chars().last();
        if before.is_some_and(is_ident) {
            continue;
        }
        let word: String = expr[i..].chars().take_while(|c| is_ident(*c)).collect();
        let next = expr[i + word.len()..].trim_start().chars().next();
        if matches!(next, Some('=' | '!')) {
            continue;
        }
        if ["keygate_", "keystore_", "envoy_"]
            .iter()
            .any(|p| word.starts_with(p))
        {
            names.insert(word);
        }
    }
    names
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
        "keygate_requests_allowed",
        "keygate_requests_denied",
        "keygate_requests_unavailable",
        "keygate_l1_hits",
        "keygate_shared_hits",
        "keygate_store_lookups",
        "keygate_store_errors",
        "keygate_sync_lag_ms",
        "keygate_requests_throttled",
        "keystore_request_duration_seconds_bucket",
        "keystore_db_duration_seconds_bucket",
    ] {
        assert!(queried.contains(needed), "no panel queries {needed}");
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
        "keygate_requests_unavailable",
        "keygate_sync_errors",
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
    let polls = |e: &keygate_harness::Envoy| e.stat_opt("keygate_sync_polls").unwrap_or(0);
    within(Duration::from_secs(20), "two feed polls", || {
        polls(&env.a) >= 2
    });

    let text = |url: String| http::get(&url, &[]).unwrap().body;
    let mut exported = prometheus_names(&text(format!("{}/stats/prometheus", env.a.admin_url())));
    exported.extend(prometheus_names(&text(format!(
        "{}/metrics",
        env.keystore.url()
    ))));

    let mut queried: BTreeSet<String> = expressions(&dashboard())
        .iter()
        .flat_map(|e| metric_names(e))
        .collect();
    queried.extend(metric_names(&alert_rules()));
    let missing: Vec<&String> = queried.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard or the alerts query metrics no real run exports: {missing:?}"
    );
    eprintln!("dashboard: {} metrics queried, all exported", queried.len());
}
