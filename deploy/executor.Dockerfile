# The execution service (`codeproxy executor`). Sandboxes use bubblewrap, user namespaces and
# cgroups, so the container needs: --privileged (or CAP_SYS_ADMIN with unconfined seccomp
# and apparmor) and a writable cgroup mount. A plain VM with systemd (see codeproxy-executor
# .service) is the simpler home for it.
FROM debian:12-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-seccomp bubblewrap nodejs gcc g++ libc6-dev \
        e2fsprogs util-linux fonts-dejavu-core fontconfig make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/codeproxy
COPY pyproject.toml README.md Makefile ./
COPY codeproxy codeproxy
COPY proxy proxy
COPY executor executor
COPY storage storage
RUN python3 -m venv .venv && .venv/bin/pip install --no-cache-dir . \
    && python3 -m venv .sandbox-venv \
    && .sandbox-venv/bin/pip install --no-cache-dir -r executor/requirements-sandbox.txt
ENV CODEPROXY_HOST=0.0.0.0 CODEPROXY_PORT=8001 CODEPROXY_DATA_DIR=/data \
    CODEPROXY_SANDBOX_VENV=/opt/codeproxy/.sandbox-venv
EXPOSE 8001
CMD [".venv/bin/codeproxy", "executor"]
