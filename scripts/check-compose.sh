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
#      name, passes `envoy --mode validate` as well;
#   4. deploying safely (README "Deploying safely"): every shipped Envoy configuration
#      (envoy/envoy.yaml.tmpl, envoy/compose/envoy-{a,b}.yaml, the Istio EnvoyFilter) sets
#      normalize_path, merge_slashes, path_with_escaped_slashes_action and
#      headers_with_underscores_action on each HTTP connection manager, and binds Envoy's admin
#      interface to 127.0.0.1; no admin port is published;
#   6. integrations/openviking/: render.sh renders envoy.yaml.tmpl with a root key and a
#      protocol token from files (output mode 0600, the key written only there, `%` escaped);
#      the result has the hardening above and passes `envoy --mode validate` with the real
#      filter and integrations/openviking/keygate.json; the template holds no key;
#   7. keystore/Dockerfile's docker run example: secrets from files, real keystore options;
#   5. no secret is shipped: no literal root key or protocol token in the shipped files, the
#      keystore reads both from files that envoy/compose/init-secrets.sh generates (run here on
#      temporary directories; the configurations it renders are the ones validated in 2, and the
#      secrets it generates must start the real keystore when it is built).
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
ISTIO_HARDENING=envoy/istio/hardening.yaml
ENVOY_TEMPLATE=envoy/envoy.yaml.tmpl
RATELIMIT_TEMPLATE=envoy/ratelimit/envoy.yaml.tmpl
INIT_SECRETS=envoy/compose/init-secrets.sh
KEYSTORE=${KEYGATE_KEYSTORE:-target/release/keystore}
# The path the compose file mounts the filter at, inside the Envoy containers.
CONTAINER_WASM=/etc/keygate/keygate.wasm
ENVOY=${KEYGATE_ENVOY:-.tools/venv/bin/envoy}
WASM=${KEYGATE_WASM:-target/wasm32-wasip1/release/keygate.wasm}

