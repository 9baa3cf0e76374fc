"""Content-hash tags: same inputs give the same tag; a change reaches only the layers
that depend on it."""

import json

from mlsyskit.data.catalog import load_catalog
from mlsyskit.data.config import Config
from mlsyskit.data.lockfile import lock_sha256, read_packages
from mlsyskit.images.plan import RootImage, plan

ROOT = RootImage(ref="mlsyskit/rootfs-pypi:bookworm", image_id="sha256:" + "a" * 64, origin="bootstrap")


def tags(root_dir=None, root=ROOT, config=None):
    catalog = load_catalog(root_dir) if root_dir else load_catalog()
    layers = plan(catalog, config or Config(), [catalog.topic("distributed")], catalog.base("pypi"), root)
    return {layer.kind: layer.tag for layer in layers}, layers


def test_layer_order_and_parents():
    _, layers = tags()
    assert [layer.kind for layer in layers] == ["base", "framework", "topic"]
    assert layers[1].build_args["PARENT_IMAGE"] == layers[0].tag
    assert layers[2].build_args["PARENT_IMAGE"] == layers[1].tag
    assert layers[0].build_args["ROOT_IMAGE"] == ROOT.ref


def test_same_inputs_same_tags(kit_tree):
    assert tags()[0] == tags(kit_tree)[0]


def test_topic_lock_change_rebuilds_only_the_topic(kit_tree):
    lock = kit_tree / "envs/distributed/uv.lock"
    lock.write_text(lock.read_text() + "\n# changed\n")
    before, after = tags()[0], tags(kit_tree)[0]
    assert before["base"] == after["base"] and before["framework"] == after["framework"]
    assert before["topic"] != after["topic"]


def test_framework_lock_change_rebuilds_framework_and_topic(kit_tree):
    lock = kit_tree / "images/frameworks/torch-2.11-cu130/uv.lock"
    lock.write_text(lock.read_text() + "\n# changed\n")
    before, after = tags()[0], tags(kit_tree)[0]
    assert before["base"] == after["base"]
    assert before["framework"] != after["framework"] and before["topic"] != after["topic"]


def test_root_image_and_build_args_are_inputs():
    other_root = RootImage(ref=ROOT.ref, image_id="sha256:" + "b" * 64, origin="bootstrap")
    assert tags(root=other_root)[0]["base"] != tags()[0]["base"]
    assert tags(config=Config(uv_version="0.13.8"))[0]["base"] != tags()[0]["base"]


def test_secrets_and_mirrors_are_not_inputs():
    # A CA bundle or mirror changes how bytes arrive, not which bytes: same tags.
    config = Config(ca_bundle="/etc/ssl/certs/ca-certificates.crt", pypi_index="https://mirror.example/simple")
    assert tags(config=config)[0] == tags()[0]


def test_labels_carry_lock_hash_and_key_versions():
    _, layers = tags()
    topic = layers[-1]
    labels = topic.labels()
    assert labels["org.mlsyskit.lock-sha256"] == lock_sha256(topic.lock)
    versions = json.loads(labels["org.mlsyskit.key-versions"])
    assert versions["torch"] == "2.11.0" == read_packages(topic.lock)["torch"][0]
    assert labels["org.mlsyskit.topic"] == "distributed"


def test_nvidia_base_starts_from_the_cuda_image_with_the_same_framework_and_topic():
    catalog = load_catalog()
    base = catalog.base("nvidia")
    root = RootImage(ref=base.registry_image, image_id="sha256:" + "c" * 64, origin="registry")
    layers = plan(catalog, Config(), [catalog.topic("distributed")], base, root)
    assert layers[0].build_args["ROOT_IMAGE"].startswith("nvidia/cuda:13.0")
    assert [layer.flavour for layer in layers] == ["nvidia"] * 3
    pypi_layers = tags()[1]
    # Same recipe and lock for framework and topic, different parent: different tags.
    assert layers[1].context == pypi_layers[1].context and layers[1].tag != pypi_layers[1].tag


def test_label_inputs_change_the_tag(kit_tree):
    # topic.toml's key packages become labels: editing them must not leave a reused image
    # with stale labels.
    toml = kit_tree / "envs/distributed/topic.toml"
    toml.write_text(toml.read_text().replace('key_packages = ["torch",', 'key_packages = ["psutil", "torch",'))
    assert tags()[0]["topic"] != tags(kit_tree)[0]["topic"]
    assert tags()[0]["framework"] == tags(kit_tree)[0]["framework"]


