"""The searched hyperparameters, declared once.

Each declaration says what a value is (its type and rule, checked the same way
in study files, baselines, `TrainConfig` and `sweep train`'s flags), the
reference's value, its command-line flag, and how it is shown (a short label,
a table column, a number format). Study files, the search space, training,
the command line, the summary tables and the report's plots all read them
from here; the model's constructor takes them by name.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

# Each earlier layer doubles (`sweep.model.layer_sizes`), so a tower of depth d
# has a first layer of width * 2**(d - 1) units. At 16 layers that is 32,768
# times the output width; at 17 even width 1 and embedding_dim 1 come to about
# 167 GiB by `sweep.memory`'s estimate, more than the memory bound lets through
# on any machine of under 320 GiB. The reference searches 1 to 3. A fixed bound
# also keeps the layer sizes small numbers before the estimate is computed.
MAX_DEPTH = 16
# The largest float32: the optimizer casts its rate to the model's float32.
FLOAT32_MAX = 3.4028234663852886e38


@dataclasses.dataclass(frozen=True)
class Hyperparameter:
    """One searched hyperparameter.

    Attributes:
        name: Its name in study files, Optuna, MLflow params and `TrainConfig`.
        kind: `int` (a whole number of at least 1) or `float` (positive, finite).
        expected: What a value must be, as error messages say it.
        help: What it is, for `--help`.
        reference: The reference configuration's value (`sweep train`'s default).
        label: Its short form in one-line text and table headers.
        width: The table column's width.
        number_format: How a value is shown (a format spec).
        sizes_model: Whether a larger value makes a larger model (and so bounds
            the space's memory estimate).
        maximum: The largest value allowed, and why (None: no bound).
    """

    name: str
    kind: type
    expected: str
    help: str
    reference: int | float
    label: str
    width: int
    number_format: str
    sizes_model: bool = False
    maximum: tuple[float, str] | None = None

    @property
    def flag(self) -> str:
        """The command-line flag, e.g. `--embedding-dim`."""
        return "--" + self.name.replace("_", "-")

    def valid(self, value) -> bool:
        """Whether `value` has this hyperparameter's type and sign (bound aside)."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind is int:
            return isinstance(value, int) and value >= 1
        return math.isfinite(value) and value > 0

    def problem(self, value) -> str | None:
        """What `value` should be ("a whole number ..."), or None if it is fine."""
        if not self.valid(value):
            return self.expected
        return self.over_maximum(value)

    def over_maximum(self, value) -> str | None:
        """Why `value` is above the bound, or None if it is not."""
        if self.maximum is not None and value > self.maximum[0]:
            return self.maximum[1]
        return None

    def show(self, value) -> str:
        """One value in this hyperparameter's number format."""
        return format(value, self.number_format)


SEARCHED = (
    Hyperparameter(
        "depth", int, "a whole number of dense layers, at least 1",
        "dense layers per tower (each earlier one twice as wide)", 1,
        "depth", 5, "d", sizes_model=True,
        maximum=(
            MAX_DEPTH,
            f"at most {MAX_DEPTH} dense layers: each earlier layer doubles, so the "
            f"first has width * 2**(depth - 1) units (lower it to {MAX_DEPTH} or "
            "less)",
        ),
    ),
    Hyperparameter(
        "width", int, "a whole number of units, at least 1",
        "units of each tower's last dense layer", 32,
        "width", 5, "d", sizes_model=True,
    ),
    Hyperparameter(
        "embedding_dim", int, "a whole number, at least 1",
        "output size of every embedding table", 32,
        "emb", 4, "d", sizes_model=True,
    ),
    Hyperparameter(
        "learning_rate", float, "a positive Adagrad learning rate, e.g. 0.05",
        "Adagrad's learning rate", 0.05,
        "lr", 8, ".4g",
        maximum=(
            FLOAT32_MAX,
            f"at most {FLOAT32_MAX:.1e}: the model trains in float32, where a "
            "larger rate is infinite (rates above 1 rarely train at all)",
        ),
    ),
)  # fmt: skip
NAMES = tuple(p.name for p in SEARCHED)
BY_NAME = {p.name: p for p in SEARCHED}


def of_trial(trial) -> dict:
    """A trial's params; for one still queued, those it was queued with.

    Args:
        trial: An Optuna `FrozenTrial`.

    Returns:
        Each param's name and value (empty for a trial that has none yet).
    """
    # Optuna keeps a queued trial's values in a system attr until it runs.
    return trial.params or trial.system_attrs.get("fixed_params", {})


def text(params: Mapping) -> str:
    """A configuration on one line, e.g. `depth 2 width 64 emb 32 lr 0.1`."""
    if not params:
        return ""
    return " ".join(
        f"{p.label} {p.show(params[p.name]) if p.name in params else '?'}"
        for p in SEARCHED
    )


def header() -> str:
    """The hyperparameters' columns of a text table."""
    return "  ".join(f"{p.label:>{p.width}}" for p in SEARCHED)


def row(params: Mapping) -> str:
    """One configuration's cells under `header()`."""
    return "  ".join(f"{p.show(params[p.name]):>{p.width}}" for p in SEARCHED)
