"""CPU architectures, in Docker's names and the kernel's: facts about this host that the data
layer (which bases exist) and the engine (what runs under qemu) both need, so they live below
both."""

from __future__ import annotations

import os

# Docker's architecture names and the kernel's (uname -m, platform_machine).
ARCHES = {"amd64": "x86_64", "arm64": "aarch64"}


def host_arch() -> str:
    """This host's architecture in Docker's name (the kernel's where Docker has none)."""
    machine = os.uname().machine  # platform.machine()'s answer, without importing platform (1 ms of the shell's start)
    return next((arch for arch, kernel in ARCHES.items() if kernel == machine), machine)
