"""Which GPUs this node has, which of them the agent may use, and how busy they are.

Discovery tries NVML first (the ``nvidia-ml-py`` package, imported as ``pynvml``), then
``nvidia-smi`` (CSV queries and ``nvidia-smi -L`` for MIG devices), and otherwise reports
no GPU. A GPU in MIG mode is replaced by its MIG devices, each a unit a worker can own. NVML
or nvidia-smi failing while ``/dev/nvidia*`` exists is not taken for "no GPU": the
inventory carries a loud warning the agent logs and reports.

What the agent may use, in order:

1. an inherited ``CUDA_VISIBLE_DEVICES`` (set by Slurm, PBS or a container runtime): its
   entries are device indices (in NVML's PCI bus order), GPU UUIDs (``GPU-…``) or MIG UUIDs
   (``MIG-…``); ``NVIDIA_VISIBLE_DEVICES`` (Kubernetes' device plugin) the same, with
   ``all``/``none`` as well. NVML ignores both variables, so the mask is applied here;
2. ``AGENT_GPUS``: ``all`` (default), ``none``, or a comma-separated list of indices (as
   ``nvidia-smi`` prints them) or UUIDs, each of which must be visible after step 1.

Workers are pinned by UUID (``CUDA_VISIBLE_DEVICES=<uuid>``), never by index, since indices
change with ``CUDA_DEVICE_ORDER`` and masking. Standard library only; ``pynvml`` is optional.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

SMI_TIMEOUT_S = 10.0
SMI_INVENTORY_QUERY = "index,uuid,name,memory.total,driver_version,mig.mode.current"
SMI_SAMPLE_QUERY = "uuid,utilization.gpu,memory.used,temperature.gpu,power.draw"

Run = Callable[[Sequence[str]], str]


class GpuSelectionError(ValueError):
    """``AGENT_GPUS`` or ``CUDA_VISIBLE_DEVICES`` names a device this node does not have."""


@dataclass(frozen=True)
class Gpu:
    """One unit a worker can own: a whole GPU, or a MIG device of a GPU in MIG mode."""

    index: int  # the physical GPU's index as nvidia-smi prints it (PCI bus order)
    uuid: str  # GPU-… or MIG-…: what a worker's CUDA_VISIBLE_DEVICES is set to
    name: str
    memory_mib: int
    parent_uuid: str | None = None  # a MIG device's GPU

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": self.index,
            "uuid": self.uuid,
            "name": self.name,
            "memory_mib": self.memory_mib,
        }
        if self.parent_uuid:
            out["parent_uuid"] = self.parent_uuid
        return out


@dataclass(frozen=True)
class GpuSample:
    """One GPU's load at one moment (None where the driver does not say)."""

    uuid: str
    utilization_pct: float | None
    memory_used_mib: float | None
    temperature_c: float | None
    power_w: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "utilization_pct": self.utilization_pct,
            "memory_used_mib": self.memory_used_mib,
            "temperature_c": self.temperature_c,
            "power_w": self.power_w,
        }


@dataclass(frozen=True)
class GpuInventory:
    """The GPUs this agent may give to workers, and how they were found."""

    gpus: tuple[Gpu, ...] = ()
    driver: str = ""
    source: str = "none"  # "nvml", "nvidia-smi" or "none"
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def uuids(self) -> list[str]:
        return [g.uuid for g in self.gpus]

    def labels(self) -> dict[str, str]:
        """Automatic node labels (a user's ``AGENT_LABELS`` win over these)."""
        if not self.gpus:
            return {}
        names = sorted({g.name for g in self.gpus})
        return {
            "gpu": names[0] if len(names) == 1 else ",".join(names),
            "gpu_count": str(len(self.gpus)),
            "gpu_memory_mib": str(min(g.memory_mib for g in self.gpus)),
            "gpu_driver": self.driver,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "driver": self.driver,
            "gpus": [g.to_dict() for g in self.gpus],
            "warnings": list(self.warnings),
        }


# --- discovery ---------------------------------------------------------------------------


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvml_inventory(nvml: ModuleType) -> tuple[list[Gpu], str]:
    """Every GPU (or its MIG devices) through NVML; raises what NVML raises."""
    nvml.nvmlInit()
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        gpus: list[Gpu] = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = _text(nvml.nvmlDeviceGetName(handle))
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            memory_mib = int(nvml.nvmlDeviceGetMemoryInfo(handle).total) // (1 << 20)
            migs = _nvml_mig_devices(nvml, handle, index, name, uuid)
            gpus.extend(migs or [Gpu(index, uuid, name, memory_mib)])
        return gpus, driver
    finally:
        nvml.nvmlShutdown()


def _nvml_mig_devices(nvml: ModuleType, handle: Any, index: int, name: str, uuid: str) -> list[Gpu]:
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
    except nvml.NVMLError:
        return []  # no MIG support on this GPU
    if current != getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1):
        return []
    devices = []
    for slot in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except nvml.NVMLError:
            continue  # an empty slot
        devices.append(
            Gpu(
                index=index,
                uuid=_text(nvml.nvmlDeviceGetUUID(mig)),
                name=f"{name} MIG",
                memory_mib=int(nvml.nvmlDeviceGetMemoryInfo(mig).total) // (1 << 20),
                parent_uuid=uuid,
            )
        )
    return devices


