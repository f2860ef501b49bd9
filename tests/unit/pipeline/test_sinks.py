"""Elasticsearch sink item handling, against a scripted twin of the bulk API (the real server is in
tests/integration)."""

from __future__ import annotations

import pytest

from taishi.pipeline.config import ElasticsearchSettings
from taishi.pipeline.sinks import ElasticsearchSink, SinkUnavailable
from taishi.pipeline.windows import Doc


class ScriptedBulk:
    """Answers bulk calls from a script of per-call item statuses."""

    def __init__(self, script):
        self.script = list(script)
        self.calls: list[int] = []

    def bulk(self, operations: bytes):
        n = operations.count(b"\n") // 2
        self.calls.append(n)
        statuses = self.script.pop(0) if self.script else [201] * n
        items = [
            {"index": {"status": s, **({"error": {"type": "x", "reason": "bad"}} if s >= 300 else {})}}
            for s in statuses
        ]
        return {"errors": any(s >= 300 for s in statuses), "items": items}


def _docs(n):
    return [Doc("taishi-entities-v1-bank-a-2026.11.25", str(i), {"i": i}) for i in range(n)]


def test_429_and_5xx_items_are_retried_and_4xx_returned_as_failures():
    client = ScriptedBulk([[201, 429, 400, 503], [201, 201]])
    sink = ElasticsearchSink(ElasticsearchSettings(retry_backoff_s=0.001), client=client)
    failures = sink.write(_docs(4))
    assert client.calls == [4, 2]  # only the 429 and the 503 were sent again
    assert [f.doc.id for f in failures] == ["2"] and "400" in failures[0].reason


def test_persistent_unavailability_raises_instead_of_dropping():
    client = ScriptedBulk([[503]] * 10)
    sink = ElasticsearchSink(ElasticsearchSettings(retry_backoff_s=0.001, max_retries=3), client=client)
    with pytest.raises(SinkUnavailable):
        sink.write(_docs(1))
    assert len(client.calls) == 4