# --- is a built image current? (decided once, for shell, smoke, up and topics) ------------------


def built_labels(root_dir=None):
    """The labels `invoke build` puts on the distributed image, for the tree as it is now."""
    _, layers = tags(root_dir)
    return layers[-1].labels()


def freshness_of(root_dir, labels):
    from mlsyskit.images.plan import freshness

    catalog = load_catalog(root_dir)
    return freshness(catalog, Config(), catalog.topic("distributed"), catalog.base("pypi"), labels)


def test_an_image_built_from_todays_inputs_is_current(kit_tree):
    labels = built_labels()
    assert labels["org.mlsyskit.root-id"] == ROOT.image_id and labels["org.mlsyskit.root-ref"] == ROOT.ref
    assert freshness_of(kit_tree, labels).current


def test_a_changed_topic_lock_is_named(kit_tree):
    labels = built_labels()
    lock = kit_tree / "envs/distributed/uv.lock"
    lock.write_text(lock.read_text() + "\n# changed\n")
    fresh = freshness_of(kit_tree, labels)
    assert not fresh.current and fresh.changed == ("envs/distributed/uv.lock",)


def test_a_changed_framework_lock_is_seen_though_the_topic_lock_is_the_same(kit_tree):
    """What shell, up and smoke missed before: only the topic lock was compared."""
    labels = built_labels()
    lock = kit_tree / "images/frameworks/torch-2.11-cu130/uv.lock"
    lock.write_text(lock.read_text() + "\n# changed\n")
    fresh = freshness_of(kit_tree, labels)
    assert not fresh.current and fresh.changed == ("the torch-2.11-cu130 framework (its lock, or the base under it)",)


def test_a_changed_base_script_or_dockerfile_is_seen(kit_tree):
    labels = built_labels()
    dockerfile = kit_tree / "images/base.Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "\n# changed\n")
    assert not freshness_of(kit_tree, labels).current


def test_a_changed_topic_pyproject_is_seen(kit_tree):
    labels = built_labels()
    pyproject = kit_tree / "envs/distributed/pyproject.toml"
    pyproject.write_text(pyproject.read_text() + "\n# changed\n")
    fresh = freshness_of(kit_tree, labels)
    assert not fresh.current and "pyproject.toml" in fresh.what


def test_an_image_from_before_the_root_labels_falls_back_to_the_lock(kit_tree):
    labels = {k: v for k, v in built_labels().items() if "root-" not in k}
    assert freshness_of(kit_tree, labels).current
    lock = kit_tree / "envs/distributed/uv.lock"
    lock.write_text(lock.read_text() + "\n# changed\n")
    assert freshness_of(kit_tree, labels).changed == ("envs/distributed/uv.lock",)


# --- invoke build --dry-run ---------------------------------------------------------------------


class FakeImages:
    """The two engine questions a dry run asks: is the root there, is this tag there."""

    def __init__(self, root_id=None, tags=()):
        self.root_id, self.tags = root_id, set(tags)

    def image(self, ref):
        from mlsyskit.engine import ImageInfo

        return ImageInfo(id=self.root_id, tags=(ref,)) if self.root_id and "rootfs" in ref else None

    def image_exists(self, ref):
        return ref in self.tags


def test_dry_run_says_what_would_be_built_and_reused():
    from mlsyskit.images.build import dry_run

    catalog = load_catalog()
    topic = [catalog.topic("distributed")]
    root, planned = dry_run(FakeImages(), catalog, Config(rootfs="bootstrap"), topic, base_name="pypi")
    assert root is None and [p.action for p in planned] == ["build"] * 3  # no root: nothing can exist yet
    _, layers = tags()
    engine = FakeImages(root_id=ROOT.image_id, tags=[layers[0].tag, layers[1].tag])
    root, planned = dry_run(engine, catalog, Config(rootfs="bootstrap"), topic, base_name="pypi")
    assert root is not None and root.image_id == ROOT.image_id
    assert [(p.layer.kind, p.action) for p in planned] == [("base", "reuse"), ("framework", "reuse"), ("topic", "build")]
    assert [p.layer.tag for p in planned] == [layer.tag for layer in layers]  # the tags `invoke build` would use


