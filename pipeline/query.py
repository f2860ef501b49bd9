"""Analyst queries answered the same way by Elasticsearch and by the embedded SQLite store."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from taishi.pipeline import contract

_SUM_FIELDS = ("bytes_out", "bytes_in", "connections_out", "connections_in", "failed_connections_out")


@dataclass(slots=True)
class EntitySummary:
    """Totals of one entity (institution + host) over the stored windows."""

    org: str
    ip: str
    windows: int
    bytes_out: int
    bytes_in: int
    connections_out: int
    connections_in: int
    failed_connections_out: int
    max_distinct_peers: int


class Store(Protocol):
    def entity_summaries(
        self, org: str | None = None, ip: str | None = None, limit: int = 20
    ) -> list[EntitySummary]: ...
    def count(self, family: str, org: str | None = None) -> int: ...


class SqliteStore:
    """Queries over the embedded store written by ``sinks.SqliteSink``."""

    def __init__(self, path: Path | str) -> None:
        if not Path(path).exists():
            raise FileNotFoundError(
                f"local store {path} does not exist: run `taishi demo` or `taishi replay` first"
            )
        self._db = sqlite3.connect(path)

    def entity_summaries(
        self, org: str | None = None, ip: str | None = None, limit: int = 20
    ) -> list[EntitySummary]:
        where, args = ["family = ?"], [contract.ENTITIES_INDEX]
        if org:
            where.append("org = ?")
            args.append(org)
        if ip:
            where.append("json_extract(doc, '$.taishi.entity.ip') = ?")
            args.append(ip)
        sums = ", ".join(f"SUM(json_extract(doc, '$.taishi.behaviour.{f}'))" for f in _SUM_FIELDS)
        sql = (
            f"SELECT org, json_extract(doc, '$.taishi.entity.ip') AS ip, COUNT(*), {sums}, "
            f"MAX(json_extract(doc, '$.taishi.behaviour.distinct_peers')) FROM docs WHERE {' AND '.join(where)} "
            f"GROUP BY org, ip ORDER BY 4 DESC, org, ip LIMIT ?"
        )
        rows = self._db.execute(sql, [*args, limit]).fetchall()
        return [EntitySummary(*(r[0], r[1], *(int(x or 0) for x in r[2:]))) for r in rows]

    def documents(self, family: str, org: str | None = None) -> list[dict[str, Any]]:
        """Every stored document of an index family (e.g. ``taishi-alerts-v1``), in time order."""
        import orjson

        sql, args = "SELECT doc FROM docs WHERE family = ?", [family]
        if org:
            sql, args = sql + " AND org = ?", [*args, org]
        return [orjson.loads(r[0]) for r in self._db.execute(sql + " ORDER BY ts, id", args)]

    def count(self, family: str, org: str | None = None) -> int:
        sql, args = "SELECT COUNT(*) FROM docs WHERE family = ?", [family]
        if org:
            sql, args = sql + " AND org = ?", [*args, org]
        return int(self._db.execute(sql, args).fetchone()[0])


class ElasticsearchStore:
    """The same queries on Elasticsearch (terms + sum aggregations on the entity indices)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def _filter(self, org: str | None, ip: str | None) -> dict[str, Any]:
        flt: list[dict[str, Any]] = []
        if org:
            flt.append({"term": {"organization.id": org}})
        if ip:
            flt.append({"term": {"taishi.entity.ip": ip}})
        return {"bool": {"filter": flt}}

    def entity_summaries(
        self, org: str | None = None, ip: str | None = None, limit: int = 20
    ) -> list[EntitySummary]:
        aggs = {f: {"sum": {"field": f"taishi.behaviour.{f}"}} for f in _SUM_FIELDS}
        aggs["peers"] = {"max": {"field": "taishi.behaviour.distinct_peers"}}
        resp = self.client.search(
            index=f"{contract.ENTITIES_INDEX}-*",
            size=0,
            query=self._filter(org, ip),
            aggs={
                "e": {
                    "terms": {"field": "taishi.entity.id", "size": limit, "order": {"bytes_out": "desc"}},
                    "aggs": aggs,
                }
            },
            ignore_unavailable=True,
            allow_no_indices=True,
        )
        out = []
        for b in resp.get("aggregations", {}).get("e", {}).get("buckets", []):
            o, h = b["key"].split("|", 1)
            sums = {f: int(b[f]["value"] or 0) for f in _SUM_FIELDS}
            out.append(
                EntitySummary(
                    org=o,
                    ip=h,
                    windows=int(b["doc_count"]),
                    max_distinct_peers=int(b["peers"]["value"] or 0),
                    **sums,
                )
            )
        return out

    def count(self, family: str, org: str | None = None) -> int:
        index = f"{family}-{org}-*" if org else f"{family}-*"
        resp = self.client.count(index=index, ignore_unavailable=True, allow_no_indices=True)
        return int(resp["count"])
