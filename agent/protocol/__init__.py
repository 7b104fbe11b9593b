"""The line protocol between the agent and the training workers it spawns.

Messages are JSON objects, one per line, over one of two channels:

* **socket** (what the agent uses): the agent names a Unix-domain socket path in
  ``ENV_AGENT_SOCKET``; the worker listens there and accepts one agent connection at a
  time (:mod:`agent.runtime.channel`). Lines carry no prefix. The connection may drop and a new
  agent connect (the agent restarted): meanwhile the worker trains on and buffers its
  messages, and flushes them in order to the next agent (metrics may be dropped, oldest
  first, beyond a limit: reported as ``{"type": "dropped", "metrics": n}``; nothing else
  is). With no agent for ``ENV_AGENT_GRACE_S`` seconds the worker stops. Its stdout and
  stderr are plain log output (the agent sends them to a file).
* **stdio** (without ``ENV_AGENT_SOCKET``: :mod:`agent.local`, tests): workers write
  messages to stdout prefixed with :data:`PREFIX` (anything else on stdout is ordinary
  log output) and read the agent's from stdin; the end of stdin means the agent is gone.

Delivery is at-least-once, application exactly once: a worker takes a command only
once by its ``seq`` (a redelivered command it already applied is answered again with
the same ``applied``/``failed`` reply, one still waiting is ignored) and ignores a
``cluster`` message for a version it already knows. After an agent restart the new
agent sends the latest ``cluster`` message and the commands it has not seen answered.

Worker → agent: ``{"type": "metrics", "points": [{"name","step","value","rank"?,"time"}]}``,
``{"type": "applied", "id", "seq", "step"}``, ``{"type": "failed", "id", "seq", "error"}``;
over the socket, started by ``python -m agent.runtime.launcher``, last of all ``{"type": "exit",
"code"}`` (so an agent that is not the worker's parent learns its exit status).
Agent → worker: ``{"type": "command", "id", "seq", "action", "payload"}``.

Elastic membership (cluster-spec versions). A worker is identified by the address it
listens on (``ENV_ADDRESS``, ``host:port``); its rank in a version is its index in that
version's ``members``. The job starts at version ``ENV_CLUSTER_VERSION`` with members
``ENV_PEERS``.

* Agent → worker: ``{"type": "cluster", "version": V, "members": [...]}`` announces a
  new version. Running workers switch to the highest version every one of them has
  received, at the same step boundary (agreed by consensus); a worker whose address is
  not in the new members leaves: it reports ``left`` and exits with status 0. After a
  collective fails (a peer died), survivors wait up to ``COLLECTIVE_TIMEOUT`` for a
  version above the failed one and continue in it from the new rank 0's state.
* A worker started with ``ENV_JOINING=1`` (a warm standby) imports TensorFlow, builds
  its model, reports ``standby`` and waits for a version listing its address; it then
  receives weights, optimizer state, step, data position and parameters from rank 0.
* Worker → agent: ``{"type": "standby", "address"}``; ``{"type": "rescaled", "version",
  "rank", "size", "step", "paused_s"}`` once it trains in a new version (``paused_s``: how
  long training stood still for the change); ``{"type": "left", "version", "step"}``;
  ``{"type": "peer_failed", "version", "error"}`` when a collective failed and it waits
  for the next version.
"""

PREFIX = "@@adaptrain "

# Environment the agent sets for each worker.
ENV_JOB = "ADAPTRAIN_JOB"
ENV_RANK = "ADAPTRAIN_RANK"
ENV_PEERS = "ADAPTRAIN_PEERS"  # comma-separated host:port, index = rank
ENV_PARAMS = "ADAPTRAIN_PARAMS"  # JSON: hyperparameters, batch_size, lr, strategy, ...
ENV_FIRST_SEQ = "ADAPTRAIN_FIRST_SEQ"  # sequence number of the job's start command
ENV_ADDRESS = "ADAPTRAIN_ADDRESS"  # host:port this worker listens on (default: peers[rank])
ENV_CLUSTER_VERSION = "ADAPTRAIN_CLUSTER_VERSION"  # version of ENV_PEERS (default 0)
ENV_JOINING = "ADAPTRAIN_JOINING"  # "1": start as a warm standby and wait to be let in
ENV_AGENT_SOCKET = "ADAPTRAIN_AGENT_SOCKET"  # Unix socket path the worker listens on for its agent
ENV_AGENT_GRACE_S = "ADAPTRAIN_AGENT_GRACE_S"  # seconds without an agent before the worker stops