for f in "$COMPOSE_FILE" "${ENVOY_CONFIGS[@]}" "$ISTIO_PLUGIN" "$ISTIO_HARDENING" "$ENVOY_TEMPLATE" "$RATELIMIT_TEMPLATE" "$INIT_SECRETS"; do
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
if ! out=$(env -u ENVOY_IMAGE -u KEYSTORE_LOG \
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

# 5. The secrets service's script, on temporary directories: it must generate both secrets and
# render both Envoy configurations with the token, and keep them on a second run.
secrets_dir=$tmp/secrets rendered_dir=$tmp/rendered
run_init() {
  SECRETS_DIR=$secrets_dir ENVOY_DIR=$rendered_dir TEMPLATE_DIR=envoy/compose KEYSTORE_UID=$(id -u) \
    bash "$INIT_SECRETS" >"$tmp/init.log" 2>&1 || { cat "$tmp/init.log" >&2; die "$INIT_SECRETS failed"; }
}
run_init
first=$(cat "$secrets_dir/root.key" "$secrets_dir/protocol.token" "$rendered_dir/envoy-a.yaml")
run_init
[ "$first" = "$(cat "$secrets_dir/root.key" "$secrets_dir/protocol.token" "$rendered_dir/envoy-a.yaml")" ] ||
  die "$INIT_SECRETS replaced existing secrets on its second run"
grep -q 'keeping' "$tmp/init.log" || die "$INIT_SECRETS: no 'keeping' on its second run"
for f in root.key protocol.token; do
  [ "$(stat -c %a "$secrets_dir/$f")" = 400 ] || die "$INIT_SECRETS: $f is not mode 0400"
done
say "ok: $INIT_SECRETS generates the root key and the protocol token once, renders envoy-{a,b}.yaml"
# The generated secrets pass the keystore's own rules (entropy, form): it starts with them.
if [ -x "$KEYSTORE" ]; then
  "$KEYSTORE" serve --db "$tmp/ks.db" --listen 127.0.0.1:0 --root-key-file "$secrets_dir/root.key" \
    --protocol-token-file "$secrets_dir/protocol.token" >"$tmp/ks.log" 2>&1 &
  ks_pid=$!
  for _ in $(seq 100); do
    grep -q 'keystore listening on' "$tmp/ks.log" && break
    kill -0 "$ks_pid" 2>/dev/null || break
    sleep 0.1
  done
  ok=0; grep -q 'keystore listening on' "$tmp/ks.log" && ok=1
  kill "$ks_pid" 2>/dev/null || true; wait "$ks_pid" 2>/dev/null || true
  [ "$ok" = 1 ] || { cat "$tmp/ks.log" >&2; die "the keystore refused the generated secrets"; }
  say "ok: the keystore starts with the generated root key and protocol token"
else
  say "skipped: keystore start with the generated secrets (no $KEYSTORE: make build)"
fi

envoy_version=$("$ENVOY" --version | sed -n 's#.*/\([0-9][0-9]*\.[0-9][0-9]*\)\.[0-9][0-9]*/.*#\1#p' | head -n 1)
[ -n "$envoy_version" ] || die "cannot read the version of $ENVOY"

# Consistency checks; writes the configurations to validate into $tmp (the container's wasm
# path replaced by the host's), one file name per line on stdout.
to_validate=$("$py" - "$tmp" "$WASM" "$CONTAINER_WASM" "$envoy_version" "$COMPOSE_FILE" \
    "$ISTIO_PLUGIN" "$ISTIO_HARDENING" "$ENVOY_TEMPLATE" "$RATELIMIT_TEMPLATE" "$rendered_dir" "$secrets_dir" \
    "${ENVOY_CONFIGS[@]}" <<'PY'
import copy, glob, json, os, re, sys
import yaml

(tmp, wasm, container_wasm, envoy_version, compose_file, istio_file, istio_hardening_file,
 template_file, ratelimit_file, rendered_dir, secrets_dir, *envoy_files) = sys.argv[1:]
errors = []
HCM = "envoy.filters.network.http_connection_manager"
TOKEN_PLACEHOLDER = "@KEYGATE_PROTOCOL_TOKEN@"
# What every shipped HTTP connection manager must say (README "Deploying safely").
HARDENING = {
    "normalize_path": True,
    "merge_slashes": True,
    "path_with_escaped_slashes_action": "REJECT_REQUEST",
}
UNDERSCORES = ("common_http_protocol_options", "headers_with_underscores_action", "DROP_HEADER")

def fail(msg):
    errors.append(msg)

def load(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)

def hcms(cfg):
    for listener in cfg.get("static_resources", {}).get("listeners", []):
        for chain in listener.get("filter_chains", []):
            for f in chain.get("filters", []):
                if f.get("name") == HCM:
                    yield f["typed_config"]

def wasm_filter(cfg):
    hcm = next(hcms(cfg))
    for f in hcm["http_filters"]:
        if f["name"] == "envoy.filters.http.wasm":
            return f["typed_config"]["config"]
    raise KeyError("no envoy.filters.http.wasm filter")

def check_hardening(where, hcm):
    for key, want in HARDENING.items():
        if hcm.get(key) != want:
            fail(f"{where}: {key} is {hcm.get(key)!r}, want {want!r} (README: Deploying safely)")
    section, key, want = UNDERSCORES
    have = (hcm.get(section) or {}).get(key)
    if have != want:
        fail(f"{where}: {section}.{key} is {have!r}, want {want!r} (README: Deploying safely)")

def check_envoy_config(path, cfg):
    found = list(hcms(cfg))
    if not found:
        fail(f"{path}: no HTTP connection manager")
    for i, hcm in enumerate(found):
        check_hardening(f"{path}: HTTP connection manager {i}", hcm)
    admin = (cfg.get("admin") or {}).get("address", {}).get("socket_address", {})
    if admin.get("address") != "127.0.0.1":
        fail(f"{path}: admin binds {admin.get('address')!r}, want 127.0.0.1")

def render_template(path, values):
    # Placeholders filled from `values` (default "1"); a line that is only a placeholder is
    # dropped unless `values` has it (then it is replaced by the value, indented alike).
    lines = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            alone = re.fullmatch(r"(\s*)(@[A-Z_]+@)\s*", line)
            if alone:
                if alone.group(2) in values:
                    lines.append(alone.group(1) + values[alone.group(2)] + "\n")
                continue
            lines.append(re.sub(r"@[A-Z_]+@", lambda m: values.get(m.group(0), "1"), line))
    return "".join(lines)

def template_as_yaml(path):
    return yaml.safe_load(render_template(path, {}))

RATELIMIT_FILTERS = ("envoy.filters.http.header_mutation", "envoy.filters.http.local_ratelimit")

def check_plans(path, limiter):
    # Fail closed: every request with an account meets exactly one account bucket. Each
    # rate_limits entry is [header_value_match on x-plan -> plan, x-account-id -> account]; one
    # entry (expect_match false) gives plan=default to every x-plan its regex does not match
    # in full; the others (exact match, expect_match true) give their plan. The regex must be
    # exactly the named plans, and every plan value produced must have a bucket.
    cfg = limiter.get("typed_config", {})
    buckets = set()
    # retry-after (whole seconds) covers the slowest bucket's time for one token.
    retry = [h["header"]["value"] for h in cfg.get("response_headers_to_add", [])
             if h.get("header", {}).get("key") == "retry-after"]
    for d in cfg.get("descriptors", []):
        tb = d.get("token_bucket", {})
        per_token = float(str(tb.get("fill_interval", "0s")).rstrip("s")) / max(1, tb.get("tokens_per_fill", 1))
        if len(retry) != 1 or not retry[0].isdigit() or int(retry[0]) < per_token:
            fail(f"{path}: retry-after {retry} is shorter than one token of bucket {d.get('entries')} ({per_token} s)")
        e = d.get("entries", [])
        if len(e) == 2 and e[0].get("key") == "plan" and e[1] == {"key": "account"}:
            buckets.add(e[0].get("value"))
        else:
            fail(f"{path}: descriptor {e} is not [plan=<name>, account]")
    named, default_regex = set(), None
    for rl in cfg.get("rate_limits", []):
        acts = rl.get("actions", [])
        hvm = (acts[0] if acts else {}).get("header_value_match", {})
        hdrs = hvm.get("headers", [])
        if (len(acts) != 2 or hvm.get("descriptor_key") != "plan" or len(hdrs) != 1
                or hdrs[0].get("name") != "x-plan"
                or acts[1] != {"request_headers": {"header_name": "x-account-id", "descriptor_key": "account"}}):
            fail(f"{path}: rate_limits entry {rl} is not [x-plan match -> plan, x-account-id -> account]")
            continue
        sm = hdrs[0].get("string_match", {})
        if hvm.get("expect_match") is False and hvm.get("descriptor_value") == "default":
            default_regex = sm.get("safe_regex", {}).get("regex")
        elif hvm.get("expect_match", True) and sm.get("exact") == hvm.get("descriptor_value"):
            named.add(hvm.get("descriptor_value"))
        else:
            fail(f"{path}: rate_limits entry {rl}: a plan is an exact match giving its own name")
    if default_regex is None:
        fail(f"{path}: no rate_limits entry gives plan=default to the other x-plan values")
    elif sorted(default_regex.split("|")) != sorted(named):
        fail(f"{path}: the default entry's regex {default_regex!r} is not exactly the plans {sorted(named)}")
    if buckets != named | {"default"}:
        fail(f"{path}: buckets for plans {sorted(b for b in buckets if b)}, rate_limits give {sorted(named | {'default'})}")

# The compose file: the Envoy image is the major.minor that the tests run (.tools/venv).
compose = load(compose_file)
services = compose.get("services", {})
for name in ("secrets", "keystore", "upstream", "envoy-a", "envoy-b"):
    if name not in services:
        fail(f"{compose_file}: no service {name}")

def mounts(svc):
    out = {}
    for v in svc.get("volumes", []):
        if isinstance(v, dict):
            out[v.get("target")] = v
        else:
            parts = str(v).split(":")
            out[parts[1] if len(parts) > 1 else parts[0]] = {
                "source": parts[0], "target": parts[1] if len(parts) > 1 else parts[0],
                "read_only": len(parts) > 2 and "ro" in parts[2].split(",")}
    return out

for name, node in (("envoy-a", "a"), ("envoy-b", "b")):
    svc = services.get(name, {})
    m = re.search(r"envoyproxy/envoy:v(\d+\.\d+)", str(svc.get("image", "")))
    if not m:
        fail(f"{compose_file}: {name}: image is not envoyproxy/envoy:vX.Y...")
    elif m.group(1) != envoy_version:
        fail(f"{compose_file}: {name}: image is Envoy {m.group(1)}, the tests run {envoy_version}")
    cmd = svc.get("command", [])
    if "--concurrency" not in cmd or cmd[cmd.index("--concurrency") + 1] != "2":
        fail(f"{compose_file}: {name}: not started with --concurrency 2")
    if "-c" not in cmd or cmd[cmd.index("-c") + 1] != f"/etc/envoy/rendered/envoy-{node}.yaml":
        fail(f"{compose_file}: {name}: not started with -c /etc/envoy/rendered/envoy-{node}.yaml")
    mt = mounts(svc)
    w = mt.get(container_wasm, {})
    if w.get("source") != "../target/wasm32-wasip1/release/keygate.wasm" or not w.get("read_only"):
        fail(f"{compose_file}: {name}: keygate.wasm is not mounted read-only at {container_wasm}")
    r = mt.get("/etc/envoy/rendered", {})
    if r.get("source") != "envoy-config" or not r.get("read_only"):
        fail(f"{compose_file}: {name}: volume envoy-config is not mounted read-only at /etc/envoy/rendered")
    if any(v.get("source") == "keystore-secrets" for v in mt.values()):
        fail(f"{compose_file}: {name}: mounts keystore-secrets (the root key belongs to the keystore only)")
    for port in svc.get("ports", []):
        if str(port).split(":")[-1].split("/")[0] == "9901":
            fail(f"{compose_file}: {name}: publishes Envoy's admin port ({port})")
    if (svc.get("depends_on") or {}).get("secrets", {}).get("condition") != "service_completed_successfully":
        fail(f"{compose_file}: {name}: does not wait for the secrets service")

# No literal secret: the keystore reads both secrets from the generated files.
ks = services.get("keystore", {})
env = ks.get("environment") or {}
env_names = env.keys() if isinstance(env, dict) else [str(e).split("=")[0] for e in env]
for var in ("KEYSTORE_ROOT_KEY", "KEYSTORE_PROTOCOL_TOKEN"):
    if var in env_names:
        fail(f"{compose_file}: keystore: {var} is set in the file (a secret must not be shipped)")
cmd = [str(c) for c in ks.get("command", [])]
for opt, path in (("--root-key-file", "/run/keygate/secrets/root.key"),
                  ("--protocol-token-file", "/run/keygate/secrets/protocol.token")):
    if opt not in cmd or cmd[cmd.index(opt) + 1] != path:
        fail(f"{compose_file}: keystore: not started with {opt} {path}")
sec = mounts(ks).get("/run/keygate/secrets", {})
if sec.get("source") != "keystore-secrets" or not sec.get("read_only"):
    fail(f"{compose_file}: keystore: volume keystore-secrets is not mounted read-only at /run/keygate/secrets")
init = services.get("secrets", {})
if "init-secrets.sh" not in " ".join(str(c) for c in init.get("command", [])):
    fail(f"{compose_file}: secrets: does not run init-secrets.sh")
secret_like = re.compile(r"kgroot_[A-Za-z0-9_-]{6,}|kgproto_[A-Za-z0-9_-]{6,}|kg_[A-Za-z0-9_-]{43}"
                         r"|DEMO_ONLY|not_a_secret|change_me", re.I)
shipped = [compose_file, template_file, istio_file, istio_hardening_file] + sorted(
    glob.glob("envoy/compose/*.yaml") + glob.glob("envoy/compose/*.sh")
    + glob.glob("envoy/ratelimit/*.yaml"))
for path in shipped:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if secret_like.search(line):
                fail(f"{path}:{n}: looks like a shipped secret: {line.strip()[:80]}")

# Deploying safely: the templates and the compose configurations.
check_envoy_config(template_file, template_as_yaml(template_file))
check_envoy_config(ratelimit_file, template_as_yaml(ratelimit_file))
# The rate-limit template is the main one plus its two filters, around keygate, in order.
rl, main = template_as_yaml(ratelimit_file), template_as_yaml(template_file)
rl_filters = [f["name"] for f in next(hcms(rl))["http_filters"]]
want_order = [RATELIMIT_FILTERS[0], "envoy.filters.http.wasm", RATELIMIT_FILTERS[1],
              "envoy.filters.http.router"]
if rl_filters != want_order:
    fail(f"{ratelimit_file}: HTTP filters {rl_filters}, want {want_order} (the limiter after keygate)")
hcm = next(hcms(rl))
check_plans(ratelimit_file, next((f for f in hcm["http_filters"] if f["name"] == RATELIMIT_FILTERS[1]), {}))
hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] not in RATELIMIT_FILTERS]
# The admin route turns the limiter off (the admin API is not counted in an account's bucket).
admin_routes = [r for vh in hcm["route_config"]["virtual_hosts"] for r in vh["routes"]
                if r.get("match", {}).get("prefix") == "/api/v1/admin/"]
