"""One colour per method and per data role, shared by every figure (so a method looks the same everywhere).

Known methods have fixed colours (colour-blind-safe Okabe-Ito hues); any other method name (a new
config entry, an ablation variant) gets the next colour of ``EXTRA_COLORS`` in sorted-name order
(cycling), so the mapping depends only on the set of names.
"""

from __future__ import annotations

from collections.abc import Iterable

METHOD_COLORS = {
    "zeroshot": "#7f7f7f",
    "zeroshot_ensemble": "#b0b0b0",
    "coop": "#0072B2",
    "ebm": "#D55E00",
    "cocoop": "#009E73",
    "locoop": "#CC79A7",
}
EXTRA_COLORS = ("#8C564B", "#17BECF", "#9467BD", "#000000", "#BCBD22", "#E377C2", "#F0E442")
# ID green, covariate shift light blue, semantic OOD orange: the same in every plot by role.
ROLE_COLORS = {"id": "#009E73", "covariate": "#56B4E9", "ood": "#E69F00"}
ZEROSHOT_FIRST = ("zeroshot", "zeroshot_ensemble")


def method_order(methods: Iterable[str]) -> list[str]:
    """Zero-shot methods first, then the rest sorted by name (duplicates dropped)."""
    names = set(methods)
    return [m for m in ZEROSHOT_FIRST if m in names] + sorted(names - set(ZEROSHOT_FIRST))


def method_colors(methods: Iterable[str]) -> dict[str, str]:
    """``{method: hex colour}`` for ``methods``: fixed for known names, distinct unused colours otherwise."""
    names = method_order(methods)
    unknown = [m for m in names if m not in METHOD_COLORS]
    extra = {m: EXTRA_COLORS[i % len(EXTRA_COLORS)] for i, m in enumerate(unknown)}
    return {m: METHOD_COLORS.get(m) or extra[m] for m in names}
