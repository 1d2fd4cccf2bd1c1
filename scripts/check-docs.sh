#!/usr/bin/env bash
# Checks that the READMEs name only what exists (in `make test`): every repository path they
# cite (in `code`, or as a link target) is in the tree, and every `make X` names a target of
# the Makefile, and every `cargo ... -p NAME` / `--test NAME` a package and a test target of the
# tree. Files checked: *.md at the top level and in envoy/ and integrations/ (and their subdirectories),
# keystore/, keygatectl/, bench/, fuzz/. A path is resolved against the Markdown file's own
# directory first, then the repository root. Tokens with placeholders (<x>, {x}, *, ..., $X),
# URLs, absolute paths and build outputs (target/, .tools/) are not paths of the tree.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - "$@" <<'PY'
import glob, os, re, subprocess, sys

files = sys.argv[1:] or sorted(
    glob.glob("*.md") + glob.glob("envoy/**/*.md", recursive=True)
    + glob.glob("integrations/**/*.md", recursive=True)
    + [f for d in ["keystore", "keygatectl", "bench", "fuzz"] for f in glob.glob(f"{d}/*.md")])
tracked = set(subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, text=True, check=True).stdout.split())
dirs = {os.path.dirname(p) for p in tracked}
while "" in dirs: dirs.remove("")
for p in list(dirs):
    while p:
        dirs.add(p); p = os.path.dirname(p)
def exists(p):
    p = os.path.normpath(p).rstrip("/")
    return p in tracked or p in dirs

with open("Makefile") as f:
    targets = set(re.findall(r"^([A-Za-z0-9_.-]+(?:[ \t]+[A-Za-z0-9_.-]+)*)[ \t]*:(?!=)", f.read(), re.M))
targets = {t for group in targets for t in group.split()}

top = {p.split("/")[0] for p in tracked}
packages = set()
for toml in (p for p in tracked if p.endswith("Cargo.toml")):
    m = re.search(r'^\[package\][^\[]*?^name = "([^"]+)"', open(toml).read(), re.M | re.S)
    if m:
        packages.add(m.group(1))
test_targets = {os.path.basename(p)[:-3] for p in tracked
                if re.search(r"(^|/)tests/[^/]+\.rs$", p)}
PATHLIKE = re.compile(r"^\.{0,2}/?[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+/?$")
SKIP = re.compile(r"[<>{}*$]|\.\.\.|^/|(^|/)(target|\.tools)/|://")
errors = []
for md in files:
    base = os.path.dirname(md)
    text = open(md).read()
    fenced = False
    for n, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        cands = re.findall(r"`([^`\s]+)`", line)
        cands += [t for t in re.findall(r"\]\(([^)\s]+)\)", line) if "://" not in t and not t.startswith("#")]
        for tok in cands:
            tok = tok.split("#")[0].split(":")[0]
            if not tok or SKIP.search(tok) or not PATHLIKE.match(tok):
                continue
            first = tok.lstrip("./").split("/")[0]
            local = os.path.join(base, tok)
            if tok.startswith(".") or first in top or (base and exists(os.path.join(base, first))):
                if not (exists(local) or exists(tok)):
                    errors.append(f"{md}:{n}: {tok} does not exist")
        code = [line] if fenced else re.findall(r"`([^`]*)`", line)
        makes = [t for c in code for t in re.findall(r"(?:^|[\s;&|(])make ([a-z][a-z0-9-]*)", c)]
        for c in code:
            for cmd in re.findall(r"cargo [^;&|]*", c):
                for pkg in re.findall(r"(?:-p|--package) ([A-Za-z0-9_-]+)", cmd):
                    if pkg not in packages:
                        errors.append(f"{md}:{n}: cargo -p {pkg}: no such package")
                for t in re.findall(r"--test ([A-Za-z0-9_]+)", cmd):
                    if t not in test_targets:
                        errors.append(f"{md}:{n}: cargo --test {t}: no such test target")
        for t in makes:
            if t not in targets:
                errors.append(f"{md}:{n}: make {t}: no such target in the Makefile")
for e in errors:
    print(f"check-docs: {e}", file=sys.stderr)
if errors:
    sys.exit(1)
print(f"check-docs: {len(files)} files, every path and make target they name exists")
PY
