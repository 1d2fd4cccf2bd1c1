#!/usr/bin/env bash
# Validates envoy/kubernetes/ offline (in `make test`):
#  1. every built-in resource against the Kubernetes OpenAPI schemas bundled in the PyPI package
#     kubernetes-validate (--strict: unknown fields are errors), installed in .tools/venv by
#     `scripts/setup.sh test`;
#  2. what no schema says: kustomization.yaml lists every manifest but the WasmPlugin; the Service and the PDB
#     select the Deployment's pods; the probes hit /healthz on a declared container port; the
#     Secret holds every key the Deployment reads; resources and limits are set; the
#     WasmPlugin's store.cluster and store.authority name the Service and its port; the
#     container's arguments are options of the built keystore binary.
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
