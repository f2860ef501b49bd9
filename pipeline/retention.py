"""Retention of Taishi's dated indices.

The full Elasticsearch distribution has ILM; the minimal one (and some managed offerings) does not. We detect
it at start and say which path we take; the scheduled deletion below works on both, since every index
name ends in its day (``taishi-entities-v1-<org>-YYYY.MM.DD``).
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from taishi.pipeline.config import ElasticsearchSettings

log = logging.getLogger(__name__)
_DAY = re.compile(r"^taishi-[a-z]+-v\d+-.+-(\d{4}\.\d{2}\.\d{2})$")


def has_ilm(client: Any) -> bool:
    """Whether the cluster offers index lifecycle management."""
    try:
        client.ilm.get_status()
        return True
    except Exception:
        return False


def expired(indices: list[str], retention_days: int, now: datetime) -> list[str]:
    """Names among ``indices`` whose day is older than the retention (pure; tested on its own)."""
    cutoff = (now - timedelta(days=retention_days)).date()
    out = []
    for name in indices:
        m = _DAY.match(name)
        if m and datetime.strptime(m.group(1), "%Y.%m.%d").date() < cutoff:
            out.append(name)
    return sorted(out)


def delete_expired(
    client: Any, retention_days: int, now: datetime | None = None, dry_run: bool = False
) -> list[str]:
    """Delete Taishi indices older than the retention; return their names."""
    resp = client.indices.get(
        index="taishi-*", allow_no_indices=True, ignore_unavailable=True, expand_wildcards="open,closed"
    )
    names = expired(list(resp), retention_days, now or datetime.now(UTC))
    if names and not dry_run:
        for i in range(0, len(names), 50):
            client.indices.delete(index=",".join(names[i : i + 50]), ignore_unavailable=True)
        log.info("retention: deleted %d indices older than %d days", len(names), retention_days)
    return names


def start_retention(settings: ElasticsearchSettings, client: Any) -> Any:
    """Schedule the daily deletion job (apscheduler) and run it once now."""
    from apscheduler.schedulers.background import BackgroundScheduler

    path = (
        "ILM available, but day-named indices are deleted by schedule for one behaviour on every cluster"
        if has_ilm(client)
        else "no ILM on this cluster: deleting expired indices on a schedule"
    )
    log.info("retention %d days: %s", settings.retention_days, path)
    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.add_job(
        delete_expired,
        "interval",
        hours=6,
        args=[client, settings.retention_days],
        id="taishi-retention",
        next_run_time=datetime.now(UTC),
        coalesce=True,
        max_instances=1,
    )
    scheduler.start()
    return scheduler
