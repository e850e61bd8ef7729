# syntax=docker/dockerfile:1
#
# One image for the CAS, the proxy and the owner's one-shot setup steps (different commands, see
# compose/docker-compose.yml). It carries the code exactly as the repository has it, plus the native data
# plane built in the `native` stage below: the simulated TEE measures bin/ cli/ src/ cas/ proxy/ keyring/
# + package-lock.json inside the image (src/attestation/measurement.ts: *.ts, *.js, and the native
# plane's *.c, *.h and built proxy/native/build/*.node), and the compose `policy` step allows precisely
# that measurement, so the measured tree is the one that runs: the .c/.h next to the .node are the
# sources it was compiled from. No key, token, certificate or state is in any layer: all of it is made at
# run time in volumes.
#
# NODE_IMAGE: the public node:20-bookworm-slim by default; `local/node:20-bookworm-slim` (built by
# compose/images/node-local.Dockerfile) where no registry can be reached. Either carries Node's headers
# in /usr/local/include/node. Build with --network=host so `npm ci` reaches the npm registry and apt
# (the `native` stage) reaches Debian's mirror.
ARG NODE_IMAGE=node:20-bookworm-slim

FROM ${NODE_IMAGE} AS deps
# PEM of extra CAs for networks that intercept TLS (compose/build.sh passes the host's local CAs); this
# stage only, the runtime stage below never sees it.
ARG EXTRA_CA_PEM=
WORKDIR /app
COPY package.json package-lock.json ./
# Production dependencies only (tsx runs the TypeScript); scripts off: nothing from the registry runs here.
RUN if [ -n "$EXTRA_CA_PEM" ]; then printf '%s\n' "$EXTRA_CA_PEM" > /tmp/extra-ca.pem; export NODE_EXTRA_CA_CERTS=/tmp/extra-ca.pem; fi \
 && npm ci --omit=dev --ignore-scripts --no-audit --no-fund \
 && npm cache clean --force && rm -f /tmp/extra-ca.pem

# The native data plane (proxy/native/*.c), compiled against the headers of the very Node in NODE_IMAGE
# that loads it at run time (a build on the host would be for the host's Node: .dockerignore keeps it
# out). The compiler stays in this stage; the runtime stage gets the one .node file. No fallback: if it
# does not build (or does not load), the image build fails rather than shipping the slower Node plane.
FROM ${NODE_IMAGE} AS native
RUN set -eux; export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; apt-get install -y --no-install-recommends gcc libc6-dev; rm -rf /var/lib/apt/lists/*
# Same paths as at run time (/app), so nothing path-dependent differs from a build in place.
WORKDIR /app
# package.json only for its "type": "module" (the build script is an ES module).
COPY package.json ./
COPY scripts/build-native.js ./scripts/
COPY proxy/native/*.c proxy/native/*.h ./proxy/native/
RUN node scripts/build-native.js --force \
 && node -e "require('/app/proxy/native/build/cdbp_dataplane.node')"

FROM ${NODE_IMAGE}
# One fixed non-root uid shared with the MariaDB image (compose/images/mariadb.Dockerfile): the keyring
# token file is 0600 on a tmpfs both containers mount, and the proxy reads MariaDB's datadir (0700) for
# the offline redo checkpoint. The NAME matters too: MariaDB's unix_socket authentication maps the
# proxy's socket peer uid to this name, and the proxy refuses client logins under its own OS user name.
ARG CDBP_UID=10001
RUN groupadd --system --gid ${CDBP_UID} cdbp \
 && useradd --system --uid ${CDBP_UID} --gid ${CDBP_UID} --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin cdbp \
 && dirs="/srv/untrusted /var/lib/cdbp-cas /srv/cas-public /srv/cas-ha-recovery /run/cdbp /keys/platform /keys/platform-pub /keys/owner /keys/owner-pub" \
 && mkdir -p $dirs && chown ${CDBP_UID}:${CDBP_UID} $dirs && chmod 0700 $dirs \
 && chmod 0755 /srv/cas-public /keys/platform-pub /keys/owner-pub
# (Mount points exist with this owner so that empty named volumes are created owned by cdbp.)
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json package-lock.json tsconfig.json ./
COPY bin ./bin
COPY cli ./cli
COPY src ./src
COPY cas ./cas
COPY proxy ./proxy
COPY keyring ./keyring
COPY compose/bin ./compose/bin
# The native data plane built above (root-owned like everything COPY'd; the proxy picks it up with
# CDBP_DATA_PLANE=auto and reports `native` in its log, /v1/status and metrics).
COPY --from=native /app/proxy/native/build/cdbp_dataplane.node ./proxy/native/build/
# Code is root-owned and read-only for the runtime user; the addon must load in this very image.
RUN chmod -R a-w /app && node -e "require('/app/proxy/native/build/cdbp_dataplane.node')"
ENV NODE_ENV=production
USER ${CDBP_UID}:${CDBP_UID}
CMD ["node", "/app/bin/cdbp.js", "--help"]
