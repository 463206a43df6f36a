"""Phantom chests with lesions placed but not rendered: fast samples for the synthetic-phantom tests."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from luna_prep.synthetic.findings import place_lesions
from luna_prep.synthetic.phantom import LunaChest, sample_chest, sample_geometry
from luna_prep.synthetic.scans import IDENTITY


def placed_chests(seed: int, n: int, max_lesions: int = 4) -> list[LunaChest]:
    """``n`` small chests (rng ``[seed, i]``), each with up to ``max_lesions`` lesions placed as synth does."""
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        geom = sample_geometry(rng, False, IDENTITY)
        chest = sample_chest(rng, geom, False)
        out.append(replace(chest, lesions=tuple(place_lesions(rng, geom, chest, max_lesions))))
    return out
