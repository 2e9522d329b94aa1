"""The selection goals, as stated and as a sound stage can meet them.

Reads the results `selection.py` wrote (no training) and, for each study
seed, compares the champion's reported mean (over its stage seeds) with its
confirmed mean (over the fresh evaluation seeds), and the champion's
confirmed mean with the search best's. Each gap is given in standard errors:

- `optimism / se`: the gap between the reported and the confirmed mean over
  the reported mean's own standard error (the goal as stated: within 1);
- `optimism / se diff`: the same gap over the standard error of the
  difference (both sets' spreads; a sound stage is within 2 about nine times
  in ten, `se_goal_odds.py`);
- `champion - search best / se diff`: how far the champion's confirmed mean
  is from the search best's, over the standard error of that difference (the
  stated goal asks for at least 0; "not significantly worse" is above -2).

    .venv/bin/python -m benchmarks.selection_goals \\
        selection_collapse_stop:42 selection_collapse_stop:2 \\
        selection_collapse_stop_seed1:1 selection_seed3:3
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def gaps(study: dict) -> dict[str, float]:
    """One study seed's figures, from its entry in a selection result."""
    finalists = {f["trial"]: f for f in study["finalists"]}
    champion = finalists[study["champion"]]
    search_best = study["finalists"][0]
    stage = [v for v in champion["stage"] if v is not None]
    reported = statistics.mean(stage)
    reported_se = statistics.stdev(stage) / math.sqrt(len(stage))
    confirmed = champion["confirmed"]
    optimism = reported - confirmed["mean"]
    se_diff = math.hypot(reported_se, confirmed["stderr"])
    best = search_best["confirmed"]
    lead = confirmed["mean"] - best["mean"]
    lead_se = math.hypot(confirmed["stderr"], best["stderr"])
    return {
        "study_seed": study["study_seed"],
        "champion": study["champion"],
        "search_best": search_best["trial"],
        "reported": reported,
        "reported_se": reported_se,
        "confirmed": confirmed["mean"],
        "confirmed_se": confirmed["stderr"],
        "optimism": optimism,
        "optimism_per_se": optimism / reported_se,
        "optimism_per_se_diff": optimism / se_diff,
        "lead": lead,
        "lead_per_se_diff": lead / lead_se if lead_se else 0.0,
        "minutes": study["search_minutes"] + study["stage_minutes"],
    }


def main() -> None:
    """Prints the table of the given result files' study seeds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "results", nargs="+", metavar="NAME:SEED",
        help="a results/NAME.json of selection.py and one of its study seeds",
    )  # fmt: skip
    args = parser.parse_args()
    rows = []
    for item in args.results:
        name, seed = item.rsplit(":", 1)
        studies = json.loads((RESULTS / f"{name}.json").read_text())
        (study,) = [s for s in studies if s["study_seed"] == int(seed)]
        rows.append(gaps(study))
    print(
        "| study seed | champion (search best) | reported +- se | confirmed +- se "
        "| optimism | / se | / se diff | champion - search best | / se diff "
        "| minutes |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['study_seed']} | {r['champion']} ({r['search_best']}) "
            f"| {r['reported']:.4f} +- {r['reported_se']:.4f} "
            f"| {r['confirmed']:.4f} +- {r['confirmed_se']:.4f} "
            f"| {r['optimism']:+.4f} | {r['optimism_per_se']:+.2f} "
            f"| {r['optimism_per_se_diff']:+.2f} | {r['lead']:+.4f} "
            f"| {r['lead_per_se_diff']:+.2f} | {r['minutes']:.1f} |"
        )
    mean = statistics.mean(r["optimism"] for r in rows)
    print(f"\nmean optimism over {len(rows)} study seeds: {mean:+.4f}")


if __name__ == "__main__":
    main()