def _csv_rows(output: str) -> list[list[str]]:
    return [[c.strip() for c in line.split(",")] for line in output.splitlines() if line.strip()]


def _number(raw: str) -> float | None:
    try:
        return float(raw)
    except ValueError:
        return None  # "[N/A]", "[Not Supported]"


def _smi_inventory(run: Run) -> tuple[list[Gpu], str]:
    """Every GPU (or its MIG devices) through nvidia-smi; raises on a failed call."""
    rows = _csv_rows(
        run(["nvidia-smi", f"--query-gpu={SMI_INVENTORY_QUERY}", "--format=csv,noheader,nounits"])
    )
    mig_gpus = {row[1] for row in rows if len(row) > 5 and row[5].lower() == "enabled"}
    migs = _smi_mig_devices(run(["nvidia-smi", "-L"])) if mig_gpus else {}
    gpus: list[Gpu] = []
    driver = ""
    for row in rows:
        if len(row) < 5:
            raise ValueError(f"unexpected nvidia-smi line: {','.join(row)!r}")
        index, uuid, name, memory, driver = int(row[0]), row[1], row[2], row[3], row[4]
        if uuid in mig_gpus and migs.get(uuid):
            gpus.extend(
                Gpu(index, mig_uuid, f"{name} MIG", mig_memory, uuid)
                for mig_uuid, mig_memory in migs[uuid]
            )
        else:
            gpus.append(Gpu(index, uuid, name, int(float(memory))))
    return gpus, driver


def _smi_mig_devices(listing: str) -> dict[str, list[tuple[str, int]]]:
    """``nvidia-smi -L``: each GPU's MIG devices as (uuid, memory MiB from the profile)."""
    out: dict[str, list[tuple[str, int]]] = {}
    parent = None
    for line in listing.splitlines():
        text = line.strip()
        if text.startswith("GPU ") and "(UUID: " in text:
            parent = text.rsplit("(UUID: ", 1)[1].rstrip(")")
            out[parent] = []
        elif text.startswith("MIG ") and "(UUID: " in text and parent:
            # The profile ("3g.20gb", "1g.10gb+me") says the device's memory.
            size = re.search(r"\.(\d+(?:\.\d+)?)gb", text.split()[1])
            memory = int(float(size.group(1)) * 1024) if size else 0
            out[parent].append((text.rsplit("(UUID: ", 1)[1].rstrip(")"), memory))
    return out


def _run_smi(argv: Sequence[str]) -> str:
    done = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=SMI_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv[:2])} exited with {done.returncode}: "
            f"{(done.stderr or done.stdout).strip()[:300]}"
        )
    return done.stdout


def _import_nvml() -> ModuleType | None:
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    module: ModuleType = pynvml
    return module


def _visible_mask(env: Mapping[str, str]) -> list[str] | None:
    """The inherited device mask as a list of entries, or None when nothing masks."""
    for name in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
        raw = env.get(name)
        if raw is None:
            continue
        raw = raw.strip()
        if name == "NVIDIA_VISIBLE_DEVICES" and raw in ("all", "void", ""):
            return None if raw == "all" else []
        if raw in ("none", "NoDevFiles", ""):
            return []
        return [entry.strip() for entry in raw.split(",") if entry.strip()]
    return None


def _pick(gpus: list[Gpu], entries: list[str], what: str) -> list[Gpu]:
    """The devices ``entries`` (indices or UUIDs) name, in that order."""
    picked: list[Gpu] = []
    for entry in entries:
        if entry.isdigit():
            matches = [g for g in gpus if g.index == int(entry)]
        else:
            # A GPU UUID names the GPU, or all MIG devices of it; a MIG UUID one device.
            matches = [g for g in gpus if entry in (g.uuid, g.parent_uuid)]
            if not matches and len(entry) >= 8:  # CUDA accepts a unique UUID prefix
                matches = [g for g in gpus if g.uuid.startswith(entry)]
        if not matches:
            have = ", ".join(f"{g.index}={g.uuid}" for g in gpus) or "none"
            raise GpuSelectionError(
                f"{what} names {entry!r}, which is not among this node's GPUs ({have})"
            )
        picked.extend(g for g in matches if g not in picked)
    return picked


def parse_setting(raw: str | None) -> str | list[str]:
    """``AGENT_GPUS`` checked for form: ``"all"``, ``"none"`` or a list of entries."""
    value = (raw or "all").strip()
    if value.lower() in ("all", "none"):
        return value.lower()
    entries = [entry.strip() for entry in value.split(",")]
    if not entries or any(not e for e in entries):
        raise GpuSelectionError(
            f"AGENT_GPUS={raw!r}: use all, none, or comma-separated GPU indices or UUIDs (0,2)"
        )
    return entries


