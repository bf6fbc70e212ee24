# venice-e2ee-proxy as a container (sidecar or standalone).
#
# Build:  docker build -t venice-e2ee-proxy .
# Run:    docker run --rm -p 127.0.0.1:8000:8000 \
#           -e VENICE_API_KEY \
#           -e VENICE_PROXY_SERVER__ALLOWED_HOSTS='["localhost","127.0.0.1"]' \
#           venice-e2ee-proxy
#
# Listening: inside the container the proxy binds 0.0.0.0 (a loopback bind would be unreachable
# from other containers). That is only safe together with:
#   - server.allowed_hosts: the Host names clients use (e.g. the compose service name "proxy").
#     Requests naming any other Host are refused (DNS-rebinding guard); localhost and 127.0.0.1
#     are always allowed, which is what the HEALTHCHECK below uses.
#   - optionally server.api_keys: local bearer tokens every client must send
#     (VENICE_PROXY_SERVER__API_KEYS='["..."]'); /healthz and /readyz stay open for probes.
#   - publishing the port on the host's loopback only (-p 127.0.0.1:8000:8000).
#
# Configuration: the TOML file at /config/config.toml (VENICE_PROXY_CONFIG). The image ships
# config.example.toml there (every default); mount your own over it read-only:
#   -v ./config.toml:/config/config.toml:ro
# Environment variables VENICE_PROXY_<SECTION>__<KEY> override the file.
#
# The Venice API key is never baked in and never read from the config file. Either:
#   - environment: -e VENICE_API_KEY, or
#   - a secret file (preferred: not visible in `docker inspect`): mount it at
#     /run/secrets/venice_api_key and set upstream.api_key_file = "/run/secrets/venice_api_key"
#     (or VENICE_PROXY_UPSTREAM__API_KEY_FILE=/run/secrets/venice_api_key).
# Without any key and with the default upstream, `serve` runs its offline demo (built-in
# simulator, DCAP off) and says so loudly in its log.

FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY proxy ./proxy

# Runtime dependencies exactly as pinned, hash-checked, in requirements.lock (`make lock`), so
# an image built twice gets the same ones; then the proxy itself, resolving nothing more.
RUN pip install --require-hashes --no-deps -r requirements.lock \
    && pip install --no-deps . \
    && pip check \
    && rm -rf /src

COPY config.example.toml /config/config.toml

# Its own name: Debian's base-passwd already has a `proxy` user (uid 13) and group in every
# Debian-based image, this base included.
RUN groupadd --system --gid 10001 venice-proxy \
    && useradd --system --uid 10001 --gid venice-proxy --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin venice-proxy \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/venice-e2ee-proxy

WORKDIR /
USER 10001:10001

# Remembered trust levels (no silent enclave -> gateway downgrade across restarts) live in
# attestation.state_dir. The root filesystem is read-only: mount a volume here (compose and the
# Kubernetes manifests do); without one the proxy says so at start-up and remembers in memory.
ENV VENICE_PROXY_CONFIG=/config/config.toml \
    VENICE_PROXY_ATTESTATION__STATE_DIR=/var/lib/venice-e2ee-proxy

EXPOSE 8000

# Liveness only (no auth needed, not logged); readiness is GET /readyz. Plain HTTP on loopback,
# bypassing any HTTP(S)_PROXY variables; adapt it if you enable server.tls_cert.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u; r = u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:8000/healthz', timeout=4); sys.exit(0 if r.status == 200 else 1)"]

CMD ["venice-e2ee-proxy", "serve", "--host", "0.0.0.0", "--port", "8000"]
