"""The wire contracts between adaptrain's deployables, standard library only.

The control plane, the node agent and the training workers all build and parse their
messages here: :mod:`agent.protocol.vocabulary` (the shared words: strategies, actions,
metric names, …), :mod:`agent.protocol.worker` (the JSON lines between an agent and the
workers it spawns), :mod:`agent.protocol.control` (the frames on the agent's WebSocket
``/ws/agent/``), :mod:`agent.protocol.rest` (the bodies of the agent's REST calls) and
:mod:`agent.protocol.process` (how an agent and its workers find each other on a node).
This module holds what they share: the protocol number, the environment the agent sets
for each worker, the stdio line prefix and the one error a malformed message raises.
docs/protocols.md describes every link, frame and guarantee in prose.
"""

# The protocol's number: raised when a frame changes incompatibly (a field removed or
# retyped, a meaning changed); adding an optional field or a frame type keeps it.
PROTOCOL_VERSION = 1

# The agent's exit status when the control plane refused it for good — its node was
# revoked, its enrolment was refused (join token, name) or its protocol is not spoken —
# so that a supervisor does not restart it in a loop (the systemd unit's
# RestartPreventExitStatus, docs/agent-install.md). An admin must act first.
EXIT_REFUSED = 78  # EX_CONFIG in sysexits.h

# Over stdio (no ENV_AGENT_SOCKET), a worker's protocol lines on stdout start with this.
PREFIX = "@@adaptrain "

# Environment the agent sets for each worker.
ENV_JOB = "ADAPTRAIN_JOB"
ENV_RANK = "ADAPTRAIN_RANK"
ENV_PEERS = "ADAPTRAIN_PEERS"  # comma-separated host:port, index = rank
ENV_PARAMS = "ADAPTRAIN_PARAMS"  # JSON: hyperparameters, batch_size, lr, strategy, ...
ENV_FIRST_SEQ = "ADAPTRAIN_FIRST_SEQ"  # sequence number of the job's start command
ENV_ADDRESS = "ADAPTRAIN_ADDRESS"  # host:port this worker listens on (default: peers[rank])
ENV_CLUSTER_VERSION = "ADAPTRAIN_CLUSTER_VERSION"  # version of ENV_PEERS (default 0)
# the job run's fabric secret (hex), from the agent only; never logged or shown
ENV_FABRIC_SECRET = "ADAPTRAIN_FABRIC_SECRET"
ENV_JOINING = "ADAPTRAIN_JOINING"  # "1": start as a warm standby and wait to be let in
ENV_AGENT_SOCKET = "ADAPTRAIN_AGENT_SOCKET"  # Unix socket path the worker listens on for its agent
ENV_AGENT_GRACE_S = "ADAPTRAIN_AGENT_GRACE_S"  # seconds without an agent before the worker stops
ENV_GPU = "ADAPTRAIN_GPU"  # UUID of the GPU the worker owns (also its CUDA_VISIBLE_DEVICES)


class ProtocolError(ValueError):
    """A message that is not a valid frame: the text names the frame and the bad field."""