if len(admin_routes) != 1 or admin_routes[0].pop("typed_per_filter_config", None) != {
        RATELIMIT_FILTERS[1]: {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                               "disabled": True}}:
    fail(f"{ratelimit_file}: the /api/v1/admin/ route does not turn {RATELIMIT_FILTERS[1]} off")
if rl != main:
    fail(f"{ratelimit_file}: differs from {template_file} beyond its two rate-limit filters "
         f"and the admin route's limiter switch")
configs = {path: load(path) for path in envoy_files}
for path, cfg in configs.items():
    check_envoy_config(path, cfg)

# A and B: the same configuration but for node.id.
(path_a, a), (path_b, b) = configs.items()
if a["node"]["id"] == b["node"]["id"]:
    fail(f"{path_a} and {path_b} have the same node.id")
a0, b0 = copy.deepcopy(a), copy.deepcopy(b)
a0["node"]["id"] = b0["node"]["id"] = None
if a0 != b0:
    fail(f"{path_a} and {path_b} differ in more than node.id")

# The filter configuration (JSON text in a StringValue); the token is the placeholder that
# init-secrets.sh replaces.
try:
    filter_cfg = json.loads(wasm_filter(a)["configuration"]["value"])
except (KeyError, ValueError) as e:
    fail(f"{path_a}: cannot read the filter configuration: {e}")
    filter_cfg = None
