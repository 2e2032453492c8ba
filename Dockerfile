# artifactfs in a container (first version; the daemon entrypoint and health check come with
# the supervisor). Build: docker build -t artifactfs .
# Run:   docker run --rm --device /dev/fuse --cap-add SYS_ADMIN \
#          -v artifactfs-state:/var/lib/artifactfs artifactfs mount git://host/repo.git /mnt/repo

FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libfuse3-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY artifactfs ./artifactfs
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends fuse3 git ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels artifactfs && rm -rf /wheels \
    && mkdir -p /mnt/repo
ENV ARTIFACTFS_HOME=/var/lib/artifactfs
VOLUME /var/lib/artifactfs
ENTRYPOINT ["artifactfs"]
CMD ["--help"]