def test_gpu_frameworks_say_they_want_the_gpu_and_which_cuda():
    # enroot/pyxis give no GPU to an image without NVIDIA_VISIBLE_DEVICES, and only
    # `utility` without NVIDIA_DRIVER_CAPABILITIES (NVIDIA/enroot#205, #258).
    catalog = load_catalog()
    for name, framework in catalog.frameworks.items():
        layers = plan(catalog, Config(), [t for t in catalog.topics.values() if t.framework == name][:1], catalog.base("pypi"), ROOT)
        framework_layer = next(layer for layer in layers if layer.kind == "framework")
        env = dict(framework_layer.env)
        assert env["NVIDIA_VISIBLE_DEVICES"] == "all" and env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
        assert env["NVIDIA_REQUIRE_CUDA"] == f"cuda>={framework.cuda}"
        text = framework_layer.dockerfile_text()
        assert text.startswith(framework_layer.dockerfile.read_text().rstrip())
        assert 'NVIDIA_REQUIRE_CUDA="cuda>=13.0"' in text.splitlines()[-3] + text.splitlines()[-2] + text.splitlines()[-1]
    docs = plan(catalog, Config(), [catalog.topic("docs")], catalog.base("pypi"), ROOT)
    assert all(not layer.env for layer in docs)  # no GPU image: no GPU variables


def test_layer_env_and_patches_are_inputs(kit_tree):
    before = tags()[0]
    toml = kit_tree / "envs/distributed/topic.toml"
    toml.write_text(toml.read_text().replace("[gpus]", '[env]\nFOO = "bar"\n\n[gpus]'))
    with_env = tags(kit_tree)[0]
    assert with_env["framework"] == before["framework"] and with_env["topic"] != before["topic"]
    patches = kit_tree / "envs/distributed/patches"
    patches.mkdir()
    (patches / "fix.patch").write_text("--- a/x\n+++ b/x\n")
    assert tags(kit_tree)[0]["topic"] not in (before["topic"], with_env["topic"])


def test_env_values_that_env_would_interpret_are_refused(kit_tree):
    import pytest

    from mlsyskit.errors import UsageError

    toml = kit_tree / "envs/distributed/topic.toml"
    for bad in ('FOO = "$(id)"', 'lower = "x"', 'FOO = "a\\"b"'):
        toml.write_text(toml.read_text().split("[env]")[0] + f"[env]\n{bad}\n")
        with pytest.raises(UsageError, match="envs/distributed/topic.toml: field 'env."):
            load_catalog(kit_tree)


class ListedEngine:
    """An engine that answers one listing and records every other request: the build stage
    must reuse from the listing alone and ask the engine again only for what it builds."""

    def __init__(self, held):
        self.held, self.calls = dict(held), []

    def listing(self, *references):
        self.calls.append(("listing", references))
        return dict(self.held)

    def image(self, ref):
        self.calls.append(("image", ref))
        return self.held.get(ref)

    def image_exists(self, ref):
        raise AssertionError(f"asked whether {ref} exists: the listing says")

    def build(self, *, tag, **kwargs):
        from mlsyskit.engine import ImageInfo

        self.calls.append(("build", tag))
        self.held[tag] = ImageInfo(id="sha256:" + "c" * 64, tags=(tag,), size=7_000)

    def tag(self, source, target):
        self.calls.append(("tag", source, target))


def test_build_reuses_from_one_listing_and_asks_again_only_for_what_it_builds():
    from mlsyskit.context import Context
    from mlsyskit.engine import ImageInfo
    from mlsyskit.images.build import build

    catalog = load_catalog()
    _, layers = tags()
    base, framework, topic = layers
    listed = {
        ROOT.ref: ImageInfo(id=ROOT.image_id, tags=(ROOT.ref,), size=100),
        base.tag: ImageInfo(id="sha256:" + "b" * 64, tags=(base.tag,), size=1_000),
        framework.tag: ImageInfo(id="sha256:" + "f" * 64, tags=(framework.tag,), size=5_000),
    }
    engine = ListedEngine(listed)
    ctx = Context(config=Config(rootfs="bootstrap"), catalog=catalog, base=catalog.base("pypi"), connect=lambda: engine, held=listed)
    results = build(ctx, [catalog.topic("distributed")], log=lambda line: None)
    assert [(r.layer.kind, r.status) for r in results] == [("base", "reused"), ("framework", "reused"), ("topic", "built")]
    assert [(r.size_bytes, r.total_bytes) for r in results] == [(900, 1_000), (4_000, 5_000), (2_000, 7_000)]  # from the listing
    assert engine.calls == [("build", topic.tag), ("image", topic.tag), ("tag", topic.tag, "mlsyskit/distributed:pypi")]
