"""Gates: the thresholds a smoke test holds its measurements to, declared as data beside the
test (``SMOKE = SmokeTest(..., gates=GATES)``), applied by default, each printed with its
measured value, and overridable by whoever knows their machine::

    python -m smoke_tests.<test> --gate bf16_gemm_share=0.6 --gate pcie_link=off
    python -m smoke_tests.<test> --no-gates               # correctness only
    invoke smoke distributed --gate busbw_share=0.6       # passed to every test that has it

A gate's value is one of four kinds:

- ``share``: a fraction of a peak (0 < x <= 1), e.g. a GEMM's TFLOP/s over the datasheet's;
- ``number``: a floor in the gate's unit, e.g. busbw in GB/s;
- ``switch``: ``on`` or ``off``, e.g. "the PCIe link runs at its maximum";
- ``words``: comma-separated words a measurement must match, e.g. the NCCL transports.

``off`` turns any gate off. A gate that does not apply where the test runs (the share of an
unknown GPU's peak, NVLink's share on GPUs without NVLink) is reported "not judged" with why,
never passed. Pure logic, no torch: the unit tests and the kit (``invoke smoke``) import it.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from smoke_tests._result import Report, Verdict

#: A gate's setting: None is off.
Value = float | bool | tuple[str, ...] | None
KINDS = ("share", "number", "switch", "words")
_WORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]*$")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
OFF_WORDS = ("off", "no", "false", "0")
ON_WORDS = ("on", "yes", "true", "1")


@dataclass(frozen=True)
class Gate:
    """One threshold: its name (``--gate NAME=...``), kind, default, what it compares and why
    the default is what it is (the healthy figures it was set from, and the margin)."""

    name: str
    kind: str
    default: Value
    what: str
    basis: str = ""
    unit: str = ""  # a number's unit (GB/s)
    pattern: str = ""  # words: each must match this (case-insensitive); default any word
    #: `invoke smoke` turns this switch on for topics whose uv.lock holds this package
    #: (a topic that ships flashinfer must have a working flashinfer).
    on_when_locked: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"gate name {self.name!r}: lower-case letters, digits and _")
        if self.kind not in KINDS:
            raise ValueError(f"gate {self.name}: kind {self.kind!r} is not one of {KINDS}")
        if self.default is not None:
            self.parse(self.format(self.default))  # a default must be a value the gate accepts

    def parse(self, text: str) -> Value:
        """A value as written (``0.5``, ``on``, ``P2P,NVLS``, ``off``); ValueError says what is wrong."""
        raw = text.strip()
        if raw.lower() == "off" or (self.kind == "switch" and raw.lower() in OFF_WORDS):
            return None
        if self.kind in ("share", "number"):
            try:
                number = float(raw)
            except ValueError:
                raise ValueError(f"gate {self.name} takes a number or off, not {raw!r}") from None
            if not number > 0 or number != number or number == float("inf"):
                raise ValueError(f"gate {self.name}: {raw} must be a positive number (off turns it off)")
            if self.kind == "share" and number > 1:
                raise ValueError(f"gate {self.name} is a share of a peak: between 0 and 1 (0.5 is half), not {raw}")
            return number
        if self.kind == "switch":
            if raw.lower() in ON_WORDS:
                return True
            raise ValueError(f"gate {self.name} is on or off, not {raw!r}")
        words = tuple(w.strip() for w in raw.split(",") if w.strip())
        bad = [w for w in words if not _WORD.match(w) or (self.pattern and not re.fullmatch(self.pattern, w, re.IGNORECASE))]
        if not words or bad:
            allowed = f" ({self.pattern})" if self.pattern else ""
            raise ValueError(f"gate {self.name}: {', '.join(bad) or 'nothing'} is not a word it takes{allowed}")
        return words

    def parse_option(self, text: str, flag: str) -> Value:
        """`parse` for an option of a test's own that sets this gate (``--min-busbw`` for
        busbw): argparse's error, naming the option."""
        try:
            return self.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).replace(f"gate {self.name}", flag)) from None

    def parse_number_option(self, text: str, flag: str, needs: str) -> float:
        """`parse_option` for a number (``off`` is refused: `needs` says what to give)."""
        value = self.parse_option(text, flag)
        if not isinstance(value, float):
            raise argparse.ArgumentTypeError(f"{flag} takes {needs}")
        return value

    def format(self, value: Value) -> str:
        """The value as ``--gate NAME=VALUE`` takes it back."""
        if value is None:
            return "off"
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, tuple):
            return ",".join(value)
        return f"{value:g}"

    def expected(self, value: Value) -> str:
        """What a measurement must be, in words: '>= 50% of peak', '>= 300 GB/s', 'P2P or NVLS'."""
        if value is None:
            return "off"
        if isinstance(value, bool):
            return "required" if value else "off"
        if isinstance(value, tuple):
            return " or ".join(value)
        if self.kind == "share":
            return f">= {value * 100:g}% of peak"
        return f">= {value:g} {self.unit}".rstrip()

    def describe(self) -> str:
        """One line for --help and the README: name, default, what it compares."""
        return f"{self.name} (default {self.format(self.default)}): {self.what}"


