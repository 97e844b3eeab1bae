"""What machine a measurement ran on, and its package power where the kernel exposes RAPL."""

from __future__ import annotations

import functools
import os
import platform
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from services.common.measure.isa import isa_class

# CPU flags that decide which inference kernels run (int8 dot products, bf16, AMX tiles).
INTERESTING_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq",
                     "avx512_vnni", "avx_vnni", "avx_vnni_int8", "avx_ne_convert", "avx512_bf16", "avx512_fp16",
                     "amx_tile", "amx_int8", "amx_bf16", "amx_fp16", "neon", "asimd", "sve")
RAPL_ENERGY = Path("/sys/class/powercap/intel-rapl:0/energy_uj")


@dataclass
class Machine:
    cpu_model: str
    logical_cores: int
    physical_cores: int
    isa_features: list[str] = field(default_factory=list)
    memory_mb: float = 0.0
    gpu_name: str = ""
    gpu_memory_mb: float = 0.0
    torch_version: str = ""
    hostname: str = ""
    device_type: str = "cpu"
    isa_class: str = ""

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def device_name(self) -> str:
        """A short name for filters and tables: the GPU if measured on one, else the CPU."""
        if self.device_type == "gpu" and self.gpu_name:
            return self.gpu_name
        return f"{self.cpu_model} ({self.logical_cores} threads)"


def _cpuinfo(text: str) -> tuple[str, int, list[str]]:
    model, flags, cores = "", set(), set()
    physical = core = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key in ("model name", "Model", "cpu model") and not model:
            model = value
        elif key in ("flags", "Features"):
            flags.update(value.split())
        elif key == "physical id":
            physical = value
        elif key == "core id":
            core = value
            cores.add((physical, core))
    ordered = [f for f in INTERESTING_FLAGS if f in flags]
    return model, len(cores), ordered


@functools.lru_cache(maxsize=1)
def this_cpu() -> Machine:
    """This process's machine as a worker reports it (read once: the CPU does not change)."""
    return describe_machine(use_gpu=False)


def describe_machine(use_gpu: bool | None = None) -> Machine:
    cpuinfo = Path("/proc/cpuinfo")
    model, physical, flags = _cpuinfo(cpuinfo.read_text()) if cpuinfo.exists() else ("", 0, [])
    logical = os.cpu_count() or 0
    memory_mb = 0.0
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_mb = int(line.split()[1]) / 1024
    machine = Machine(cpu_model=model or platform.processor() or platform.machine(), logical_cores=logical,
                      physical_cores=physical or logical, isa_features=flags, memory_mb=round(memory_mb, 1),
                      hostname=socket.gethostname(), isa_class=isa_class(flags))
    try:
        import torch

        machine.torch_version = torch.__version__
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            machine.gpu_name = props.name
            machine.gpu_memory_mb = props.total_memory / 2**20
            machine.device_type = "gpu" if use_gpu is not False else "cpu"
    except ImportError:
        pass
    return machine


class PowerMeter:
    """Mean package power between start() and stop() from RAPL's energy counter; None where the
    counter is absent or unreadable (containers, AMD without the driver, non-Linux)."""

    def __init__(self, path: Path = RAPL_ENERGY) -> None:
        self._path = path
        self._start: tuple[int, float] | None = None

    def _read(self) -> int | None:
        try:
            return int(self._path.read_text())
        except (OSError, ValueError):
            return None

    def start(self) -> None:
        energy = self._read()
        self._start = (energy, time.perf_counter()) if energy is not None else None

    def stop(self) -> float | None:
        energy = self._read()
        if self._start is None or energy is None:
            return None
        start_energy, start_time = self._start
        elapsed = time.perf_counter() - start_time
        if energy < start_energy or elapsed <= 0:  # the counter wrapped
            return None
        return (energy - start_energy) / 1e6 / elapsed
