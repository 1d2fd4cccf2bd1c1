#!/usr/bin/env bash
# Checks the container and Istio deployment files without running any container:
#   1. envoy/docker-compose.yaml is a valid compose file (`docker compose config -q`, or
#      `docker-compose config -q`; Debian's docker-compose package is installed if neither works);
#   2. the compose Envoy configurations (envoy/compose/envoy-{a,b}.yaml) pass
#      `envoy --mode validate` with the real keygate.wasm (validate mode loads the module and
#      runs the filter's on_configure, so the filter configuration is checked too);
#   3. they agree with each other and with the rest: A and B differ only in node.id; the compose
#      image is the Envoy major.minor the tests run; envoy/istio/wasmplugin.yaml parses, and its
#      pluginConfig is the compose filter configuration except store.cluster/store.authority;
#      that pluginConfig, given to the real filter in an Envoy config that has Istio's cluster
#      name, passes `envoy --mode validate` as well.
# Exits non-zero on the first failure. Idempotent; after the first run (which may apt-get
# install docker-compose and python3-yaml) it takes a few seconds. Used by `make test`.
#
# Needs: the filter built (make build) and Envoy installed (make setup). Overrides:
# KEYGATE_ENVOY (envoy binary), KEYGATE_WASM (keygate.wasm), as in the test harness.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[check-compose] %s\n' "$*" >&2; }
die() { say "FAIL: $*"; exit 1; }

COMPOSE_FILE=envoy/docker-compose.yaml
ENVOY_CONFIGS=(envoy/compose/envoy-a.yaml envoy/compose/envoy-b.yaml)
ISTIO_PLUGIN=envoy/istio/wasmplugin.yaml
# The path the compose file mounts the filter at, inside the Envoy containers.
CONTAINER_WASM=/etc/keygate/keygate.wasm
ENVOY=${KEYGATE_ENVOY:-.tools/venv/bin/envoy}
WASM=${KEYGATE_WASM:-target/wasm32-wasip1/release/keygate.wasm}

for f in "$COMPOSE_FILE" "${ENVOY_CONFIGS[@]}" "$ISTIO_PLUGIN"; do
  [ -f "$f" ] || die "$f is missing"
done
[ -x "$ENVOY" ] || die "no Envoy at $ENVOY: run \`make setup\`"
[ -f "$WASM" ] || die "no filter at $WASM: run \`make build\`"
WASM=$(cd "$(dirname "$WASM")" && pwd)/$(basename "$WASM")

