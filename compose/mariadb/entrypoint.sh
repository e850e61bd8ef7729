#!/bin/bash
# Entry point of the MariaDB container. MariaDB may only start once the attested proxy (same network
# namespace) has passed attestation AND the freshness check: only then does it serve keys on
# https://127.0.0.1:8200 and write, on the tmpfs both containers share,
#   /run/cdbp/keyring-ca.pem   the CA the plugin verifies the keyring with (public)
#   /run/cdbp/keyring-token    the per-start keyring token (0600, never on a disk)
# So: wait for both, pass the token as VAULT_TOKEN (the plugin's only token source here; it is in no
# file, option or command line), initialise the datadir on first start, run mariadbd. When the proxy
# restarts it issues a new token and the old one stops working: mariadbd is then restarted with it.
set -euo pipefail

RUN_DIR=/run/cdbp
TOKEN_FILE=${CDBP_KEYRING_TOKEN_FILE:-$RUN_DIR/keyring-token}
CA_FILE=$RUN_DIR/keyring-ca.pem
VOLATILE=/run/cdbp-volatile
DEFAULTS=/etc/cdbp/server.cnf
DATADIR=$(awk -F= '$1=="datadir"{print $2}' "$DEFAULTS")
WAIT_SECONDS=${CDBP_TOKEN_WAIT_SECONDS:-0}   # 0 = wait for the proxy as long as it takes

say() { echo "cdbp-mariadb: $*" >&2; }

volatile_ok() {
  # tmpfs (0x01021994) or ramfs (0x858458f6): plaintext MariaDB cannot encrypt must not reach a disk.
  local t; t=$(stat -f -c %t "$1")
  [ "$t" = "1021994" ] || [ "$t" = "858458f6" ]
}

for d in "$RUN_DIR" "$VOLATILE"; do
  if ! volatile_ok "$d"; then say "$d is not memory-backed (tmpfs); refusing to start"; exit 1; fi
done
mkdir -p -m 0700 "$VOLATILE/tmp" "$VOLATILE/aria-log"

mariadbd_pid=
stopping=0
on_signal() {
  stopping=1
  if [ -n "$mariadbd_pid" ]; then kill -TERM "$mariadbd_pid" 2>/dev/null || true; fi
}
trap on_signal TERM INT

wait_for_keyring() {
  local waited=0
  say "waiting for the proxy to attest, verify freshness and start the keyring"
  while ! { [ -s "$TOKEN_FILE" ] && [ -s "$CA_FILE" ]; }; do
    [ "$stopping" = 1 ] && exit 0
    if [ "$WAIT_SECONDS" -gt 0 ] && [ "$waited" -ge "$WAIT_SECONDS" ]; then
      say "no keyring token after ${WAIT_SECONDS}s"; exit 1
    fi
    sleep 1 & wait $! || true
    waited=$((waited + 1))
  done
}

read_token() { tr -d '\n' < "$TOKEN_FILE"; }

wait_for_keyring
[ "$stopping" = 1 ] && exit 0
VAULT_TOKEN=$(read_token)
export VAULT_TOKEN

if [ ! -d "$DATADIR/mysql" ]; then
  say "first start: initialising the (encrypted) datadir"
  # Into a scratch dir first, renamed when complete: a half-initialised datadir is never mistaken for one.
  rm -rf "$DATADIR.init"
  mkdir -p -m 0700 "$DATADIR.init"
  mariadb-install-db --defaults-file="$DEFAULTS" --datadir="$DATADIR.init" \
    --auth-root-authentication-method=socket --skip-test-db --user=cdbp >"$VOLATILE/install-db.log" 2>&1 \
    || { say "mariadb-install-db failed:"; tail -n 30 "$VOLATILE/install-db.log" >&2; exit 1; }
  mv "$DATADIR.init" "$DATADIR"
fi

while :; do
  mariadbd --defaults-file="$DEFAULTS" &
  mariadbd_pid=$!
  say "mariadbd started (pid $mariadbd_pid)"
  current=$VAULT_TOKEN
  # Supervise: exit with mariadbd; restart it when the proxy has issued a new token.
  while kill -0 "$mariadbd_pid" 2>/dev/null; do
    sleep 1 & wait $! || true
    [ "$stopping" = 1 ] && break
    if [ -s "$TOKEN_FILE" ] && [ "$(read_token)" != "$current" ]; then
      say "the proxy issued a new keyring token (it restarted): restarting mariadbd with it"
      kill -TERM "$mariadbd_pid" 2>/dev/null || true
      break
    fi
  done
  # A signal interrupts `wait` before mariadbd is gone: keep waiting until it has really exited.
  set +e
  wait "$mariadbd_pid"; code=$?
  while kill -0 "$mariadbd_pid" 2>/dev/null; do wait "$mariadbd_pid"; code=$?; done
  set -e
  mariadbd_pid=
  if [ "$stopping" = 1 ]; then say "stopped"; exit 0; fi
  if [ "$(read_token 2>/dev/null || true)" = "$current" ]; then
    say "mariadbd exited (code $code)"; exit "$code"
  fi
  VAULT_TOKEN=$(read_token); export VAULT_TOKEN
done
