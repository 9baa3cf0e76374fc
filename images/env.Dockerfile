# Framework and topic layers: install one uv lock into the parent image's /opt/venv.
# The build context is the folder holding pyproject.toml + uv.lock (images/frameworks/<framework>
# or envs/<topic>), so a change elsewhere never invalidates this layer.
ARG PARENT_IMAGE
FROM ${PARENT_IMAGE}

ARG APT_PACKAGES=""
RUN --mount=type=cache,id=mlsyskit-apt-cache,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,id=mlsyskit-apt-lists,target=/var/lib/apt/lists,sharing=locked \
    --mount=type=secret,id=ca \
    if [ -n "$APT_PACKAGES" ]; then \
      . /usr/local/lib/mlsyskit/net.sh \
      && apt-get $APT_OPTS update && apt-get $APT_OPTS install -y --no-install-recommends $APT_PACKAGES \
      && rm -rf /var/log/apt/* /var/log/dpkg.log /var/log/alternatives.log /var/cache/ldconfig/aux-cache; \
    fi

# The lock is exported with its hashes and installed through whatever index is configured:
# `uv sync --frozen` would fetch from the URLs recorded in the lock and ignore a mirror.
# Installing adds to the parent's packages (a topic keeps its framework's JIT tools).
# The export is the whole resolved set, so it is installed as is (`--no-deps`: no second
# resolution, which would trip over a lock's override-dependencies, e.g. verl's
# transformers); uv verifies every hash in it. `--project` applies the lock's build
# settings for sdists (extra-build-dependencies/-variables, e.g. flash-attn for OpenRLHF).
# Not `--require-hashes`: with `--project` it rejects any [tool.uv] constraint not pinned `==`.
# PYC_INVALIDATION_MODE=CHECKED_HASH: bytecode keyed on the source's hash, not its mtime
# (PEP 552), so a rebuild compiles the same bytes; an edited source is still recompiled.
# `uv cache prune --ci` then empties the cache mount of downloaded wheels, which uv keeps
# unpacked (as large as the layer itself: all topics' caches would pass CI's 60 GB), and
# keeps the wheels built from sdists, the slow part of a rebuild. PyPI re-downloads fast.
RUN --mount=type=cache,id=mlsyskit-uv,target=/root/.cache/uv \
    --mount=type=secret,id=ca --mount=type=secret,id=pypi_index \
    --mount=type=bind,source=pyproject.toml,target=/tmp/lock/pyproject.toml \
    --mount=type=bind,source=uv.lock,target=/tmp/lock/uv.lock \
    . /usr/local/lib/mlsyskit/net.sh \
 && uv export --frozen --no-dev --no-emit-project --format requirements.txt \
      --project /tmp/lock -o /tmp/requirements.txt --quiet \
 && PYC_INVALIDATION_MODE=CHECKED_HASH uv pip install --project /tmp/lock --no-deps -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt \
 && uv cache prune --ci --quiet \
 && python3 /usr/local/lib/mlsyskit/link_cuda.py

# A topic's patches/*.patch: fixes to the packages just installed (unified diffs against
# site-packages, each named for the release it fixes, e.g. SGLang 0.5.12's JIT kernel that
# g++ 12 cannot compile). A patch that does not apply fails the build; none for most layers.
RUN --mount=type=bind,source=.,target=/tmp/ctx \
    if [ -d /tmp/ctx/patches ]; then \
      site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
      && for p in /tmp/ctx/patches/*.patch; do \
           echo "applying $(basename "$p")" && patch --batch --forward --no-backup-if-mismatch -p1 -d "$site" < "$p" || exit 1; \
         done; \
    fi
