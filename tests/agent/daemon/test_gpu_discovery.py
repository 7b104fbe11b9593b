"""GPU discovery (agent.daemon.gpus): NVML first, then nvidia-smi, then none; MIG devices as
units of their own; the inherited CUDA_VISIBLE_DEVICES mask (indices, GPU UUIDs, MIG UUIDs)
and AGENT_GPUS applied on top; a broken driver is a loud warning, not "0 GPUs"; labels and
telemetry. nvidia-smi answers come from files under tests/support/gpus/, NVML from a fake
module: GPUs are the one thing outside the system the tests fake."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.daemon import gpus
from agent.daemon.gpus import GpuSelectionError, discover, parse_setting, sample
from tests.support.fake_nvml import FakeGpu, FakeNvml

RECORDED = Path(__file__).resolve().parents[2] / "support" / "gpus"
NO_DEVICES = lambda: []  # noqa: E731


def smi(inventory: str, *, listing: str | None = None, samples: str | None = None):
    """A fake ``run`` answering nvidia-smi's queries from recorded files."""
    calls = []

    def run(argv):
        calls.append(list(argv))
        if argv[1] == "-L":
            return (RECORDED / listing).read_text()
        if argv[1].startswith(f"--query-gpu={gpus.SMI_INVENTORY_QUERY}"):
            return (RECORDED / inventory).read_text()
        if argv[1].startswith(f"--query-gpu={gpus.SMI_SAMPLE_QUERY}"):
            return (RECORDED / samples).read_text()
        raise AssertionError(f"unexpected nvidia-smi call {argv}")

    run.calls = calls
    return run


def test_one_gpu_through_nvidia_smi_when_nvml_is_missing():
    inv = discover(env={}, nvml=None, run=smi("single-h200.inventory.csv"), device_files=NO_DEVICES)
    assert inv.source == "nvidia-smi"
    assert inv.driver == "570.133.20"
    assert [(g.index, g.uuid, g.name, g.memory_mib) for g in inv.gpus] == [
        (0, "GPU-8a2f9c1e-5b7d-4e3a-9f61-2c4d8e7b1a90", "NVIDIA H200", 143771)
    ]
    assert inv.labels() == {
        "gpu": "NVIDIA H200",
        "gpu_count": "1",
        "gpu_memory_mib": "143771",
        "gpu_driver": "570.133.20",
    }
    assert inv.warnings == ()


def test_eight_gpus_in_index_order_and_an_old_driver_without_mig_columns():
    inv = discover(env={}, nvml=None, run=smi("eight-a100.inventory.csv"), device_files=NO_DEVICES)
    assert [g.index for g in inv.gpus] == list(range(8))
    assert len(set(inv.uuids)) == 8 and all(u.startswith("GPU-") for u in inv.uuids)
    old = discover(env={}, nvml=None, run=smi("old-driver.inventory.csv"), device_files=NO_DEVICES)
    assert [g.name for g in old.gpus] == ["Tesla V100-SXM2-16GB"] * 2
    assert old.labels()["gpu_count"] == "2"


def test_a_gpu_in_mig_mode_is_replaced_by_its_mig_devices():
    run = smi("mig-a100.inventory.csv", listing="mig-a100.list.txt")
    inv = discover(env={}, nvml=None, run=run, device_files=NO_DEVICES)
    assert [(g.index, g.uuid, g.memory_mib, g.parent_uuid) for g in inv.gpus] == [
        (
            0,
            "MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f",
            20480,
            "GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77",
        ),
        (
            0,
            "MIG-cba663e8-9bed-5b25-b243-5985ef7c9beb",
            10240,
            "GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77",
        ),
        (
            0,
            "MIG-1d4cbb43-1d6e-5c8c-9e1e-a6e4c5a1b2c3",
            5120,
            "GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77",
        ),
        (1, "GPU-b9e2c5a1-77f0-4d3e-a1c2-6e5f4d3c2b1a", 40960, None),
    ]
    assert ["-L"] in [c[1:] for c in run.calls]


@pytest.mark.parametrize(
    "mask, expected",
    [
        ("2,5", [2, 5]),
        ("5,2", [5, 2]),  # the mask's order is the order CUDA numbers them in
        ("GPU-3f1c2a4e-1003-7b2d-8c9e-1a2b3c4d5e03", [3]),
        ("GPU-3f1c2a4e-1006", [6]),  # a unique UUID prefix, as CUDA accepts
        ("", []),
        ("none", []),
    ],
)
def test_an_inherited_cuda_visible_devices_masks_the_node(mask, expected):
    inv = discover(
        env={"CUDA_VISIBLE_DEVICES": mask},
        nvml=None,
        run=smi("eight-a100.inventory.csv"),
        device_files=NO_DEVICES,
    )
    assert [g.index for g in inv.gpus] == expected


def test_a_mask_of_mig_uuids_selects_those_devices_and_a_gpu_uuid_all_of_its_devices():
    run = smi("mig-a100.inventory.csv", listing="mig-a100.list.txt")
    env = {"CUDA_VISIBLE_DEVICES": "MIG-cba663e8-9bed-5b25-b243-5985ef7c9beb"}
    inv = discover(env=env, nvml=None, run=run, device_files=NO_DEVICES)
    assert inv.uuids == ["MIG-cba663e8-9bed-5b25-b243-5985ef7c9beb"]
    env = {"CUDA_VISIBLE_DEVICES": "GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77"}
    inv = discover(env=env, nvml=None, run=run, device_files=NO_DEVICES)
    assert len(inv.gpus) == 3 and all(g.uuid.startswith("MIG-") for g in inv.gpus)


