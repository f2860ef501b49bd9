from datetime import UTC, datetime

from taishi.pipeline.retention import expired


def test_only_taishi_day_indices_older_than_retention():
    names = [
        "taishi-entities-v1-bank-a-2026.08.01",
        "taishi-entities-v1-bank-a-2026.11.20",
        "taishi-flows-v1-insurer-b-2026.08.26",
        "taishi-flows-v1-insurer-b-2026.08.27",
        "other-2020.01.01",
        "taishi-entities-v1-bank-a",
    ]
    got = expired(names, 90, datetime(2026, 11, 25, tzinfo=UTC))
    assert got == ["taishi-entities-v1-bank-a-2026.08.01", "taishi-flows-v1-insurer-b-2026.08.26"]
