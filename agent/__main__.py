"""``python -m agent``: run the node agent (configuration from ``AGENT_*`` variables)."""

import logging
import sys

from agent.daemon.config import ConfigError, load_config
from agent.daemon.preflight import PreflightError, check_environment


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s agent %(levelname)s %(message)s")
    try:
        config = load_config()
        check_environment()
    except (ConfigError, PreflightError) as exc:
        sys.exit(f"agent: {exc}")
    from agent.daemon.agent import run

    sys.exit(run(config))


if __name__ == "__main__":
    main()
