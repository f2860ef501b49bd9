"""The pinned ECS subset Taishi emits (``ecs_subset.txt``) and a check of field names against it.

The subset file holds one ``name<TAB>type`` line per ECS field, with the types ECS itself maps them to.
A field of type object, flattened or nested also admits every name below it (``labels.env``,
``threat.enrichments.indicator.file.name``); Taishi's own fields live under ``taishi.``.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from importlib.resources import files
from typing import Final

SUBSET_FILE: Final = "ecs_subset.txt"
OWN_PREFIX: Final = "taishi."
CONTAINER_TYPES: Final = frozenset({"object", "flattened", "nested"})


@cache
def _load() -> tuple[dict[str, str], tuple[str, ...]]:
    text = files("taishi.pipeline").joinpath(SUBSET_FILE).read_text(encoding="utf-8")
    fields: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        name, _, type_ = line.partition("\t")
        if not name or not type_ or "\t" in type_ or name in fields:
            raise ValueError(f"{SUBSET_FILE} line {number} is {line!r}, expected a new 'name<TAB>type'")
        fields[name] = type_
    containers = tuple(f"{name}." for name, type_ in fields.items() if type_ in CONTAINER_TYPES)
    return fields, containers


def ecs_fields() -> dict[str, str]:
    """ECS field name → ECS type for the pinned subset (parsed once; each call returns a fresh copy)."""
    return dict(_load()[0])


def unknown_fields(names: Iterable[str]) -> list[str]:
    """The names that are not in the subset, not below one of its container fields and not ``taishi.*``.

    Returned in first-seen order, each once.
    """
    fields, containers = _load()
    unknown: dict[str, None] = {}
    for name in names:
        if name in fields or name.startswith(OWN_PREFIX) or name.startswith(containers):
            continue
        unknown[name] = None
    return list(unknown)