@dataclass(frozen=True)
class GateSettings:
    """The gates of one run: each one's value (None: off) and where that value came from."""

    gates: tuple[Gate, ...]
    values: Mapping[str, Value]
    sources: Mapping[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Value:
        return self.values[name]

    def gate(self, name: str) -> Gate:
        return next(g for g in self.gates if g.name == name)

    def off_reason(self, name: str) -> str:
        return f"off ({self.sources.get(name, 'default')})"

    def as_figures(self) -> dict[str, str]:
        """{name: value as written}: what the result records of the settings it ran with."""
        return {g.name: g.format(self.values[g.name]) for g in self.gates}


def by_name(gates: Sequence[Gate]) -> dict[str, Gate]:
    return {g.name: g for g in gates}


def parse_item(text: str, gates: Sequence[Gate]) -> tuple[str, Value]:
    """``NAME=VALUE`` -> (name, value); ValueError names the gates this test has."""
    name, sep, value = text.partition("=")
    name = name.strip()
    known = by_name(gates)
    if not sep or not name:
        raise ValueError(f"--gate {text!r}: give NAME=VALUE (gates: {', '.join(known) or 'none'})")
    if name not in known:
        raise ValueError(f"no gate {name!r} here: the gates are {', '.join(known) or 'none'}")
    return name, known[name].parse(value)


def settings(
    gates: Sequence[Gate], *, no_gates: bool = False, aliases: Mapping[str, Value] | None = None, items: Sequence[tuple[str, Value]] = ()
) -> GateSettings:
    """Defaults, then --no-gates, then the old flags that set a gate (``--min-busbw``...), then
    each ``--gate NAME=VALUE`` in order: the last word wins."""
    values: dict[str, Value] = {g.name: (None if no_gates else g.default) for g in gates}
    sources = {g.name: "--no-gates" if no_gates else "default" for g in gates}
    for name, value in (aliases or {}).items():
        values[name], sources[name] = value, "its own flag"
    for name, value in items:
        values[name], sources[name] = value, f"--gate {name}={by_name(gates)[name].format(value)}"
    return GateSettings(tuple(gates), values, sources)


def add_gate_args(parser: argparse.ArgumentParser, gates: Sequence[Gate]) -> None:
    """``--no-gates`` and ``--gate NAME=VALUE`` (repeatable), checked as they are parsed."""

    def item(text: str) -> tuple[str, Value]:
        try:
            return parse_item(text, gates)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    listing = "; ".join(g.describe() for g in gates).replace("%", "%%")
    parser.add_argument("--no-gates", action="store_true", help="judge correctness only: every gate off (a --gate turns one back on)")
    parser.add_argument(
        "--gate", action="append", default=[], type=item, metavar="NAME=VALUE",
        help=f"set one gate (a number, on/off, words; off turns it off), repeatable. Gates: {listing}",
    )  # fmt: skip


def from_args(args: argparse.Namespace, gates: Sequence[Gate], aliases: Mapping[str, Value] | None = None) -> GateSettings:
    return settings(gates, no_gates=bool(getattr(args, "no_gates", False)), aliases=aliases, items=list(getattr(args, "gate", []) or []))


# ---------------------------------------------------------------------------- judging


def pct(value: float) -> str:
    return f"{value * 100:.0f}%"


def judge_floor(
    report: Report,
    settings: GateSettings,
    name: str,
    measured: Sequence[tuple[str, float]],
    *,
    show: Callable[[float], str] | None = None,
    not_judged: str = "",
) -> Verdict:
    """A share or number gate over labelled measurements ("GPU0 n=8192", 0.71): the worst one
    decides; every one under the floor is named. No measurement: not judged, with
    ``not_judged`` as the reason (why this gate does not apply here)."""
    gate = settings.gate(name)
    value = settings[name]
    shown = show or (pct if gate.kind == "share" else (lambda v: f"{v:.1f} {gate.unit}".rstrip()))
    if value is None:
        return report.verdict(name, None, _worst(measured, shown), "-", settings.off_reason(name), gate=True)
    if not measured:
        return report.verdict(name, None, "-", gate.expected(value), not_judged or "nothing measured that it applies to", gate=True)
    assert isinstance(value, float)
    low = [(label, v) for label, v in measured if v < value]
    detail = ""
    if low:
        detail = "under it: " + ", ".join(f"{label} {shown(v)}" for label, v in low[:6]) + (f" and {len(low) - 6} more" if len(low) > 6 else "")
    return report.verdict(name, not low, _worst(measured, shown), gate.expected(value), detail, gate=True)


def _worst(measured: Sequence[tuple[str, float]], shown: Callable[[float], str]) -> str:
    if not measured:
        return "-"
    label, value = min(measured, key=lambda m: m[1])
    return f"{shown(value)} ({label})" if len(measured) > 1 else shown(value)


def judge_switch(report: Report, settings: GateSettings, name: str, ok: bool | None, measured: str, detail: str = "") -> Verdict:
    """An on/off gate: ``ok`` None means the measurement could not be made (``detail`` says why)."""
    value = settings[name]
    if value is None:
        return report.verdict(name, None, measured, "-", settings.off_reason(name), gate=True)
    if ok is None:
        return report.verdict(name, False, measured or "unknown", settings.gate(name).expected(value), detail or "could not be measured", gate=True)
    return report.verdict(name, ok, measured, settings.gate(name).expected(value), "" if ok else detail, gate=True)
