"""Print the operations doc's fault table (markdown) from the JSON lines the fault tests
append to ``FAULT_REPORT`` (tests/faults/): ``python -m bench.faults_table
bench/results/faults.jsonl``. The last row per fault and downtime wins."""

from __future__ import annotations

import json
import sys


def main(path: str) -> None:
    rows: dict[tuple[str, float], dict] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                rows[(row["fault"], round(row["downtime_s"]))] = row
    print("| fault | downtime | outcome | stall | commands | metric points |")
    print("|---|---|---|---|---|---|")
    for row in rows.values():
        print(
            f"| {row['fault']} | {row['downtime_s']} s | {row['outcome']} | {row['stall_s']} s "
            f"| {row['commands']} | {row['points']} |"
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/results/faults.jsonl")