def test_kubernetes_nvidia_visible_devices_is_honoured():
    run = smi("eight-a100.inventory.csv")
    assert [
        g.index
        for g in discover(
            env={"NVIDIA_VISIBLE_DEVICES": "1,4"}, nvml=None, run=run, device_files=NO_DEVICES
        ).gpus
    ] == [1, 4]
    assert (
        len(
            discover(
                env={"NVIDIA_VISIBLE_DEVICES": "all"}, nvml=None, run=run, device_files=NO_DEVICES
            ).gpus
        )
        == 8
    )
    assert (
        discover(
            env={"NVIDIA_VISIBLE_DEVICES": "void"}, nvml=None, run=run, device_files=NO_DEVICES
        ).gpus
        == ()
    )


def test_agent_gpus_selects_among_the_visible_ones_and_names_what_is_not_there():
    run = smi("eight-a100.inventory.csv")
    env = {"CUDA_VISIBLE_DEVICES": "2,3,4"}
    inv = discover(parse_setting("4,2"), env=env, nvml=None, run=run, device_files=NO_DEVICES)
    assert [g.index for g in inv.gpus] == [4, 2]
    with pytest.raises(GpuSelectionError, match=r"AGENT_GPUS names '7'.*2=GPU-"):
        discover(parse_setting("7"), env=env, nvml=None, run=run, device_files=NO_DEVICES)
    assert discover("none", env={}, nvml=None, run=run, device_files=NO_DEVICES).gpus == ()


@pytest.mark.parametrize("raw", ["0,", ",", "0,,1"])
def test_a_malformed_agent_gpus_is_refused_with_what_to_write(raw):
    with pytest.raises(GpuSelectionError, match="use all, none, or comma-separated"):
        parse_setting(raw)


def test_nvml_is_preferred_and_lists_mig_devices_skipping_empty_slots():
    nvml = FakeNvml(
        [
            FakeGpu("GPU-aaaa0000-0000-0000-0000-000000000000", memory_mib=81559),
            FakeGpu(
                "GPU-bbbb0000-0000-0000-0000-000000000000",
                mig=[
                    FakeGpu("MIG-bbbb0001-0000-0000-0000-000000000000", memory_mib=40192),
                    None,
                    FakeGpu("MIG-bbbb0003-0000-0000-0000-000000000000", memory_mib=19968),
                ],
            ),
        ],
        driver="550.127.05",
    )
    run = smi("eight-a100.inventory.csv")
    inv = discover(env={}, nvml=nvml, run=run, device_files=NO_DEVICES)
    assert inv.source == "nvml" and inv.driver == "550.127.05"
    assert inv.uuids == [
        "GPU-aaaa0000-0000-0000-0000-000000000000",
        "MIG-bbbb0001-0000-0000-0000-000000000000",
        "MIG-bbbb0003-0000-0000-0000-000000000000",
    ]
    assert [g.memory_mib for g in inv.gpus] == [81559, 40192, 19968]
    assert run.calls == []  # nvidia-smi not needed
    assert nvml.initialised == 0  # every nvmlInit was paired with nvmlShutdown


def test_nvml_failing_falls_back_to_nvidia_smi():
    nvml = FakeNvml([], fail_init="Driver Not Loaded")
    inv = discover(env={}, nvml=nvml, run=smi("single-h200.inventory.csv"), device_files=NO_DEVICES)
    assert inv.source == "nvidia-smi" and len(inv.gpus) == 1 and inv.warnings == ()


def test_device_files_without_a_working_driver_are_a_loud_warning_not_zero_gpus_silently():
    def broken(argv):
        raise RuntimeError(
            "nvidia-smi exited with 9: NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver"
        )

    inv = discover(
        env={},
        nvml=FakeNvml([], fail_init="Driver/library version mismatch"),
        run=broken,
        device_files=lambda: ["/dev/nvidia0", "/dev/nvidia1"],
    )
    assert inv.gpus == () and inv.source == "none"
    (warning,) = inv.warnings
    assert "2 NVIDIA device file(s) exist" in warning
    assert "Driver/library version mismatch" in warning and "couldn't communicate" in warning
    assert "AGENT_GPUS=none" in warning


def test_a_node_without_gpus_has_none_and_no_warning():
    inv = discover(env={}, nvml=None, run=None, device_files=NO_DEVICES)
    assert inv.gpus == () and inv.warnings == () and inv.labels() == {}


def test_telemetry_through_nvidia_smi_with_not_available_fields():
    run = smi("eight-a100.inventory.csv", samples="eight-a100.sample.csv")
    inv = discover(env={"CUDA_VISIBLE_DEVICES": "3,7"}, nvml=None, run=run, device_files=NO_DEVICES)
    three, seven = sample(inv, run=run)
    assert (three.utilization_pct, three.memory_used_mib, three.temperature_c, three.power_w) == (
        30.0,
        3000.0,
        33.0,
        63.5,
    )
    assert seven.power_w is None and seven.utilization_pct == 70.0


def test_telemetry_through_nvml_reads_a_mig_devices_own_memory_and_its_gpus_load():
    mig = FakeGpu("MIG-cccc0001-0000-0000-0000-000000000000", memory_mib=10000, used_mib=2500)
    gpu = FakeGpu(
        "GPU-cccc0000-0000-0000-0000-000000000000",
        utilization=55,
        temperature=61,
        power_mw=250_500,
        used_mib=9999,
        mig=[mig],
    )
    nvml = FakeNvml([gpu])
    inv = discover(env={}, nvml=nvml, run=None, device_files=NO_DEVICES)
    (s,) = sample(inv, nvml=nvml)
    assert s.uuid == mig.uuid
    assert (s.utilization_pct, s.memory_used_mib, s.temperature_c, s.power_w) == (
        55.0,
        2500.0,
        61.0,
        250.5,
    )
