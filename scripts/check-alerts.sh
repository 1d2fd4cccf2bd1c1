#!/usr/bin/env bash
# Checks envoy/grafana/alerts.yaml with Prometheus's own tool (in `make test`): `promtool check
# rules` (syntax, PromQL) and `promtool test rules` on envoy/grafana/alerts.test.yaml (the
# keystore-cluster alerts with one keystore, two, Istio's cluster name, and nothing scraped).
# promtool comes from Debian's `prometheus` package (scripts/setup.sh test installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v promtool >/dev/null; then
  echo "check-alerts: promtool is missing: run scripts/setup.sh test" >&2
  exit 1
fi
promtool check rules envoy/grafana/alerts.yaml
promtool test rules envoy/grafana/alerts.test.yaml

# The dashboard's queries through the same parser: each panel's PromQL as a recording rule, with
# Grafana's variables replaced by values (`$__rate_interval` by 5m, the others by `.*`).
rules=$(mktemp --suffix=.yaml)
trap 'rm -f "$rules"' EXIT
python3 - envoy/grafana/keygate.json >"$rules" <<'PY'
import json, sys
dash = json.load(open(sys.argv[1]))
print("groups:\n- name: dashboard\n  rules:")
n = 0
for panel in dash["panels"]:
    for t in panel.get("targets", []):
        expr = t["expr"].replace("$__rate_interval", "5m")
        for var in ("$job", "$namespace", "$instance"):
            expr = expr.replace(var, ".*")
        n += 1
        print(f"  - record: dashboard:panel{panel['id']}:{t['refId']}\n    expr: {json.dumps(expr)}")
print(f"dashboard: {n} queries", file=sys.stderr)
PY
promtool check rules "$rules" | sed "s|$rules|envoy/grafana/keygate.json (every panel's query)|"
