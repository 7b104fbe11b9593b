"""What an admin runs to add a node, from one template: the ``pip install`` for the kind
of node, the agent's environment file, its systemd unit and the commands that install
and start it (pure; no ORM).

The nodes page's *Add a node* shows it (``POST /api/v1/join-tokens/`` answers it with
the new token filled in), docs/agent-install.md shows it (a test checks that the doc
matches), and a test checks the unit with ``systemd-analyze verify``.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.protocol import EXIT_REFUSED

# Kind of node → the package extras it installs (pyproject.toml).
EXTRAS = {"cpu": "node,cpu", "gpu": "node,gpu"}

USER = "adaptrain"
VENV = "/opt/adaptrain"
EXEC_START = f"{VENV}/bin/adaptrain-agent"
STATE_DIR = "/var/lib/adaptrain-agent"  # systemd's StateDirectory=adaptrain-agent
ENV_FILE = "/etc/adaptrain/agent.env"
UNIT_FILE = "/etc/systemd/system/adaptrain-agent.service"
UNIT = "adaptrain-agent"
DOC = "docs/agent-install.md"


def pip_install(kind: str) -> str:
    """The install of the agent for a ``cpu`` or ``gpu`` node."""
    return f"sudo {VENV}/bin/pip install 'adaptrain[{EXTRAS[kind]}]'"


def install_commands(kind: str) -> str:
    """A user of its own for the agent and its workers, and a virtual environment."""
    return "\n".join(
        [
            f"sudo useradd --system --home-dir {STATE_DIR} --shell /usr/sbin/nologin {USER}",
            f"sudo python3 -m venv {VENV}",
            pip_install(kind),
            f"sudo install -d -m 0755 {ENV_FILE.rsplit('/', 1)[0]}",
        ]
    )


def env_file(*, server: str, join_token: str, name: str = "") -> str:
    """The agent's environment file (``EnvironmentFile=`` of the unit; every ``AGENT_*``
    setting is in docs/configuration.md)."""
    name_line = (
        f"AGENT_NAME={name}"
        if name
        else "# AGENT_NAME=gpu-node-1  (unset: this machine's host name)"
    )
    return f"""\
# adaptrain node agent: save as {ENV_FILE} (mode 0600); {UNIT}.service reads it.
# Every AGENT_* setting is described in docs/configuration.md.
AGENT_SERVER={server}
# Used once, at the first start; the node's credential is then kept in AGENT_STATE_DIR.
AGENT_JOIN_TOKEN={join_token}
# The node's name, unique among the nodes.
{name_line}
AGENT_STATE_DIR={STATE_DIR}
# The address other nodes reach this node's workers on (unset: the address of the
# interface this machine reaches the control plane through).
# AGENT_ADDRESS=10.0.0.5
# Workers at once (unset: one per GPU the agent may use, AGENT_GPUS; without GPUs one per CPU).
# AGENT_SLOTS=4
# Labels jobs select nodes by (node_selector).
# AGENT_LABELS=zone=eu-1
"""


def systemd_unit(*, exec_start: str = EXEC_START, env_file_path: str = ENV_FILE) -> str:
    """The agent's systemd unit. Why each setting is there is in docs/agent-install.md."""
    return f"""\
# adaptrain node agent: save as {UNIT_FILE}.
# {DOC} says why each setting is here.
[Unit]
Description=adaptrain node agent
Wants=network-online.target
After=network-online.target

[Service]
Type=exec
User={USER}
Group={USER}
EnvironmentFile={env_file_path}
ExecStart={exec_start}
StateDirectory={STATE_DIR.rsplit("/", 1)[1]}
StateDirectoryMode=0700
# Workers run in sessions of their own and outlive the agent: stopping or restarting
# the agent ends only the agent, and the next one re-attaches to its workers.
KillMode=process
TimeoutStopSec=60
Restart=on-failure
RestartSec=5
# {EXIT_REFUSED}: the node was revoked, or its enrolment or protocol refused; an admin must act.
RestartPreventExitStatus={EXIT_REFUSED}

[Install]
WantedBy=multi-user.target
"""


def start_commands() -> str:
    return "\n".join(
        [
            f"sudo chmod 0600 {ENV_FILE}",
            "sudo systemctl daemon-reload",
            f"sudo systemctl enable --now {UNIT}",
            f"journalctl -u {UNIT} -f",
        ]
    )


@dataclass(frozen=True)
class NodeSetup:
    """Everything the *Add a node* page shows, in the order it is done."""

    kind: str
    install: str
    env_file: str
    env_file_path: str
    unit: str
    unit_path: str
    start: str
    doc: str

    def to_dict(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "install": self.install,
            "env_file": self.env_file,
            "env_file_path": self.env_file_path,
            "unit": self.unit,
            "unit_path": self.unit_path,
            "start": self.start,
            "doc": self.doc,
        }


def node_setup(*, server: str, join_token: str, kind: str, name: str = "") -> NodeSetup:
    """The setup of a ``kind`` (cpu or gpu) node enrolling at ``server`` with ``join_token``."""
    if kind not in EXTRAS:
        raise ValueError(f"kind must be one of {', '.join(EXTRAS)}, got {kind!r}")
    return NodeSetup(
        kind=kind,
        install=install_commands(kind),
        env_file=env_file(server=server, join_token=join_token, name=name),
        env_file_path=ENV_FILE,
        unit=systemd_unit(),
        unit_path=UNIT_FILE,
        start=start_commands(),
        doc=DOC,
    )