if filter_cfg is not None and filter_cfg.get("store", {}).get("token") != TOKEN_PLACEHOLDER:
    fail(f"{path_a}: store.token is not the placeholder {TOKEN_PLACEHOLDER}")

# The rendered configurations: the templates with the generated token and nothing else changed.
token = open(os.path.join(secrets_dir, "protocol.token"), encoding="utf-8").read().strip()
for path in envoy_files:
    rendered = os.path.join(rendered_dir, os.path.basename(path))
    with open(path, encoding="utf-8") as f, open(rendered, encoding="utf-8") as g:
        if f.read().replace(TOKEN_PLACEHOLDER, token) != g.read():
            fail(f"{rendered}: not {path} with the generated token")
    cfg = load(rendered)
    if json.loads(wasm_filter(cfg)["configuration"]["value"])["store"].get("token") != token:
        fail(f"{rendered}: store.token is not the generated token")

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
if "token" in ((istio_cfg or {}).get("store") or {}):
    fail(f"{istio_file}: pluginConfig holds store.token: a token must not be shipped (README)")
if filter_cfg is not None and istio_cfg is not None:
    x, y = copy.deepcopy(filter_cfg), copy.deepcopy(istio_cfg)
    for c in (x, y):
        for k in ("cluster", "authority", "token"):
            c.get("store", {}).pop(k, None)
    if x != y:
        fail(f"{istio_file}: pluginConfig differs from the compose filter configuration "
             f"(beyond store.cluster, store.authority and store.token):\n"
             f"  compose {json.dumps(x, sort_keys=True)}\n  istio   {json.dumps(y, sort_keys=True)}")

