"""Start the whole system on one machine: web (ASGI), Celery worker and beat, agents.

Used by the demo (``scripts/demo``) and by the end-to-end tests, so both exercise the
same start-up path. Every process runs in its own process group with its output in
``<log_dir>/<name>.log``; :meth:`Stack.stop` terminates them all (then kills what is
left after a grace period).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from adaptrain.rest import RestClient

ROOT = Path(__file__).resolve().parent.parent


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def embedded_requested() -> bool:
    """ADAPTRAIN_SERVICES=embedded skips local servers and starts embedded PostgreSQL and
    Redis, as on a machine with nothing installed (a URL in the environment still wins)."""
    value = os.environ.get("ADAPTRAIN_SERVICES", "auto").strip().lower()
    if value not in ("auto", "embedded"):
        raise SystemExit(f"ADAPTRAIN_SERVICES={value!r}: use auto or embedded.")
    return value == "embedded"


class StackError(RuntimeError):
    pass


class NetworkNamespaces:
    """Hosts of their own on one machine: a Linux network namespace per agent, each joined
    by a veth pair to a private bridge in the machine's own namespace, where the control
    plane listens on the bridge's address. Workers in different namespaces reach each
    other only over that virtual network (no loopback, no shared memory between them).
    Needs root (CAP_NET_ADMIN) and iproute2; :meth:`available` says whether both are
    there. Names carry ``tag`` so that parallel stacks do not collide."""

    def __init__(self, count: int, tag: str):
        self.count = count
        self.tag = tag[:6]
        self.subnet = self._free_subnet()
        self.bridge = f"atb{self.tag}"
        self.names = [f"adaptrain-{self.tag}-{i + 1}" for i in range(count)]
        self.host = f"10.{self.subnet}.1"
        self.addresses = [f"10.{self.subnet}.{i + 2}" for i in range(count)]
        self.created = False

    @staticmethod
    def available() -> bool:
        if os.geteuid() != 0 or not _which("ip"):
            return False
        probe = f"adaptrain-probe-{os.getpid()}"
        ok = subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode == 0
        if ok:
            subprocess.run(["ip", "netns", "del", probe], capture_output=True)
        return ok

    @staticmethod
    def _free_subnet() -> str:
        used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
        for third in range(200, 250):
            for fourth in range(0, 256, 1):
                candidate = f"{third}.{fourth}"
                if f" 10.{candidate}." not in used:
                    return candidate
        raise StackError("no free 10.x.y.0/24 subnet for the agents' network namespaces")

    def _ip(self, *args: str, namespace: str | None = None) -> None:
        argv = ["ip", *(["netns", "exec", namespace, "ip"] if namespace else []), *args]
        result = subprocess.run(argv, capture_output=True, text=True)
        if result.returncode != 0:
            raise StackError(f"`{' '.join(argv)}` failed: {result.stderr.strip()}")

    def create(self) -> None:
        self.created = True
        self._ip("link", "add", self.bridge, "type", "bridge")
        self._ip("addr", "add", f"{self.host}/24", "dev", self.bridge)
        self._ip("link", "set", self.bridge, "up")
        for i, name in enumerate(self.names):
            outside, inside = f"atv{self.tag}{i}", f"atv{self.tag}{i}n"
            self._ip("netns", "add", name)
            self._ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            self._ip("link", "set", inside, "netns", name)
            self._ip("link", "set", outside, "master", self.bridge, "up")
            self._ip("addr", "add", f"{self.addresses[i]}/24", "dev", inside, namespace=name)
            self._ip("link", "set", inside, "up", namespace=name)
            self._ip("link", "set", "lo", "up", namespace=name)

    def wrap(self, index: int, argv: list[str]) -> list[str]:
        """``argv`` run inside namespace ``index``."""
        return ["ip", "netns", "exec", self.names[index], *argv]

    def delete(self) -> None:
        if not self.created:
            return
        for name in self.names:  # takes the veth pairs with it
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        self.created = False


class RedisServer:
    """A redis-server of its own on ``port``, without persistence, that can be stopped and
    started again (the end-to-end tests take Redis away under a running job). Each start
    is an empty Redis, as a restarted server without persistence is."""

    def __init__(self, port: int, log_dir: Path, program: str = "redis-server"):
        self.port = port
        self.log_dir = log_dir
        self.program = program
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def available(program: str = "redis-server") -> bool:
        return _which(program)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            raise StackError(f"redis-server on port {self.port} is running already")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.program,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.log_dir),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StackError(
                    f"redis-server exited with code {self.proc.returncode}; see "
                    f"{self.log_dir / 'redis.log'}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise StackError(
            f"redis-server did not answer on port {self.port} within {timeout_s:.0f} s"
        )

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Stop the server (SIGKILL by default: nothing is saved either way)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        self.proc.wait(timeout=10)
        self.proc = None


def _which(program: str) -> bool:
    import shutil

    return shutil.which(program) is not None


@dataclass
class Stack:
    env: dict[str, str]  # DATABASE_URL, REDIS_URL and any overrides
    log_dir: Path
    port: int = 8000
    agents: int = 1
    agent_slots: int | list[int] = 4  # every agent's, or each agent's in order
    python: str = sys.executable
    progress: Callable[[str], None] = print
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    agent_env: dict[str, dict[str, str]] = field(default_factory=dict)  # by process name
    # Agents in network namespaces of their own (see NetworkNamespaces); the web server
    # then listens on the namespaces' bridge address.
    namespaces: NetworkNamespaces | None = None
    agent_argv: dict[str, list[str]] = field(default_factory=dict)  # by process name

    @property
    def host(self) -> str:
        return self.namespaces.host if self.namespaces is not None else "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        if self.namespaces is not None and "ALLOWED_HOSTS" not in self.env:
            # The agents (and the tests) reach the web server by the bridge's address.
            env["ALLOWED_HOSTS"] = f"localhost,127.0.0.1,{self.namespaces.host}"
        env.update(extra)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def manage(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(
            [self.python, str(ROOT / "manage.py"), *args],
            env=self._env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if check and result.returncode != 0:
            raise StackError(f"manage.py {' '.join(args)} failed:\n{result.stderr[-3000:]}")
        return result.stdout

    def _spawn(self, name: str, argv: list[str], **extra_env: str) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(
            argv,
            env=self._env(**extra_env),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.processes[name] = proc
        return proc

    def migrate(self) -> None:
        self.progress("applying database migrations …")
        self.manage("migrate", "--noinput")

    def start_web(self, *, check_port: bool = True) -> None:
        if check_port and not port_is_free(self.port, self.host):
            raise StackError(f"port {self.port} is in use; pass another port (e.g. PORT=8001).")
        self.progress(f"starting the web server on {self.url} …")
        self._spawn(
            "web",
            [
                self.python,
                "-m",
                "uvicorn",
                "controlplane.asgi:application",
                "--host",
                self.host,
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
        )
        self._wait_http(self.url + "/login/", "web", timeout_s=60)

    def start_celery(self) -> None:
        self.progress("starting the Celery worker and beat …")
        self._spawn(
            "celery-worker",
            [
                self.python,
                "-m",
                "celery",
                "-A",
                "controlplane",
                "worker",
                "--pool",
                "threads",
                "--concurrency",
                "4",
                "--loglevel",
                "INFO",
                "-Q",
                self._env().get("CELERY_QUEUE", "adaptrain"),
            ],
        )
        schedule = self.log_dir / "celerybeat-schedule"
        self._spawn(
            "celery-beat",
            [
                self.python,
                "-m",
                "celery",
                "-A",
                "controlplane",
                "beat",
                "--loglevel",
                "INFO",
                "--schedule",
                str(schedule),
            ],
        )

    def start_agents(
        self, join_token: str, state_root: Path, *, distinct_addresses: bool = False
    ) -> None:
        """Start the agents. With :attr:`namespaces` each agent (and so its workers) runs in
        a network namespace of its own, a host on a virtual network; otherwise, with
        ``distinct_addresses``, agent i's workers listen on 127.0.0.(i+2), so each agent is
        a host of its own as far as the workers can tell."""
        if self.namespaces is not None and self.namespaces.count < self.agents:
            raise StackError(f"{self.agents} agents need as many network namespaces")
        for i in range(self.agents):
            name = f"node-{i + 1}"
            if self.namespaces is not None:
                address = self.namespaces.addresses[i]
                self.agent_argv[f"agent-{name}"] = self.namespaces.wrap(
                    i, [self.python, "-m", "agent"]
                )
                where = f"network namespace {self.namespaces.names[i]}, address {address}"
            else:
                address = f"127.0.0.{i + 2}" if distinct_addresses else "127.0.0.1"
                where = f"workers on {address}"
            slots = self.agent_slots[i] if isinstance(self.agent_slots, list) else self.agent_slots
            self.progress(f"starting agent {name} ({slots} slots, {where}) …")
            # Everything here stops together (Ctrl-C, the end of a test run): the agents stop
            # their workers instead of leaving them to a restarted agent.
            self.agent_env[f"agent-{name}"] = {
                "AGENT_SERVER": self.url,
                "AGENT_JOIN_TOKEN": join_token,
                "AGENT_NAME": name,
                "AGENT_ADDRESS": address,
                "AGENT_SLOTS": str(slots),
                "AGENT_STATE_DIR": str(state_root / name),
                "AGENT_ON_EXIT": self._env().get("AGENT_ON_EXIT", "stop"),
            }
            self.restart_agent(f"agent-{name}")

    def restart_agent(self, name: str) -> subprocess.Popen:
        """Start agent process ``name`` (e.g. ``agent-node-1``) again, with the same state
        directory, after it stopped or was killed."""
        old = self.processes.get(name)
        if old is not None and old.poll() is None:
            raise StackError(f"{name} is still running (pid {old.pid})")
        return self._spawn(
            name, self.agent_argv.get(name, [self.python, "-m", "agent"]), **self.agent_env[name]
        )

    def _end(self, name: str, sig: int = signal.SIGTERM, grace_s: float = 10.0) -> None:
        """End process ``name`` (and its process group) with ``sig``, then SIGKILL after
        ``grace_s``; it is no longer one of :attr:`processes`."""
        proc = self.processes.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def restart_web(self, grace_s: float = 10.0) -> None:
        """Stop the web server and start it again on the same port."""
        self._end("web", grace_s=grace_s)
        # Connections of the old server may linger in TIME_WAIT on the port: the server
        # binds it anyway (SO_REUSEADDR), a plain bind as in port_is_free would not.
        self.start_web(check_port=False)

    def stop_celery(self, *, kill: bool = False, grace_s: float = 10.0) -> None:
        """Stop the Celery worker and beat: SIGTERM (a warm shutdown), or SIGKILL with
        ``kill``, as a crash or a lost machine would."""
        for name in ("celery-worker", "celery-beat"):
            self._end(name, signal.SIGKILL if kill else signal.SIGTERM, grace_s)

    def restart_celery(self, *, kill: bool = False, grace_s: float = 10.0) -> None:
        """Stop the Celery worker and beat (see :meth:`stop_celery`) and start them again."""
        self.stop_celery(kill=kill, grace_s=grace_s)
        self.start_celery()

    def _wait_http(self, url: str, name: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status < 500:
                        return
            except urllib.error.HTTPError as exc:
                if exc.code < 500:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise StackError(
            f"{name} did not answer at {url} within {timeout_s:.0f} s; see "
            f"{self.log_dir / (name + '.log')}"
        )

    def check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise StackError(f"{name} exited with code {proc.returncode}:\n{tail}")

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop everything this stack started: the agents first (SIGTERM: each stops or
        detaches its workers and sends its final reports while the web server still
        answers), then the web server and Celery; SIGKILL for what outlives ``grace_s``."""
        agents = {n: p for n, p in self.processes.items() if n.startswith("agent-")}
        others = {n: p for n, p in self.processes.items() if n not in agents}
        for group in (agents, others):
            self._stop_group(list(group.values()), grace_s)
        self.processes.clear()

    @staticmethod
    def _stop_group(procs: list[subprocess.Popen], grace_s: float) -> None:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def recreate_database(database_url: str, name: str) -> str:
    """Drop and create database ``name`` on the server of ``database_url`` (ending any
    session still on it) and return its URL: a test or benchmark run's database of its own."""
    import psycopg2
    from psycopg2 import sql

    parts = urlsplit(database_url)
    conn = psycopg2.connect(urlunsplit(parts._replace(path="/postgres")), connect_timeout=5)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                [name],
            )
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        conn.close()
    return urlunsplit(parts._replace(path=f"/{name}"))


