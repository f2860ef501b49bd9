"""Event-time windows: sums, lateness, and the replay guarantee the Kafka pipeline relies on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from taishi.pipeline import wire
from taishi.pipeline.baselines import Baselines
from taishi.pipeline.config import Institution, Settings
from taishi.pipeline.embedded import MemoryBus
from taishi.pipeline.enrich import Enricher
from taishi.pipeline.processor import PartitionProcessor, watermark_from_metadata
from taishi.pipeline.simulator import SectorSpec, simulate
from taishi.pipeline.windows import EntityWindows


@pytest.fixture(scope="module")
def stream():
    settings = Settings(window={"size_s": 60, "allowed_lateness_s": 10})
    cols = simulate(
        SectorSpec(institutions=2, sensors_per_institution=2, flows=6_000, duration_s=600, seed=11)
    )
    # ~10 s slices: about 240 messages, a few dozen windows
    bus = MemoryBus(1)
    for key, value, hdrs in wire.sensor_batches(cols, 400, max_span_ms=10_000):
        bus.send(settings.kafka.flows_topic, key, value, hdrs)
    return settings, bus.read(settings.kafka.flows_topic, 0)


def _run(settings, msgs, step, start=0, wm=None, stop=None, checkpoint=None):
    """Process msgs[start:stop] in polls of `step`; return the processor and the docs by id.

    `checkpoint` (state-topic records) restores baselines, as the Kafka runner does on assignment.
    """
    baselines = Baselines()
    if checkpoint:
        baselines.restore(checkpoint)
    kwargs = {} if wm is None else {"watermark_ms": wm}
    proc = PartitionProcessor(settings, Enricher(settings, indicators={}), 0, baselines=baselines, **kwargs)
    docs = {}
    for i in range(start, stop if stop is not None else len(msgs), step):
        for d in proc.process(msgs[i : min(i + step, stop or len(msgs))])[0]:
            docs[d.id] = d.source
    return proc, docs


def test_batch_cuts_do_not_change_documents(stream):
    settings, msgs = stream
    p1, a = _run(settings, msgs, 3)
    p2, b = _run(settings, msgs, 7)
    a.update({d.id: d.source for d in p1.flush()})
    b.update({d.id: d.source for d in p2.flush()})
    assert a == b and len(a) > 50


@pytest.mark.parametrize(("crash_at", "state_lead"), [(3, 0), (40, 0), (101, 25), (170, 40)])
def test_replay_from_commit_rebuilds_exactly_the_uninterrupted_documents(stream, crash_at, state_lead):
    settings, msgs = stream
    ref_proc, ref = _run(settings, msgs, 5)
    ref.update({d.id: d.source for d in ref_proc.flush()})

    # Run until a crash after message `crash_at`; what was written stays written (ES), then restart
    # from the committed offset with the committed watermark and the checkpointed baselines, as the Kafka
    # runner does. With `state_lead`, the checkpoint is newer than the commit (the process died between
    # writing the state topic and committing offsets).
    first, written = _run(settings, msgs, 5, stop=crash_at)
    offset, meta = first.commit_offset(), first.commit_metadata()
    assert offset is not None and offset <= crash_at
    ahead, more = _run(settings, msgs, 5, stop=min(len(msgs), crash_at + state_lead))
    written.update(more)
    checkpoint = (ahead if state_lead else first).windows.baselines.take_dirty()
    second, more = _run(
        settings, msgs, 5, start=offset, wm=watermark_from_metadata(meta), checkpoint=checkpoint
    )
    written.update(more)
    written.update({d.id: d.source for d in second.flush()})
    assert written == ref
    assert any(d["taishi"]["baseline"]["windows"] > 2 for d in ref.values())


def test_late_records_are_counted_not_silently_dropped():
    w = EntityWindows(size_s=60, allowed_lateness_s=0)
    ts = pd.to_datetime(
        np.array([0, 61_000, 1_000, 125_000]) + 1_795_000_000_000, unit="ms"
    )  # the 1 s record arrives after window 0 closed
    df = pd.DataFrame(
        {
            "@timestamp": ts,
            "organization.id": "bank-a",
            "observer.name": "s",
            "source.ip": "10.0.0.1",
            "destination.ip": "8.8.8.8",
            "destination.port": 53,
            "network.iana_number": 17,
            "source.bytes": [1, 2, 4, 8],
            "destination.bytes": 1,
            "source.packets": 1,
            "destination.packets": 1,
            "taishi.source.internal": True,
            "taishi.destination.internal": False,
        }
    )
    w.add(df, np.arange(4))
    assert w.late_records == 1
    docs = w.close_ready() + w.close_all()
    assert [d.source["taishi"]["behaviour"]["bytes_out"] for d in docs] == [1, 2, 8]


def test_same_address_in_two_institutions_stays_two_entities():
    settings = Settings(institutions=[Institution(id="bank-a"), Institution(id="bank-b")])
    cols = {
        "@timestamp": np.array([1_795_000_001_000, 1_795_000_002_000]),
        "organization.id": np.array(["bank-a", "bank-b"], dtype=object),
        "source.ip": np.array(["10.0.0.1", "10.0.0.1"], dtype=object),
        "destination.ip": np.array(["1.1.1.1"] * 2, dtype=object),
        "network.iana_number": np.array([6, 6]),
        "source.bytes": np.array([10, 20]),
    }
    bus = MemoryBus(1)
    for key, value, hdrs in wire.sensor_batches(cols, 10):
        bus.send("t", key, value, hdrs)
    proc = PartitionProcessor(settings, Enricher(settings, indicators={}), 0)
    proc.process(bus.read("t", 0))
    docs = proc.flush()
    got = sorted((d.source["organization"]["id"], d.source["taishi"]["behaviour"]["bytes_out"]) for d in docs)
    assert got == [("bank-a", 10), ("bank-b", 20)]
    assert len({d.id for d in docs}) == 2 and all(
        d.index.startswith("taishi-entities-v1-bank-") for d in docs
    )
