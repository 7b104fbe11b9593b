"""The node daemon (``python -m agent``): enrols with the control plane, keeps the command
channel, spawns and re-attaches workers, and ships their metrics. It never imports the
training runtime (:mod:`agent.runtime`): workers are separate processes it talks to over
the lines of :mod:`agent.protocol.worker`."""
