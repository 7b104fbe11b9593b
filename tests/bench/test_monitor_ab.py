"""bench.monitor_ab: the monitor alternates on and off in pairs of segments within one
run, and a short real run gives one row with the overhead over its pairs."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from bench import monitor_ab  # noqa: E402
from bench._monitor_ab_worker import monitored  # noqa: E402


def test_segments_after_warm_up_pair_one_monitored_with_one_not_in_alternating_order():
    assert monitored(0)  # warm-up, as the job default
    pairs = [(monitored(first), monitored(first + 1)) for first in range(1, 17, 2)]
    assert all(a != b for a, b in pairs)
    assert [a for a, _ in pairs] == [True, False] * 4  # on first, then off first, …


def test_a_short_run_prints_one_row_with_the_overhead_of_its_pairs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--workers", "2", "--segments", "5", "--segment-steps", "40", "--json"]
    assert monitor_ab.main(argv) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (row["model"], row["workers"], row["pairs"]) == ("digits", 2, 2)
    assert row["median_step_s_monitored"] > 0 and row["median_step_s_unmonitored"] > 0
    assert -1 < row["overhead"] < 1
    low, median, high = row["overhead_quartiles"]
    assert low <= median <= high


@pytest.mark.parametrize(
    "argv",
    [
        ["--segment-steps", "30"],  # not a whole number of digits' 20-step windows
        ["--workers", "1"],
        ["--segments", "2"],
        ["--models", "resnet"],
    ],
)
def test_refuses_what_it_cannot_measure(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        monitor_ab.main(argv)
