"""Emulated nodes on one machine: a network namespace per node, joined by a bridge.

Each node gets its own namespace with one interface (``eth0``, address
10.<net>.0.<i+1>) on a veth pair whose other end sits on a bridge in the root
namespace. With ``rate``/``delay`` the node's link is shaped by ``tc netem`` in
both directions (eth0's egress inside the namespace, the bridge-side end's
egress towards it), so every node has a full-duplex "NIC" of that rate. Ranks
started in one namespace share its address and therefore count as one node to
the collective library; they still share /dev/shm (namespaces only split the
network), so they use shared memory among themselves, as ranks on one real
node do. Needs root, ``ip`` and ``tc`` (iproute2).

    with EmulatedNodes(2, rate="1gbit", delay_us=25) as nodes:
        proc = nodes.popen(0, [sys.executable, "-m", "bench.something"])
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any


def available() -> str | None:
    """None when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "emulated nodes need root (network namespaces and tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"emulated nodes need '{tool}' (Debian package iproute2)"
    return None


_RATE_UNITS = {"kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "bit": 1}


def rate_bits(rate: str) -> int:
    """'10gbit' -> 10_000_000_000 (tc's bit units)."""
    text = rate.strip().lower()
    for unit, factor in _RATE_UNITS.items():
        if text.endswith(unit) and text[: -len(unit)].replace(".", "", 1).isdigit():
            return int(float(text[: -len(unit)]) * factor)
    raise ValueError(f"link rate {rate!r} is not understood: use e.g. 500mbit, 1gbit, 10gbit")


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        why = done.stderr.strip() or done.stdout.strip()
        if "netem" in argv and "unknown" in why:
            why += " (this kernel has no netem qdisc: drop --delay-us)"
        raise RuntimeError(f"{' '.join(argv)} failed: {why}")


_INSTANCES = itertools.count()


class EmulatedNodes:
    def __init__(self, nodes: int, *, rate: str | None = None, delay_us: int = 0) -> None:
        why = available()
        if why:
            raise RuntimeError(why)
        if not 1 <= nodes <= 200:
            raise ValueError("nodes must be 1..200")
        self.count = nodes
        self.rate = rate
        self.delay_us = delay_us
        # Names and subnet differ per process and per instance: a namespace's veth ends go
        # away asynchronously after it is deleted, so the next instance of the same
        # process must not reuse them.
        serial = next(_INSTANCES) % 10
        tag = f"{os.getpid() % 100000:05d}{serial}"
        self.net = 64 + (os.getpid() + serial) % 64  # 10.<net>.0.0/24, unlikely to clash
        self.bridge = f"atb{tag}"
        self.namespaces = [f"adaptrain-{tag}-n{i}" for i in range(nodes)]
        self._made: list[str] = []

    def _shapes(self) -> list[list[str]]:
        """tc qdisc arguments: netem for the delay (its own rate option needs a newer
        kernel than some have), then a token bucket for the rate below it."""
        shapes: list[list[str]] = []
        parent = ["root"]
        if self.delay_us:
            shapes.append([*parent, "handle", "1:", "netem", "delay", f"{self.delay_us}us"])
            parent = ["parent", "1:1"]
        if self.rate:
            burst = max(rate_bits(self.rate) // 8 // 1000, 32 << 10)  # ~1 ms at that rate
            shapes.append(
                [*parent, "tbf", "rate", self.rate, "burst", str(burst), "latency", "50ms"]
            )
        return shapes

    def address(self, node: int) -> str:
        return f"10.{self.net}.0.{node + 1}"

    def __enter__(self) -> EmulatedNodes:
        try:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            self._made.append("bridge")
            _run("ip", "link", "set", self.bridge, "up")
            for i, ns in enumerate(self.namespaces):
                _run("ip", "netns", "add", ns)
                self._made.append(ns)
                host_end = f"{self.bridge}v{i}"
                _run(
                    "ip",
                    "link",
                    "add",
                    host_end,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    ns,
                )
                _run("ip", "link", "set", host_end, "master", self.bridge)
                _run("ip", "link", "set", host_end, "up")
                _run("ip", "-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
                _run("ip", "-n", ns, "link", "set", "eth0", "up")
                _run("ip", "-n", ns, "link", "set", "lo", "up")
                for shape in self._shapes():
                    _run("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0", *shape)
                    _run("tc", "qdisc", "add", "dev", host_end, *shape)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for name in reversed(self._made):
            argv = (
                ("ip", "link", "del", self.bridge)
                if name == "bridge"
                else ("ip", "netns", "del", name)
            )
            subprocess.run(argv, capture_output=True, check=False)
        self._made.clear()

    def slow_path(self, a: int, b: int, rate: str) -> None:
        """Interference on the path between nodes ``a`` and ``b`` only (both directions):
        traffic from each to the other goes through an htb class of ``rate``, all other
        traffic as before (a congested route between two hosts, which another topology can
        avoid; a whole link slowed, as ``rate`` does, cannot be). Needs an unshaped node
        (no ``rate``/``delay_us``); undone by :meth:`clear_path`."""
        if self.rate or self.delay_us:
            raise ValueError("slow_path needs unshaped links (no rate or delay)")
        rate_bits(rate)  # a clear error for a rate tc would not take
        for src, dst in ((a, b), (b, a)):
            ns = self.namespaces[src]
            for args in (
                ("qdisc", "add", "dev", "eth0", "root", "handle", "1:", "htb", "default", "10"),
                ("class", "add", "dev", "eth0", "parent", "1:", "classid", "1:10", "htb",
                 "rate", "100gbit"),
                ("class", "add", "dev", "eth0", "parent", "1:", "classid", "1:20", "htb",
                 "rate", rate, "ceil", rate),
                ("filter", "add", "dev", "eth0", "parent", "1:", "protocol", "ip", "prio", "1",
                 "u32", "match", "ip", "dst", f"{self.address(dst)}/32", "flowid", "1:20"),
            ):  # fmt: skip
                _run("ip", "netns", "exec", ns, "tc", *args)

    def clear_path(self, a: int, b: int) -> None:
        """Undo :meth:`slow_path`."""
        for node in (a, b):
            _run("ip", "netns", "exec", self.namespaces[node], "tc", "qdisc", "del", "dev",
                 "eth0", "root")  # fmt: skip

    def shape_links(
        self,
        link_rate: str,
        *,
        slow_path: tuple[int, int] | None = None,
        slow_node: int | None = None,
        slow_rate: str | None = None,
    ) -> None:
        """A bandwidth-bound network: every node's link at ``link_rate`` in each direction
        (an htb class on the node's egress and on the bridge's port towards it, as a NIC
        caps both), and optionally one route slowed — ``slow_path=(a, b)``, the traffic
        between those two nodes only — or one host's whole link — ``slow_node`` — at
        ``slow_rate``. Unlike ``rate`` (a token bucket on every link), the classes leave
        room to slow one path on top. Needs unshaped links; undone by :meth:`unshape`."""
        if self.rate or self.delay_us:
            raise ValueError("shape_links needs unshaped links (no rate or delay)")
        if (slow_path is not None or slow_node is not None) and slow_rate is None:
            raise ValueError("slow_path and slow_node need slow_rate")
        for rate in (link_rate, slow_rate):
            if rate is not None:
                rate_bits(rate)  # a clear error for a rate tc would not take
        for node in [*(slow_path or ()), *([] if slow_node is None else [slow_node])]:
            if not 0 <= node < self.count:
                raise ValueError(f"node {node} is out of range: use 0..{self.count - 1}")

        def classes(device: tuple[str, ...], default_rate: str, slow_dst: int | None) -> None:
            def htb(classid: str, rate: str) -> tuple[str, ...]:
                burst = str(max(rate_bits(rate) // 8 // 1000, 32 << 10))  # ~1 ms at that rate
                return ("class", "add", "dev", device[-1], "parent", "1:", "classid", classid,
                        "htb", "rate", rate, "ceil", rate, "burst", burst, "cburst", burst)  # fmt: skip

            prefix = device[:-1]
            _run(*prefix, "tc", "qdisc", "add", "dev", device[-1], "root", "handle", "1:",
                 "htb", "default", "10")  # fmt: skip
            _run(*prefix, "tc", *htb("1:10", default_rate))
            if slow_dst is not None and slow_rate is not None:
                _run(*prefix, "tc", *htb("1:20", slow_rate))
                _run(*prefix, "tc", "filter", "add", "dev", device[-1], "parent", "1:",
                     "protocol", "ip", "prio", "1", "u32", "match", "ip", "dst",
                     f"{self.address(slow_dst)}/32", "flowid", "1:20")  # fmt: skip

        for i, ns in enumerate(self.namespaces):
            rate = slow_rate if i == slow_node and slow_rate else link_rate
            other = None
            if slow_path is not None and i in slow_path:
                other = slow_path[1] if i == slow_path[0] else slow_path[0]
            classes(("ip", "netns", "exec", ns, "eth0"), rate, other)
            classes((f"{self.bridge}v{i}",), rate, None)

    def unshape(self) -> None:
        """Undo :meth:`shape_links`."""
        for i, ns in enumerate(self.namespaces):
            for argv in (
                ("ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", "eth0", "root"),
                ("tc", "qdisc", "del", "dev", f"{self.bridge}v{i}", "root"),
            ):
                subprocess.run(argv, capture_output=True, check=False)

    def popen(self, node: int, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
        """Start argv inside node's namespace (same user, files and /dev/shm)."""
        return subprocess.Popen(
            ["ip", "netns", "exec", self.namespaces[node], *argv], text=True, **kwargs
        )


def link_ceiling(
    nodes: EmulatedNodes,
    streams: int = 1,
    nbytes: int = 256 << 20,
    *,
    src: int = 0,
    dst: int = 1,
) -> float:
    """Bytes/s one node can send another over `streams` TCP connections (iperf-style):
    node ``dst`` receives, node ``src`` sends nbytes split over the streams; wall time of
    the whole."""
    receiver = nodes.popen(
        dst,
        [sys.executable, "-m", "bench.netns", "receive", nodes.address(dst), str(streams)],
        stdout=subprocess.PIPE,
    )
    assert receiver.stdout is not None
    ready = receiver.stdout.readline()  # "ready"
    if ready.strip() != "ready":
        receiver.kill()
        raise RuntimeError("the ceiling receiver did not start")
    sender = nodes.popen(
        src,
        [
            sys.executable,
            "-m",
            "bench.netns",
            "send",
            nodes.address(dst),
            str(streams),
            str(nbytes),
        ],  # fmt: skip
        stdout=subprocess.PIPE,
    )
    out, _ = sender.communicate(timeout=600)
    receiver.wait(timeout=60)
    if sender.returncode != 0:
        raise RuntimeError("the ceiling sender failed")
    return float(out.strip())


_PORT = 5201


def _receive(host: str, streams: int) -> None:
    import threading

    server = socket.create_server((host, _PORT), backlog=streams)
    print("ready", flush=True)
    conns = [server.accept()[0] for _ in range(streams)]

    def drain(conn: socket.socket) -> None:
        buffer = bytearray(4 << 20)
        while conn.recv_into(buffer):
            pass
        conn.close()

    threads = [threading.Thread(target=drain, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _send(host: str, streams: int, nbytes: int) -> None:
    import threading

    each = nbytes // streams
    conns = [socket.create_connection((host, _PORT)) for _ in range(streams)]
    chunk = bytes(4 << 20)
    started = time.perf_counter()

    def push(conn: socket.socket) -> None:
        left = each
        view = memoryview(chunk)
        while left > 0:
            sent = conn.send(view[: min(left, len(chunk))])
            left -= sent
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)  # end of stream from the receiver: everything arrived
        conn.close()

    threads = [threading.Thread(target=push, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(each * streams / (time.perf_counter() - started), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "receive":
        _receive(sys.argv[2], int(sys.argv[3]))
    else:
        _send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
