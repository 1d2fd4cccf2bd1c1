#!/usr/bin/env bash
# Checks that the Rust version the workspace declares (`rust-version` in Cargo.toml) is true for
# what Cargo.lock pins (in `make test`): for each workspace member, every crate it builds with
# (normal, build and dev dependencies, all platforms, as locked) declares a rust-version no
# newer than the member's. Read from `cargo metadata --locked` (each package's `rust_version`).
# Only one toolchain is installed here, so this checks the dependencies' declared minimums, not
# whether our own code uses a newer language feature: that would need the old toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
meta=$(mktemp)
trap 'rm -f "$meta"' EXIT
cargo metadata --format-version 1 --locked >"$meta"
python3 - "$meta" <<'PY'
import json, sys

m = json.load(open(sys.argv[1]))
pkgs = {p["id"]: p for p in m["packages"]}
nodes = {n["id"]: n for n in m["resolve"]["nodes"]}

def version(v):
    parts = [int(x) for x in v.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))

errors = []
for member in m["workspace_members"]:
    p = pkgs[member]
    name, declared = p["name"], p.get("rust_version")
    if not declared:
        errors.append(f"{name}: no rust-version in its Cargo.toml")
        continue
    seen, todo = set(), [member]
    while todo:
        i = todo.pop()
        if i not in seen:
            seen.add(i)
            todo += [d["pkg"] for d in nodes[i]["deps"]]
    seen.discard(member)
    need = max(((version(pkgs[i]["rust_version"]), pkgs[i]["name"], pkgs[i]["rust_version"])
                for i in seen if pkgs[i].get("rust_version")), default=None)
    if need and need[0] > version(declared):
        errors.append(f"{name}: rust-version {declared}, but the lock pins {need[1]}, which needs {need[2]}")
    else:
        most = need[2] if need else "nothing declared"
        print(f"check-msrv: {name} {declared}: its {len(seen)} locked crates need at most {most}")
for e in errors:
    print(f"check-msrv: {e}", file=sys.stderr)
sys.exit(1 if errors else 0)
PY
