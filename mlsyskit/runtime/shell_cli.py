"""`./kit shell ...`: `invoke shell` without invoke. invoke's own start-up (importing invoke,
loading tasks.py, parsing) costs a quarter of a second, which is most of what `invoke
shell` adds to `docker run`; this entry parses the same options with argparse and runs the
same pipeline as `runtime.shell.shell`: its first stages, then the module of the others,
imported while the engine answers the image lookup the first stages started.
tests/unit/test_shell_task.py checks that both accept the same options.

    ./kit shell TOPIC [--gpus N] [-e K=V] [-p 8000] [--name NAME] [-- CMD ARGS...]
    python3 -m mlsyskit.runtime.shell_cli ...     # the same, from the kit's environment
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mlsyskit.errors import KitError
from mlsyskit.runtime.shell_request import ShellOptions, resolve_request


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="./kit shell", description="A shell (or one command) in a topic's container.")
    p.add_argument("topic", nargs="?", default="", help="the topic (leave out with --name to re-enter a container)")
    p.add_argument("--base", default="", help="base flavour: pypi or nvidia (default: kit.toml's)")
    p.add_argument("--arch", default="", help="amd64 or arm64 (default: this host's; another runs under qemu)")
    p.add_argument("--workspace", default="", help="folder mounted at /workspace (default: the current one)")
    p.add_argument("--gpus", default="", help="all (default where there are GPUs), none, N (least used) or 0,1")
    p.add_argument("--shm-size", default="", help="a /dev/shm of this size instead of the host's IPC namespace")
    p.add_argument("--mount", action="append", default=[], help="HOST[:CONTAINER[:ro]] or docker's type=... form (repeatable)")
    p.add_argument("-e", "--env", action="append", default=[], help="KEY=VALUE, or KEY for the host's value (repeatable)")
    p.add_argument("-p", "--port", action="append", default=[], help="publish a port: 8000, 8080:80 (repeatable)")
    p.add_argument("--name", default="", help="a long-lived container of this name; re-entered when it exists")
    p.add_argument("--network", default="", help="docker network (host: the host's own)")
    p.add_argument("--root", action="store_true", help="run as root instead of your own UID/GID")
    return p


def options(argv: Sequence[str]) -> ShellOptions:
    """What follows `--` is the command, word for word (argparse never sees it)."""
    argv = list(argv)
    command: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, command = argv[:at], argv[at + 1 :]
    args = parser().parse_args(argv)
    return ShellOptions(
        topic=args.topic, base=f"{args.base}-{args.arch}" if args.arch else args.base, command=tuple(command), workspace=args.workspace, gpus=args.gpus,
        shm_size=args.shm_size, mounts=tuple(args.mount), env=tuple(args.env), ports=tuple(args.port),
        network=args.network, name=args.name, root=args.root,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    opts = options(sys.argv[1:] if argv is None else argv)
    try:
        request = resolve_request(opts)  # from here the engine answers the image lookup, meanwhile:
        from mlsyskit.runtime import shell as runtime_shell  # the rest of the pipeline loads (~10 ms)

        runtime_shell.run(request, lambda line: print(line, file=sys.stderr, flush=True))  # becomes docker: never returns
    except KitError as exc:
        if exc.log_tail:
            print(exc.log_tail, file=sys.stderr)
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
