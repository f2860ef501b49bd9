"""Shared fixtures: small deterministic flow batches."""

from __future__ import annotations

import numpy as np
import pytest

from taishi.pipeline.simulator import SectorSpec, simulate


@pytest.fixture(scope="session")
def sector_small() -> dict[str, np.ndarray]:
    """20k simulated flows of three institutions (columnar, contract names)."""
    return simulate(SectorSpec(institutions=3, flows=20_000, duration_s=1800, seed=3))
