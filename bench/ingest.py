"""Metric ingest throughput through the agent path: ``python -m bench.ingest --json``.

Starts the control plane as in production, enrols a node, places a job on it, then
several concurrent senders post metric batches exactly as the agent does
(``POST /api/v1/agent/metrics/`` with a node credential, 5,000 points per batch) for a
fixed time. Reports the points stored in PostgreSQL per second (counted in the database
afterwards, not from the replies).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import psycopg2

from agent.daemon.client import ControlPlaneClient
from agent.protocol.worker import MetricPoint
from bench._stack import agent_with_job, emit, log, running_stack

BATCH = 5000


async def sender(client: ControlPlaneClient, job_id: int, deadline: float, sent: list[int]) -> None:
    step = 0
    while time.monotonic() < deadline:
        now = time.time()
        points = [
            MetricPoint(job=job_id, name=name, step=step + i, value=float(i), rank=rank, time=now)
            for i in range(BATCH // 10)
            for name in ("loss", "accuracy", "throughput", "batch_size", "gns")
            for rank in (None, 0)
        ]
        step += BATCH // 10
        await client.send_metrics(uuid.uuid4().hex, points)
        sent[0] += len(points)


async def run(stack, *, seconds: float, concurrency: int) -> dict:
    client, job_id = await agent_with_job(stack, name="ingest")
    await sender(client, job_id, time.monotonic() + 1.0, [0])  # warm-up
    sent = [0]
    start = time.monotonic()
    await asyncio.gather(
        *(sender(client, job_id, start + seconds, sent) for _ in range(concurrency))
    )
    elapsed = time.monotonic() - start
    with psycopg2.connect(stack.env["DATABASE_URL"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM live_metricpoint WHERE job_id = %s", [job_id])
        stored = cur.fetchone()[0]
    return {
        "bench": "ingest",
        "seconds": round(elapsed, 2),
        "concurrency": concurrency,
        "batch_points": BATCH,
        "points_sent": sent[0],
        "points_stored_total": stored,
        "points_per_s": round(sent[0] / elapsed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--json", action="store_true", help="print JSON lines (the only format)")
    args = parser.parse_args()
    with running_stack(name="ingest") as stack:
        log(f"sending for {args.seconds:.0f} s with {args.concurrency} concurrent agents …")
        emit(asyncio.run(run(stack, seconds=args.seconds, concurrency=args.concurrency)))


if __name__ == "__main__":
    main()
