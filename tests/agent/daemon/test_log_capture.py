"""A worker's output on its node (agent.daemon.logkeeper, logs, logship), with real
processes: both streams in one file in the order written, each line with its stream and
time; overlong lines cut with a marker; the file rotated at its size cap with one
previous file kept, and a tail that follows the rotation losing and repeating nothing;
the per-worker rate limit with its "N lines dropped" note; and the batch in flight kept
on disk, so an agent that restarts ships it again under the same id and reads on from
where it ended."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from agent.daemon.logs import (
    Record,
    failure_excerpt,
    format_record,
    last_records,
    parse_record,
    start_file,
)
from agent.daemon.logship import JobLogs, Tail
from agent.daemon.processes import LocalWorker, LogLimits

WORKER = "tests.support.log_worker"


def launch(tmp_path: Path, script: dict, limits: LogLimits | None = None) -> LocalWorker:
    worker = LocalWorker(rank=0, port=0, address="127.0.0.1:0")
    worker.launch(
        job_id=1,
        state_dir=tmp_path / "state",
        python=sys.executable,
        entrypoint=WORKER,
        grace_s=5,
        # No agent channel: nothing here connects to it (the agent's relay is tested elsewhere).
        env={"LOG_WORKER_SCRIPT": json.dumps(script), "ADAPTRAIN_AGENT_SOCKET": ""},
        log_limits=limits or LogLimits(),
    )
    return worker


def wait_ended(worker: LocalWorker, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not (worker.gone() and worker.keeper_gone()):
        assert time.monotonic() < deadline, "the worker or its log keeper did not end"
        time.sleep(0.02)


def texts(records: list[Record]) -> list[tuple[str, str]]:
    return [(r.stream, r.text.decode()) for r in records]


def test_both_streams_go_to_one_file_in_order_each_line_with_its_stream_and_time(tmp_path):
    before = time.time()
    worker = launch(
        tmp_path,
        {"lines": 6, "rate": 50, "stderr_every": 3, "long_line": 5000, "exit_code": 3},
        LogLimits(line_max_bytes=1000),
    )
    wait_ended(worker)
    assert worker.process is not None and worker.process.returncode == 3
    records = last_records(worker.log_path)
    assert texts(records)[:6] == [
        ("stdout", "line 0 of worker 0"),
        ("stdout", "line 1 of worker 0"),
        ("stderr", "line 2 of worker 0"),
        ("stdout", "line 3 of worker 0"),
        ("stdout", "line 4 of worker 0"),
        ("stderr", "line 5 of worker 0"),
    ]
    cut = records[6].text.decode()
    assert cut == "x" * 1000 + " [adaptrain] line cut at 1000 bytes"
    assert len(records) == 7  # the rest of the long line was skipped, not kept as lines
    times = [r.time for r in records]
    assert before <= times[0] and times == sorted(times) and times[-1] <= time.time()


def test_a_line_left_without_its_line_break_is_written_as_a_part(tmp_path):
    # The keeper writes a dangling part after a while, and a stream's last bytes at its end.
    path = tmp_path / "partial.log"
    read_fd, write_fd = os.pipe()
    err_read, err_write = os.pipe()
    keeper = subprocess.Popen(
        [sys.executable, "-m", "agent.daemon.logkeeper", str(path), f"--stdout-fd={read_fd}",
         f"--stderr-fd={err_read}", "--max-bytes=100000", "--max-line=1000"],
        pass_fds=(read_fd, err_read),
    )  # fmt: skip
    os.close(read_fd)
    os.close(err_read)
    os.write(write_fd, b"50% ")
    time.sleep(1.6)
    os.write(write_fd, b"done\nno line break at the end")
    os.close(write_fd)
    os.close(err_write)
    assert keeper.wait(timeout=10) == 0
    records = last_records(str(path))
    assert [(r.text, r.partial) for r in records] == [
        (b"50% ", True),
        (b"done", False),
        (b"no line break at the end", False),
    ]


def test_the_file_is_rotated_at_its_cap_and_a_tail_follows_it_losing_nothing(tmp_path):
    limits = LogLimits(file_max_bytes=16 * 1024, line_max_bytes=1000)
    worker = launch(tmp_path, {"lines": 3000, "rate": 3000}, limits)
    assert worker.log_inode is not None
    tail = Tail(0, Path(worker.log_path), worker.log_inode)
    seen: list[str] = []
    notes = []
    while True:
        ended = worker.gone() and worker.keeper_gone()
        records, lost = tail.read(1 << 18)
        notes += [lost] if lost else []
        seen += [r.text.decode() for r in records]
        if ended and tail.caught_up:
            break
        time.sleep(0.005)
    assert notes == []
    assert seen == [f"line {i} of worker 0" for i in range(3000)]
    current = Path(worker.log_path)
    previous = current.with_name(current.name + ".1")
    assert previous.exists() and not current.with_name(current.name + ".2").exists()
    assert current.stat().st_size <= limits.file_max_bytes
    assert previous.stat().st_size <= limits.file_max_bytes


def _write(path: Path, lines: range) -> None:
    with open(path, "ab") as f:
        for i in lines:
            f.write(format_record(1000.0 + i, "stdout", b"n%d" % i))


def test_a_tail_left_behind_by_two_rotations_says_output_was_lost(tmp_path):
    path = tmp_path / "w.log"
    _write(path, range(0, 3))
    tail = Tail(0, path, path.stat().st_ino)
    assert [r.text for r in tail.read(1 << 16)[0]] == [b"n0", b"n1", b"n2"]
    _write(path, range(3, 5))
    os.replace(path, tmp_path / "w.log.1")  # rotated: the tail finishes the old file first
    _write(path, range(5, 7))
    records, lost = tail.read(1 << 16)
    assert [r.text for r in records] == [b"n3", b"n4"] and not lost
    records, lost = tail.read(1 << 16)
    assert [r.text for r in records] == [b"n5", b"n6"] and not lost and tail.caught_up
    _write(path, range(7, 9))
    for first in (9, 11):  # two rotations before the next read
        os.replace(path, tmp_path / "w.log.1")
        _write(path, range(first, first + 2))
    records, lost = tail.read(1 << 16)
    assert "some output was lost" in lost
    assert [r.text for r in records] == [b"n9", b"n10"]  # the oldest file left, then on
    assert [r.text for r in tail.read(1 << 16)[0]] == [b"n11", b"n12"]


def test_lines_beyond_the_rate_are_dropped_and_said_so_once_a_second(tmp_path):
    tail = Tail(3, tmp_path / "unused.log", 1)
    second = [Record(100.0 + i / 100, "stdout", b"a%d" % i) for i in range(10)]
    lines = tail.admit(second, rate=4, now=100.5)
    assert [line.text for line in lines] == ["a0", "a1", "a2", "a3"]
    # The next second's first line comes after the note about the previous one's drops.
    lines = tail.admit([Record(101.2, "stdout", b"b0")], rate=4, now=101.2)
    assert [line.stream for line in lines] == ["stderr", "stdout"] and lines[1].text == "b0"
    assert lines[0].text.startswith(
        "[adaptrain] 6 lines dropped: this worker wrote more than 4 lines/s"
    )
    assert lines[0].rank == 3
    # Dropped lines with nothing after them are reported once their second is well over.
    more = [Record(101.3, "stdout", b"b%d" % i) for i in range(1, 6)]
    assert len(tail.admit(more, rate=4, now=101.4)) == 3
    assert tail.admit([], rate=4, now=102.5) == []
    late = tail.admit([], rate=4, now=103.0)
    assert [line.text.split(":")[0] for line in late] == ["[adaptrain] 2 lines dropped"]


def test_a_worker_that_ended_ships_its_last_dropped_lines_after_all(tmp_path):
    tail = Tail(0, tmp_path / "unused.log", 1)
    flood = [Record(200.0, "stdout", b"f%d" % i) for i in range(300)]
    crash = [Record(200.5, "stderr", b"t%d" % i) for i in range(5)]
    shipped = tail.admit(flood, rate=10, now=200.2)
    assert len(shipped) == 10
    # It crashed within the same second: its traceback was dropped too, until it ended.
    assert tail.admit(crash, rate=10, now=200.6) == []
    last = tail.admit([], rate=10, now=200.7, final=True)
    assert last[0].text.startswith("[adaptrain] 95 lines dropped")
    assert [line.text for line in last[1:]] == [f"f{i}" for i in range(105, 300)] + [
        f"t{i}" for i in range(5)
    ]
    assert tail.dropped == 0


def test_text_is_cleaned_for_storage(tmp_path):
    record = parse_record(b"2025-06-01T12:00:00.500000Z stdout F caf\xc3\xa9 \xff nul\x00 crlf\r")
    assert record is not None and record.time == 1748779200.5
    tail = Tail(0, tmp_path / "x", 1)
    (line,) = tail.admit([record], rate=10, now=record.time)
    assert line.text == "café \ufffd nul\ufffd crlf"
    assert parse_record(b"not a record") is None


def test_the_batch_in_flight_survives_a_restart_and_reading_goes_on_after_it(tmp_path):
    path = tmp_path / "state" / "logs" / "job-1.rank-0.log"
    worker = LocalWorker(
        rank=0, port=0, address="x", log_path=str(path), log_inode=start_file(path)
    )
    _write(path, range(0, 10))
    state = tmp_path / "state" / "logs" / "job-1.shipping.json"
    first = JobLogs(1, state, rate=1000, read_bytes=200)  # a few lines per read
    first.collect([worker])
    assert first.inflight is not None
    assert [line.text for line in first.inflight.lines] == [f"n{i}" for i in range(10)]
    # The agent is killed before the batch is confirmed: the next one posts it again, as is.
    again = JobLogs(1, state, rate=1000, read_bytes=200)
    assert again.inflight == first.inflight
    again.inflight = None  # the control plane confirmed it
    again.save()
    _write(path, range(10, 15))
    again.collect([worker])
    assert again.inflight is not None and again.inflight.batch_id != first.inflight.batch_id
    assert [line.text for line in again.inflight.lines] == [f"n{i}" for i in range(10, 15)]
    assert JobLogs(1, state, rate=1000, read_bytes=200).inflight == again.inflight


def test_the_failure_excerpt_quotes_the_traceback_of_a_crash_at_import(tmp_path, monkeypatch):
    (tmp_path / "user_code.py").write_text("def broken(:\n    pass\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    worker = launch(tmp_path, {"import": "user_code", "lines": 3})
    wait_ended(worker)
    assert worker.process is not None and worker.process.returncode == 1
    excerpt = failure_excerpt([(0, worker.log_path)])
    assert excerpt.startswith("[rank 0] Traceback (most recent call last):")
    assert "[rank 0] SyntaxError" in excerpt and "user_code.py" in excerpt
