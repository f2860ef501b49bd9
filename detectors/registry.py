"""Detectors register by entry point (group ``taishi.detectors``), not by scanning modules."""

from __future__ import annotations

from importlib.metadata import entry_points

from taishi.detectors.base import Detector

GROUP = "taishi.detectors"


def registered() -> dict[str, type[Detector]]:
    """Every installed detector class by its id."""
    out: dict[str, type[Detector]] = {}
    for ep in entry_points(group=GROUP):
        cls = ep.load()
        if cls.id in out:
            raise ValueError(
                f"two detectors claim the id {cls.id!r}: {out[cls.id].__module__} and {cls.__module__}"
            )
        out[cls.id] = cls
    return dict(sorted(out.items()))
