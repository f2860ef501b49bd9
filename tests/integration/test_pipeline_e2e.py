"""Flows in Kafka become entity documents in Elasticsearch, with sums equal to pandas on the input."""

from __future__ import annotations

import numpy as np
import pandas as pd

from taishi.pipeline.kafka_io import produce_columns
from taishi.pipeline.runner import KafkaPipeline, ensure_topics
from taishi.pipeline.simulator import SectorSpec, simulate
from taishi.pipeline.sinks import ElasticsearchSink

from .conftest import es_docs, tag_orgs


def expected_windows(cols: dict[str, np.ndarray], size_s: int) -> pd.DataFrame:
    """Per (org, sensor, internal host, window) sums straight from the input, without the pipeline."""
    df = pd.DataFrame(cols)
    df["w"] = df["@timestamp"] // (size_s * 1000) * (size_s * 1000)
    internal = lambda s: s.str.startswith("10.")  # noqa: E731  the simulator's internal space
    out = df[internal(df["source.ip"])].rename(columns={"source.ip": "ip"})
    inn = df[internal(df["destination.ip"])].rename(columns={"destination.ip": "ip"})
    a = out.groupby(["organization.id", "observer.name", "ip", "w"]).agg(
        bytes_out=("source.bytes", "sum"),
        bytes_in=("destination.bytes", "sum"),
        connections_out=("ip", "size"),
    )
    b = inn.groupby(["organization.id", "observer.name", "ip", "w"]).agg(
        b_out=("destination.bytes", "sum"), b_in=("source.bytes", "sum"), connections_in=("ip", "size")
    )
    t = a.join(b, how="outer").fillna(0)
    t["bytes_out"] += t.pop("b_out")
    t["bytes_in"] += t.pop("b_in")
    return t.astype("int64").sort_index()


def test_100k_flows_to_entity_documents_with_exact_sums(settings, es, tag):
    cols = tag_orgs(simulate(SectorSpec(institutions=3, flows=100_000, duration_s=1800, seed=5)), tag)
    ensure_topics(settings)
    assert produce_columns(settings, cols) == 100_000

    sink = ElasticsearchSink(settings.elasticsearch)
    status = KafkaPipeline(settings, sink).run(idle_exit_s=6)
    assert status.counters["records_valid"] == 100_000 and status.counters["dead_letters"] == 0

    docs = es_docs(es, f"taishi-entities-v1-{tag}-*")
    got = (
        pd.DataFrame(
            [
                {
                    "organization.id": d["organization"]["id"],
                    "observer.name": d["observer"]["name"],
                    "ip": d["taishi"]["entity"]["ip"],
                    "w": int(pd.Timestamp(d["event"]["start"]).timestamp() * 1000),
                    **{
                        k: d["taishi"]["behaviour"][k]
                        for k in ("bytes_out", "bytes_in", "connections_out", "connections_in")
                    },
                }
                for d in docs.values()
            ]
        )
        .set_index(["organization.id", "observer.name", "ip", "w"])
        .sort_index()
    )
    want = expected_windows(cols, settings.window.size_s)
    assert len(got) == len(want) > 100
    pd.testing.assert_frame_equal(got[want.columns], want, check_dtype=False)
    # Totals, once more, across everything.
    assert got["bytes_out"].sum() + got["bytes_in"].sum() == want["bytes_out"].sum() + want["bytes_in"].sum()
