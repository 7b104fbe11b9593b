"""The line protocol between the agent and the training workers it spawns.

Workers write JSON messages to stdout, one per line, prefixed with :data:`PREFIX`
(anything else on stdout is ordinary log output). The agent writes commands to a
worker's stdin as plain JSON lines.

Worker → agent: ``{"type": "metrics", "points": [{"name","step","value","rank"?,"time"}]}``,
``{"type": "applied", "id", "seq", "step"}``, ``{"type": "failed", "id", "seq", "error"}``.
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
ENV_PEERS = "ADAPTRAIN_PEERS"          # comma-separated host:port, index = rank
ENV_PARAMS = "ADAPTRAIN_PARAMS"        # JSON: hyperparameters, batch_size, lr, strategy, ...
ENV_FIRST_SEQ = "ADAPTRAIN_FIRST_SEQ"  # sequence number of the job's start command
ENV_ADDRESS = "ADAPTRAIN_ADDRESS"      # host:port this worker listens on (default: peers[rank])
ENV_CLUSTER_VERSION = "ADAPTRAIN_CLUSTER_VERSION"  # version of ENV_PEERS (default 0)
ENV_JOINING = "ADAPTRAIN_JOINING"      # "1": start as a warm standby and wait to be let in
