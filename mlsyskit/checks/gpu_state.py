"""`invoke doctor` on GPU hosts: the passive health checks that need no load, from one
`nvidia-smi --query-gpu` (ECC errors, pending row remaps and retired pages, the PCIe link
against its maximum, persistence mode, the reasons clocks are held down). Each finding
comes with its fix. Parsing is pure: the unit tests feed it recorded output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: The fields asked for, in order. Drivers before 535 call the last one clocks_throttle_reasons.
FIELDS = (
    "index", "name", "pci.bus_id", "persistence_mode", "ecc.mode.current",
    "ecc.errors.uncorrected.volatile.total", "ecc.errors.corrected.volatile.total",
    "retired_pages.pending", "remapped_rows.pending", "remapped_rows.failure",
    "pcie.link.gen.current", "pcie.link.gen.max", "pcie.link.width.current", "pcie.link.width.max",
    "clocks_event_reasons.active",
)  # fmt: skip
OLD_CLOCK_FIELD = "clocks_throttle_reasons.active"

#: nvidia-smi's clock event reason bits (nvml.h, nvmlClocksEventReason*): the ones that mean
#: the GPU is being held down by heat or power, and those that are only worth a note.
SERIOUS_CLOCK_REASONS = {
    0x8: "hardware slowdown (HW_SLOWDOWN: overheating or a power brake signal)",
    0x20: "software thermal slowdown (over its target temperature)",
    0x40: "hardware thermal slowdown",
    0x80: "hardware power brake slowdown (the power supply asserted it)",
}
NOTED_CLOCK_REASONS = {0x4: "software power cap (at its power limit)", 0x2: "applications clocks setting"}


@dataclass(frozen=True)
class Finding:
    """One check's outcome, in doctor's terms (its Check is built from this)."""

    name: str
    status: str  # ok, warn, fail
    detail: str
    fix: str = ""


def _int(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() else None


def _yes(text: str) -> bool:
    return text.strip().lower() in ("yes", "1", "enabled")


def parse(csv: str) -> list[dict[str, str]]:
    """`--format=csv,noheader,nounits` rows -> one dict per GPU, keyed by FIELDS."""
    rows = []
    for line in csv.strip().splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) == len(FIELDS) and cells[0].isdigit():
            rows.append(dict(zip(FIELDS, cells)))
    return rows


def clock_reasons(text: str) -> tuple[list[str], list[str]]:
    """The serious and the noted reasons in a bitmask like 0x0000000000000008."""
    try:
        mask = int(text.strip(), 16)
    except ValueError:
        return [], []
    serious = [why for bit, why in SERIOUS_CLOCK_REASONS.items() if mask & bit]
    noted = [why for bit, why in NOTED_CLOCK_REASONS.items() if mask & bit]
    return serious, noted


def assess(gpu: dict[str, str]) -> list[Finding]:
    label = f"GPU{gpu['index']} {gpu['name'].removeprefix('NVIDIA ')}"
    findings = []

    uncorrected = _int(gpu["ecc.errors.uncorrected.volatile.total"])
    corrected = _int(gpu["ecc.errors.corrected.volatile.total"])
    if gpu["ecc.mode.current"].lower() == "disabled":
        findings.append(Finding(f"{label} ECC", "warn", "ECC is off: memory errors go unnoticed", "sudo nvidia-smi -e 1, then reboot"))
    elif uncorrected:
        findings.append(
            Finding(
                f"{label} ECC", "fail", f"{uncorrected} uncorrected ECC error(s) since the driver loaded",
                "drain the GPU and have it checked (`nvidia-smi -q -d ECC,ROW_REMAPPER`); results computed on it may be wrong",
            )
        )  # fmt: skip
    elif uncorrected is None:
        findings.append(Finding(f"{label} ECC", "ok", "not reported (no ECC on this GPU)"))
    else:
        findings.append(Finding(f"{label} ECC", "ok", "no uncorrected errors" + (f", {corrected} corrected" if corrected else "")))

    if _yes(gpu["remapped_rows.failure"]):
        findings.append(Finding(f"{label} memory repair", "fail", "a row remap failed: the GPU cannot repair its memory", "have the GPU replaced"))
    elif _yes(gpu["remapped_rows.pending"]) or _yes(gpu["retired_pages.pending"]):
        what = "a row remap" if _yes(gpu["remapped_rows.pending"]) else "a page retirement"
        findings.append(Finding(f"{label} memory repair", "warn", f"{what} is pending", "reset the GPU when it is idle (`sudo nvidia-smi -r -i N`) or reboot"))
    else:
        findings.append(Finding(f"{label} memory repair", "ok", "nothing pending"))

    gen, gen_max = _int(gpu["pcie.link.gen.current"]), _int(gpu["pcie.link.gen.max"])
    width, width_max = _int(gpu["pcie.link.width.current"]), _int(gpu["pcie.link.width.max"])
    if width and width_max and width < width_max:
        findings.append(
            Finding(
                f"{label} PCIe", "warn", f"link width x{width} of x{width_max}: host copies run at a fraction of the slot",
                "reseat the card or move it to a full-width slot; check the BIOS's link settings",
            )
        )  # fmt: skip
    elif gen and gen_max:
        idle = f"Gen{gen} of Gen{gen_max} at idle (links slow down when idle; `invoke smoke distributed` reads it under load)"
        findings.append(Finding(f"{label} PCIe", "ok", f"Gen{gen} x{width}" if gen == gen_max else idle))
    else:
        findings.append(Finding(f"{label} PCIe", "ok", "link not reported"))

    if gpu["persistence_mode"].lower() == "disabled":
        findings.append(
            Finding(f"{label} persistence", "warn", "persistence mode off: every CUDA start re-initialises the GPU (seconds)", "sudo nvidia-smi -pm 1")
        )
    else:
        findings.append(Finding(f"{label} persistence", "ok", gpu["persistence_mode"].lower() or "not reported"))

    serious, noted = clock_reasons(gpu["clocks_event_reasons.active"])
    if serious:
        findings.append(Finding(f"{label} clocks", "fail", "held down: " + "; ".join(serious), "check cooling (fans, inlet temperature) and power delivery"))
    elif noted:
        findings.append(Finding(f"{label} clocks", "ok", "limited by " + "; ".join(noted)))
    else:
        findings.append(Finding(f"{label} clocks", "ok", "nothing holding them down"))
    return findings


def query(run: Callable[[Sequence[str]], str | None]) -> list[dict[str, str]] | None:
    """Ask nvidia-smi (``run`` returns its stdout, or None when it failed); older drivers get
    the clock field under its old name."""
    for last in (FIELDS[-1], OLD_CLOCK_FIELD):
        fields = (*FIELDS[:-1], last)
        out = run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"])
        if out is not None:
            return parse(out)
    return None


def findings(run: Callable[[Sequence[str]], str | None]) -> list[Finding]:
    gpus = query(run)
    if gpus is None:
        return [Finding("GPU health", "warn", "nvidia-smi could not be asked for ECC, PCIe and clock state", "run `nvidia-smi -q` by hand")]
    return [finding for gpu in gpus for finding in assess(gpu)]
