"""Running an image of another architecture under qemu-user (binfmt_misc), and what such a
container needs beyond `--platform`.

qemu-user passes the host's /proc/cpuinfo (x86's) through to the arm64 programs it runs.
oneDNN in torch 2.14's aarch64 wheel reads it when the MIDR_EL1 sysfs entry is missing (it
is, under emulation: "Can't open MIDR_EL1 sysfs entry") and then segfaults at `import
torch`; torch 2.11's wheel does not. An arm64 container on an x86 host therefore gets the
cpuinfo an arm64 Linux writes, for Neoverse V2 cores (Grace, in GH200 and GB200), as many as
this host has. On an arm64 host, or for the host's own architecture, nothing changes."""

from __future__ import annotations

import os
from pathlib import Path

from mlsyskit.arch import host_arch

#: /proc/cpuinfo of one Neoverse V2 core as the arm64 kernel writes it.
_ARM64_CPU = (
    "processor\t: {index}\nBogoMIPS\t: 2000.00\n"
    "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma "
    "lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg dcpodp sve2 "
    "sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svebf16 i8mm bf16 dgh bti\n"
    "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd4f\nCPU revision\t: 0\n\n"
)


def foreign_platform(arch: str) -> str:
    """`linux/ARCH` when ARCH is not this host's (the container runs under qemu), else ""."""
    return f"linux/{arch}" if arch and arch != host_arch() else ""


def _cache_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path(os.environ.get("HOME") or Path.home()) / ".cache")
    return Path(cache) / "mlsyskit"


def emulation_volumes(platform: str) -> tuple[str, ...]:
    """The bind mounts a container of `platform` needs on this host (see the module doc)."""
    if platform != "linux/arm64" or host_arch() == "arm64":
        return ()
    count = os.cpu_count() or 1
    path = _cache_dir() / f"cpuinfo-arm64-{count}"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text("".join(_ARM64_CPU.format(index=i) for i in range(count)))
        tmp.replace(path)
    return (f"{path}:/proc/cpuinfo:ro",)
