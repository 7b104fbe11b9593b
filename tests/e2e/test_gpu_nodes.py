"""A GPU node end to end — web, Celery, a real agent, worker processes — with two GPUs
that are the one thing faked: ``nvidia-smi`` on the agent's PATH is a script printing
recorded output (an inventory of two H200s, and a sample with their load).

* each job's worker gets a GPU of its own (``CUDA_VISIBLE_DEVICES=<uuid>``, memory growth
  on); the agent is killed with SIGKILL and started again on the same state directory:
  the worker it re-attaches to keeps its GPU, and the next job gets the other one;
* the GPUs are node labels (model, count, memory, driver); each heartbeat brings each
  GPU's load and owner to the node; the owners' ``gpu_util``/``gpu_mem`` series arrive
  (whole-job and per worker) with the recorded values.

Workers are tests/support/gpu_worker.py (no TensorFlow): ``AGENT_PYTHON`` is a wrapper
that runs it through the real launcher in place of the job's example.
"""

from __future__ import annotations

import json
import signal
import stat
import sys

import pytest

from tests.e2e.conftest import _stack, log_in, process_alive, wait_for, wait_for_job

pytestmark = pytest.mark.e2e

AGENT = "agent-node-1"
GPU_0 = "GPU-8a2f9c1e-5b7d-4e3a-9f61-2c4d8e7b1a90"
GPU_1 = "GPU-8a2f9c1e-5b7d-4e3a-9f61-2c4d8e7b1a91"
INVENTORY = (
    f"0, {GPU_0}, NVIDIA H200, 143771, 570.133.20, Disabled\n"
    f"1, {GPU_1}, NVIDIA H200, 143771, 570.133.20, Disabled\n"
)
SAMPLE = f"{GPU_0}, 87, 71885, 54, 512.37\n{GPU_1}, 12, 14377, 41, 180.25\n"
UTIL = {GPU_0: 87.0, GPU_1: 12.0}
MEM = {GPU_0: 50.0, GPU_1: 10.0}  # memory used in percent of 143771 MiB


@pytest.fixture(scope="module")
def gpu_stack(tmp_path_factory):
    bin_dir = tmp_path_factory.mktemp("gpu-bin")
    out_dir = tmp_path_factory.mktemp("gpu-workers")
    smi = bin_dir / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        f"  *--query-gpu=index,uuid*) printf '%s' '{INVENTORY}' ;;\n"
        f"  *--query-gpu=uuid,utilization*) printf '%s' '{SAMPLE}' ;;\n"
        "  *) echo 'unexpected nvidia-smi call' >&2; exit 2 ;;\n"
        "esac\n"
    )
    python = bin_dir / "python"
    python.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" -m agent.runtime.launcher tests.support.gpu_worker\n'
    )
    for script in (smi, python):
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
        mp.setenv("AGENT_PYTHON", str(python))
        mp.setenv("GPU_WORKER_DIR", str(out_dir))
        mp.setenv("AGENT_HEARTBEAT_S", "1")
        mp.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        mp.delenv("AGENT_GPUS", raising=False)
        for stack in _stack(tmp_path_factory, suffix="gpu", agents=1, slots=2):
            stack.out_dir = out_dir
            yield stack


def _start(stack, name: str) -> int:
    status, job = stack.api.post(
        "/api/v1/jobs/",
        {
            "name": name,
            "entrypoint": "examples.digits",
            "hyperparameters": {"batch_size": 8, "lr": 0.1},
            "workers": {"initial": 1},
        },
    )
    assert status == 201, job
    wait_for_job(
        stack.api, job["id"], lambda j: j["status"] == "running", timeout_s=120,
        what=f"job {name} to run", stack=stack,
    )  # fmt: skip
    return job["id"]


def _worker(stack, job_id: int) -> dict:
    found: list[dict] = []

    def written() -> bool:
        found[:] = [json.loads(p.read_text()) for p in stack.out_dir.glob(f"job-{job_id}.*.json")]
        return bool(found)

    wait_for(written, timeout_s=60, what=f"job {job_id}'s worker to start", stack=stack)
    (worker,) = found
    return worker


def _node(stack) -> dict:
    (node,) = stack.api.get("/api/v1/nodes/")[1]
    return node


def _series(stack, job_id: int, name: str) -> dict:
    status, body = stack.api.get(f"/api/v1/jobs/{job_id}/metrics/?names={name}")
    assert status == 200, body
    return {s["rank"]: s["value"] for s in body["series"]}


