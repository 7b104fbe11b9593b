"""How an agent starts a job's initial workers on its node (agent.daemon.workers.WorkerGroup.spawn),
with real processes: in version 1 by rank; in a later version — written while this node
was still waiting for the others to register, because a member elsewhere died and the
elastic job went on without it — each at its place among the survivors."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import pytest

from agent import protocol
from agent.daemon.workers import WorkerGroup
from agent.protocol.control import StartPayload

ENTRYPOINT = "tests.support.env_report_worker"


def _group(
    tmp_path, ranks: list[int], world_size: int, fabric_secret: str | None = None
) -> WorkerGroup:
    async def command_done(*args) -> None:
        pass

    return WorkerGroup(
        job_id=7,
        start=StartPayload(
            job=7,
            world_size=world_size,
            ranks=tuple(ranks),
            entrypoint=ENTRYPOINT,
            hyperparameters={},
            batch_size=8,
            lr=0.1,
            strategy="ssgd",
            topology="auto",
            cluster_version=1,
            workers_min=world_size,
            fabric_secret=fabric_secret,
        ),
        python=sys.executable,
        address="127.0.0.1",
        state_dir=tmp_path / "state",
        first_seq=0,
        on_metrics=lambda points, source: None,
        on_command_done=command_done,
        persist=False,
    )


def _spawned_env(
    tmp_path, monkeypatch, ranks, world_size, members_of, fabric_secret=None
) -> dict[int, dict]:
    """Spawn ``ranks`` with the member list ``members_of(ports)`` builds from the local
    ranks' ports; returns each rank's ADAPTRAIN_* environment."""
    monkeypatch.setenv("ENV_REPORT_DIR", str(tmp_path))

    async def run() -> dict[int, dict]:
        group = _group(tmp_path, ranks, world_size, fabric_secret)
        group.choose_ports()
        members, version = members_of(group.ports)
        await group.spawn(members, version)
        found = {}
        deadline = time.monotonic() + 60
        while len(found) < len(ranks) and time.monotonic() < deadline:
            for rank in ranks:
                path = tmp_path / f"127.0.0.1_{group.ports[rank]}.json"
                if path.exists():
                    found[rank] = json.loads(path.read_text())
            await asyncio.sleep(0.05)
        await group.terminate(grace_s=1)
        return found

    return asyncio.run(run())


def test_version_1_starts_each_rank_at_its_own_place(tmp_path, monkeypatch):
    envs = _spawned_env(
        tmp_path,
        monkeypatch,
        [2, 3],
        4,
        lambda ports: (
            ["10.0.0.1:100", "10.0.0.1:101", f"127.0.0.1:{ports[2]}", f"127.0.0.1:{ports[3]}"],
            1,
        ),
    )
    assert {
        r: (e[protocol.ENV_RANK], e[protocol.ENV_CLUSTER_VERSION]) for r, e in envs.items()
    } == {2: ("2", "1"), 3: ("3", "1")}
    assert all(e[protocol.ENV_PEERS].split(",")[0] == "10.0.0.1:100" for e in envs.values())


def test_a_later_version_starts_each_rank_at_its_place_among_the_survivors(tmp_path, monkeypatch):
    # Version 1 was [A0, A1, here2, here3]; A1 died before this node had started: version 2.
    envs = _spawned_env(
        tmp_path,
        monkeypatch,
        [2, 3],
        4,
        lambda ports: (["10.0.0.1:100", f"127.0.0.1:{ports[2]}", f"127.0.0.1:{ports[3]}"], 2),
    )
    assert {
        r: (e[protocol.ENV_RANK], e[protocol.ENV_CLUSTER_VERSION]) for r, e in envs.items()
    } == {2: ("1", "2"), 3: ("2", "2")}
    for env in envs.values():
        peers = env[protocol.ENV_PEERS].split(",")
        assert len(peers) == 3 and peers[int(env[protocol.ENV_RANK])] == env[protocol.ENV_ADDRESS]


def test_workers_get_the_runs_fabric_secret_from_the_agent_only(tmp_path, monkeypatch, caplog):
    secret = "ab" * 32
    envs = _spawned_env(
        tmp_path,
        monkeypatch,
        [0, 1],
        2,
        lambda ports: ([f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}"], 1),
        fabric_secret=secret,
    )
    assert {r: e.get(protocol.ENV_FABRIC_SECRET) for r, e in envs.items()} == {0: secret, 1: secret}
    assert secret not in caplog.text
    # Without one (an older control plane) the variable is not set at all.
    envs = _spawned_env(
        tmp_path / "old",
        monkeypatch,
        [0],
        1,
        lambda ports: ([f"127.0.0.1:{ports[0]}"], 1),
    )
    assert protocol.ENV_FABRIC_SECRET not in envs[0]


@pytest.mark.parametrize(
    ("members", "version", "error"),
    [
        (["10.0.0.1:100", ""], 1, "incomplete cluster spec"),
        (["10.0.0.1:100", "10.0.0.1:101"], 1, "incomplete cluster spec"),  # 4 initial workers
        (["10.0.0.1:100", "10.0.0.1:101"], 2, r"leaves out worker\(s\) \[2, 3\] of this node"),
    ],
)
def test_a_member_list_that_cannot_start_this_node_says_why(tmp_path, members, version, error):
    async def run() -> None:
        group = _group(tmp_path, [2, 3], 4)
        group.choose_ports()
        with pytest.raises(ValueError, match=error):
            await group.spawn(members, version)
        assert group.workers == {}

    asyncio.run(run())
