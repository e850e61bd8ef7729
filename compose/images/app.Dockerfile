# syntax=docker/dockerfile:1
#
# One image for the CAS, the proxy and the owner's one-shot setup steps (different commands, see
# compose/docker-compose.yml). It carries the code exactly as the repository has it: the simulated TEE
# measures bin/ cli/ src/ cas/ proxy/ keyring/ + package-lock.json inside the image, and the compose
# `policy` step allows precisely that measurement. No key, token, certificate or state is in any layer:
# all of it is made at run time in volumes.
#
# NODE_IMAGE: the public node:20-bookworm-slim by default; `local/node:20-bookworm-slim` (built by
# compose/images/node-local.Dockerfile) where no registry can be reached. Build with --network=host so
# `npm ci` reaches the npm registry.
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

FROM ${NODE_IMAGE}
# One fixed non-root uid shared with the MariaDB image (compose/images/mariadb.Dockerfile): the keyring
# token file is 0600 on a tmpfs both containers mount, and the proxy reads MariaDB's datadir (0700) for
# the offline redo checkpoint. The NAME matters too: MariaDB's unix_socket authentication maps the
# proxy's socket peer uid to this name, and the proxy refuses client logins under its own OS user name.
ARG CDBP_UID=10001
RUN groupadd --system --gid ${CDBP_UID} cdbp \
 && useradd --system --uid ${CDBP_UID} --gid ${CDBP_UID} --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin cdbp \
 && dirs="/srv/untrusted /var/lib/cdbp-cas /srv/cas-public /run/cdbp /keys/platform /keys/platform-pub /keys/owner" \
 && mkdir -p $dirs && chown ${CDBP_UID}:${CDBP_UID} $dirs && chmod 0700 $dirs \
 && chmod 0755 /srv/cas-public /keys/platform-pub
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
# Code is root-owned and read-only for the runtime user.
RUN chmod -R a-w /app && node -e "process.exit(0)"
ENV NODE_ENV=production
USER ${CDBP_UID}:${CDBP_UID}
CMD ["node", "/app/bin/cdbp.js", "--help"]