def discover(
    setting: str | list[str] = "all",
    *,
    env: Mapping[str, str] | None = None,
    nvml: ModuleType | None | bool = True,
    run: Run | None = None,
    device_files: Callable[[], list[str]] | None = None,
) -> GpuInventory:
    """The GPUs this agent may use. ``nvml``: True imports ``pynvml`` when installed, a
    module uses that module (tests pass a fake), None/False skips NVML; ``run`` runs
    nvidia-smi (tests pass recorded output); ``device_files`` lists ``/dev/nvidia*``."""
    env = os.environ if env is None else env
    if setting == "none":
        return GpuInventory(source="none")
    module = _import_nvml() if nvml is True else (nvml or None)
    if run is None:
        run = _run_smi if shutil.which("nvidia-smi") else None
    list_devices = device_files or (lambda: sorted(glob.glob("/dev/nvidia[0-9]*")))
    failures: list[str] = []
    gpus: list[Gpu] = []
    driver, source = "", "none"
    if module is not None:
        try:
            gpus, driver = _nvml_inventory(module)
            source = "nvml"
        except Exception as exc:  # NVMLError or a broken install: try nvidia-smi next
            failures.append(f"NVML: {exc}")
    if source == "none" and run is not None:
        try:
            gpus, driver = _smi_inventory(run)
            source = "nvidia-smi"
        except Exception as exc:
            failures.append(f"nvidia-smi: {exc}")
    warnings: list[str] = []
    devices = list_devices()
    if source == "none" and devices:
        warnings.append(
            f"{len(devices)} NVIDIA device file(s) exist ({', '.join(devices[:4])}) but no GPU "
            f"could be listed ({'; '.join(failures) or 'neither nvidia-ml-py nor nvidia-smi is installed'}); "
            "this node is treated as having no GPU: install nvidia-ml-py "
            "(pip install 'adaptrain[gpu]') or fix the driver, or set AGENT_GPUS=none to silence this"
        )
    mask = _visible_mask(env)
    if mask is not None:
        gpus = _pick(gpus, mask, "CUDA_VISIBLE_DEVICES") if mask else []
    if setting != "all":
        gpus = _pick(gpus, list(setting), "AGENT_GPUS")
    return GpuInventory(tuple(gpus), driver, source, tuple(warnings))


# --- telemetry ---------------------------------------------------------------------------


def sample(
    inventory: GpuInventory, *, nvml: ModuleType | None | bool = True, run: Run | None = None
) -> list[GpuSample]:
    """Each of the inventory's GPUs' load now (empty when it has none or the driver fails).
    MIG devices report their own memory; utilisation, temperature and power are the GPU's."""
    if not inventory.gpus:
        return []
    try:
        if inventory.source == "nvml":
            module = _import_nvml() if nvml is True else nvml
            if module:
                return _nvml_sample(module, inventory)
        if inventory.source == "nvidia-smi":
            return _smi_sample(run or _run_smi, inventory)
    except Exception:
        return []
    return []


def _nvml_sample(nvml: ModuleType, inventory: GpuInventory) -> list[GpuSample]:
    nvml.nvmlInit()
    try:
        out = []
        for gpu in inventory.gpus:
            parent = nvml.nvmlDeviceGetHandleByUUID(gpu.parent_uuid or gpu.uuid)
            handle = nvml.nvmlDeviceGetHandleByUUID(gpu.uuid) if gpu.parent_uuid else parent

            def read(fn: Callable[[], Any]) -> Any:
                try:
                    return fn()
                except nvml.NVMLError:
                    return None

            rates = read(lambda: nvml.nvmlDeviceGetUtilizationRates(parent))  # noqa: B023
            memory = read(lambda: nvml.nvmlDeviceGetMemoryInfo(handle))  # noqa: B023
            temperature = read(
                lambda: nvml.nvmlDeviceGetTemperature(parent, nvml.NVML_TEMPERATURE_GPU)  # noqa: B023
            )
            power = read(lambda: nvml.nvmlDeviceGetPowerUsage(parent))  # noqa: B023
            out.append(
                GpuSample(
                    uuid=gpu.uuid,
                    utilization_pct=None if rates is None else float(rates.gpu),
                    memory_used_mib=None if memory is None else memory.used / (1 << 20),
                    temperature_c=None if temperature is None else float(temperature),
                    power_w=None if power is None else power / 1000.0,
                )
            )
        return out
    finally:
        nvml.nvmlShutdown()


def _smi_sample(run: Run, inventory: GpuInventory) -> list[GpuSample]:
    rows = _csv_rows(
        run(["nvidia-smi", f"--query-gpu={SMI_SAMPLE_QUERY}", "--format=csv,noheader,nounits"])
    )
    by_uuid = {row[0]: row for row in rows if len(row) >= 5}
    out = []
    for gpu in inventory.gpus:
        row = by_uuid.get(gpu.parent_uuid or gpu.uuid)
        if row is None:
            continue
        out.append(
            GpuSample(
                uuid=gpu.uuid,
                utilization_pct=_number(row[1]),
                # nvidia-smi's per-GPU memory.used would be the whole card's for a MIG device.
                memory_used_mib=None if gpu.parent_uuid else _number(row[2]),
                temperature_c=_number(row[3]),
                power_w=_number(row[4]),
            )
        )
    return out
