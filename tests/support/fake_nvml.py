"""A stand-in for ``pynvml`` (the ``nvidia-ml-py`` package) over a described set of GPUs.

GPUs are the one thing outside the system the tests may fake: this module implements the
NVML calls the agent makes (:mod:`agent.daemon.gpus`) with NVML's semantics — ``nvmlInit``
before anything else, ``NVMLError`` for a failed call, MIG slots that may be empty, power in
milliwatts and memory in bytes — over :class:`FakeGpu` objects a test describes. A test
installs it with ``FakeNvml(...)`` and passes the object as the ``nvml`` module (or puts
it in ``sys.modules["pynvml"]`` for a process it starts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

NVML_DEVICE_MIG_ENABLE = 1
NVML_DEVICE_MIG_DISABLE = 0
NVML_TEMPERATURE_GPU = 0
MIB = 1 << 20


class NVMLError(Exception):
    """NVML's base error (pynvml raises subclasses of it)."""


class NVMLError_NotFound(NVMLError):  # noqa: N801  (pynvml's name)
    pass


class NVMLError_NotSupported(NVMLError):  # noqa: N801
    pass


class NVMLError_Uninitialized(NVMLError):  # noqa: N801
    pass


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    memory_mib: int = 81559
    used_mib: int = 0
    utilization: int = 0
    temperature: int = 35
    power_mw: int = 70_000
    mig: list[FakeGpu | None] | None = None  # MIG slots (None: empty) when MIG is enabled


@dataclass
class FakeNvml:
    """An object with pynvml's functions over ``gpus``; ``fail_init`` makes nvmlInit fail
    (a broken driver: device files exist but NVML cannot talk to it)."""

    gpus: list[FakeGpu]
    driver: str = "550.127.05"
    fail_init: str | None = None
    initialised: int = 0
    calls: list[str] = field(default_factory=list)

    NVMLError = NVMLError
    NVML_DEVICE_MIG_ENABLE = NVML_DEVICE_MIG_ENABLE
    NVML_TEMPERATURE_GPU = NVML_TEMPERATURE_GPU

    def _check(self) -> None:
        if not self.initialised:
            raise NVMLError_Uninitialized("Uninitialized")

    def nvmlInit(self) -> None:  # noqa: N802
        if self.fail_init:
            raise NVMLError(self.fail_init)
        self.initialised += 1

    def nvmlShutdown(self) -> None:  # noqa: N802
        self._check()
        self.initialised -= 1

    def nvmlSystemGetDriverVersion(self) -> str:  # noqa: N802
        self._check()
        return self.driver

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        self._check()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:  # noqa: N802
        self._check()
        if not 0 <= index < len(self.gpus):
            raise NVMLError_NotFound("Not Found")
        return self.gpus[index]

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> FakeGpu:  # noqa: N802
        self._check()
        uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
        for gpu in self.gpus:
            if gpu.uuid == uuid:
                return gpu
            for mig in gpu.mig or []:
                if mig is not None and mig.uuid == uuid:
                    return mig
        raise NVMLError_NotFound("Not Found")

    def nvmlDeviceGetName(self, handle: FakeGpu) -> str:  # noqa: N802
        self._check()
        return handle.name

    def nvmlDeviceGetUUID(self, handle: FakeGpu) -> str:  # noqa: N802
        self._check()
        return handle.uuid

    def nvmlDeviceGetMemoryInfo(self, handle: FakeGpu) -> SimpleNamespace:  # noqa: N802
        self._check()
        return SimpleNamespace(
            total=handle.memory_mib * MIB,
            used=handle.used_mib * MIB,
            free=(handle.memory_mib - handle.used_mib) * MIB,
        )

    def nvmlDeviceGetMigMode(self, handle: FakeGpu) -> list[int]:  # noqa: N802
        self._check()
        if handle.mig is None:
            return [NVML_DEVICE_MIG_DISABLE, NVML_DEVICE_MIG_DISABLE]
        return [NVML_DEVICE_MIG_ENABLE, NVML_DEVICE_MIG_ENABLE]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: FakeGpu) -> int:  # noqa: N802
        self._check()
        return 7 if handle.mig is not None else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: FakeGpu, index: int) -> FakeGpu:  # noqa: N802
        self._check()
        slots = handle.mig or []
        if index >= len(slots) or slots[index] is None:
            raise NVMLError_NotFound("Not Found")
        return slots[index]

    def nvmlDeviceGetUtilizationRates(self, handle: FakeGpu) -> SimpleNamespace:  # noqa: N802
        self._check()
        return SimpleNamespace(gpu=handle.utilization, memory=0)

    def nvmlDeviceGetTemperature(self, handle: FakeGpu, sensor: int) -> int:  # noqa: N802
        self._check()
        return handle.temperature

    def nvmlDeviceGetPowerUsage(self, handle: FakeGpu) -> int:  # noqa: N802
        self._check()
        if handle.power_mw < 0:
            raise NVMLError_NotSupported("Not Supported")
        return handle.power_mw
