"""How often "reported within one standard error" holds for a perfect stage.

The goal asks that the champion's reported figure (the mean of its S stage
seeds) be within one standard error of its confirmed mean (over E fresh
evaluation seeds). Whose standard error it does not say: `selection.py`
judges by the confirmed mean's (from the E seeds); the reported mean's own
(from the S seeds) is the other reading. This script asks how often each
holds when nothing is wrong: every seed's score is
drawn from one normal distribution, so the stage is unbiased and its spread
the true one. Selection only makes it rarer (the champion is the finalist whose
seeds drew high).

It also gives the odds for the standard error of the difference (both sets'
spreads) and for twice that, the goals a reader may prefer. No training: a
seeded Monte Carlo in NumPy, a second or two.

    .venv/bin/python -m benchmarks.se_goal_odds
"""

from __future__ import annotations

import argparse

import numpy as np


def odds(
    stage_seeds: int, eval_seeds: int, draws: int, rng: np.random.Generator
) -> dict[str, float]:
    """The share of `draws` in which each form of the goal holds.

    Args:
        stage_seeds: S, the stage's seeds per finalist.
        eval_seeds: E, the fresh seeds the benchmark confirms on.
        draws: Simulated studies.
        rng: The random stream.

    Returns:
        `one_eval_se`: within the confirmed mean's standard error (as
        `selection.py` judges); `one_se`: within the reported mean's;
        `one_se_diff`: within the standard error of the difference;
        `two_se_diff`: within twice that.
    """
    stage = rng.standard_normal((draws, stage_seeds))
    evaluation = rng.standard_normal((draws, eval_seeds))
    gap = np.abs(stage.mean(axis=1) - evaluation.mean(axis=1))
    stage_var = stage.var(axis=1, ddof=1) / stage_seeds
    eval_var = evaluation.var(axis=1, ddof=1) / eval_seeds
    se = np.sqrt(stage_var)
    se_diff = np.sqrt(stage_var + eval_var)
    return {
        "one_eval_se": float(np.mean(gap < np.sqrt(eval_var))),
        "one_se": float(np.mean(gap < se)),
        "one_se_diff": float(np.mean(gap < se_diff)),
        "two_se_diff": float(np.mean(gap < 2 * se_diff)),
    }


def main() -> None:
    """Prints a Markdown table of the odds for a range of stage sizes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-seeds", type=int, default=5)
    parser.add_argument("--studies", type=int, default=4, help="study seeds")
    parser.add_argument("--draws", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    every = f"all {args.studies} study seeds"
    print(
        "| stage seeds | within the confirmed mean's se (selection.py) "
        f"| {every} | within the reported mean's se | {every} "
        "| within 1 se of the difference | within 2 se of the difference "
        f"| {every} |"
    )
    print("|---|---|---|---|---|---|---|---|")
    n = args.studies
    for stage_seeds in (2, 3, 5, 8, 20):
        p = odds(stage_seeds, args.eval_seeds, args.draws, rng)
        print(
            f"| {stage_seeds} | {p['one_eval_se']:.2f} | {p['one_eval_se'] ** n:.2f} "
            f"| {p['one_se']:.2f} | {p['one_se'] ** n:.2f} "
            f"| {p['one_se_diff']:.2f} | {p['two_se_diff']:.2f} "
            f"| {p['two_se_diff'] ** n:.2f} |"
        )


if __name__ == "__main__":
    main()
