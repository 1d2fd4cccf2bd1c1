#!/usr/bin/env bash
# Renders integrations/openviking/envoy.yaml.tmpl into an Envoy bootstrap for one instance of a
# keygate + OpenViking (trusted mode) deployment. The OpenViking root key is read from a file at
# render time and written only into the output (mode 0600): never commit the rendered file.
#
#   OPENVIKING_ROOT_KEY_FILE=/run/secrets/openviking-root.key \
#   [KEYGATE_PROTOCOL_TOKEN_FILE=/run/secrets/protocol.token] \
#   NODE_ID=keygate-a LISTEN_PORT=10000 ADMIN_PORT=9901 OPENVIKING_PORT=1933 KEYSTORE_PORT=8181 \
#   WASM_PATH=/etc/keygate/keygate.wasm \
#     integrations/openviking/render.sh OUT.yaml
#
# KEYGATE_CONFIG (default: integrations/openviking/keygate.json next to this script) is the
# filter configuration; the protocol token, when given, becomes its store.token. The root key
# must be visible ASCII (it goes into a header value); a `%` is escaped for Envoy's header
# formatter. Exits non-zero, writing nothing, on a missing variable or an unreadable secret.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: $0 OUT.yaml (see the header of this script)}
: "${OPENVIKING_ROOT_KEY_FILE:?the file holding OpenViking\'s server.root_api_key}"
for v in NODE_ID LISTEN_PORT ADMIN_PORT OPENVIKING_PORT KEYSTORE_PORT WASM_PATH; do
  [ -n "${!v:-}" ] || { echo "render.sh: $v is not set" >&2; exit 2; }
done
export KEYGATE_CONFIG=${KEYGATE_CONFIG:-$here/keygate.json} TEMPLATE=$here/envoy.yaml.tmpl OUT=$out
python3 - <<'PY'
import json, os, re, sys

def fail(msg):
    print(f"render.sh: {msg}", file=sys.stderr)
    sys.exit(1)

def secret(var):
    path = os.environ.get(var)
    if not path:
        return None
    try:
        with open(path, encoding="ascii") as f:
            value = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        fail(f"{var}={path}: {e}")
    if not value or not all(0x21 <= ord(c) <= 0x7e for c in value):
        fail(f"{var}={path}: empty, or not visible ASCII")
    return value

def dq(s):  # inside a YAML double-quoted scalar
    return s.replace("\\", "\\\\").replace('"', '\\"')

root_key = secret("OPENVIKING_ROOT_KEY_FILE")
token = secret("KEYGATE_PROTOCOL_TOKEN_FILE")
with open(os.environ["KEYGATE_CONFIG"], encoding="utf-8") as f:
    config = json.load(f)
if token:
    config.setdefault("store", {})["token"] = token
env = os.environ
values = {
    "@NODE_ID@": dq(env["NODE_ID"]), "@LISTEN_PORT@": env["LISTEN_PORT"],
    "@ADMIN_PORT@": env["ADMIN_PORT"], "@UPSTREAM_PORT@": env["OPENVIKING_PORT"],
    "@KEYSTORE_PORT@": env["KEYSTORE_PORT"], "@WASM_PATH@": dq(env["WASM_PATH"]),
    # Envoy reads %...% in header values as formatter commands: %% is a literal %.
    "@OPENVIKING_ROOT_KEY@": dq(root_key.replace("%", "%%")),
}
lines = []
with open(env["TEMPLATE"], encoding="utf-8") as f:
    for line in f:
        if line.lstrip().startswith("#"):
            lines.append(line)
            continue
        alone = re.fullmatch(r"(\s*)(@[A-Z_]+@)\s*", line)
        if alone and alone.group(2) == "@KEYSTORE_MORE_ENDPOINTS@":
            continue
        if alone and alone.group(2) == "@KEYGATE_CONFIG@":
            text = json.dumps(config, indent=2)
            lines.extend(alone.group(1) + l + "\n" for l in text.splitlines())
            continue
        line = re.sub(r"@[A-Z_]+@", lambda m: values[m.group(0)] if m.group(0) in values
                      else fail(f"unknown placeholder {m.group(0)}"), line)
        lines.append(line)
old = os.umask(0o077)
try:
    with open(env["OUT"], "w", encoding="utf-8") as f:
        f.write("".join(lines))
finally:
    os.umask(old)
os.chmod(env["OUT"], 0o600)
PY