@pytest.mark.browser
def test_each_job_gets_its_own_gpu_also_after_the_agent_is_killed(gpu_stack, browser):
    stack = gpu_stack
    labels = _node(stack)["labels"]
    assert labels["gpu"] == "NVIDIA H200" and labels["gpu_count"] == "2"
    assert labels["gpu_memory_mib"] == "143771" and labels["gpu_driver"] == "570.133.20"

    first = _start(stack, "first on a GPU")
    worker = _worker(stack, first)
    gpu = worker["env"]["CUDA_VISIBLE_DEVICES"]
    assert gpu in (GPU_0, GPU_1)
    assert worker["env"]["ADAPTRAIN_GPU"] == gpu
    assert worker["env"]["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert worker["env"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"

    # Heartbeats bring each GPU's load and owner; the owner's series arrive.
    wait_for(
        lambda: any(g.get("job") == first for g in _node(stack)["gpus"]),
        timeout_s=30, what="a heartbeat to say which GPU the first job owns", stack=stack,
    )  # fmt: skip
    by_uuid = {g["uuid"]: g for g in _node(stack)["gpus"]}
    assert set(by_uuid) == {GPU_0, GPU_1}
    assert (by_uuid[gpu]["job"], by_uuid[gpu]["rank"]) == (first, 0)
    assert by_uuid[gpu]["utilization_pct"] == UTIL[gpu]
    assert by_uuid[GPU_0]["power_w"] == 512.37 and by_uuid[GPU_1]["temperature_c"] == 41.0
    wait_for(
        lambda: {None, 0} <= set(_series(stack, first, "gpu_util")),
        timeout_s=30, what="the first job's gpu_util series", stack=stack,
    )  # fmt: skip
    util = _series(stack, first, "gpu_util")
    assert set(util[None]) == {UTIL[gpu]} and set(util[0]) == {UTIL[gpu]}
    wait_for(
        lambda: None in _series(stack, first, "gpu_mem"),
        timeout_s=30, what="the first job's gpu_mem series", stack=stack,
    )  # fmt: skip
    mem = _series(stack, first, "gpu_mem")[None]
    assert mem and all(v == pytest.approx(MEM[gpu], abs=0.01) for v in mem)

    # The agent dies and a new one takes over: the worker keeps its GPU…
    agent = stack.processes.pop(AGENT)
    agent.send_signal(signal.SIGKILL)
    agent.wait(timeout=10)
    assert process_alive(worker["pid"])
    stack.restart_agent(AGENT)
    state = stack.log_dir / "agents" / "node-1" / "jobs" / f"job-{first}.json"
    assert [w["gpu"] for w in json.loads(state.read_text())["workers"]] == [gpu]

    # …and the next job gets the other one.
    second = _start(stack, "second on the other GPU")
    other = _worker(stack, second)["env"]["CUDA_VISIBLE_DEVICES"]
    assert {gpu, other} == {GPU_0, GPU_1}
    assert process_alive(worker["pid"])
    wait_for(
        lambda: {g["uuid"]: g["job"] for g in _node(stack)["gpus"]} == {gpu: first, other: second},
        timeout_s=30, what="the heartbeats to show both GPUs owned", stack=stack,
    )  # fmt: skip

    # The nodes page lists each GPU with its load and owner; the job page charts its GPU.
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    try:
        log_in(page, stack, "/nodes/")
        gpus = page.locator("#nodes tbody tr", has_text="node-1").locator("td.gpus .gpu")
        gpus.nth(1).wait_for()
        lines = sorted(gpus.all_inner_texts())
        assert lines == sorted(
            f"NVIDIA H200 · {UTIL[u]:.0f} % · {MEM[u] * 140.4 / 100:.1f} / 140.4 GiB · "
            f"{ {GPU_0: 54, GPU_1: 41}[u] } °C · { {GPU_0: 512, GPU_1: 180}[u] } W · job {j} worker 0"
            for u, j in ((gpu, first), (other, second))
        )
        page.goto(f"{stack.url}/jobs/{first}/")
        gpu_cell = page.locator("#workers tbody tr[data-rank='0'] td.gpu")
        gpu_cell.wait_for()
        wait_for(
            lambda: gpu_cell.inner_text() == f"NVIDIA H200 · {UTIL[gpu]:.0f} % · "
            f"{MEM[gpu] * 140.4 / 100:.1f} GiB",
            timeout_s=30, what="the job page to show its worker's GPU", stack=stack,
        )  # fmt: skip
        chart = page.locator("#chart-gpu_util")
        chart.wait_for(state="visible")
        wait_for(
            lambda: int(chart.get_attribute("data-points") or 0) > 0,
            timeout_s=30, what="the job page's GPU chart to show points", stack=stack,
        )  # fmt: skip
    finally:
        page.close()

    for job_id in (first, second):
        status, body = stack.api.post(f"/api/v1/jobs/{job_id}/cancel/", {})
        assert status == 200, body
    wait_for(
        lambda: not process_alive(worker["pid"]) and all(g["job"] is None for g in _node(stack)["gpus"]),
        timeout_s=60, what="the workers to exit and their GPUs to be free", stack=stack,
    )  # fmt: skip
