#!/usr/bin/env bash
# keygate compose demo: the `secrets` service. Runs before the keystore and the Envoys, at every
# `docker compose up`; generates what is missing, never replaces what exists:
#   $SECRETS_DIR/root.key        the keystore's root key   (kgroot_ + 32 random bytes, hex)
#   $SECRETS_DIR/protocol.token  the key-store protocol token (kgproto_ + 32 random bytes, hex)
#   $ENVOY_DIR/envoy-{a,b}.yaml  $TEMPLATE_DIR/envoy-{a,b}.yaml with the protocol token in
#                                place of @KEYGATE_PROTOCOL_TOKEN@ (the filter's store.token)
# Nothing secret is in the repository: every installation gets its own values, kept in the
# named volumes (docker compose down -v deletes them; the next up makes new ones).
# Prints the root key's file, never the key. scripts/check-compose.sh runs this script on
# temporary directories and checks what it writes.
set -euo pipefail

SECRETS_DIR=${SECRETS_DIR:-/run/keygate/secrets}
ENVOY_DIR=${ENVOY_DIR:-/run/keygate/envoy}
TEMPLATE_DIR=${TEMPLATE_DIR:-/etc/keygate/compose}
# The owner of the secrets: the keystore image's user (keystore/Dockerfile); left as it is
# when not running as root (e.g. in check-compose.sh without root).
KEYSTORE_UID=${KEYSTORE_UID:-10001}
PLACEHOLDER=@KEYGATE_PROTOCOL_TOKEN@

random_hex() { head -c 32 /dev/urandom | od -An -v -tx1 | tr -d ' \n'; }

# generate FILE PREFIX: writes PREFIX + 64 random hex digits to FILE unless it has content.
generate() {
  local file=$1 prefix=$2
  if [ -s "$file" ]; then
    echo "init-secrets: keeping $file"
    return
  fi
  (umask 077 && printf '%s%s\n' "$prefix" "$(random_hex)" >"$file.tmp")
  mv "$file.tmp" "$file"
  echo "init-secrets: generated $file"
}

mkdir -p "$SECRETS_DIR" "$ENVOY_DIR"
generate "$SECRETS_DIR/root.key" kgroot_
generate "$SECRETS_DIR/protocol.token" kgproto_
token=$(tr -d ' \r\n' <"$SECRETS_DIR/protocol.token")
case $token in
  *[!A-Za-z0-9_-]* | "") echo "init-secrets: $SECRETS_DIR/protocol.token is malformed" >&2; exit 1 ;;
esac

for node in a b; do
  template=$TEMPLATE_DIR/envoy-$node.yaml out=$ENVOY_DIR/envoy-$node.yaml
  [ "$(grep -c -- "$PLACEHOLDER" "$template")" = 1 ] ||
    { echo "init-secrets: $template must hold $PLACEHOLDER exactly once" >&2; exit 1; }
  (umask 077 && sed "s/$PLACEHOLDER/$token/" "$template" >"$out.tmp")
  # The Envoy image runs as an unprivileged user: the rendered file must be readable by it.
  # The volume it is in is mounted only in the two Envoy containers.
  chmod 0444 "$out.tmp"
  mv "$out.tmp" "$out"
done
echo "init-secrets: rendered $ENVOY_DIR/envoy-a.yaml and envoy-b.yaml"

if [ "$(id -u)" = 0 ]; then
  chown "$KEYSTORE_UID:$KEYSTORE_UID" "$SECRETS_DIR" "$SECRETS_DIR/root.key" "$SECRETS_DIR/protocol.token"
fi
chmod 0700 "$SECRETS_DIR"
chmod 0400 "$SECRETS_DIR/root.key" "$SECRETS_DIR/protocol.token"
