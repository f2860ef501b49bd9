"""Every scenario: attacks fire (ground-truth labels), look-alikes stay silent, alerts equal the golden file."""

from __future__ import annotations

import json

import pytest

from .harness import canonical, run, scenarios


@pytest.mark.parametrize("folder", scenarios(), ids=lambda p: p.name)
def test_scenario(folder):
    alerts, labels = run(folder)
    found = {(a["rule"]["id"], a["organization"]["id"], a["taishi"]["entity"]["ip"]) for a in alerts}
    for label in labels:
        if label.rule:
            assert (label.rule, label.org, label.entity) in found, (
                f"{label.kind} by {label.entity} not detected"
            )
        else:
            hits = [f for f in found if f[1:] == (label.org, label.entity)]
            assert not hits, f"benign {label.kind} of {label.entity} raised {hits}"
    for a in alerts:
        assert a["event"]["kind"] == "alert" and a["taishi"]["evidence"], "alerts carry their evidence"
    expected = json.loads((folder / "expected.json").read_text())
    assert canonical(alerts) == expected
