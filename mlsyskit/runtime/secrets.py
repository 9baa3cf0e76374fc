"""Secrets reach containers as files, never as environment values that docker keeps.

A value given with `docker run -e` (or compose's `environment:`) lands in the container's
Config.Env, which `docker inspect` shows, and `docker commit` copies into an image, to anyone
who may talk to the daemon. So HF_TOKEN, WANDB_API_KEY, proxy URLs with credentials and the
values `-e KEY` takes from the host are written to a private folder (mode 0700, each file
0600, under $XDG_RUNTIME_DIR, a tmpfs, where there is one) that the container gets as a
read-only bind at /run/mlsyskit/secrets:

- Hugging Face's token is the file `hf_token`, named by HF_TOKEN_PATH (huggingface_hub, and
  so transformers, datasets, SGLang and vLLM, read it there); the token is in no
  environment at all. A tool that wants the variable: `HF_TOKEN=$(cat "$HF_TOKEN_PATH") tool`.
- Every other secret is `env/NAME`, exported by a two-line loader that the container's command
  starts with (`sh -c LOADER mlsyskit-secrets COMMAND...`): the values live in the
  environment of the command and its children (/proc/PID/environ: the same user and root),
  which is what pip, uv and curl need for a proxy with credentials (none of them has a
  `*_FILE` variable, and uv no config key for a proxy), and are in no Config.Env.

`docker exec` into such a container starts outside the loader: it sees HF_TOKEN_PATH but not
the exported values. `invoke shell --name` re-entry passes them on each `docker exec -e NAME`
(an exec's environment is not part of the container's inspect output either).

What is not secret stays a plain variable: a proxy URL without credentials, NO_PROXY, an HF
endpoint without credentials (and available to `docker exec` too)."""

from __future__ import annotations

import os
import select
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

IN_CONTAINER = "/run/mlsyskit/secrets"
HF_TOKEN_FILE = "hf_token"
HF_TOKENS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")  # huggingface_hub reads either; the file serves both
TOKENS = (*HF_TOKENS, "WANDB_API_KEY")  # what every container gets from the host, when set there
# Exports every env/NAME file of the folder, then runs the command (its words follow).
LOADER = f'for f in {IN_CONTAINER}/env/*; do [ -f "$f" ] && export "${{f##*/}}=$(cat "$f")"; done; exec "$@"'
LOADER_NAME = "mlsyskit-secrets"  # $0 of the loader, what `ps` shows for it
URL_VALUED = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "HF_ENDPOINT", "all_proxy", "ALL_PROXY")
NOT_SECRET = ("no_proxy", "NO_PROXY")


def is_secret(name: str, value: str) -> bool:
    """Whether a value passed at run time must stay out of Config.Env: tokens and anything
    unknown are; a URL is only when it carries credentials (user:password@)."""
    if name in NOT_SECRET:
        return False
    if name in URL_VALUED:
        try:
            parts = urlsplit(value if "://" in value else f"http://{value}")
            return bool(parts.username or parts.password)
        except ValueError:
            return True  # unreadable: keep it out of sight
    return True


def split(values: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(plain, secret) of the values a container gets at run time."""
    plain = {k: v for k, v in values.items() if not is_secret(k, v)}
    return plain, {k: v for k, v in values.items() if k not in plain}


@dataclass(frozen=True)
class Delivery:
    """How a container gets the secrets of a folder: a read-only bind, variables that name
    files (no values), and the loader its command starts with (none if nothing to export)."""

    volume: str
    env: tuple[str, ...]
    loader: tuple[str, ...]

    def wrap(self, command: tuple[str, ...]) -> tuple[str, ...]:
        return (*self.loader, *command) if self.loader else command


def delivery(secrets: Mapping[str, str], folder: Path) -> Delivery | None:
    """How the secrets (as `write` puts them in `folder`) reach a container; None for none."""
    if not secrets:
        return None
    env = (f"HF_TOKEN_PATH={IN_CONTAINER}/{HF_TOKEN_FILE}",) if any(k in secrets for k in HF_TOKENS) else ()
    exported = [k for k in secrets if k not in HF_TOKENS]
    loader = ("sh", "-c", LOADER, LOADER_NAME) if exported else ()
    return Delivery(volume=f"{folder}:{IN_CONTAINER}:ro", env=env, loader=loader)


def _write_private(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(value)


def write(secrets: Mapping[str, str], folder: Path) -> None:
    """The files `delivery` names, in `folder` (made private here if it does not exist)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    token = next((secrets[k] for k in HF_TOKENS if secrets.get(k)), "")
    if token:
        _write_private(folder / HF_TOKEN_FILE, token)
    exported = {k: v for k, v in secrets.items() if k not in HF_TOKENS}
    if exported:
        (folder / "env").mkdir(mode=0o700, exist_ok=True)
        for name, value in exported.items():
            if not name.isidentifier() or not name.isascii():
                raise ValueError(f"not a variable name: {name!r}")
            _write_private(folder / "env" / name, value)


def private_base(environ: Mapping[str, str]) -> Path:
    """Where private folders go: $XDG_RUNTIME_DIR (a per-user tmpfs) when there is one, else
    the temporary folder."""
    runtime = environ.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK):
        return Path(runtime)
    return Path(tempfile.gettempdir())


def new_folder(environ: Mapping[str, str]) -> Path:
    """A new private folder (0700) for one container's secrets."""
    return Path(tempfile.mkdtemp(prefix="mlsyskit-secrets-", dir=private_base(environ)))


@contextmanager
def private_folder(secrets: Mapping[str, str], environ: Mapping[str, str]) -> Iterator[Path | None]:
    """A private folder holding the secrets (`write`) for the block, a container's life,
    removed however the block ends; None when there are no secrets."""
    if not secrets:
        yield None
        return
    folder = new_folder(environ)
    try:
        write(secrets, folder)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_when_gone(folder: Path, pid: int) -> None:
    """Remove `folder` once process `pid` has ended, from a detached process: for a folder
    whose container outlives this Python process, which becomes `docker run` (exec keeps
    the PID). Forks twice so that nothing waits for it; it holds no terminal."""
    child = os.fork()
    if child:
        os.waitpid(child, 0)
        return
    try:  # the first child: a new session, then the watcher, then out
        os.setsid()
        if os.fork():
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.chdir("/")
        _wait_for_exit(pid)
        shutil.rmtree(folder, ignore_errors=True)
    finally:
        os._exit(0)


def _wait_for_exit(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd (Linux < 5.3): poll
        import time

        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            except PermissionError:
                pass
            time.sleep(1)
    try:
        select.select([fd], [], [])
    finally:
        os.close(fd)
