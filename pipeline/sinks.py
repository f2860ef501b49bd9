"""Where documents go: Elasticsearch, the embedded SQLite store, or memory (tests).

A sink is ``setup()`` + ``write(docs) -> failures`` + ``close()``. ``write`` returns only the documents
that can never be stored (e.g. a mapping error) with the reason, for the dead-letter topic; anything
transient is retried inside and, if it keeps failing, raised — the caller then does not commit offsets.
Document ids are deterministic, so writing the same document twice overwrites it.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from taishi.pipeline.config import ElasticsearchSettings
from taishi.pipeline.windows import Doc

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Failure:
    """A document the store refused for good, and why."""

    doc: Doc
    reason: str


class SinkUnavailable(RuntimeError):
    """The store kept failing after every retry; offsets must not be committed."""


class Sink(Protocol):
    def setup(self) -> None: ...
    def write(self, docs: Sequence[Doc]) -> list[Failure]: ...
    def close(self) -> None: ...


class MemorySink:
    """In-memory twin of a store: the last version of each document by (index, id)."""

    def __init__(self) -> None:
        self.docs: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes = 0

    def setup(self) -> None:
        return None

    def write(self, docs: Sequence[Doc]) -> list[Failure]:
        for d in docs:
            self.docs[(d.index, d.id)] = d.source
        self.writes += len(docs)
        return []

    def close(self) -> None:
        return None


class SqliteSink:
    """The embedded local store: one SQLite table of JSON documents, upserted by (index, id)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path)

    def setup(self) -> None:
        self._db.executescript(
            """
            PRAGMA journal_mode=WAL;
            CREATE TABLE IF NOT EXISTS docs (
                idx TEXT NOT NULL, id TEXT NOT NULL, family TEXT NOT NULL, org TEXT NOT NULL,
                ts TEXT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (idx, id));
            CREATE INDEX IF NOT EXISTS docs_family_org_ts ON docs (family, org, ts);
            """
        )

    def write(self, docs: Sequence[Doc]) -> list[Failure]:
        rows = [
            (
                d.index,
                d.id,
                _family(d.index),
                d.source["organization"]["id"],
                d.source["@timestamp"],
                orjson.dumps(d.source).decode(),
            )
            for d in docs
        ]
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO docs VALUES (?, ?, ?, ?, ?, ?)", rows)
        return []

    def close(self) -> None:
        self._db.close()


def _family(index: str) -> str:
    """``taishi-entities-v1-bank-a-2026.11.25`` -> ``taishi-entities-v1``."""
    return "-".join(index.split("-")[:3])


def es_client(settings: ElasticsearchSettings) -> Any:
    """An Elasticsearch client for the configured cluster."""
    from elasticsearch import Elasticsearch

    kwargs: dict[str, Any] = {"request_timeout": 60}
    if settings.username:
        kwargs["basic_auth"] = (
            settings.username,
            settings.password.get_secret_value() if settings.password else "",
        )
    if settings.ca_certs:
        kwargs["ca_certs"] = str(settings.ca_certs)
    return Elasticsearch(settings.url, **kwargs)


class ElasticsearchSink:
    """Bulk writes with per-item handling: 429/5xx retried with backoff, other 4xx returned as failures."""

    def __init__(self, settings: ElasticsearchSettings, client: Any = None) -> None:
        self.settings = settings
        self.client = client or es_client(settings)

    def setup(self) -> None:
        """Install the index templates (idempotent)."""
        from taishi.pipeline.documents import templates

        for name, body in templates().items():
            self.client.indices.put_index_template(name=name, **body)
            # Templates only shape new indices: carry additive mapping changes (new fields within the same
            # schema version) to the family's existing indices too, so strict mappings accept them.
            props = body["template"]["mappings"]["properties"]
            self.client.indices.put_mapping(
                index=f"{name}-*", properties=props, allow_no_indices=True, ignore_unavailable=True
            )

    def write(self, docs: Sequence[Doc]) -> list[Failure]:
        failures: list[Failure] = []
        step = self.settings.bulk_docs
        for i in range(0, len(docs), step):
            failures.extend(self._write_chunk(list(docs[i : i + step])))
        return failures

    def _write_chunk(self, pending: list[Doc]) -> list[Failure]:
        from elasticsearch import ApiError, ConnectionError, ConnectionTimeout

        failures: list[Failure] = []
        delay = self.settings.retry_backoff_s
        for attempt in range(self.settings.max_retries + 1):
            body = b"".join(
                b'{"index":{"_index":"%s","_id":"%s"}}\n%s\n'
                % (d.index.encode(), d.id.encode(), orjson.dumps(d.source))
                for d in pending
            )
            try:
                resp = self.client.bulk(operations=body)
            except (ConnectionError, ConnectionTimeout) as exc:
                log.warning(
                    "bulk of %d docs failed (%s); retry %d in %.1fs", len(pending), exc, attempt + 1, delay
                )
            except ApiError as exc:
                if exc.meta.status != 429 and exc.meta.status < 500:
                    raise
                log.warning("bulk rejected with %s; retry %d in %.1fs", exc.meta.status, attempt + 1, delay)
            else:
                retry: list[Doc] = []
                if resp.get("errors"):
                    for item, doc in zip(resp["items"], pending, strict=True):
                        res = item["index"]
                        status = res.get("status", 500)
                        if status < 300:
                            continue
                        if status == 429 or status >= 500:
                            retry.append(doc)
                        else:
                            err = res.get("error") or {}
                            failures.append(
                                Failure(doc, f"elasticsearch {status} {err.get('type')}: {err.get('reason')}")
                            )
                if not retry:
                    return failures
                log.warning("%d of %d bulk items need a retry", len(retry), len(pending))
                pending = retry
            if attempt < self.settings.max_retries:
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
        raise SinkUnavailable(
            f"elasticsearch kept refusing {len(pending)} documents after {self.settings.max_retries} retries"
        )

    def close(self) -> None:
        self.client.close()
