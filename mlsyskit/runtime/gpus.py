"""Which GPUs a container gets: `--gpus` parsed, checked against the host and turned into
docker's `--gpus` value. Reading the host is kept apart from deciding, so the decisions are
tested against recorded `nvidia-smi` outputs (tests/unit/data/).

`--gpus` follows docker's own meaning of a bare number (a count), so:
  (not given) / all   every GPU where there are any; on a host without one, run anyway
  none                no GPU, no warning
  N                   the N least-used GPUs (memory in use + utilisation, as nvidia-smi says)
  0,1 / 3, / GPU-uuid these devices (a single index needs a comma: `--gpus 3,`)
`--gpus 0` is refused as ambiguous (no GPU, or GPU 0?)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mlsyskit.errors import EngineError, UsageError

QUERY_FIELDS = ("index", "uuid", "name", "memory.used", "memory.total", "utilization.gpu")
SMI_QUERY = ("nvidia-smi", f"--query-gpu={','.join(QUERY_FIELDS)}", "--format=csv,noheader,nounits")
PROC_GPUS = "/proc/driver/nvidia/gpus"  # one entry per GPU the loaded driver sees
NO_GPU_WARNING = "no NVIDIA GPU on this host: running on CPU only (`--gpus none` silences this)"
TOOLKIT_BINARIES = ("nvidia-container-runtime-hook", "nvidia-container-cli", "nvidia-ctk", "nvidia-container-runtime")


@dataclass(frozen=True)
class Gpu:
    """One GPU as nvidia-smi reports it."""

    index: int
    uuid: str
    name: str
    memory_used_mib: int  # 0 where nvidia-smi says [N/A]
    memory_total_mib: int
    utilization_pct: int  # 0 where nvidia-smi says [N/A] (MIG mode, some vGPUs)

    @property
    def load(self) -> float:
        """Memory in use (as a fraction of the card) plus utilisation (as a fraction):
        a card that is full but idle and one that is busy but empty both count as used."""
        memory = self.memory_used_mib / self.memory_total_mib if self.memory_total_mib else 0.0
        return memory + self.utilization_pct / 100


@dataclass(frozen=True)
class GpuRequest:
    """A `--gpus` value, parsed."""

    kind: str  # "default", "all", "none", "count" or "devices"
    count: int = 0
    devices: tuple[str, ...] = ()  # indices as written ("0") or UUIDs


@dataclass(frozen=True)
class GpuSelection:
    """The GPUs a container gets: docker's `--gpus` value, the label `invoke ps` shows, a warning."""

    docker_value: str | None  # for `docker run --gpus`; None: no GPU
    label: str  # what `invoke ps` shows: "all", "none" or "0,2"
    warning: str = ""


# --- parsing ---------------------------------------------------------------------------


def _number(text: str) -> int:
    """nvidia-smi's numbers; "[N/A]" and "[Not Supported]" read as 0."""
    text = text.strip()
    return int(float(text)) if re.fullmatch(r"\d+(\.\d+)?", text) else 0


def parse_query(text: str) -> list[Gpu]:
    """The GPUs in `nvidia-smi --query-gpu=<QUERY_FIELDS> --format=csv,noheader,nounits`."""
    gpus = []
    for line in text.splitlines():
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != len(QUERY_FIELDS) or not cells[0].isdigit():
            raise ValueError(f"unexpected nvidia-smi line: {line!r}")
        index, uuid, name, used, total, util = cells
        gpus.append(Gpu(int(index), uuid, name, _number(used), _number(total), _number(util)))
    return gpus


def parse_request(text: str | None) -> GpuRequest:
    value = (text or "").strip()
    if value in ("", "auto"):
        return GpuRequest("default")
    if value == "all":
        return GpuRequest("all")
    if value == "none":
        return GpuRequest("none")
    if value == "0":
        raise UsageError("`--gpus 0` is ambiguous", fix="`--gpus none` for no GPU, `--gpus 0,` for GPU 0")
    if value.isdigit():
        return GpuRequest("count", count=int(value))
    if value.startswith("device="):
        value = value.removeprefix("device=")
    devices = [d.strip() for d in value.split(",") if d.strip()]
    bad = [d for d in devices if not (d.isdigit() or re.fullmatch(r"(GPU|MIG)-[0-9A-Za-z-]+", d))]
    if not devices or bad:
        raise UsageError(
            f"`--gpus {text}` is not a GPU list",
            fix="use all, none, a count (2), indices (0,1 or 3,) or UUIDs (GPU-...)",
        )
    return GpuRequest("devices", devices=tuple(dict.fromkeys(devices)))  # keeps order, drops repeats


# --- deciding --------------------------------------------------------------------------


