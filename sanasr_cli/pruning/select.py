"""Block selection under a parameter budget (paper Eq. 11) and the baseline strategies of Table 6.

    max_K sum_{l in K} S_l   s.t.  P_fix + sum_{l in K} P_l <= P_*,   {first, last} in K

Solved greedily, as the paper does (App. A.7): the first and last blocks are kept, then the other blocks are
visited by descending S_l and each is kept when it still fits the budget.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sanasr_cli.errors import SanaSRError
from sanasr_cli.pruning.blocks import BlockSizes
from sanasr_cli.pruning.budget import format_params

STRATEGIES = ("fisher", "tail", "random", "magnitude")


class BudgetError(SanaSRError):
    """The budget cannot be met (too small) or leaves nothing to prune (too large)."""


@dataclass(frozen=True)
class Selection:
    kept: tuple[int, ...]  # sorted block indices
    params: int  # P_fix + sum of kept P_l


def check_budget(sizes: BlockSizes, budget: int) -> None:
    """Raise BudgetError when no pruning is possible or needed."""
    if budget < sizes.minimum:
        raise BudgetError(
            f"budget {format_params(budget)} ({budget}) is below the minimum {format_params(sizes.minimum)} "
            f"({sizes.minimum}): the fixed part ({sizes.fixed}) plus the first and last blocks "
            "are always kept"
        )
    if budget >= sizes.total:
        raise BudgetError(
            f"budget {format_params(budget)} ({budget}) is not below the model size "
            f"{format_params(sizes.total)} "
            f"({sizes.total} transformer parameters): nothing to prune"
        )


def greedy_select(scores: list[float], sizes: BlockSizes, budget: int) -> Selection:
    """Keep the first and last blocks, then blocks by descending score while the total stays <= budget.

    Ties in score keep the lower index first. When all blocks have the same size this is optimal for Eq. 11
    (the m blocks that fit are the m highest scores). When sizes differ it is the usual knapsack greedy: a
    block that does not fit is skipped and the next (lower-scored, possibly smaller) block is tried, so the
    result is feasible but may fall short of the optimum (one large high-score block can lose to two smaller
    ones).
    """
    n = sizes.num_blocks
    if len(scores) != n:
        raise ValueError(f"{len(scores)} scores for {n} blocks")
    check_budget(sizes, budget)
    kept = sorted({0, n - 1})
    total = sizes.kept_total(kept)
    for idx in sorted(range(1, n - 1), key=lambda i: (-scores[i], i)):
        if total + sizes.block[idx] <= budget:
            kept.append(idx)
            total += sizes.block[idx]
    kept.sort()
    return Selection(tuple(kept), total)


def tail_scores(n: int) -> list[float]:
    """`tail`: earlier blocks first, so the blocks just before the (always kept) last one are dropped."""
    return [float(n - i) for i in range(n)]


def random_scores(n: int, seed: int) -> list[float]:
    """`random`: a seeded random order (Python's Mersenne Twister, so the same seed gives the same order)."""
    rng = random.Random(seed)
    return [rng.random() for _ in range(n)]
