"""Process settings for the CPU engine: glibc's allocator, told to keep the memory it frees.

glibc serves every allocation above its mmap threshold (at most 32 MiB, however it adapts) with a fresh ``mmap``
and returns it to the kernel on ``free``. An attack at batch 250 on a 32px network allocates activations of
about 50 MB per layer and per step, so every step page-faults them in again, 4 KiB at a time: a 49 MB
``clone`` took 12.7 ms here, 2.4 ms once the memory was kept. These tunables make glibc serve everything from
its heap (``mmap_max=0``), never give the heap back (``trim_threshold``) and back it with transparent huge pages
(``hugetlb=1``: ``madvise``, which the kernel's default ``madvise`` THP mode honours). Measured by
benchmarks/engine.py (``--malloc``); they change where tensors live, never what is computed.

They are read once, when a process starts, so they cannot be switched on from inside Python: dvc.yaml puts them
in front of every stage's papermill and the Makefile in front of ``make lab``; a test checks both agree with
:data:`GLIBC_TUNABLES`. Outside glibc (macOS, musl) the variable is ignored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["GLIBC_TUNABLES", "allocator_tuned", "tuned_environment"]

GLIBC_TUNABLES = "glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647"


def _names(tunables: str) -> set[str]:
    return {item.split("=", 1)[0] for item in tunables.split(":") if item}


def tuned_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``environ`` (default ``os.environ``) for a child process with :data:`GLIBC_TUNABLES` set.

    A user's own tunables are kept; where one names the same tunable as ours, the user's value wins."""
    env = dict(os.environ if environ is None else environ)
    own = env.get("GLIBC_TUNABLES", "")
    ours = [item for item in GLIBC_TUNABLES.split(":") if item.split("=", 1)[0] not in _names(own)]
    env["GLIBC_TUNABLES"] = ":".join([*ours, *filter(None, own.split(":"))])
    return env


def allocator_tuned(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process (or ``environ``) started with every tunable of :data:`GLIBC_TUNABLES` named."""
    env = os.environ if environ is None else environ
    return _names(GLIBC_TUNABLES) <= _names(env.get("GLIBC_TUNABLES", ""))
