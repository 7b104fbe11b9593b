"""The agent's metric spool: points it could not post survive it (on disk, bounded) and are
posted by the next agent, each stored once — the control plane keeps a batch id once, and
a batch keeps its id across retries and restarts."""

from __future__ import annotations

import asyncio

from adaptrain.rest import ApiError
from agent.daemon import metrics
from agent.daemon.metrics import MetricShipper
from agent.protocol.worker import MetricPoint


class ControlPlane:
    """Stores each batch id once, as the metric ingest does; ``down`` refuses to answer."""

    def __init__(self) -> None:
        self.down = False
        self.batches: dict[str, list[tuple[int | None, str, int]]] = {}

    async def send_metrics(self, batch_id, points):
        if self.down:
            raise OSError("connection refused")
        self.batches.setdefault(batch_id, [(p.job, p.name, p.step) for p in points])

    @property
    def stored(self) -> list[tuple[int | None, str, int]]:
        return sorted(p for batch in self.batches.values() for p in batch)


def _points(job: int, steps: range) -> list[MetricPoint]:
    return [MetricPoint(name="loss", step=s, value=1.0 / (s + 1), time=1.0, job=job) for s in steps]


def _flush(shipper: MetricShipper) -> None:
    asyncio.run(shipper._flush_locked())


def test_points_an_agent_could_not_post_are_posted_by_the_next_one_once(tmp_path, monkeypatch):
    monkeypatch.setattr(asyncio, "sleep", _no_sleep)
    cp = ControlPlane()
    first = MetricShipper(cp, 0.1, tmp_path)  # type: ignore[arg-type]
    first.add(_points(7, range(0, 10)), (7, 0, 1))
    _flush(first)
    cp.down = True
    first.add(_points(7, range(10, 20)), (7, 0, 2))
    first.add(_points(7, range(20, 30)), (7, 1, 5))
    _flush(first)  # fails: the batch stays on disk with its id
    assert len(first.points) == 20
    first.close()  # the agent is killed

    second = MetricShipper(cp, 0.1, tmp_path)  # type: ignore[arg-type]
    assert len(second.points) == 20
    # Lines the killed agent spooled are known: written again by their worker, skipped.
    assert second.handled(7, 0) == 2 and second.handled(7, 1) == 5 and second.handled(8, 0) == 0
    cp.down = False
    _flush(second)
    assert cp.stored == [(7, "loss", s) for s in range(30)]
    second.close()
    # A third agent finds nothing left to post.
    assert MetricShipper(cp, 0.1, tmp_path).points == []  # type: ignore[arg-type]


def test_a_batch_stored_just_before_the_agent_died_is_not_stored_twice(tmp_path, monkeypatch):
    monkeypatch.setattr(asyncio, "sleep", _no_sleep)
    cp = ControlPlane()
    first = MetricShipper(cp, 0.1, tmp_path)  # type: ignore[arg-type]
    first.add(_points(3, range(5)), (3, 0, 1))
    first._next_batch()  # the batch is on disk with its id ...
    batch_id = first.sending[0]
    asyncio.run(cp.send_metrics(batch_id, [MetricPoint.from_dict(p) for p in first.sending[2]]))
    first.close()  # ... stored by the control plane, and the agent killed before it knew
    second = MetricShipper(cp, 0.1, tmp_path)  # type: ignore[arg-type]
    assert second.sending is not None and second.sending[0] == batch_id
    _flush(second)
    assert cp.stored == [(3, "loss", s) for s in range(5)]


def test_the_spool_is_bounded_and_drops_the_oldest_points(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics, "MAX_BUFFERED_POINTS", 50)
    shipper = MetricShipper(ControlPlane(), 0.1, tmp_path)  # type: ignore[arg-type]
    for i in range(10):
        shipper.add(_points(1, range(i * 10, i * 10 + 10)), (1, 0, i + 1))
    assert [p["step"] for p in shipper.points] == list(range(50, 100))
    shipper.close()
    assert [p["step"] for p in MetricShipper(None, 0.1, tmp_path).points] == list(range(50, 100))  # type: ignore[arg-type]


def test_a_rejected_batch_is_dropped_not_retried_forever(tmp_path):
    class Refusing(ControlPlane):
        async def send_metrics(self, batch_id, points):
            raise ApiError(404, "no such job", code="not_found")

    shipper = MetricShipper(Refusing(), 0.1, tmp_path)  # type: ignore[arg-type]
    shipper.add(_points(9, range(3)), (9, 0, 1))
    _flush(shipper)
    assert shipper.points == []


async def _no_sleep(_s: float) -> None:
    return None
