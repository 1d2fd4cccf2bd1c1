#!/usr/bin/env bash
# Validates envoy/kubernetes/ offline (in `make test`):
#  1. every built-in resource against the Kubernetes OpenAPI schemas bundled in the PyPI package
#     kubernetes-validate (--strict: unknown fields are errors), installed in .tools/venv by
#     `scripts/setup.sh test`;
#  2. what no schema says: kustomization.yaml lists every manifest but the WasmPlugin; the Service and the PDB
#     select the Deployment's pods; the probes hit /healthz on a declared container port; the
#     Secret holds every key the Deployment reads; resources and limits are set; a preStop
#     delay before SIGTERM; the
#     WasmPlugin's store.cluster and store.authority name the Service and its port; the
#     container's arguments are options of the built keystore binary;
#  3. and 4. the monitoring Component (below).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-envoy/kubernetes}
venv=.tools/venv
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  echo "check-k8s: $venv/bin/kubernetes-validate is missing: run scripts/setup.sh test" >&2
  exit 1
fi

builtin=()
for f in "$dir"/*.yaml; do
  grep -qE '^kind: (Kustomization|WasmPlugin)$' "$f" || builtin+=("$f")
done
"$venv/bin/kubernetes-validate" --strict --quiet "${builtin[@]}"

"$venv/bin/python" - "$dir" <<'PY'
import os, sys, yaml

d = sys.argv[1]
errors = []
def check(ok, msg):
    if not ok:
        errors.append(msg)

docs = {}
for name in sorted(os.listdir(d)):
    if name.endswith(".yaml"):
        with open(os.path.join(d, name)) as f:
            for doc in yaml.safe_load_all(f):
                if doc:
                    docs.setdefault(doc["kind"], []).append((name, doc))

def one(kind):
    items = docs.get(kind, [])
    check(len(items) == 1, f"expected one {kind}, found {len(items)}")
    return items[0][1] if items else {}

kust = one("Kustomization")
# The WasmPlugin is applied on its own, with the protocol token added (never committed).
files = {n for n in os.listdir(d) if n.endswith(".yaml")} - {"kustomization.yaml", "wasmplugin.yaml"}
check(set(kust.get("resources", [])) == files,
      f"kustomization.yaml resources {sorted(kust.get('resources', []))} != files {sorted(files)}")

dep, svc, pdb, secret, plugin = (one(k) for k in
    ["Deployment", "Service", "PodDisruptionBudget", "Secret", "WasmPlugin"])
ns = dep["metadata"]["namespace"]
labels = dep["spec"]["template"]["metadata"]["labels"]
def selects(selector, what):
    check(selector and all(labels.get(k) == v for k, v in selector.items()),
          f"{what} selector {selector} does not select the keystore pods {labels}")
selects(dep["spec"]["selector"]["matchLabels"], "Deployment")
selects(svc["spec"]["selector"], "Service")
selects(pdb["spec"]["selector"]["matchLabels"], "PodDisruptionBudget")
check(pdb["spec"].get("minAvailable", 0) < dep["spec"]["replicas"],
      "the PDB's minAvailable must be below the replica count, or no node can ever be drained")

(c,) = dep["spec"]["template"]["spec"]["containers"]
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
for probe in ["readinessProbe", "startupProbe"]:
    http = c.get(probe, {}).get("httpGet", {})
    check(http.get("path") == "/healthz", f"{probe} must GET /healthz, not {http.get('path')}")
    check(http.get("port") in ports, f"{probe} port {http.get('port')} is not a container port")
check("livenessProbe" in c, "no livenessProbe")
# The pod must keep answering while it leaves the endpoints: a preStop delay shorter than the
# grace period (which counts the delay and the graceful shutdown together).
stop = c.get("lifecycle", {}).get("preStop", {})
delay = stop.get("sleep", {}).get("seconds")
cmd = stop.get("exec", {}).get("command", [])
if delay is None and len(cmd) == 2 and cmd[0].endswith("sleep") and cmd[1].isdigit():
    delay = int(cmd[1])
grace = dep["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
check(delay is not None and 3 <= delay <= grace - 10,
      f"preStop must wait 3 s or more (and 10 s under the grace period {grace}) before SIGTERM, found {stop}")
res = c.get("resources", {})
check(res.get("requests", {}).get("cpu") and res.get("requests", {}).get("memory")
      and res.get("limits", {}).get("memory"), "cpu/memory requests and a memory limit are required")
args = c.get("args", [])
check("--root-key-file" in args, "the root key must come from the Secret as a file (--root-key-file)")
check("--protocol-token-file" in args,
      "the protocol endpoints must require the token (--protocol-token-file from the Secret)")
# The container's arguments are the keystore's (the image's entrypoint is the keystore binary).
binary = os.environ.get("KEYGATE_KEYSTORE", "target/release/keystore")
if os.path.exists(binary):
    import subprocess
    help_text = subprocess.run([binary, args[0], "--help"], capture_output=True, text=True).stdout
    for a in args:
        if a.startswith("--"):
            check(f"{a} " in help_text or f"{a}\n" in help_text, f"keystore {args[0]} has no option {a}")
else:
    print(f"check-k8s: {binary} not built: container arguments not checked", file=sys.stderr)
check(not any("postgres://" in a for a in args), "the database URL must not be an argument")

held = set(secret.get("stringData", {})) | set(secret.get("data", {}))
used = {e["valueFrom"]["secretKeyRef"]["key"] for e in c.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})}
for v in dep["spec"]["template"]["spec"].get("volumes", []):
    if "secret" in v:
        check(v["secret"]["secretName"] == secret["metadata"]["name"], f"volume {v['name']}: unknown Secret")
        used |= {i["key"] for i in v["secret"].get("items", [])}
check(used and used <= held, f"the Deployment reads Secret keys {sorted(used)}, the Secret holds {sorted(held)}")
env = {e["name"] for e in c.get("env", [])}
check("KEYSTORE_DATABASE_URL" in env, "KEYSTORE_DATABASE_URL must come from the Secret (PostgreSQL)")

svc_port = next((p for p in svc["spec"]["ports"] if p.get("targetPort") in ports), None)
check(svc_port is not None, "the Service targets no container port")
host = f"{svc['metadata']['name']}.{svc['metadata'].get('namespace', ns)}.svc.cluster.local"
store = plugin.get("spec", {}).get("pluginConfig", {}).get("store", {})
if svc_port:
    want = f"outbound|{svc_port['port']}||{host}"
    check(store.get("cluster") == want, f"WasmPlugin store.cluster {store.get('cluster')!r} != {want!r}")
check(store.get("authority") == host, f"WasmPlugin store.authority {store.get('authority')!r} != {host!r}")
spec = plugin.get("spec", {})
check(plugin.get("apiVersion") == "extensions.istio.io/v1alpha1", "WasmPlugin apiVersion")
check(str(spec.get("url", "")).startswith("oci://"), "WasmPlugin url must be oci://")
check(spec.get("phase") in {"AUTHN", "AUTHZ", "STATS", "UNSPECIFIED_PHASE"}, "WasmPlugin phase")
check(spec.get("failStrategy", "FAIL_CLOSE") == "FAIL_CLOSE", "WasmPlugin must fail closed")
check(spec.get("selector", {}).get("matchLabels"), "WasmPlugin needs a selector")

for e in errors:
    print(f"check-k8s: {e}", file=sys.stderr)
if errors:
    sys.exit(1)
print(f"check-k8s: {sum(len(v) for v in docs.values())} resources in {d} ok")
PY

# 3. The monitoring Component (envoy/kubernetes/monitoring/): Prometheus Operator resources,
#    whose CRDs kubernetes-validate does not bundle. Each is validated against the CRD's own
#    openAPIV3Schema (scripts/crd-schemas/, from prometheus-operator v0.93.0) with `jsonschema`,
#    unknown fields refused as the API server's strict field validation would; then what no
#    schema says (it scrapes the Service's port and the WasmPlugin's pods; the PrometheusRule is
#    envoy/grafana/alerts.yaml as scripts/prometheusrule.py prints it).
"$venv/bin/python" - "$dir" <<'PY'
import json, os, subprocess, sys, yaml
from jsonschema import Draft7Validator

d = sys.argv[1]
mon = os.path.join(d, "monitoring")
errors = []
def check(ok, msg):
    if not ok:
        errors.append(msg)

def unknown_fields(doc, schema, path):
    """Fields the schema does not declare (what `kubectl apply --validate=strict` refuses)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found = []
    if isinstance(doc, dict):
        props, extra = schema.get("properties"), schema.get("additionalProperties")
        for k, v in doc.items():
            if props is not None and k in props:
                found += unknown_fields(v, props[k], f"{path}.{k}")
            elif isinstance(extra, dict):
                found += unknown_fields(v, extra, f"{path}.{k}")
            elif props is not None and extra is not True:
                found.append(f"{path}.{k}")
    elif isinstance(doc, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(doc):
            found += unknown_fields(v, schema["items"], f"{path}[{i}]")
    return found

def schema_errors(doc):
    path = os.path.join("scripts/crd-schemas", f"{doc.get('kind')}.v1.json")
    if doc.get("apiVersion") != "monitoring.coreos.com/v1" or not os.path.exists(path):
        return [f"{doc.get('apiVersion')} {doc.get('kind')}: no CRD schema to check it against"]
    with open(path) as f:
        schema = json.load(f)
    found = [f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
             for e in Draft7Validator(schema).iter_errors(doc)]
    return found + [f"unknown field {u}" for u in unknown_fields(doc, schema, "")]

# The check itself must refuse what the API server refuses.
probe = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
         "metadata": {"name": "x"}, "spec": {"selector": {}, "endpoints": [{"prot": "http", "interval": 5}]}}
check(len(schema_errors(probe)) == 2, f"the CRD check misses errors in a broken ServiceMonitor: {schema_errors(probe)}")

with open(os.path.join(mon, "kustomization.yaml")) as f:
    comp = yaml.safe_load(f)
check(comp.get("kind") == "Component" and comp.get("apiVersion") == "kustomize.config.k8s.io/v1alpha1",
      "monitoring/kustomization.yaml must be a kustomize Component")
files = {n for n in os.listdir(mon) if n.endswith(".yaml")} - {"kustomization.yaml"}
check(set(comp.get("resources", [])) == files, f"Component resources {comp.get('resources')} != files {sorted(files)}")

docs = {}
for name in sorted(files):
    with open(os.path.join(mon, name)) as f:
        for doc in yaml.safe_load_all(f):
            for e in schema_errors(doc):
                errors.append(f"monitoring/{name}: {e}")
            docs[doc["kind"]] = doc
def base(kind):
    for name in os.listdir(d):
        if name.endswith(".yaml"):
            with open(os.path.join(d, name)) as f:
                for doc in yaml.safe_load_all(f):
                    if doc and doc.get("kind") == kind:
                        return doc
    return {}
svc, plugin = base("Service"), base("WasmPlugin")

sm = docs.get("ServiceMonitor", {})
check(sm, "no ServiceMonitor")
svc_ns = svc["metadata"].get("namespace")
check(sm.get("metadata", {}).get("namespace") == svc_ns
      and svc_ns in sm.get("spec", {}).get("namespaceSelector", {}).get("matchNames", []),
      "the ServiceMonitor must live in and select the keystore Service's namespace")
want = sm.get("spec", {}).get("selector", {}).get("matchLabels", {})
check(want and all(svc["metadata"].get("labels", {}).get(k) == v for k, v in want.items()),
      f"the ServiceMonitor's selector {want} does not select the Service {svc['metadata'].get('labels')}")
svc_ports = {p.get("name") for p in svc["spec"]["ports"]}
for ep in sm.get("spec", {}).get("endpoints", []):
    check(ep.get("port") in svc_ports and ep.get("path") == "/metrics",
          f"ServiceMonitor endpoint {ep} is not the Service's port {sorted(svc_ports)} with /metrics")

pm = docs.get("PodMonitor", {})
check(pm, "no PodMonitor")
check(pm.get("metadata", {}).get("namespace") == plugin["metadata"].get("namespace")
      and pm.get("spec", {}).get("selector") == plugin["spec"].get("selector"),
      "the PodMonitor must select the WasmPlugin's pods, in its namespace")
for ep in pm.get("spec", {}).get("podMetricsEndpoints", []):
    check(ep.get("port") == "http-envoy-prom" and ep.get("path") == "/stats/prometheus",
          f"PodMonitor endpoint {ep}: Envoy's stats are on http-envoy-prom, /stats/prometheus")

with open(os.path.join(mon, "prometheusrule.yaml")) as f:
    committed = f.read()
generated = subprocess.run([sys.executable, "scripts/prometheusrule.py"], capture_output=True,
                           text=True, check=True).stdout
check(committed == generated, "monitoring/prometheusrule.yaml differs from envoy/grafana/alerts.yaml: "
      "run .tools/venv/bin/python scripts/prometheusrule.py > envoy/kubernetes/monitoring/prometheusrule.yaml")

for e in errors:
    print(f"check-k8s: {e}", file=sys.stderr)
if errors:
    sys.exit(1)
print(f"check-k8s: {len(docs)} monitoring resources in {mon} ok (CRD schemas, cross-references)")
PY

# 4. The Component composes with the manifests (kustomize, as `kubectl apply -k` runs it).
if command -v kubectl >/dev/null; then
  mkdir -p target
  overlay=$(mktemp -d -p "$PWD/target" check-k8s.XXXXXX)
  trap 'rm -rf "$overlay"' EXIT
  rel=$(realpath --relative-to="$overlay" "$dir")
  printf 'resources: [%s]\ncomponents: [%s/monitoring]\n' "$rel" "$rel" >"$overlay/kustomization.yaml"
  kinds=$(kubectl kustomize "$overlay" | grep -c '^kind: ')
  echo "check-k8s: kubectl kustomize of the manifests with the monitoring Component: $kinds resources"
else
  echo "check-k8s: kubectl not installed: the kustomize build of the monitoring Component not run" >&2
fi
