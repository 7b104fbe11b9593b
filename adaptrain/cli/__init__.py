"""``adaptrain``: drive the control plane from a terminal over its REST API.

    adaptrain login --server http://127.0.0.1:8000 --token tok_...
    adaptrain jobs create --name digits --batch-size 32 --lr 0.05 --steps 5000 --workers 2
    adaptrain jobs list [--status running] [--search digits] [--json]
    adaptrain jobs watch 7
    adaptrain logs -f 7 [--worker 0] [--tail 100]
    adaptrain metrics 7 [-f] | adaptrain metrics 7 --export csv -o job7.csv
    adaptrain command 7 set_batch_size 64 && adaptrain commands 7
    adaptrain policies create gns.json && adaptrain policies attach 7 3
    adaptrain policies dry-run 3 --job 7
    adaptrain nodes list | adaptrain nodes drain node-2 | adaptrain join-tokens create --uses 4
    adaptrain run ./my_project --entrypoint train:main --workers 2 --batch-size 64 --lr 0.05
    adaptrain slurm up --nodes 2 --gres gpu:4 --time 8:00:00 | adaptrain slurm down 3
    eval "$(adaptrain completion bash)"

The server and token come from ``--server``/``--token``, else ``ADAPTRAIN_SERVER`` /
``ADAPTRAIN_TOKEN``, else the file ``adaptrain login`` wrote
(``~/.config/adaptrain/cli.json``, mode 0600). Every read takes ``--json`` for the API's
JSON. Exit status: 0 success; 1 the request was refused or failed (the reason on stderr);
2 bad arguments; 3 the control plane could not be reached; 4 a watched job ended failed
or cancelled; 130 interrupted. Standard library only.
"""

from __future__ import annotations

import argparse
import sys

from adaptrain.cli import (
    commands,
    completion,
    jobs,
    logs,
    metrics,
    nodes,
    policies,
    slurm,
    tokens,
)
from adaptrain.cli.common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_UNREACHABLE,
    CliError,
)
from adaptrain.rest import ApiError, Unreachable


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adaptrain",
        description=__doc__.splitlines()[0].replace("``", "") if __doc__ else None,
        epilog="Exit status: 0 success, 1 refused or failed, 2 bad arguments, 3 control plane "
        "unreachable, 4 a watched job did not succeed, 130 interrupted.",
    )
    parser.add_argument("--server", help="control plane URL (or ADAPTRAIN_SERVER)")
    parser.add_argument("--token", help="API token (or ADAPTRAIN_TOKEN)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (tokens, jobs, logs, metrics, commands, policies, nodes, slurm, completion):
        module.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "completion", False):
        print(completion.script(parser, args.shell), end="")
        return 0
    try:
        return int(args.func(args) or 0)
    except Unreachable as exc:
        print(f"adaptrain: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (CliError, ApiError) as exc:
        print(f"adaptrain: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