def least_used(gpus: Sequence[Gpu], count: int) -> list[Gpu]:
    """The `count` least-used GPUs, in index order; ties go to the lower memory use, then
    the lower index, so the same readings always give the same choice."""
    ranked = sorted(gpus, key=lambda g: (round(g.load, 4), g.memory_used_mib, g.index))
    return sorted(ranked[:count], key=lambda g: g.index)


def _describe(gpus: Sequence[Gpu]) -> str:
    if not gpus:
        return "this host has no NVIDIA GPU"
    return f"this host has {len(gpus)}: {', '.join(str(g.index) for g in gpus)}"


def select(request: GpuRequest, gpus: Callable[[], list[Gpu]], host_has_gpus: bool) -> GpuSelection:
    """Decide. `gpus` is called only when the request needs the GPUs' details (a count or
    devices), so the default costs no nvidia-smi call."""
    if request.kind == "none":
        return GpuSelection(None, "none")
    if request.kind in ("default", "all"):
        if host_has_gpus:
            return GpuSelection("all", "all")
        return GpuSelection(None, "none", warning=NO_GPU_WARNING)
    found = gpus()
    if request.kind == "count":
        if request.count > len(found):
            raise UsageError(f"`--gpus {request.count}` asks for more GPUs than there are ({_describe(found)})")
        chosen = least_used(found, request.count)
        indices = [str(g.index) for g in chosen]
    else:
        by_key = {str(g.index): g for g in found} | {g.uuid: g for g in found}
        missing = [d for d in request.devices if d not in by_key]
        if missing:
            raise UsageError(f"GPU {missing[0]} does not exist ({_describe(found)})")
        indices = [str(by_key[d].index) for d in request.devices]
        indices = list(dict.fromkeys(indices))
    # docker parses --gpus as CSV: a list of devices needs the quotes around it.
    return GpuSelection(f'"device={",".join(indices)}"', ",".join(indices))


# --- reading the host ------------------------------------------------------------------


def proc_gpu_count(path: str = PROC_GPUS) -> int | None:
    """GPUs the loaded NVIDIA driver sees, without running nvidia-smi; None where the
    driver exposes no /proc entry (no driver, or WSL)."""
    try:
        return len(os.listdir(path))
    except OSError:
        return None


def gpu_device_nodes(dev: str = "/dev") -> list[str]:
    """The GPU device nodes (nvidia0, nvidia1...; not nvidiactl or nvidia-uvm): there when the
    driver's kernel module made them, whether or not nvidia-smi can talk to it."""
    try:
        return sorted(name for name in os.listdir(dev) if re.fullmatch(r"nvidia\d+", name))
    except OSError:
        return []


def host_has_gpus(dev: str = "/dev", proc: str = PROC_GPUS) -> bool:
    """Whether this host has NVIDIA GPUs: device nodes, the driver's /proc entries, or
    nvidia-smi listing some. A host whose nvidia-smi fails but whose /dev holds nvidia0 has
    GPUs (and a broken driver): GPU tests there must fail, never skip."""
    if gpu_device_nodes(dev):
        return True
    count = proc_gpu_count(proc)
    if count is not None:
        return count > 0
    if not shutil.which("nvidia-smi"):
        return False
    try:
        return bool(query_gpus())
    except UsageError:
        return False


def query_gpus(timeout: float = 30) -> list[Gpu]:
    """The host's GPUs as nvidia-smi reports them; [] where there is no nvidia-smi."""
    if not shutil.which(SMI_QUERY[0]):
        return []
    try:
        proc = subprocess.run(SMI_QUERY, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise UsageError(f"nvidia-smi did not answer within {timeout:.0f}s", fix="check the driver (`nvidia-smi`)") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        if "No devices were found" in last[0]:
            return []
        raise UsageError(f"nvidia-smi failed: {last[0]}", fix="check the driver (`nvidia-smi`), or run with `--gpus none`")
    try:
        return parse_query(proc.stdout)
    except ValueError as exc:
        raise UsageError(f"cannot read nvidia-smi's answer: {exc}") from None


def container_toolkit_present() -> bool:
    """Whether docker on this host can be handed GPUs (the NVIDIA container toolkit)."""
    return any(shutil.which(name) for name in TOOLKIT_BINARIES)


def choose_gpus(request: str) -> GpuSelection:
    """The GPUs a `--gpus` value asks for on this host (none, all, N least used, given ones)."""
    selection = select(parse_request(request), query_gpus, host_has_gpus())
    if selection.docker_value and not container_toolkit_present():
        raise EngineError(
            "this host has NVIDIA GPUs but docker cannot hand them to containers",
            fix="install nvidia-container-toolkit and run `sudo nvidia-ctk runtime configure --runtime=docker`, or use --gpus none",
        )
    return selection
