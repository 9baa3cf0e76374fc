"""How a command travels through the kit's modules: `invoke shell`, `invoke build` and `invoke
up` run in this process under `sys.setprofile`, up to the moment the engine is handed what
the command built (the process would become `docker run`; compose would start containers),
and the walk through the kit's modules is printed.

A *stop* is a call into a function of the kit (mlsyskit/, tasks.py) in another module than
the previous call's: consecutive calls in one module are one stop, and returns are not stops
(a module that calls three stages in turn is one stop, then one per stage). A *return to a
module already left* is a stop in a module the walk has been in before: the detours the
issue counts (the architecture checked twice, a module asked again for what it already gave).
The leaf helpers every module uses (errors.py, report.py, arch.py, data/fields.py, the TOML
reader data/toml.py that stands in for tomllib, and the package's own `kit_cache`) and the
engine's internals below `mlsyskit.engine` (one stop: "engine") are folded, and neither the
progress callbacks a command hands down (lambdas, tasks.say) nor a generator resumed by its
consumer is a stop, nor is a module's body run by an import (`runtime/shell.py` imports
the image stage while the engine answers), so that the walk shows the pipeline's stages,
not their plumbing.

    .venv/bin/python benchmarks/trace_walk.py [shell|build|up ...] [--topic distributed] [--stack nccl-2node] [--by layer] [--edges] [--walk]

`--edges` counts only calls from one module into another (the caller's module is the nearest
kit frame below the call): a module calling its own helpers between two calls out stays one
stop, as a walk drawn from the call graph counts.

`--by layer` counts stops by the layers ARCHITECTURE.md draws (runtime, images, context,
engine, data, ...) instead of modules: how often a command goes back to a layer it left.

The images must be built (a build that is due would be traced as well). Prints a Markdown
row per command (stops, modules, returns) and, with --walk, the walk itself."""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

LEAVES = ("mlsyskit", "mlsyskit.errors", "mlsyskit.report", "mlsyskit.arch", "mlsyskit.data.fields", "mlsyskit.data.toml")
CALLBACKS = ("<lambda>", "say", "say_err")
MODULE_BODY = "<module>"  # an import running a module's body (a deferred import): no stage
GENERATOR = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


class Handed(Exception):
    """Raised where the command hands its work to the engine: the trace ends there."""


def module_of(frame: FrameType) -> str | None:
    name = frame.f_globals.get("__name__", "")
    if name == "tasks":
        return name
    if not name.startswith("mlsyskit."):
        return None
    if name.startswith("mlsyskit.engine"):
        return "mlsyskit.engine"
    if name in LEAVES:
        return None
    return name


def layer_of(module: str) -> str:
    """The layer of a module: its package below mlsyskit (or the module itself at the top)."""
    return ".".join(module.split(".")[:2])


def caller_module(frame: FrameType) -> str | None:
    """The kit module of the nearest kit frame below this call (stdlib frames between skipped)."""
    back = frame.f_back
    while back is not None:
        module = module_of(back)
        if module is not None:
            return module
        back = back.f_back
    return None


def walk(run: Callable[[], Any], by: Callable[[str], str] = lambda m: m, edges: bool = False) -> list[str]:
    """The stops of one run (see the module doc). With `edges`, only a call made from another
    module is a stop: a module calling its own helpers between two calls out stays one stop."""
    stops: list[str] = []
    started: set[FrameType] = set()  # generator frames already entered: a resumption is no stop

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event != "call" or frame.f_code.co_name in CALLBACKS or frame.f_code.co_name == MODULE_BODY:
            return
        if frame.f_code.co_flags & GENERATOR:
            if frame in started:
                return
            started.add(frame)
        module = module_of(frame)
        if module is None:
            return
        module = by(module)
        if edges:
            caller = caller_module(frame)
            if caller is not None and by(caller) == module:
                return
        if not stops or stops[-1] != module:
            stops.append(module)

    sys.setprofile(profile)
    try:
        run()
    except Handed:
        pass
    finally:
        sys.setprofile(None)
    return stops


def returns(stops: list[str]) -> int:
    seen: set[str] = set()
    count = 0
    for stop in stops:
        count += stop in seen
        seen.add(stop)
    return count


def command(name: str, topic: str, stack: str) -> Callable[[], Any]:
    """The command as a user runs it, stopped where it hands its work to the engine."""
    from mlsyskit.engine import Engine

    def handed(*args: Any, **kwargs: Any) -> Any:
        raise Handed

    if name == "shell":
        from mlsyskit.runtime import shell_cli

        Engine.become = handed  # type: ignore[method-assign]
        return lambda: shell_cli.main([topic, "--", "true"])
    from invoke import Program
    from invoke.collection import Collection

    import tasks

    program = Program(namespace=Collection.from_module(tasks), version="trace")
    if name == "build":
        return lambda: program.run(["invoke", "build", topic], exit=False)
    if name == "up":
        Engine.compose_project = handed  # type: ignore[method-assign]
        return lambda: program.run(["invoke", "up", stack, "--cpu"], exit=False)
    raise SystemExit(f"unknown command {name}: shell, build or up")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("commands", nargs="*", default=["shell", "build", "up"])
    parser.add_argument("--topic", default="distributed")
    parser.add_argument("--stack", default="nccl-2node")
    parser.add_argument("--by", choices=("module", "layer"), default="module")
    parser.add_argument("--walk", action="store_true", help="print each walk")
    parser.add_argument("--edges", action="store_true", help="a stop only where one module calls into another (see walk)")
    args = parser.parse_args()
    print(f"| command (by {args.by}) | stops | {args.by}s | returns to a {args.by} already left |")
    print("|---|---:|---:|---:|")
    walks = {}
    for name in args.commands:
        stops = walk(command(name, args.topic, args.stack), layer_of if args.by == "layer" else lambda m: m, args.edges)
        walks[name] = stops
        label = {"shell": f"./kit shell {args.topic} -- true", "build": f"invoke build {args.topic}", "up": f"invoke up {args.stack} --cpu"}[name]
        print(f"| `{label}` | {len(stops)} | {len(set(stops))} | {returns(stops)} |", flush=True)
    if args.walk:
        for name, stops in walks.items():
            print(f"\n{name}: " + " -> ".join(s.removeprefix("mlsyskit.") for s in stops))


if __name__ == "__main__":
    main()
