"""The contract every registered detector keeps (see STYLE.md): ids, techniques, params, docs, state."""

from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from taishi.detectors.base import TECHNIQUES, Detector
from taishi.detectors.registry import registered

DETECTORS = registered()


def test_there_are_detectors_and_ids_are_unique():
    assert DETECTORS
    assert len({cls.id for cls in DETECTORS.values()}) == len(DETECTORS)


@pytest.mark.parametrize("cls", DETECTORS.values(), ids=DETECTORS.keys())
def test_detector_contract(cls: type[Detector]):
    assert cls.__doc__ and cls.__doc__.strip(), "docstring"
    assert cls.name and cls.techniques
    for t in cls.techniques:
        assert t in TECHNIQUES, f"{t} is not a known ATT&CK technique id"
    params = cls.Params()
    for name, field in type(params).model_fields.items():
        assert field.description, f"{cls.id}.{name} has no description"
    det = cls(params)
    state = orjson.loads(orjson.dumps(det.snapshot()))  # JSON-serialisable
    other = cls(params)
    other.restore(state)
    assert orjson.dumps(other.snapshot()) == orjson.dumps(det.snapshot())
    with pytest.raises(ValidationError):  # unknown parameters are refused
        cls.Params(no_such_parameter=1)