# Debian packages, installed once. Root on CI; sudo elsewhere if there is one.
apt_install() {
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "need root (or sudo) to apt-get install $*"
    sudo=(sudo)
  fi
  say "installing Debian packages: $*"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  # --no-install-recommends: docker-compose recommends docker.io, a whole engine we do not use.
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# 1. The compose file. `docker compose` (the v2 plugin) when it works, else docker-compose.
compose=()
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
else
  apt_install docker-compose
  command -v docker-compose >/dev/null || die "docker-compose still missing after apt-get install"
  compose=(docker-compose)
fi
# `config` reads the file only: no Docker engine needed. Unset variables take the file's
# defaults; the environment must not make the check pass or fail, so ENVOY_IMAGE etc. are
# cleared.
if ! out=$(env -u ENVOY_IMAGE -u KEYGATE_ROOT_KEY -u KEYSTORE_LOG \
    "${compose[@]}" -f "$COMPOSE_FILE" config -q 2>&1); then
  printf '%s\n' "$out" >&2
  die "$COMPOSE_FILE: \`${compose[*]} config -q\` failed"
fi
say "ok: $COMPOSE_FILE (${compose[*]} config -q)"

# 2 and 3 need a YAML parser: Debian's python3-yaml (docker-compose already pulls it in).
py=""
for cand in python3 /usr/bin/python3; do
  if command -v "$cand" >/dev/null && "$cand" -c 'import yaml' 2>/dev/null; then py=$cand; break; fi
done
if [ -z "$py" ]; then
  apt_install python3-yaml
  py=/usr/bin/python3
  "$py" -c 'import yaml' || die "python3-yaml still missing after apt-get install"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

envoy_version=$("$ENVOY" --version | sed -n 's#.*/\([0-9][0-9]*\.[0-9][0-9]*\)\.[0-9][0-9]*/.*#\1#p' | head -n 1)
[ -n "$envoy_version" ] || die "cannot read the version of $ENVOY"

# Consistency checks; writes the configurations to validate into $tmp (the container's wasm
# path replaced by the host's), one file name per line on stdout.
to_validate=$("$py" - "$tmp" "$WASM" "$CONTAINER_WASM" "$envoy_version" "$COMPOSE_FILE" \
    "$ISTIO_PLUGIN" "${ENVOY_CONFIGS[@]}" <<'PY'
import copy, json, os, re, sys
import yaml

tmp, wasm, container_wasm, envoy_version, compose_file, istio_file, *envoy_files = sys.argv[1:]
errors = []

def fail(msg):
    errors.append(msg)

def load(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)

def wasm_filter(cfg):
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    for f in hcm["typed_config"]["http_filters"]:
        if f["name"] == "envoy.filters.http.wasm":
            return f["typed_config"]["config"]
    raise KeyError("no envoy.filters.http.wasm filter")

# The compose file: the Envoy image is the major.minor that the tests run (.tools/venv).
compose = load(compose_file)
services = compose.get("services", {})
for name in ("keystore", "upstream", "envoy-a", "envoy-b"):
    if name not in services:
        fail(f"{compose_file}: no service {name}")
for name in ("envoy-a", "envoy-b"):
    svc = services.get(name, {})
    m = re.search(r"envoyproxy/envoy:v(\d+\.\d+)", str(svc.get("image", "")))
    if not m:
        fail(f"{compose_file}: {name}: image is not envoyproxy/envoy:vX.Y...")
    elif m.group(1) != envoy_version:
        fail(f"{compose_file}: {name}: image is Envoy {m.group(1)}, the tests run {envoy_version}")
    cmd = svc.get("command", [])
    if "--concurrency" not in cmd or cmd[cmd.index("--concurrency") + 1] != "2":
        fail(f"{compose_file}: {name}: not started with --concurrency 2")
    mounts = {v.get("target"): v for v in svc.get("volumes", []) if isinstance(v, dict)}
    w = mounts.get(container_wasm, {})
    if w.get("source") != "../target/wasm32-wasip1/release/keygate.wasm" or not w.get("read_only"):
        fail(f"{compose_file}: {name}: keygate.wasm is not mounted read-only at {container_wasm}")

# A and B: the same configuration but for node.id.
configs = {path: load(path) for path in envoy_files}
(path_a, a), (path_b, b) = configs.items()
if a["node"]["id"] == b["node"]["id"]:
    fail(f"{path_a} and {path_b} have the same node.id")
a0, b0 = copy.deepcopy(a), copy.deepcopy(b)
a0["node"]["id"] = b0["node"]["id"] = None
if a0 != b0:
    fail(f"{path_a} and {path_b} differ in more than node.id")

# The filter configuration (JSON text in a StringValue).
try:
    filter_cfg = json.loads(wasm_filter(a)["configuration"]["value"])
except (KeyError, ValueError) as e:
    fail(f"{path_a}: cannot read the filter configuration: {e}")
    filter_cfg = None

# The Istio WasmPlugin.
plugin = load(istio_file)
spec = plugin.get("spec", {})
want = {
    "apiVersion": (plugin.get("apiVersion"), "extensions.istio.io/v1alpha1"),
    "kind": (plugin.get("kind"), "WasmPlugin"),
    "spec.phase": (spec.get("phase"), "AUTHN"),
    "spec.pluginName": (spec.get("pluginName"), wasm_filter(a)["root_id"]),
    "spec.failStrategy": (spec.get("failStrategy"), "FAIL_CLOSE"),
}
for field, (have, expected) in want.items():
    if have != expected:
        fail(f"{istio_file}: {field} is {have!r}, want {expected!r}")
if not str(spec.get("url", "")).startswith("oci://"):
    fail(f"{istio_file}: spec.url is not an oci:// image")
if not spec.get("selector", {}).get("matchLabels"):
    fail(f"{istio_file}: no spec.selector.matchLabels")
istio_cfg = spec.get("pluginConfig")
istio_cluster = ((istio_cfg or {}).get("store") or {}).get("cluster", "")
if not re.fullmatch(r"outbound\|\d+\|[^|]*\|[A-Za-z0-9.-]+", istio_cluster):
    fail(f"{istio_file}: store.cluster {istio_cluster!r} is not an Istio outbound cluster name")
elif istio_cfg["store"].get("authority") != istio_cluster.rsplit("|", 1)[1]:
    fail(f"{istio_file}: store.authority is not the host of store.cluster")
if filter_cfg is not None and istio_cfg is not None:
    x, y = copy.deepcopy(filter_cfg), copy.deepcopy(istio_cfg)
    for c in (x, y):
        c.get("store", {}).pop("cluster", None)
        c.get("store", {}).pop("authority", None)
    if x != y:
        fail(f"{istio_file}: pluginConfig differs from the compose filter configuration "
             f"(beyond store.cluster and store.authority):\n  compose {json.dumps(x, sort_keys=True)}"
             f"\n  istio   {json.dumps(y, sort_keys=True)}")

if errors:
    for e in errors:
        print(f"[check-compose] FAIL: {e}", file=sys.stderr)
    sys.exit(1)

# Files for `envoy --mode validate`: the compose configurations with the host's wasm path
# (the text is kept as written, only the path changes), then an "Istio" variant of A: the
# pluginConfig as Istio hands it over (JSON text) and the keystore cluster under Istio's name.
for path in envoy_files:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    quoted = f'"{container_wasm}"'
    if text.count(quoted) != 1:
        print(f"[check-compose] FAIL: {path}: expected {quoted} exactly once", file=sys.stderr)
        sys.exit(1)
    out = os.path.join(tmp, os.path.basename(path))
    with open(out, "w", encoding="utf-8") as f:
        f.write(text.replace(quoted, json.dumps(wasm)))
    print(out)

istio_like = copy.deepcopy(a)
wf = wasm_filter(istio_like)
wf["vm_config"]["code"]["local"]["filename"] = wasm
wf["configuration"]["value"] = json.dumps(istio_cfg, separators=(",", ":"))
store_cluster = filter_cfg["store"]["cluster"]
for c in istio_like["static_resources"]["clusters"]:
    if c["name"] == store_cluster:
        c["name"] = c["load_assignment"]["cluster_name"] = istio_cluster
vhosts = istio_like["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
    "typed_config"]["route_config"]["virtual_hosts"]
for vh in vhosts:
    for r in vh["routes"]:
        if r.get("route", {}).get("cluster") == store_cluster:
            r["route"]["cluster"] = istio_cluster
out = os.path.join(tmp, "envoy-istio-plugin-config.yaml")
with open(out, "w", encoding="utf-8") as f:
    yaml.safe_dump(istio_like, f, sort_keys=False)
print(out)
PY
) || die "consistency checks failed"
say "ok: Envoy A/B configs agree, image is Envoy $envoy_version, $ISTIO_PLUGIN matches"

# 2. envoy --mode validate on each.
while IFS= read -r cfg; do
  [ -n "$cfg" ] || continue
  if ! out=$("$ENVOY" --mode validate -c "$cfg" -l warning 2>&1); then
    printf '%s\n' "$out" | tail -n 20 >&2
    die "envoy --mode validate: $(basename "$cfg")"
  fi
  say "ok: envoy --mode validate $(basename "$cfg")"
done <<<"$to_validate"

# 4. envoy/examples/flood-limit.yaml (a per-client local rate limit in front of keygate), with
#    the real filter: validate mode loads the module and the rate-limit descriptors.
example=envoy/examples/flood-limit.yaml
[ -f "$example" ] || die "$example is missing"
sed "s#\"$CONTAINER_WASM\"#\"$WASM\"#" "$example" >"$tmp/flood-limit.yaml"
if ! out=$("$ENVOY" --mode validate -c "$tmp/flood-limit.yaml" -l warning 2>&1); then
  printf '%s\n' "$out" | tail -n 20 >&2
  die "envoy --mode validate: $example"
fi
say "ok: envoy --mode validate $example"
say "all compose/Istio checks passed"
