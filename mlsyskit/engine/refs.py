"""What the engine accepts as an image or container reference, checked before any client
sees it. Refs reach the engine from outside (bundle manifests, image labels, the command
line): one that is not a reference in Docker's own grammar is refused with one line, so
that no client is ever asked to put CR/LF, `../`, `?` or `#` into a request path."""

from __future__ import annotations

import re

from mlsyskit.errors import UsageError

# Docker's reference grammar (distribution/reference), ASCII only.
_ALNUM = r"[a-z0-9]+"
_COMPONENT = rf"{_ALNUM}(?:(?:[._]|__|-+){_ALNUM})*"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?"
_NAME = rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE_REF = re.compile(rf"(?P<name>{_NAME})(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?", re.ASCII)
IMAGE_ID = re.compile(r"(?:sha256:)?[0-9a-f]{12,64}", re.ASCII)
CONTAINER = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,254}", re.ASCII)
NAME_MAX = 255  # Docker's limit on a repository name


def _shown(ref: str) -> str:
    """The ref as one safe line: control characters escaped, long ones cut."""
    text = ascii(ref)
    return text if len(text) <= 80 else text[:77] + "..."


def image_ref(ref: str) -> str:
    """`ref` when it names an image (`name[:tag][@digest]`, or an ID); else a UsageError."""
    if IMAGE_ID.fullmatch(ref):
        return ref
    found = IMAGE_REF.fullmatch(ref)
    if found is None or len(found["name"]) > NAME_MAX:
        raise UsageError(f"not an image reference: {_shown(ref)}", fix="name images as `repository[:tag]` (Docker's reference grammar) or by their sha256 ID")
    return ref


def container_ref(name: str) -> str:
    """`name` when it can name a container (Docker's name rule, or an ID); else a UsageError."""
    if not CONTAINER.fullmatch(name):
        raise UsageError(f"not a container name or ID: {_shown(name)}", fix="container names are letters, digits and `_.-`, starting with a letter or digit")
    return name


def split_tag(ref: str) -> tuple[str, str]:
    """(repository, tag) of a `repository[:tag]` ref (`latest` when none): a registry's
    port (`host:5000/name`) is not a tag."""
    found = IMAGE_REF.fullmatch(image_ref(ref))
    if found is None or found["digest"]:
        raise UsageError(f"not a tag: {_shown(ref)}", fix="tags are `repository:tag`")
    return found["name"], found["tag"] or "latest"
