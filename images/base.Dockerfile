# Base layer: the OS, its Python, compilers for JIT builds (triton, flashinfer, torch
# extensions) and one pinned uv. Rendered by mlsyskit/plan.py; build args come from
# images/bases.toml and kit.toml. No secret is ever written to a layer: the CA bundle and
# the package index arrive as BuildKit secrets, read only for the duration of a RUN.
ARG ROOT_IMAGE
FROM ${ROOT_IMAGE}

ARG UV_VERSION
ARG PYTHON=/usr/bin/python3
ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1

COPY scripts/ /usr/local/lib/mlsyskit/

# apt's downloads and lists live in cache mounts, so they are neither in the layer nor
# downloaded again on the next build.
# APT_PACKAGES: images/bases.toml's list, each pinned `name=version` (with everything it
# pulls in) once images/debian-lock.toml records them. apt's and dpkg's logs and ldconfig's
# aux-cache are dropped: they record when the build ran, not what the image holds.
ARG APT_PACKAGES
RUN --mount=type=cache,id=mlsyskit-apt-cache,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,id=mlsyskit-apt-lists,target=/var/lib/apt/lists,sharing=locked \
    --mount=type=secret,id=ca \
    . /usr/local/lib/mlsyskit/net.sh \
 && rm -f /etc/apt/apt.conf.d/docker-clean \
 && echo 'Binary::apt::APT::Keep-Downloaded-Packages "true";' > /etc/apt/apt.conf.d/keep-cache \
 && apt-get $APT_OPTS update \
 && apt-get $APT_OPTS install -y --no-install-recommends $APT_PACKAGES \
 && rm -rf /var/log/apt/* /var/log/dpkg.log /var/log/alternatives.log /var/cache/ldconfig/aux-cache \
 && chmod 0755 /usr/local/lib/mlsyskit/*

# uv itself comes from the package index (no registry image to copy it from), pinned, and
# hash-checked against the kit's own uv.lock (UV_REQUIREMENT: `uv==X --hash=...`).
# SOURCE_DATE_EPOCH: pip and ensurepip compile their bytecode hash-based (PEP 552), so it
# is the same in every rebuild.
ARG UV_REQUIREMENT
RUN --mount=type=secret,id=ca --mount=type=secret,id=pypi_index \
    --mount=type=cache,id=mlsyskit-pip,target=/root/.cache/pip \
    . /usr/local/lib/mlsyskit/net.sh \
 && export SOURCE_DATE_EPOCH=0 \
 && python3 -m venv /opt/uv \
 && echo "${UV_REQUIREMENT:-uv==${UV_VERSION}}" > /tmp/uv-requirement.txt \
 && /opt/uv/bin/pip install --disable-pip-version-check -r /tmp/uv-requirement.txt \
 && rm /tmp/uv-requirement.txt \
 && ln -s /opt/uv/bin/uv /usr/local/bin/uv

# One virtual environment for every later layer; the distribution's Python unless a
# uv-managed one was asked for (that needs python downloads to be reachable).
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/cuda/bin:$PATH \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_CACHE_DIR=/root/.cache/uv
# uv's cache (its interpreter records) stays in the cache mount, out of the layer.
RUN --mount=type=secret,id=ca --mount=type=cache,id=mlsyskit-uv,target=/root/.cache/uv \
    . /usr/local/lib/mlsyskit/net.sh \
 && case "$PYTHON" in /*) uv venv --python "$PYTHON" /opt/venv ;; \
      *) UV_PYTHON_DOWNLOADS=automatic uv venv --python "$PYTHON" /opt/venv ;; esac \
 && chmod -R a+rwX /opt/venv
