"""invoke glue that tasks.py needs beyond `@task`: a positional argument that `--name` can
stand in for (`invoke shell --name NAME` re-enters a container with no topic given), and
short flags chosen by hand where invoke's automatic ones would collide."""

from __future__ import annotations

from typing import Any

from invoke.parser.argument import Argument
from invoke.tasks import Task


class OptionalPositional(Argument):
    """A positional argument that counts as given once `companion` (a flag) has a value.
    invoke requires every positional argument; this one reads as "" when only the
    companion was given, and still takes the first bare word when it comes first."""

    companion: Argument | None = None

    @property
    def value(self) -> Any:
        value = self._value if self._value is not None else self.default
        if value is None and self.companion is not None and self.companion.got_value:
            return ""
        return value

    @value.setter
    def value(self, arg: str) -> None:
        self.set_value(arg, cast=True)


class PositionalOrFlagTask(Task[Any]):
    """A task whose positional `stand_in[0]` may be left out when the flag `stand_in[1]`
    is given (set with `@task(klass=PositionalOrFlagTask, stand_in=(positional, flag))`)."""

    def __init__(self, *args: Any, stand_in: tuple[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stand_in = stand_in

    def get_arguments(self, ignore_unknown_help: bool | None = None) -> list[Argument]:
        args = super().get_arguments(ignore_unknown_help)
        positional, flag = self.stand_in
        companion = next(a for a in args if a.name == flag)
        for i, arg in enumerate(args):
            if arg.name == positional:
                optional = OptionalPositional(
                    names=arg.names,
                    kind=arg.kind,
                    default=arg.default,
                    help=arg.help,
                    positional=True,
                    attr_name=arg.attr_name,
                )
                optional.companion = companion
                args[i] = optional
        return args


class ShortFlagsTask(Task[Any]):
    """A task whose short flags are named, not derived (`@task(klass=ShortFlagsTask,
    auto_shortflags=False, short={"output": "o"})`): invoke's automatic ones would hand
    out `-h` (help's) to `--host-ipc`, so they are off, and these few are given by hand."""

    def __init__(self, *args: Any, short: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.short = short

    def get_arguments(self, ignore_unknown_help: bool | None = None) -> list[Argument]:
        args = super().get_arguments(ignore_unknown_help)
        for arg in args:
            letter = self.short.get(arg.name or "")
            if letter and letter not in arg.names:
                arg.names = (*arg.names, letter)
        return args