# The Istio EnvoyFilter: merged into an HTTP connection manager without the settings, its
# patch gives exactly the compose configuration's connection manager settings.
ef = load(istio_hardening_file)
if ef.get("kind") != "EnvoyFilter" or not str(ef.get("apiVersion", "")).startswith("networking.istio.io/"):
    fail(f"{istio_hardening_file}: not an Istio EnvoyFilter")
patches = (ef.get("spec") or {}).get("configPatches") or []
if not patches:
    fail(f"{istio_hardening_file}: no configPatches")
for i, cp in enumerate(patches):
    if cp.get("applyTo") != "NETWORK_FILTER" or (cp.get("patch") or {}).get("operation") != "MERGE":
        fail(f"{istio_hardening_file}: patch {i} is not a MERGE on NETWORK_FILTER")
    name = (((cp.get("match") or {}).get("listener") or {}).get("filterChain") or {}).get("filter", {}).get("name")
    if name != HCM:
        fail(f"{istio_hardening_file}: patch {i} does not match {HCM}")
    tc = ((cp.get("patch") or {}).get("value") or {}).get("typed_config") or {}
    check_hardening(f"{istio_hardening_file}: patch {i}", tc)
    compose_hcm = next(hcms(a))
    for key in list(HARDENING) + [UNDERSCORES[0]]:
        if tc.get(key) != compose_hcm.get(key):
            fail(f"{istio_hardening_file}: patch {i}: {key} differs from {path_a}")

