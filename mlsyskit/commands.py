"""What each invoke task does, as plain functions: tasks.py only parses and prints.
Each function takes already-parsed arguments, does the work through Engine, and returns
the text to print (or raises a KitError)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlsyskit import LABEL_PREFIX, REPO_ROOT
from mlsyskit.arch import ARCHES
from mlsyskit.checks import doctor as doctor_mod
from mlsyskit.checks import versions as topics_mod
from mlsyskit.context import Context
from mlsyskit.data.catalog import Catalog, Topic, load_catalog
from mlsyskit.data.fields import rel_path
from mlsyskit.engine import ContainerSpec, Engine
from mlsyskit.errors import EngineError, KitError, UsageError
from mlsyskit.images.build import build as build_images
from mlsyskit.images.build import dry_run
from mlsyskit.images.ensure import built_image
from mlsyskit.images.plan import topic_alias
from mlsyskit.images.relock import lock as lock_all
from mlsyskit.report import seconds, size, table

if TYPE_CHECKING:
    from mlsyskit.images.bundle import Contents

Log = Callable[[str], None]


def split_names(value: str) -> list[str]:
    """`a,b` or `a b` -> ['a', 'b']; '' or 'all' -> [] (meaning every topic)."""
    names = [n for n in value.replace(",", " ").split() if n]
    return [] if names in ([], ["all"]) else names


def doctor(fix: bool, log: Log) -> tuple[str, bool]:
    catalog = load_catalog()
    checks = doctor_mod.run_checks(catalog)
    if fix:
        for action in doctor_mod.fix(checks, log):
            log(f"fixed: {action}")
        checks = doctor_mod.run_checks(catalog)
    rows = [(c.status.upper(), c.name, c.detail + (f"  -> {c.fix}" if c.fix else "")) for c in checks]
    healthy = not any(c.status == "fail" for c in checks)
    return table(("status", "check", "detail"), rows), healthy


def build(topics: str, base: str | None, no_cache: bool, verbose: bool, log: Log, dry_run: bool = False) -> str:
    """One straight pipeline: the options -> the context (the topics, checked for the
    architecture before anything; no topic named: every one, those of another architecture
    left out and named; the Debian lock; one listing of the engine's images) -> the image
    stage (images.build.build: root filesystem, plan, what is missing built, tags moved)
    -> the report."""
    ctx = Context.resolve(base or "", topics=split_names(topics), every=log, listing=not dry_run)
    if dry_run:
        return build_plan(ctx, list(ctx.topics))
    results = build_images(ctx, ctx.topics, no_cache=no_cache, log=log, verbose=verbose)
    rows = [(r.layer.kind, r.layer.name, r.layer.tag, r.status, size(r.size_bytes), size(r.total_bytes), seconds(r.seconds)) for r in results]
    aliases = ", ".join(ctx.images[t.name].ref for t in ctx.topics)
    return table(("layer", "name", "tag", "status", "layer size", "image size", "time"), rows) + f"\ntagged: {aliases}"


def build_plan(ctx: Context, selected: list[Topic]) -> str:
    """`invoke build --dry-run`: every layer, its tag, parent, inputs and build args, and
    whether `invoke build` would build it or reuse what the engine holds. Builds nothing."""
    root, layers = dry_run(ctx.engine, ctx.catalog, ctx.config, selected, base_name=ctx.base_name)
    lines = []
    if root is None:
        lines.append(
            f"root filesystem: not in the engine yet ({ctx.base.registry_image} pulled, or bootstrapped): "
            "`invoke build` makes it first, and the tags below change with its digest"
        )
    else:
        lines.append(f"root filesystem: {root.ref} ({root.origin}, {root.image_id[:19]})")
    rows = []
    for item in layers:
        layer = item.layer
        inputs = ", ".join(rel_path(p) for p in (layer.dockerfile, *layer.inputs))
        args = " ".join(f"{k}={v}" for k, v in sorted(layer.build_args.items()) if v)
        rows.append((layer.kind, layer.name, layer.tag, layer.parent_ref, item.action, args, inputs))
    lines.append(table(("layer", "name", "tag", "parent", "would", "build args", "inputs"), rows))
    built = sum(not item.exists for item in layers)
    lines.append(f"{built} layer(s) to build, {len(layers) - built} to reuse; nothing was built (--dry-run)")
    return "\n".join(lines)


def images() -> str:
    engine = Engine.connect()
    rows = []
    for image in engine.images(f"{LABEL_PREFIX}.kind"):
        labels = image.labels
        for ref in sorted(image.tags):
            rows.append(
                (
                    ref,
                    labels.get(f"{LABEL_PREFIX}.kind", ""),
                    labels.get(f"{LABEL_PREFIX}.base", ""),
                    size(image.size),
                    labels.get(f"{LABEL_PREFIX}.lock-sha256", "")[:12] or "-",
                    image.created[:19].replace("T", " "),
                )
            )
    rows.sort()
    if not rows:
        return "no kit images yet: run `invoke build`"
    return table(("image", "layer", "base", "size", "lock sha256", "created (UTC)"), rows)


def lock(topics: str, check: bool, log: Log) -> None:
    """uv locks (re-resolved, or checked), then images/debian-lock.toml (recorded from the
    built images, or checked against what the files ask apt for)."""
    from mlsyskit.errors import LockError
    from mlsyskit.images.relock import check_debian, record_debian

    ctx = Context.resolve()
    catalog = ctx.catalog
    lock_all(catalog, catalog.select(split_names(topics)), check=check, log=log)
    # the Debian lock per architecture: pypi (amd64) and pypi-arm64
    base_names = [catalog.base(ctx.base.flavour or ctx.base_name, arch).name for arch in ARCHES]
    if check:
        stale = [key for name in base_names for key in check_debian(catalog, name, log)]
        if stale:
            raise LockError(f"images/debian-lock.toml is stale for {', '.join(stale)}", fix="build them (`invoke build`), then run `invoke lock`")
        return
    try:
        engine = ctx.engine
    except EngineError as exc:
        log(f"Debian packages not recorded: {exc}")
        return
    for name in base_names:
        record_debian(engine, catalog, name, log)


def check(topic_name: str, base: str | None, log: Log) -> str:
    """A CPU check inside a built topic image, with no network: its key modules import, and
    the versions inside match the lock."""
    ctx = Context.resolve(base or "")
    topic: Topic = ctx.catalog.topic(topic_name)
    engine = ctx.engine
    image = topic_alias(topic.name, ctx.base_name)
    built_image(engine, topic, image)
    script = (
        "import importlib, json, importlib.metadata as md\n"
        f"mods = {list(topic.imports)!r}\n"
        "for m in mods: importlib.import_module(m)\n"
        f"print(json.dumps({{n: md.version(n) for n in {list(topic.key_packages)!r}}}))\n"
    )
    # no network: the check proves the image works as it is, e.g. loaded from a bundle offline
    proc = engine.run(ContainerSpec(image=image, command=("python", "-c", script), network="none"), timeout=600)
    if proc.returncode != 0:
        raise KitError(f"check failed in {image}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    log(f"imports ok in {image}: {', '.join(topic.imports)}")
    return table(("package", "version in image"), sorted(found.items()))


def topics(base: str | None) -> str:
    """Every topic: framework, key versions (locked, for the base's Python), GPU needs and
    whether its image is built. Without a Docker engine the image column says '?'."""
    ctx = Context.resolve(base or "")
    catalog, config, base_name, base_obj = ctx.catalog, ctx.config, ctx.base_name, ctx.base
    environment = topics_mod.base_environment(base_obj)
    locked = {t.name: topics_mod.locked_versions(catalog, t, environment) for t in catalog.select([])}
    try:
        states = topics_mod.image_states(ctx.engine, catalog, config, base_obj)
    except EngineError:  # no engine: the table still says what is locked
        states = None
    return topics_mod.topics_table(catalog, locked, states, base_name)


def versions(topic_name: str, base: str | None) -> str:
    """A topic's key packages as locked, beside the versions inside its image when built
    (the lock is then read for the image's own Python)."""
    ctx = Context.resolve(base or "")
    catalog, base_name, base_obj = ctx.catalog, ctx.base_name, ctx.base
    topic = catalog.topic(topic_name)
    image = topic_alias(topic.name, base_name)
    probe = None
    try:
        engine: Engine | None = ctx.engine
    except EngineError:
        engine = None
    if engine is not None and engine.image_exists(image):
        probe = topics_mod.probe_image(engine, image, topics_mod.key_packages(catalog, topic))
    environment = probe.environment if probe else topics_mod.base_environment(base_obj)
    locked = topics_mod.locked_versions(catalog, topic, environment)
    return topics_mod.versions_table(catalog, topic, base_obj, image, locked, probe)


def sbom(topic_name: str, base: str | None, out: str, log: Log) -> str:
    """`invoke sbom TOPIC`: the topic image's CycloneDX SBOM (validated), and what it counts."""
    from mlsyskit.images.sbom import SCHEMA, write_sbom

    ctx = Context.resolve(base or "")
    topic = ctx.catalog.topic(topic_name)
    image = topic_alias(topic.name, ctx.base_name)
    path = Path(out) if out else REPO_ROOT / ".kit" / "sbom" / f"{topic.name}-{ctx.base_name}.cdx.json"
    counts = write_sbom(ctx.engine, ctx.catalog, topic, image, path, log=log)
    return table(("components", "count"), list(counts.items())) + f"\nwritten: {rel_path(path)} ({SCHEMA}, schema-valid)"


def bundle(names: str, output: str, base: str | None, log: Log, *, sign: str = "", with_cache: bool = False) -> str:
    """`invoke bundle TOPIC[,TOPIC]|STACK -o FILE [--with-cache]`: images, SBOMs, locks (and a
    stack's files, and the topic images' kernel caches) in one file for a machine with no network."""
    from mlsyskit.images import bundle as bundle_mod

    if not output:
        raise UsageError("say where to write the bundle", fix="add -o FILE, e.g. `invoke bundle docs -o docs.bundle`")
    ctx = Context.resolve(base or "")
    contents = bundle_contents(ctx.catalog, split_names(names) if names != "all" else [], ctx.base_name)
    out = Path(output).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".mlsyskit-kernels-", dir=out.parent) as scratch:
        extra, notes = bundled_caches(ctx, contents, Path(scratch), log) if with_cache else ([], {})
        manifest = bundle_mod.write_bundle(ctx.engine, ctx.catalog, contents, out, log, sign_with=Path(sign) if sign else None, extra=extra, notes=notes)
    rows = [(", ".join(image["tags"]), image["id"][7:19]) for image in manifest["images"]]
    rows += [(f["name"].removeprefix(bundle_mod.ROOT + "/"), size(f["size"])) for f in manifest["files"]]
    return table(("in the bundle", "id / size"), rows) + f"\nwritten: {out} ({size(out.stat().st_size)}); on the other machine: invoke load {out.name}"


def load(file: str, to: str, log: Log, *, require_signature: str = "", allow_tags: str = "") -> str:
    """`invoke load FILE`: check the whole bundle (and its signature where one is required),
    then restore the images as bundled."""
    from mlsyskit.data.config import load_config
    from mlsyskit.images import bundle as bundle_mod

    path = Path(file).absolute()
    unpack_to = Path(to).absolute() if to else bundle_mod.default_unpack_dir(path)
    keys = bundle_mod.trusted_keys(require_signature, load_config().trusted_key)  # a bad key: before the engine is asked
    allowed = frozenset(split_names(allow_tags)) if allow_tags else frozenset()
    manifest = bundle_mod.load_bundle(Engine.connect, path, unpack_to, log, keys=keys, allowed_tags=allowed)
    rows = [(", ".join(image["tags"]), image["id"][7:19]) for image in manifest["images"]]
    text = table(("image", "id"), rows) + f"\nlocks, SBOMs and stack files: {rel_path(unpack_to)}"
    cache = unpack_to / bundle_mod.KERNEL_CACHE.removeprefix(bundle_mod.ROOT + "/")
    if any(f["name"] == bundle_mod.KERNEL_CACHE for f in manifest["files"]) and cache.is_file():
        text += "\n" + load_caches(cache, manifest)
    return text


def bundle_contents(catalog: Catalog, names: list[str], base: str) -> Contents:
    """What `invoke bundle NAMES` carries: `TOPIC[,TOPIC]`, or one compose stack's topics and files."""
    from mlsyskit.compose.stacks import load_stack, stack_names
    from mlsyskit.images.bundle import Contents

    if not names:
        raise UsageError("name the topics or the stack to bundle", fix="e.g. `invoke bundle docs -o docs.bundle`")
    if len(names) == 1 and names[0] in stack_names() and names[0] not in catalog.topics:
        stack = load_stack(names[0])
        return Contents([catalog.topic(t) for t in stack.topics()], stack.name, base)
    return Contents(catalog.select(names), "", base)


def bundled_caches(ctx: Context, contents: Contents, scratch: Path, log: Log) -> tuple[list[tuple[str, Path]], dict[str, Any]]:
    """`--with-cache`: the kernel caches of the bundle's topic images (every architecture and
    container user), as one tar member, and what it holds for the manifest."""
    from mlsyskit.runtime import caches

    home = caches.cache_home(os.environ)
    if home is None:
        raise UsageError(f"--with-cache, but {caches.HOME_VARIABLE} turns the kernel caches off", fix=f"unset {caches.HOME_VARIABLE}")
    keys = {}
    for topic in contents.topics:
        info = built_image(ctx.engine, topic, topic_alias(topic.name, contents.base))
        keys[caches.image_key(info.id)] = topic.name
    found = [e for e in caches.entries(home) if keys.get(e.key.image) == e.key.topic]
    if not found:
        log("note: --with-cache, but these images have no kernel cache yet (their containers fill one): the bundle carries none")
    path = scratch / caches.BUNDLE_MEMBER
    held = caches.write_tar(found, path, log)
    for entry in held:
        log(f"kernel cache {entry['topic']}/{entry['image']}/{entry['arch']}/{entry['user']}: {entry['files']} file(s), {size(entry['bytes'])}")
    return [(caches.BUNDLE_MEMBER, path)], {"kernel_cache": held}


def load_caches(tar: Path, manifest: dict[str, Any]) -> str:
    """The bundle's kernel caches (checked with the bundle, unpacked beside its locks) into this
    user's cache, under the images' IDs (docker load keeps them): the first container of each
    image starts warm. The tar is removed afterwards."""
    from mlsyskit.runtime import caches

    home = caches.cache_home(os.environ)
    if home is None:
        return f"kernel caches: not unpacked ({caches.HOME_VARIABLE} turns them off; they are in {rel_path(tar)})"
    images = {caches.image_key(i["id"]): i["labels"][f"{LABEL_PREFIX}.topic"] for i in manifest["images"] if i["labels"].get(f"{LABEL_PREFIX}.topic")}
    try:
        written, kept = caches.extract_tar(lambda: tar.open("rb"), home, images, os.getuid())
    except KitError as exc:
        raise KitError(f"the images were loaded, their kernel caches were not: {exc.message}", fix=exc.fix) from None
    tar.unlink()
    return f"kernel caches: {written} file(s) unpacked into {home}" + (f" ({kept} already there, kept)" if kept else "")


def cache(action: str, topics: str, image: str, arch: str, everything: bool, older_than: str, log: Log) -> str:
    """`invoke cache ls|rm|prune`: the kernel caches on this host (runtime/caches.py)."""
    from mlsyskit.runtime import caches

    home = caches.cache_home(os.environ)
    if home is None:
        return f"kernel caches are off ({caches.HOME_VARIABLE}=off): containers get none"
    names = split_names(topics)
    if action == "ls":
        return caches.ls(home, Engine.for_running(), names, image=image, arch=arch)
    if action == "rm":
        if not (names or image or arch or everything):
            raise UsageError("say which kernel caches to remove", fix="--topic TOPIC, --image ID, --arch sm_90 (or cpu), or --all")
        found = caches.select(caches.entries(home), topics=names, image=image, arch=arch)
        if not found:
            return f"no kernel cache under {home} matches"
        freed = caches.remove(found, home, Engine.for_running, log)
        return f"removed {len(found)} kernel cache(s), {size(freed)}"
    if action == "prune":
        days = None
        if older_than:
            try:
                days = float(older_than)
            except ValueError:
                days = -1.0
            if days < 0:
                raise UsageError(f"--older-than {older_than}: not a number of days", fix="e.g. --older-than 30")
        doomed, freed = caches.prune(home, Engine.for_running(), days, log)
        why = "images the kit no longer runs" + (f", or unused for {older_than} days" if days is not None else "")
        return f"removed {len(doomed)} kernel cache(s) ({why}), {size(freed)}" if doomed else f"nothing to prune ({why}: none)"
    raise UsageError(f"unknown action '{action}'", fix="invoke cache ls, invoke cache rm --topic TOPIC, or invoke cache prune")


def verify(topic_name: str, base: str | None, keep: bool, log: Log) -> tuple[str, bool]:
    """`invoke verify TOPIC`: rebuild from nothing and compare every file with the image."""
    from mlsyskit.images import verify as verify_mod

    ctx = Context.resolve(base or "")
    (topic,) = ctx.topics_for_arch([ctx.catalog.topic(topic_name)])
    comparison = verify_mod.verify_topic(ctx.engine, ctx.catalog, ctx.config, topic, ctx.base_name, log, keep=keep)
    path = REPO_ROOT / ".kit" / "verify" / f"{topic.name}-{ctx.base_name}.json"
    verify_mod.write_json(comparison, path)
    return verify_mod.report(comparison) + f"\nevery difference: {rel_path(path)}", not comparison.unexplained()


def clean(log: Log) -> str:
    engine = Engine.connect()
    refs = [ref for image in engine.images(f"{LABEL_PREFIX}.kind") for ref in image.tags]
    engine.remove_images(refs)
    engine.prune_build_cache(cache_mounts_only=True)
    engine.prune_build_cache()
    # BuildKit cannot tell which cache records are the kit's, so the engine's whole build
    # cache goes: say so rather than pretend.
    return f"removed {len(refs)} image tag(s) and the engine's build cache (all of it, not only the kit's)"
