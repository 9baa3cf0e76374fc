"""invoke front end of the kit: parse, call mlsyskit.commands, print. Nothing else.

Several topics are given comma-separated (`invoke build distributed,verl`), or `all`:
invoke reads a second bare word as another task's name."""

from __future__ import annotations

import functools
import sys

from invoke import Exit, task

from mlsyskit import commands
from mlsyskit.errors import BuildError, KitError


def say(line: str) -> None:
    print(line, flush=True)


def kit_errors(body):
    """Turn a KitError into one line on stderr and the error's exit code."""

    @functools.wraps(body)
    def wrapper(*args, **kwargs):
        try:
            return body(*args, **kwargs)
        except KitError as exc:
            if isinstance(exc, BuildError) and exc.log_tail:
                print(exc.log_tail, file=sys.stderr)
            raise Exit(f"error: {exc}", code=exc.exit_code) from None

    return wrapper


@task(help={"fix": "install the engine, compose and debootstrap (Debian/Ubuntu) and start dockerd"})
@kit_errors
def doctor(c, fix=False):
    """Check the Docker engine, Compose, disk, and NVIDIA driver/toolkit against the images."""
    text, healthy = commands.doctor(fix, say)
    say(text)
    if not healthy:
        raise Exit("error: some checks failed (see the fixes above)", code=3)


@task(
    positional=["topics"],
    help={
        "topics": "topic names, comma-separated, or `all`",
        "base": "base flavour: pypi (no registry needed) or nvidia",
        "no-cache": "rebuild every layer from scratch",
        "verbose": "show every line of the build log",
    }
)
@kit_errors
def build(c, topics, base=None, no_cache=False, verbose=False):
    """Build base -> stack -> topic, only what is missing or changed."""
    say(commands.build(topics, base, no_cache, verbose, say))


@task
@kit_errors
def images(c):
    """List the kit's images: tag, layer, size and the lock each was built from."""
    say(commands.images())


@task(help={"check": "fail if any lock is stale (resolves nothing)", "topics": "comma-separated (default: all)"})
@kit_errors
def lock(c, topics="", check=False):
    """Re-resolve the stack and topic locks (`--check`: fail when one is stale)."""
    commands.lock(topics, check, say)


@task(positional=["topic"], help={"topic": "the topic to check", "base": "base flavour"})
@kit_errors
def check(c, topic, base=None):
    """CPU check inside a built topic image: imports and key versions."""
    say(commands.check(topic, base, say))


@task
@kit_errors
def clean(c):
    """Remove the kit's images and its build cache."""
    say(commands.clean(say))
