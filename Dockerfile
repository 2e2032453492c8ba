# artifactfs daemon in a container. How to run it (devices, capabilities, propagation, health,
# stopping, Kubernetes): docs/sandbox.md. In short:
#   docker build -t artifactfs .              (podman: podman build --format docker ...)
#   docker run -d --name artifactfs --device /dev/fuse --cap-add SYS_ADMIN \
#       --security-opt apparmor=unconfined --stop-timeout 30 \
#       -v artifactfs-state:/var/lib/artifactfs artifactfs
#   docker exec artifactfs artifactfs add-repo --async app https://example.com/org/app.git
#
# Two stages: pyfuse3 is published as source only, so building it needs a compiler and the
# libfuse3 headers; the image that runs keeps none of that, only the installed result.
# Built and run for real by tests/test_9_container.py (podman); the text is checked by
# tests/test_6_dockerfile.py.

FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libfuse3-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PIP_CONSTRAINT=/src/container/build-constraints.txt
WORKDIR /src
# The dependencies first, at the exact versions of container/requirements.txt (and built with
# the exact tools of container/build-constraints.txt): this layer is rebuilt only when the pins
# change, not when artifactfs's code does.
COPY container/requirements.txt container/build-constraints.txt ./container/
RUN pip wheel --wheel-dir /wheels --requirement container/requirements.txt
# What the wheel is built from, and nothing else (README.md: pyproject.toml names it as readme).
COPY pyproject.toml README.md ./
COPY artifactfs ./artifactfs
# artifactfs's own wheel, then everything installed into a virtualenv that the final stage
# copies whole (copying the wheels there instead would keep them in a layer for good).
# --no-index: only the pinned wheels can be installed, so a dependency missing from the pins
# fails the build here. The virtualenv gets no pip of its own; the base image's pip fills it.
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && python -m venv --without-pip /opt/artifactfs \
    && pip --python /opt/artifactfs/bin/python install --no-index --find-links=/wheels \
        artifactfs

# Same base as the build stage: the virtualenv's python is this image's python3.11 (its path
# is recorded in the virtualenv) and pyfuse3 was compiled against this libc and libfuse3.
FROM python:3.11-slim-bookworm
# fuse3: fusermount3 (unmounting, stale-mount clean-up, mounting as a user other than root)
# and libfuse3, which pyfuse3 links to. ca-certificates: https origins. git: not used by
# artifactfs (dulwich speaks the protocols), there for `git -C MOUNT status` or `log` on a
# mounted repository (a git mount is a working tree with its git directory behind `.git`).
# The user `artifactfs` (uid and gid 10001) owns the state directory, for running the daemon
# without root (`--user artifactfs`, docs/sandbox.md); /etc/fuse.conf lets that user mount
# with --allow-other. The default stays root: mounting as root needs no setuid fusermount3.
RUN apt-get update \
    && apt-get install -y --no-install-recommends fuse3 git ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 artifactfs \
    && useradd --uid 10001 --gid artifactfs --no-create-home --no-log-init \
        --home-dir /var/lib/artifactfs --shell /usr/sbin/nologin artifactfs \
    && install -d -o artifactfs -g artifactfs -m 0711 /var/lib/artifactfs \
    && echo user_allow_other >> /etc/fuse.conf
COPY --from=build /opt/artifactfs /opt/artifactfs
ENV PATH=/opt/artifactfs/bin:$PATH
# The registry, blob cache, snapshots, workspaces, sockets and logs: a volume, so the cache
# outlives the container and a new container on the same commits fetches nothing again.
ENV ARTIFACTFS_HOME=/var/lib/artifactfs
VOLUME /var/lib/artifactfs
LABEL org.opencontainers.image.title="artifactfs" \
      org.opencontainers.image.description="Mount a remote git or Hugging Face repository at once; fetch only the bytes that are read." \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.documentation="docs/sandbox.md in the artifactfs repository"
# Healthy while the daemon answers on its socket. `status` exits 2 when none answers; Docker
# reserves 2, so any failure is reported as 1. A repository that failed to prepare does not
# make the container unhealthy (`artifactfs prepare NAME` retries it; restarting would not).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD artifactfs status || exit 1
# The daemon serves in the foreground as PID 1: `docker stop` (SIGTERM) unmounts every
# repository and exits within about 9 s (a stuck worker's connection is aborted);
# --stop-timeout 30 above leaves room on a loaded host.
STOPSIGNAL SIGTERM
# No CMD: arguments given to `docker run IMAGE ...` go to the daemon (-v for more logging).
ENTRYPOINT ["artifactfs", "daemon"]
