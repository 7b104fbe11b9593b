"""Latency of a metric from the agent path to a browser's WebSocket:
``python -m bench.live_latency --json``.

A simulated agent posts one-point batches (the point's value is its send time) while a
client logged in like a browser listens on ``/ws/jobs/{id}/``; each point's latency is
receive time − send time (same host, same clock). Reports p50/p95/p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

import websockets

from agent.protocol.worker import MetricPoint
from bench._stack import agent_with_job, emit, log, percentile, running_stack, session_cookie


async def run(stack, *, points: int, rate_hz: float) -> dict:
    client, job_id = await agent_with_job(stack, name="latency")
    latencies: list[float] = []
    ws_url = stack.url.replace("http://", "ws://") + f"/ws/jobs/{job_id}/"
    headers = {"Cookie": session_cookie(stack)}
    async with websockets.connect(ws_url, additional_headers=headers, origin=stack.url) as ws:

        async def receive() -> None:
            while len(latencies) < points:
                frame = json.loads(await ws.recv())
                if frame["type"] != "metrics":
                    continue
                now = time.time()
                for series in frame["data"]["series"]:
                    if series["name"] == "sent_at":
                        latencies.extend(now - v for v in series["value"])

        receiver = asyncio.create_task(receive())
        for step in range(points + 5):  # the first few warm up connections
            await client.send_metrics(
                uuid.uuid4().hex,
                [
                    MetricPoint(
                        job=job_id,
                        name="sent_at" if step >= 5 else "warm",
                        step=step,
                        value=time.time(),
                        time=time.time(),
                    )
                ],
            )
            await asyncio.sleep(1.0 / rate_hz)
        await asyncio.wait_for(receiver, timeout=30)
    ordered = sorted(latencies)
    return {
        "bench": "live_latency",
        "points": len(ordered),
        "rate_hz": rate_hz,
        "p50_ms": round(percentile(ordered, 0.50) * 1000, 1),
        "p95_ms": round(percentile(ordered, 0.95) * 1000, 1),
        "p99_ms": round(percentile(ordered, 0.99) * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=300)
    parser.add_argument("--rate-hz", type=float, default=20.0)
    parser.add_argument("--json", action="store_true", help="print JSON lines (the only format)")
    args = parser.parse_args()
    with running_stack(name="live") as stack:
        log(f"sending {args.points} points at {args.rate_hz:g}/s …")
        emit(asyncio.run(run(stack, points=args.points, rate_hz=args.rate_hz)))


if __name__ == "__main__":
    main()