if errors:
    for e in errors:
        print(f"[check-compose] FAIL: {e}", file=sys.stderr)
    sys.exit(1)

# Files for `envoy --mode validate`: the configurations init-secrets.sh rendered, with the
# host's wasm path (the text is kept as written, only the path changes), then an "Istio"
# variant of A: the pluginConfig as Istio hands it over (JSON text) and the keystore cluster
# under Istio's name.
for path in envoy_files:
    with open(os.path.join(rendered_dir, os.path.basename(path)), encoding="utf-8") as f:
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
vhosts = next(hcms(istio_like))["route_config"]["virtual_hosts"]
for vh in vhosts:
    for r in vh["routes"]:
        if r.get("route", {}).get("cluster") == store_cluster:
            r["route"]["cluster"] = istio_cluster
out = os.path.join(tmp, "envoy-istio-plugin-config.yaml")
with open(out, "w", encoding="utf-8") as f:
    yaml.safe_dump(istio_like, f, sort_keys=False)
print(out)

# The templates, rendered as the harness does (ports, the host's wasm, the compose filter
# configuration with the generated token).
rendered_cfg = copy.deepcopy(filter_cfg)
rendered_cfg["store"]["token"] = token
for path in (template_file, ratelimit_file):
    text = render_template(path, {
        "@NODE_ID@": "check", "@ADMIN_PORT@": "19901", "@LISTEN_PORT@": "19000",
        "@UPSTREAM_PORT@": "19080", "@KEYSTORE_PORT@": "19081",
        "@WASM_PATH@": wasm.replace("\\", "\\\\").replace('"', '\\"'),
        "@KEYGATE_CONFIG@": json.dumps(rendered_cfg),
    })
    out = os.path.join(tmp, path.replace("/", "-").replace(".tmpl", ""))
    with open(out, "w", encoding="utf-8") as f:
        f.write(text)
    print(out)
PY
) || die "consistency checks failed"
say "ok: Envoy A/B configs agree, image is Envoy $envoy_version, $ISTIO_PLUGIN matches"
say "ok: hardening and admin on loopback in $ENVOY_TEMPLATE, $RATELIMIT_TEMPLATE, ${ENVOY_CONFIGS[*]}, $ISTIO_HARDENING; no shipped secret"
say "ok: $RATELIMIT_TEMPLATE is $ENVOY_TEMPLATE with header_mutation before and local_ratelimit after keygate, off on the admin route; every x-plan value meets one account bucket"

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

# 6. integrations/openviking/ (keygate in front of OpenViking in trusted mode).
ov_dir=integrations/openviking
for f in "$ov_dir/envoy.yaml.tmpl" "$ov_dir/keygate.json" "$ov_dir/render.sh"; do
  [ -f "$f" ] || die "$f is missing"
done
ov_key="ovroot_check_%_$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
printf '%s\n' "$ov_key" >"$tmp/ov-root.key"
printf 'kgproto_check_%s\n' "$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$tmp/ov-token"
grep -qF "$ov_key" "$ov_dir/envoy.yaml.tmpl" "$ov_dir/keygate.json" && die "$ov_dir ships a key"
OPENVIKING_ROOT_KEY_FILE=$tmp/ov-root.key KEYGATE_PROTOCOL_TOKEN_FILE=$tmp/ov-token NODE_ID=check \
  LISTEN_PORT=19000 ADMIN_PORT=19901 OPENVIKING_PORT=19080 KEYSTORE_PORT=19081 WASM_PATH="$WASM" \
  bash "$ov_dir/render.sh" "$tmp/openviking.yaml" || die "$ov_dir/render.sh failed"
