"""What GPUs a host has and who uses them, behind one small interface.

`NvmlInventory` asks the NVIDIA driver through NVML (`nvidia-ml-py`, imported as `pynvml`):
total / used / free memory, UUID, name, and the compute and graphics processes on each GPU
with their memory, ours or not (process names come from psutil). `StaticInventory` is a fixed
list, from the fleet file (`[[hosts]] inventory = [...]`) or from tests. Never `nvidia-smi`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import psutil

from modelserver.config import HostConfig
from modelserver.errors import NoGpuInventory

GIB = 1024**3


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    name: str
    used_bytes: int | None
    """None when the driver does not say (e.g. inside a container without the PID namespace)."""


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    name: str
    total_bytes: int
    used_bytes: int
    processes: tuple[GpuProcess, ...] = field(default=())
    unlisted: tuple[str, ...] = field(default=())
    """Process lists NVML could not give ("graphics processes: Not Supported"): who uses
    the memory may then be unknown, but the memory figures still hold."""

    @property
    def free_bytes(self) -> int:
        return max(0, self.total_bytes - self.used_bytes)

    @property
    def free_ratio(self) -> float:
        return self.free_bytes / self.total_bytes if self.total_bytes else 0.0

    def matches(self, ref: int | str) -> bool:
        """True if `ref` (an index or a UUID, as the fleet file writes them) names this GPU."""
        return ref == self.index if isinstance(ref, int) else ref == self.uuid


class GpuInventory(Protocol):
    def gpus(self) -> list[Gpu]:
        """Every GPU of this machine, now. Raises NoGpuInventory when that cannot be known."""
        ...


class StaticInventory:
    """A fixed list of GPUs (the fleet file's `inventory`, or a test's). A GPU written without
    a UUID has none (""), so engines are given its index, which CUDA knows."""

    def __init__(self, gpus: Sequence[Gpu]) -> None:
        self._gpus = list(gpus)

    def gpus(self) -> list[Gpu]:
        return list(self._gpus)

    @classmethod
    def from_host(cls, host: HostConfig) -> StaticInventory:
        return cls(
            [
                Gpu(
                    index=g.index,
                    uuid=g.uuid,
                    name=g.name,
                    total_bytes=int(g.total_gib * GIB),
                    used_bytes=int(g.used_gib * GIB),
                )
                for g in host.inventory or []
            ]
        )


class NvmlInventory:
    """The GPUs NVML sees. NVML is initialised on first use, so building one is free."""

    def __init__(self) -> None:
        self._ready = False

    def _nvml(self) -> Any:
        try:
            import pynvml
        except ImportError:  # pragma: no cover - nvidia-ml-py is a dependency
            raise NoGpuInventory(
                "cannot list GPUs: the nvidia-ml-py package is not installed"
            ) from None
        if not self._ready:
            try:
                pynvml.nvmlInit()
            except pynvml.NVMLError as exc:
                raise NoGpuInventory(
                    f"cannot list GPUs: NVML is not usable here ({exc}); is the NVIDIA driver "
                    "installed? CPU-only backends (sim, llamacpp with gpus_per_replica = 0) "
                    "still run"
                ) from None
            self._ready = True
        return pynvml

    def gpus(self) -> list[Gpu]:
        nvml = self._nvml()
        try:
            count = nvml.nvmlDeviceGetCount()
            return [self._gpu(nvml, index) for index in range(count)]
        except nvml.NVMLError as exc:
            raise NoGpuInventory(f"NVML failed while listing GPUs: {exc}") from None

    @staticmethod
    def _gpu(nvml: Any, index: int) -> Gpu:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        seen: dict[int, GpuProcess] = {}
        unlisted: list[str] = []
        for kind, getter in (
            ("compute", nvml.nvmlDeviceGetComputeRunningProcesses),
            ("graphics", nvml.nvmlDeviceGetGraphicsRunningProcesses),
        ):
            # Some GPUs and drivers do not list one kind (NVML_ERROR_NOT_SUPPORTED for
            # graphics on many datacenter boards): that list is unknown, not the GPU.
            try:
                procs = getter(handle)
            except nvml.NVMLError as exc:
                unlisted.append(f"{kind} processes: {exc}")
                continue
            for proc in procs:
                used = getattr(proc, "usedGpuMemory", None)
                # NVML reports "not available" as None (or a huge sentinel in old drivers).
                used = used if isinstance(used, int) and 0 <= used < 2**62 else None
                if proc.pid not in seen:
                    seen[proc.pid] = GpuProcess(proc.pid, process_name(proc.pid), used)
        return Gpu(
            index=index,
            uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
            name=_text(nvml.nvmlDeviceGetName(handle)),
            total_bytes=int(memory.total),
            used_bytes=int(memory.used),
            processes=tuple(seen.values()),
            unlisted=tuple(unlisted),
        )


def _text(value: str | bytes) -> str:
    # Old nvidia-ml-py releases return bytes, new ones str.
    return value.decode() if isinstance(value, bytes) else value


def process_name(pid: int) -> str:
    try:
        return psutil.Process(pid).name()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "?"


def inventory_for(host: HostConfig) -> GpuInventory:
    """The fleet file's static inventory for this host if it has one, else NVML."""
    if host.inventory is not None:
        return StaticInventory.from_host(host)
    return NvmlInventory()


def describe_use(gpu: Gpu, own_pids: frozenset[int] = frozenset()) -> str:
    """'GPU 3 has 41 GiB used by pid 7781 (python)': why a GPU counts as busy."""
    used = f"GPU {gpu.index} has {gpu.used_bytes / GIB:.0f} GiB used"
    foreign = [p for p in gpu.processes if p.pid not in own_pids]
    if not foreign:
        unknown = f" (NVML cannot list its {'; '.join(gpu.unlisted)})" if gpu.unlisted else ""
        return used + unknown
    shown = ", ".join(
        f"pid {p.pid} ({p.name}"
        + (f", {p.used_bytes / GIB:.0f} GiB" if p.used_bytes is not None and len(foreign) > 1
           else "")
        + ")"
        for p in sorted(foreign, key=lambda p: -(p.used_bytes or 0))[:3]
    )
    return f"{used} by {shown}"
