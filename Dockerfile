# artifactfs daemon in a container. How to run it (devices, capabilities, propagation, health,
# stopping): docs/sandbox.md. In short:
#   docker build -t artifactfs .
#   docker run -d --name artifactfs --device /dev/fuse --cap-add SYS_ADMIN \
#       --security-opt apparmor=unconfined --stop-timeout 30 \
#       -v artifactfs-state:/var/lib/artifactfs artifactfs
#   docker exec artifactfs artifactfs add-repo --async app https://example.com/org/app.git
#
# Two stages: pyfuse3 is published as source only, so building it needs a compiler and the
# libfuse3 headers; the image that runs keeps none of that, only the installed result.

FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libfuse3-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# What the wheel is built from, and nothing else (README.md: pyproject.toml names it as readme).
COPY pyproject.toml README.md ./
COPY artifactfs ./artifactfs
# Wheels for artifactfs and every dependency, then installed into a virtualenv that the final
# stage copies whole: copying the wheels there instead would keep them in a layer for good.
# The virtualenv gets no pip of its own; the base image's pip installs into it.
RUN pip wheel --no-cache-dir --wheel-dir /wheels . \
    && python -m venv --without-pip /opt/artifactfs \
    && pip --python /opt/artifactfs/bin/python install --no-cache-dir --no-index \
        --find-links=/wheels artifactfs

# Same base as the build stage: the virtualenv's python is this image's /usr/local/bin/python3.11
# and pyfuse3 was compiled against this libc.
FROM python:3.11-slim-bookworm
# fuse3: fusermount3 (unmounting, stale-mount clean-up) and libfuse3, which pyfuse3 links to.
# ca-certificates: https origins. git: not used by artifactfs (dulwich speaks the protocols),
# there for `docker exec ... git -C MOUNT log` on what is mounted.
RUN apt-get update \
    && apt-get install -y --no-install-recommends fuse3 git ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/artifactfs /opt/artifactfs
ENV PATH=/opt/artifactfs/bin:$PATH
# The registry, blob cache, snapshots, sockets and logs: a volume, so the cache outlives the
# container and a new container on the same commits fetches nothing again.
ENV ARTIFACTFS_HOME=/var/lib/artifactfs
VOLUME /var/lib/artifactfs
# Healthy while the daemon answers on its socket. `status` exits 2 when none answers; Docker
# reserves 2, so any failure is reported as 1. A repository that failed to prepare does not
# make the container unhealthy (`artifactfs prepare NAME` retries it; restarting would not).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD artifactfs status || exit 1
# The daemon serves in the foreground as PID 1: `docker stop` (SIGTERM) unmounts every
# repository and exits within about 9 s (a stuck worker's connection is aborted);
# --stop-timeout 30 above leaves room on a loaded host.
# No CMD: arguments given to `docker run IMAGE ...` go to the daemon (-v for more logging).
ENTRYPOINT ["artifactfs", "daemon"]
