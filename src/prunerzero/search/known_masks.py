"""The masks a search already knows: a new formula that prunes like one of them is not evaluated.

Each candidate's ``mask_signature`` (its 50% and 2:4 masks on two fixed random layers, 16384 entries)
is compared with those of every valid candidate evaluated before and of this generation's members.
"Alike" allows ``TOLERANCE`` of the entries to differ: formulas equal in exact arithmetic differ by
float rounding at near-equal scores (exp(rown(G * W)) squeezes every score towards 1 and flips 2 of
16384 entries against G * W; mms(W) * sqrt(X) shifts |W| by its minimum and flips 8 against Wanda),
while formulas that really rank differently differ far more (GBLM's sum against Wanda: 3.7%; RIA:
10%). Matching is per gene: the same masks with another OWL lambda are another candidate.
"""
from __future__ import annotations

import torch

from ..symbolic.invariance import TOLERANCE


class KnownMasks:
    """Signatures by gene; ``alike`` scans them all (a few ms for a thousand)."""

    def __init__(self) -> None:
        self._rows: dict[str, list[torch.Tensor]] = {}  # gene suffix -> [(FINGERPRINT_ENTRIES,) bool]
        self._stacked: dict[str, torch.Tensor] = {}  # gene suffix -> (n, FINGERPRINT_ENTRIES), rebuilt when stale

    def clear(self) -> None:
        self._rows.clear()
        self._stacked.clear()

    def add(self, signature: torch.Tensor, gene: str = "") -> None:
        self._rows.setdefault(gene, []).append(signature)
        self._stacked.pop(gene, None)

    def alike(self, signature: torch.Tensor, gene: str = "") -> bool:
        """Whether a known signature (same gene) differs from ``signature`` in at most TOLERANCE of its entries
        (32 of the default signature's 16384; a layer-group search's signature is half as long again)."""
        rows = self._rows.get(gene)
        if not rows:
            return False
        if gene not in self._stacked:
            self._stacked[gene] = torch.stack(rows)
        different = (self._stacked[gene] != signature).sum(dim=1)  # (n,)
        return bool(different.min() <= int(TOLERANCE * signature.numel()))

    def __len__(self) -> int:
        return sum(len(r) for r in self._rows.values())
