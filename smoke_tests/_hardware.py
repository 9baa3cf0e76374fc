"""What a GPU and its links can carry at most, and how a measurement compares: the datasheet
peaks table (gpu_peaks.toml beside this file), PCIe link arithmetic, and the PCIe fields of
``nvidia-smi --query-gpu``. Pure logic: no torch, no CUDA.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PEAKS_FILE = Path(__file__).with_name("gpu_peaks.toml")

#: PCIe transfer rate per lane (GT/s) and line-code efficiency, by generation (PCI-SIG):
#: 8b/10b up to Gen2, 128b/130b for Gen3-5, Gen6's FLIT mode counted at 242/256.
PCIE_GENERATIONS: dict[int, tuple[float, float]] = {
    1: (2.5, 8 / 10),
    2: (5.0, 8 / 10),
    3: (8.0, 128 / 130),
    4: (16.0, 128 / 130),
    5: (32.0, 128 / 130),
    6: (64.0, 242 / 256),
}


@dataclass(frozen=True)
class GpuPeaks:
    model: str
    bf16_tflops: float
    memory_gbps: float
    source: str
    fp8_tflops: float | None = None
    nvlink_gbps: float | None = None


def load_peaks(path: Path = PEAKS_FILE) -> list[GpuPeaks]:
    data = tomllib.loads(path.read_text())
    peaks = []
    for entry in data["gpu"]:
        fields = {k: entry[k] for k in ("model", "bf16_tflops", "memory_gbps", "source")}
        peaks.append(GpuPeaks(**fields, fp8_tflops=entry.get("fp8_tflops"), nvlink_gbps=entry.get("nvlink_gbps")))
    return peaks


def _matches(path: Path = PEAKS_FILE) -> list[tuple[list[str], str]]:
    return [([m.lower() for m in e["match"]], e["model"]) for e in tomllib.loads(path.read_text())["gpu"]]


def peaks_for(device_name: str, path: Path = PEAKS_FILE) -> GpuPeaks | None:
    """The datasheet entry for a device name (torch's or nvidia-smi's), or None: never a guess."""
    name = device_name.lower()
    by_model = {p.model: p for p in load_peaks(path)}
    for substrings, model in _matches(path):
        if all(s in name for s in substrings):
            return by_model[model]
    return None


def share(measured: float | None, peak: float | None) -> float | None:
    """measured / peak, or None where either is unknown."""
    if measured is None or not peak:
        return None
    return measured / peak


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def pcie_link_gbps(generation: int, width: int) -> float:
    """What a PCIe link carries per direction, GB/s (1e9 bytes), after line coding: Gen5 x16 = 63.0."""
    if generation not in PCIE_GENERATIONS:
        raise ValueError(f"unknown PCIe generation {generation}")
    if width < 1:
        raise ValueError(f"bad PCIe link width x{width}")
    rate, efficiency = PCIE_GENERATIONS[generation]
    return rate * efficiency * width / 8


@dataclass(frozen=True)
class PcieLink:
    gen: int | None
    gen_max: int | None
    width: int | None
    width_max: int | None

    @property
    def gbps(self) -> float | None:
        """What the link as it runs now carries per direction."""
        if self.gen in PCIE_GENERATIONS and self.width:
            return pcie_link_gbps(self.gen, self.width)
        return None

    @property
    def gbps_max(self) -> float | None:
        """What it would carry at its maximum generation and width."""
        if self.gen_max in PCIE_GENERATIONS and self.width_max:
            return pcie_link_gbps(self.gen_max, self.width_max)
        return None

    def describe(self) -> str:
        now = f"Gen{self.gen or '?'} x{self.width or '?'}"
        top = f"Gen{self.gen_max or '?'} x{self.width_max or '?'}"
        return now if now == top else f"{now} (max {top})"

    def below_max(self) -> str | None:
        """Why the link runs below what it could (None when it does not, or nobody knows)."""
        problems = []
        if self.width and self.width_max and self.width < self.width_max:
            problems.append(f"width x{self.width} of x{self.width_max}")
        if self.gen and self.gen_max and self.gen < self.gen_max:
            problems.append(f"Gen{self.gen} of Gen{self.gen_max}")
        return " and ".join(problems) or None


PCIE_QUERY = "index,pci.bus_id,pcie.link.gen.current,pcie.link.gen.max,pcie.link.width.current,pcie.link.width.max"


def _int(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() else None


def parse_pcie_query(csv: str) -> dict[int, tuple[str, PcieLink]]:
    """``nvidia-smi --query-gpu=PCIE_QUERY --format=csv,noheader,nounits`` -> {index: (bus id, link)}."""
    links = {}
    for line in csv.strip().splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != 6 or _int(cells[0]) is None:
            continue
        index = _int(cells[0])
        assert index is not None
        gen, gen_max, width, width_max = (_int(c) for c in cells[2:])
        links[index] = (cells[1], PcieLink(gen, gen_max, width, width_max))
    return links


def parse_pci_bus_id(text: str) -> tuple[int, int, int] | None:
    """'00000000:18:00.0' -> (domain, bus, device)."""
    match = re.match(r"^\s*([0-9a-fA-F]+):([0-9a-fA-F]+):([0-9a-fA-F]+)\.[0-9a-fA-F]+\s*$", text)
    if not match:
        return None
    domain, bus, device = (int(g, 16) for g in match.groups())
    return domain, bus, device


def link_for_bus(links: Mapping[int, tuple[str, PcieLink]], bus_id: tuple[int, int, int] | None) -> tuple[int, PcieLink] | None:
    """The nvidia-smi index and link of the GPU at a PCI address (domain, bus, device)."""
    if bus_id is None:
        return None
    for index, (bus, link) in links.items():
        if parse_pci_bus_id(bus) == bus_id:
            return index, link
    return None


def matrix_table(labels: Sequence[str], cells: Mapping[tuple[int, int], Any], fmt_cell: Any = str) -> tuple[list[str], list[list[str]]]:
    """A square table: rows 'from', columns 'to', '-' on the diagonal and where nothing was measured."""
    headers = ["from \\ to", *labels]
    rows = []
    for i, label in enumerate(labels):
        row = [label]
        for j in range(len(labels)):
            row.append("-" if i == j or (i, j) not in cells else fmt_cell(cells[(i, j)]))
        rows.append(row)
    return headers, rows
