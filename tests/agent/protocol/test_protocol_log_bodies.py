"""The log batch an agent posts (agent.protocol.rest.LogBatch) names its streams from the
shared vocabulary, and a malformed one is refused naming the line and the field."""

from __future__ import annotations

import pytest

from agent.protocol import ProtocolError
from agent.protocol import rest as r
from agent.protocol import vocabulary as v


def test_the_streams_are_stdout_and_stderr_and_served_with_the_vocabulary():
    assert v.LOG_STREAMS == ("stdout", "stderr")
    assert all(v.LOG_STREAMS.descriptions[s].strip() for s in v.LOG_STREAMS)
    assert [s["name"] for s in v.vocabulary()["log_streams"]] == ["stdout", "stderr"]


def test_a_line_of_another_stream_cannot_be_built():
    with pytest.raises(ProtocolError, match="log line: stream must be one of stdout, stderr"):
        r.LogLine(rank=0, stream="stdin", time=1.0, text="x")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"batch_id": "b", "lines": []}, "log batch: missing field 'job'"),
        (
            {
                "batch_id": "b",
                "job": 1,
                "lines": [{"rank": 0, "stream": "out", "time": 1, "text": ""}],
            },
            "log batch, lines[0]: field 'stream' must be one of stdout, stderr, got 'out'",
        ),
        (
            {
                "batch_id": "b",
                "job": 1,
                "lines": [
                    {"rank": 0, "stream": "stdout", "time": 1, "text": "ok"},
                    {"rank": 0, "stream": "stdout", "time": 1, "text": 7},
                ],
            },
            "log batch, lines[1]: field 'text' must be a string, got 7",
        ),
        ({"batch_id": "b", "job": 1, "lines": {}}, "log batch: field 'lines' must be an array"),
    ],
)
def test_a_malformed_batch_is_refused_naming_the_line_and_field(data, message):
    with pytest.raises(ProtocolError) as refused:
        r.LogBatch.from_dict(data)
    assert str(refused.value).startswith(message)
