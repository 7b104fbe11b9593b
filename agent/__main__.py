"""``python -m agent`` (``adaptrain-agent``): run the node agent (configuration from
``AGENT_*`` variables). ``adaptrain-agent enrol-kubernetes`` is the init step of the
Kubernetes DaemonSet instead (:mod:`agent.daemon.kubernetes_enrol`)."""

import logging
import sys

from agent.daemon.config import ConfigError, load_config
from agent.daemon.preflight import PreflightError, check_environment


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s agent %(levelname)s %(message)s")
    if sys.argv[1:2] == ["enrol-kubernetes"]:
        from agent.daemon.kubernetes_enrol import main as enrol_kubernetes

        sys.exit(enrol_kubernetes())
    if sys.argv[1:2] in (["-h"], ["--help"]):
        print(
            "usage: adaptrain-agent [enrol-kubernetes]\n\n"
            "Runs the node agent; its settings are AGENT_* environment variables\n"
            "(docs/configuration.md, docs/agent-install.md). enrol-kubernetes is the\n"
            "Kubernetes DaemonSet's init step (docs/kubernetes.md)."
        )
        return
    if sys.argv[1:]:
        sys.exit(
            f"agent: unknown arguments {' '.join(sys.argv[1:])!r}: the agent is configured "
            f"by AGENT_* variables; the one subcommand is enrol-kubernetes"
        )
    try:
        config = load_config()
        check_environment()
    except (ConfigError, PreflightError) as exc:
        sys.exit(f"agent: {exc}")
    from agent.daemon.agent import run

    sys.exit(run(config))


if __name__ == "__main__":
    main()