[ "$(stat -c %a "$tmp/openviking.yaml")" = 600 ] || die "$ov_dir/render.sh: output is not mode 0600"
"$py" - "$tmp/openviking.yaml" "$ov_key" <<'PY' || die "$ov_dir: rendered configuration checks failed"
import sys, yaml
path, key = sys.argv[1:]
cfg = yaml.safe_load(open(path, encoding="utf-8"))
hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
errors = []
for k, want in {"normalize_path": True, "merge_slashes": True,
                "path_with_escaped_slashes_action": "REJECT_REQUEST"}.items():
    if hcm.get(k) != want:
        errors.append(f"{k} is {hcm.get(k)!r}")
if (hcm.get("common_http_protocol_options") or {}).get("headers_with_underscores_action") != "DROP_HEADER":
    errors.append("headers_with_underscores_action is not DROP_HEADER")
if cfg["admin"]["address"]["socket_address"]["address"] != "127.0.0.1":
    errors.append("admin does not bind 127.0.0.1")
names = [f["name"] for f in hcm["http_filters"]]
if names[:2] != ["envoy.filters.http.header_mutation", "envoy.filters.http.wasm"]:
    errors.append(f"filters {names}: header_mutation must run before keygate")
routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
added = [h["header"]["value"] for r in routes for h in r.get("request_headers_to_add", [])
         if h["header"]["key"].lower() == "x-api-key"]
if not added or set(added) != {key.replace("%", "%%")}:
    errors.append(f"the root key is not what OpenViking routes add (% escaped): {added}")
for r in routes:
    if r["route"]["cluster"] == "upstream" and not r.get("request_headers_to_add"):
        if r["match"] != {"path": "/health"} or "x-api-key" not in r.get("request_headers_to_remove", []):
            errors.append(f"route {r['match']} reaches OpenViking without the root key replacing x-api-key")
for e in errors:
    print(f"[check-compose] FAIL: {path}: {e}", file=sys.stderr)
sys.exit(1 if errors else 0)
PY
if ! out=$("$ENVOY" --mode validate -c "$tmp/openviking.yaml" -l warning 2>&1); then
  printf '%s\n' "$out" | tail -n 20 >&2
  die "envoy --mode validate: $ov_dir/envoy.yaml.tmpl (rendered)"
fi
say "ok: $ov_dir/render.sh renders envoy.yaml.tmpl (hardened, key only in the 0600 output); envoy --mode validate passes"

# 7. keystore/Dockerfile's run example: the secrets from files (no `-e` with a key), and every
#    option it names is an option of the built `keystore serve`.
python3 - keystore/Dockerfile "$KEYSTORE" <<'PY' || die "keystore/Dockerfile: its docker run example"
import os, re, subprocess, sys
path, binary = sys.argv[1], sys.argv[2]
lines = [l[1:].strip() for l in open(path) if l.startswith("#")]
run = ""
for l in lines:
    if l.startswith("docker run") or (run and run.endswith("\\")):
        run = run.rstrip("\\") + " " + l
errors = []
if not run:
    errors.append("no docker run example")
if re.search(r"-e\s+KEYSTORE_(ROOT_KEY|PROTOCOL_TOKEN)", run):
    errors.append("a secret in docker run -e (docker inspect shows it)")
for opt in ["--root-key-file", "--protocol-token-file"]:
    if opt not in run:
        errors.append(f"the example does not use {opt}")
if os.path.exists(binary):
    help_text = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True).stdout
    for opt in re.findall(r"(?<=\s)--[a-z-]+", run):
        if f"{opt} " not in help_text and f"{opt}\n" not in help_text:
            errors.append(f"keystore serve has no option {opt}")
else:
    print(f"[check-compose] {binary} not built: the Dockerfile's options not checked", file=sys.stderr)
for e in errors:
    print(f"[check-compose] FAIL: {path}: {e}", file=sys.stderr)
sys.exit(1 if errors else 0)
PY
say "ok: keystore/Dockerfile's docker run example takes the secrets from files, with options keystore serve has"
say "all compose/Istio checks passed"
