"""The agent's configuration, read once from ``AGENT_*`` environment variables.

A bad value stops the agent at start-up with a message that names the variable.
Without ``AGENT_ADDRESS`` the agent advertises the address of the interface it reaches
the control plane through, and refuses to start when that is a loopback address while
the control plane is not on loopback: other nodes could not reach its workers.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

from agent.daemon.gpus import GpuInventory, GpuSelectionError, discover, parse_setting
from agent.protocol import vocabulary as v

N = TypeVar("N", int, float)


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class AgentConfig:
    server: str  # control plane base URL, e.g. http://127.0.0.1:8000
    join_token: str | None  # exchanged for a node credential on first start
    name: str
    address: str  # host the node's workers listen on (reachable by peers); see _address
    slots: int
    state_dir: Path  # holds the node credential, jobs' state, worker sockets and logs
    heartbeat_s: float
    metrics_flush_s: float
    python: str  # interpreter that runs training workers
    labels: dict[str, str] = field(
        default_factory=dict
    )  # sent at enrolment; jobs select nodes by them
    # on SIGTERM/SIGINT: "detach" (workers train on), "stop" them, or "leave" (shrink
    # them away through the control plane first, then stop: Slurm allocations)
    on_exit: str = "detach"
    leave_timeout_s: float = 20.0  # AGENT_ON_EXIT=leave: how long workers get to leave
    orphan_grace_s: float = 600.0  # a worker without an agent this long stops itself
    # Workers' output (agent.daemon.logship, agent.daemon.logkeeper).
    log_flush_s: float = 0.2  # how often new lines are read and shipped
    log_rate_lines_s: int = 2000  # lines per second one worker may ship; more are dropped
    log_file_max_bytes: int = 16 << 20  # a worker's log file is rotated beyond this
    log_line_max_bytes: int = 16 << 10  # a longer line is cut there
    # GPUs found at start (AGENT_GPUS=all|none|0,2); see agent.daemon.gpus.
    gpus: GpuInventory = field(default_factory=GpuInventory)
    # Where the code of the jobs this node runs may come from (AGENT_CODE; see _code).
    code: tuple[str, ...] = tuple(v.CODE_KINDS)
    # Where the node credential is kept (AGENT_CREDENTIAL_FILE; default
    # state_dir/credential). On Kubernetes an init step puts it there from a Secret.
    credential_path: Path | None = None

    @property
    def ws_url(self) -> str:
        u = urlparse(self.server)
        scheme = "wss" if u.scheme == "https" else "ws"
        return f"{scheme}://{u.netloc}{u.path.rstrip('/')}/ws/agent/"

    @property
    def credential_file(self) -> Path:
        return self.credential_path or self.state_dir / "credential"


def _positive(env: Mapping[str, str], name: str, default: N, cast: type[N]) -> N:
    raw = env.get(name)
    if raw in (None, ""):
        return cast(default)
    try:
        value = cast(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid {cast.__name__}.") from None
    if value <= 0:
        raise ConfigError(f"{name}={raw!r} must be positive.")
    return value


def _at_least(env: Mapping[str, str], name: str, default: int, low: int) -> int:
    value = _positive(env, name, default, int)
    if value < low:
        raise ConfigError(f"{name}={value} must be at least {low}.")
    return value


def _labels(env: Mapping[str, str]) -> dict[str, str]:
    """``AGENT_LABELS="gpu=a100,zone=eu-1"``: the node's labels, which a job's node_selector
    matches. Entries are comma-separated ``key=value``; blanks around them are ignored."""
    raw = env.get("AGENT_LABELS") or ""
    labels: dict[str, str] = {}
    for entry in (e.strip() for e in raw.split(",")):
        if not entry:
            continue
        key, sep, value = (part.strip() for part in entry.partition("="))
        if not sep or not key or not value:
            raise ConfigError(
                f"AGENT_LABELS={raw!r}: {entry!r} is not key=value (use e.g. gpu=a100,zone=eu-1)."
            )
        if len(key) > 100 or len(value) > 200:
            raise ConfigError(
                f"AGENT_LABELS={raw!r}: {entry!r} is too long (names up to 100, values up to "
                f"200 characters)."
            )
        if key in labels:
            raise ConfigError(f"AGENT_LABELS={raw!r}: label {key!r} is given twice.")
        labels[key] = value
    return labels


def _on_exit(env: Mapping[str, str]) -> str:
    """``AGENT_ON_EXIT``: what SIGTERM/SIGINT does to the workers. ``detach`` (default)
    leaves them training, for a restarted agent to re-attach to; ``stop`` stops them and
    reports their jobs failed; ``leave`` (an agent whose machine goes away, as at the end of
    a Slurm allocation) has the control plane shrink its elastic jobs' workers away first,
    then stops what is left."""
    value = (env.get("AGENT_ON_EXIT") or "detach").strip().lower()
    if value not in ("detach", "stop", "leave"):
        raise ConfigError(
            f"AGENT_ON_EXIT={env.get('AGENT_ON_EXIT')!r} must be detach or stop (or leave, "
            f"for an agent whose machine goes away, as a Slurm allocation's)."
        )
    return value


def _code(env: Mapping[str, str]) -> tuple[str, ...]:
    """``AGENT_CODE=bundles,installed,examples``: the kinds of code this node runs. The
    default is all three: running its owner's code is what a job is for, and the control
    plane already decides per user who may send code bundles (the ``bundles.submit_bundle``
    permission); a node owner who does not want code from outside the node's own Python
    environment sets ``AGENT_CODE=installed,examples``."""
    raw = env.get("AGENT_CODE")
    if raw is None or not raw.strip():
        return tuple(v.CODE_KINDS)
    kinds = [k.strip().lower() for k in raw.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in v.CODE_KINDS]
    if unknown:
        raise ConfigError(
            f"AGENT_CODE={raw!r}: {', '.join(map(repr, unknown))} is not a kind of code; use a "
            f"comma-separated set of {', '.join(v.CODE_KINDS)}."
        )
    return tuple(k for k in v.CODE_KINDS if k in kinds)


def local_address_towards(host: str, port: int) -> str:
    """The local address of the interface this machine reaches ``host`` through. A UDP
    socket's ``connect()`` picks the route and the source address without sending a
    packet; ``getsockname()`` then names that address."""
    error: OSError = OSError(f"{host} has no address")
    for family, kind, proto, _, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM):
        with socket.socket(family, kind, proto) as probe:
            try:
                probe.connect(sockaddr)
            except OSError as exc:
                error = exc
                continue
            return str(probe.getsockname()[0])
    raise error


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) means this machine only."""
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _is_unspecified(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_unspecified
    except ValueError:
        return False


def _address(env: Mapping[str, str], server: str) -> str:
    """``AGENT_ADDRESS``, or the address of the interface towards the control plane."""
    explicit = (env.get("AGENT_ADDRESS") or "").strip()
    if explicit:
        return explicit
    parsed = urlparse(server)
    host = parsed.hostname or ""
    try:
        address = local_address_towards(
            host, parsed.port or (443 if parsed.scheme == "https" else 80)
        )
    except OSError as exc:
        raise ConfigError(
            f"AGENT_ADDRESS is unset and the address this node reaches AGENT_SERVER's host "
            f"{host!r} from cannot be worked out ({exc}): set AGENT_ADDRESS to the address "
            f"other nodes reach this one at."
        ) from None
    if _is_unspecified(address):
        raise ConfigError(
            f"AGENT_ADDRESS is unset and this node has no address of its own on the route to "
            f"the control plane ({host}): set AGENT_ADDRESS to the address other nodes reach "
            f"this one at."
        )
    if is_loopback(address) and not is_loopback(host):
        raise ConfigError(
            f"AGENT_ADDRESS is unset, and this node reaches the control plane ({host}) through "
            f"the loopback address {address}, which other nodes cannot reach: set "
            f"AGENT_ADDRESS to this node's address on the network the nodes share "
            f"(e.g. AGENT_ADDRESS=10.0.0.5)."
        )
    return address


def load_config(env: Mapping[str, str] | None = None) -> AgentConfig:
    import sys

    env = dict(os.environ if env is None else env)
    server = env.get("AGENT_SERVER", "http://127.0.0.1:8000").rstrip("/")
    parsed = urlparse(server)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(
            f"AGENT_SERVER={server!r} must be an http(s) URL such as http://127.0.0.1:8000."
        )
    name = env.get("AGENT_NAME") or socket.gethostname()
    state_dir = Path(env.get("AGENT_STATE_DIR") or Path.home() / ".adaptrain-agent" / name)
    try:
        inventory = discover(parse_setting(env.get("AGENT_GPUS")), env=env)
    except GpuSelectionError as exc:
        raise ConfigError(str(exc)) from exc
    # Slots default to one per GPU; a node without GPUs gets one per CPU.
    default_slots = len(inventory.gpus) or os.cpu_count() or 1
    return AgentConfig(
        server=server,
        join_token=env.get("AGENT_JOIN_TOKEN") or None,
        name=name,
        address=_address(env, server),
        slots=_positive(env, "AGENT_SLOTS", default_slots, int),
        state_dir=state_dir,
        heartbeat_s=_positive(env, "AGENT_HEARTBEAT_S", 5.0, float),
        metrics_flush_s=_positive(env, "AGENT_METRICS_FLUSH_S", 0.25, float),
        python=env.get("AGENT_PYTHON") or sys.executable,
        labels={**inventory.labels(), **_labels(env)},  # the user's AGENT_LABELS win
        on_exit=_on_exit(env),
        leave_timeout_s=_positive(env, "AGENT_LEAVE_TIMEOUT_S", 20.0, float),
        orphan_grace_s=_positive(env, "AGENT_ORPHAN_GRACE_S", 600.0, float),
        log_flush_s=_positive(env, "AGENT_LOG_FLUSH_S", 0.2, float),
        log_rate_lines_s=_positive(env, "AGENT_LOG_RATE_LINES_S", 2000, int),
        log_file_max_bytes=_at_least(env, "AGENT_LOG_FILE_MAX_BYTES", 16 << 20, 64 << 10),
        log_line_max_bytes=_at_least(env, "AGENT_LOG_MAX_LINE_BYTES", 16 << 10, 256),
        gpus=inventory,
        code=_code(env),
        credential_path=Path(env["AGENT_CREDENTIAL_FILE"])
        if env.get("AGENT_CREDENTIAL_FILE")
        else None,
    )
