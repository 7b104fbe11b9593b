"""bench.tcp_ceiling: both loopback ceilings run and print one JSON line each."""

from __future__ import annotations

import json

import pytest

from bench import tcp_ceiling


def test_prints_oneway_and_twoway_lines(capsys: pytest.CaptureFixture[str]) -> None:
    assert tcp_ceiling.main(["--bytes", "256K", "--repeats", "3"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["op"] for line in lines] == ["tcp_oneway", "tcp_twoway"]
    assert all(line["bytes"] == 256 << 10 for line in lines)
    assert lines[0]["GBps"] > 0
    assert lines[1]["GBps_per_direction"] > 0


def test_refuses_an_unknown_mode() -> None:
    with pytest.raises(SystemExit):
        tcp_ceiling.main(["--mode", "sideways"])