class ApiClient(RestClient):
    """The REST client as the demo, the tests and the benchmarks use it: ``get``/``post``
    answer ``(status, body)`` whatever the status, so a test can assert on a 4xx."""

    def __init__(self, base_url: str, token: str):
        super().__init__(base_url, token, timeout_s=15.0)

    def get(self, path: str):
        return self.request("GET", path)

    def post(self, path: str, body=None):
        return self.request("POST", path, body)


DEMO_POLICY = {
    "name": "double batch size",
    "description": "Double the global batch size every 10000 steps, up to 512.",
    "rules": [
        {
            "name": "grow batch",
            "when": "steps_since_fired >= 10000",
            "action": {"type": "set_batch_size", "value": "batch_size * 2"},
            "bounds": {"max": 512},
        }
    ],
}


def demo_job(policy_id: int | None, *, steps: int = 150_000, workers: int = 2) -> dict:
    return {
        "name": "digits (adaptive batch size)",
        "entrypoint": "examples.digits",
        "hyperparameters": {"batch_size": 32, "lr": 0.05, "steps": steps, "log_every": 50},
        "workers": {"initial": workers, "min": 1, "max": workers},
        "strategy": "ssgd",
        "topology": "ring",
        "policy": policy_id,
    }


def ensure_user(stack: Stack, username: str, password: str) -> str:
    """Create (or reset) a staff user; return its API token."""
    return (
        stack.manage("ensure_user", "--username", username, "--password", password, "--staff")
        .strip()
        .splitlines()[-1]
    )
