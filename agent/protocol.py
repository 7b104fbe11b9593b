"""The line protocol between the agent and the training workers it spawns.

Workers write JSON messages to stdout, one per line, prefixed with :data:`PREFIX`
(anything else on stdout is ordinary log output). The agent writes commands to a
worker's stdin as plain JSON lines.

Worker → agent: ``{"type": "metrics", "points": [{"name","step","value","rank"?,"time"}]}``,
``{"type": "applied", "id", "seq", "step"}``, ``{"type": "failed", "id", "seq", "error"}``.
Agent → worker: ``{"type": "command", "id", "seq", "action", "payload"}``.
"""

PREFIX = "@@adaptrain "

# Environment the agent sets for each worker.
ENV_JOB = "ADAPTRAIN_JOB"
ENV_RANK = "ADAPTRAIN_RANK"
ENV_PEERS = "ADAPTRAIN_PEERS"          # comma-separated host:port, index = rank
ENV_PARAMS = "ADAPTRAIN_PARAMS"        # JSON: hyperparameters, batch_size, lr, strategy, ...
ENV_FIRST_SEQ = "ADAPTRAIN_FIRST_SEQ"  # sequence number of the job's start command
