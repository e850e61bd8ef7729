#!/usr/bin/env bash
# Builds the stack's images with `docker build` (the build reaches apt and npm through --network=host):
#   confidential-db-proxy/app:dev      CAS, proxy and the owner's setup steps (Node 20, native data plane)
#   confidential-db-proxy/mariadb:dev  stock Debian MariaDB 10.11 + hashicorp_key_management
#   confidential-db-proxy/postgres:dev the app image + Debian PostgreSQL 15 + gocryptfs (the optional `postgres` profile)
#   confidential-db-proxy/etcd:dev     Debian's etcd-server 3.4 (the optional `ha` profile's 3-member etcd)
#
# usage: compose/build.sh [--base public|local|auto]   (default auto)
#   public  FROM node:20-bookworm-slim and debian:bookworm (a registry must be reachable)
#   local   FROM local/debian:bookworm (debootstrap, made here if missing) and local/node:20-bookworm-slim
#           (built here from it: Node 20 + its headers from the npm registry, pinned by sha512; see
#           node-local.Dockerfile; an older one without the headers is rebuilt)
#   auto    public when those images are present or can be pulled, else local
# Env: CDBP_APP_IMAGE, CDBP_MARIADB_IMAGE, CDBP_POSTGRES_IMAGE, CDBP_ETCD_IMAGE (tags), DOCKER_HOST.
set -euo pipefail
cd "$(dirname "$0")/.."

base=auto
while [ $# -gt 0 ]; do
  case "$1" in
    --base) base=$2; shift 2 ;;
    --base=*) base=${1#--base=}; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
APP_IMAGE=${CDBP_APP_IMAGE:-confidential-db-proxy/app:dev}
MARIADB_IMAGE=${CDBP_MARIADB_IMAGE:-confidential-db-proxy/mariadb:dev}
POSTGRES_IMAGE=${CDBP_POSTGRES_IMAGE:-confidential-db-proxy/postgres:dev}
ETCD_IMAGE=${CDBP_ETCD_IMAGE:-confidential-db-proxy/etcd:dev}
say() { echo "build.sh: $*" >&2; }
# Networks that intercept TLS (a corporate or sandbox egress proxy) need their CA for the npm downloads.
# The host's local CAs are passed to the download stages only (never to a runtime image layer).
extra_ca_file=${CDBP_BUILD_EXTRA_CA_FILE:-}
extra_ca=
if [ -n "$extra_ca_file" ]; then extra_ca=$(cat "$extra_ca_file");
elif compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then extra_ca=$(cat /usr/local/share/ca-certificates/*.crt); fi

have_or_pull() { docker image inspect "$1" >/dev/null 2>&1 || timeout 120 docker pull -q "$1" >/dev/null 2>&1; }

if [ "$base" = auto ]; then
  if have_or_pull node:20-bookworm-slim && have_or_pull debian:bookworm; then base=public; else base=local; fi
  say "base images: $base"
fi

case "$base" in
  public)
    node_image=node:20-bookworm-slim
    debian_image=debian:bookworm ;;
  local)
    debian_image=local/debian:bookworm
    node_image=local/node:20-bookworm-slim
    if ! docker image inspect "$debian_image" >/dev/null 2>&1; then
      command -v debootstrap >/dev/null || { say "debootstrap is missing (apt-get install debootstrap)"; exit 1; }
      mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
      mirror=${mirror:-http://deb.debian.org/debian}
      rootfs=$(mktemp -d /tmp/cdbp-rootfs.XXXXXX)
      trap 'rm -rf "$rootfs"' EXIT
      say "making $debian_image with debootstrap from $mirror"
      debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
        || { tail -20 "$rootfs.log" >&2; exit 1; }
      tar -C "$rootfs" -c . | docker import - "$debian_image" >/dev/null
      rm -rf "$rootfs" "$rootfs.log"
    fi
    # Also rebuilt when an older build lacks Node's headers: app.Dockerfile compiles the native data plane
    # against them.
    build_node=0
    if ! docker image inspect "$node_image" >/dev/null 2>&1; then build_node=1
    elif ! docker run --rm --network none --entrypoint test "$node_image" -f /usr/local/include/node/node_api.h; then
      say "$node_image lacks Node's headers (/usr/local/include/node/node_api.h): rebuilding it"
      build_node=1
    fi
    if [ "$build_node" = 1 ]; then
      say "building $node_image"
      docker build --network=host -q -t "$node_image" --build-arg DEBIAN_IMAGE="$debian_image" --build-arg EXTRA_CA_PEM="$extra_ca" \
        -f compose/images/node-local.Dockerfile compose/images >/dev/null
    fi ;;
  *) say "--base must be public, local or auto"; exit 2 ;;
esac

# Legacy builder or BuildKit, whichever the client has; --network=host lets apt/npm reach their mirrors.
say "building $APP_IMAGE (FROM $node_image)"
docker build --network=host -t "$APP_IMAGE" --build-arg NODE_IMAGE="$node_image" --build-arg EXTRA_CA_PEM="$extra_ca" \
  -f compose/images/app.Dockerfile .
say "building $MARIADB_IMAGE (FROM $debian_image)"
docker build --network=host -t "$MARIADB_IMAGE" --build-arg DEBIAN_IMAGE="$debian_image" -f compose/images/mariadb.Dockerfile .
say "building $POSTGRES_IMAGE (FROM $APP_IMAGE: the proxy + PostgreSQL 15 + gocryptfs)"
docker build --network=host -t "$POSTGRES_IMAGE" --build-arg APP_IMAGE="$APP_IMAGE" -f compose/images/postgres.Dockerfile .
say "building $ETCD_IMAGE (FROM $debian_image: Debian's etcd-server)"
docker build --network=host -t "$ETCD_IMAGE" --build-arg DEBIAN_IMAGE="$debian_image" -f compose/images/etcd.Dockerfile .
say "done: $APP_IMAGE $MARIADB_IMAGE $POSTGRES_IMAGE $ETCD_IMAGE"
echo "CDBP_NODE_IMAGE=$node_image CDBP_DEBIAN_IMAGE=$debian_image"
