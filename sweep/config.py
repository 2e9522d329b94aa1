"""Study files (`studies/*.toml`) -> frozen dataclasses, or one clear error.

A study is declared, not coded:

```toml
[study]
name = "deep-retrieval"   # also the MLflow experiment name
n_trials = 40             # finished (complete + pruned) trials to reach
timeout = "30m"           # optional: no trial starts after this (s, m or h)
warm_start = ["old"]      # optional: start from these studies' finished trials
seed = 42
sampler = "tpe"           # tpe | tpe-multivariate | cmaes | qmc | gp | random
pruner = "percentile"     # none | median | percentile | hyperband
pruner_percentile = 75    # percentile only: the top share kept at each check
prune_from_epoch = 10     # optional: no trial is stopped before this epoch

[training]
epochs = 30
validation_freq = 5
batch_size = 1000

[space]                   # each: {low, high[, log, step]} or {choices = [...]}
depth = { low = 1, high = 3 }
width = { choices = [32, 64, 128] }
embedding_dim = { choices = [16, 32, 64, 128] }
learning_rate = { low = 0.01, high = 0.25, log = true }

[[baselines]]             # enqueued before the search
depth = 1
width = 32
embedding_dim = 32
learning_rate = 0.05

[confirm]                 # optional: after the search, retrain its finalists
finalists = 2             # the best distinct configurations
seeds = 3                 # fresh seeds each

[data]                    # optional
test_fraction = 0.1       # ratings held out of training and selection (default 0)
```

Every error names the file, the key, the value given and what is expected.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sweep import memory, params, servers
from sweep.errors import ConfigError

SAMPLERS = ("tpe", "tpe-multivariate", "cmaes", "qmc", "gp", "random")
PRUNERS = ("none", "median", "percentile", "hyperband")
# Optuna's samplers and NumPy's global generator take 32-bit seeds only.
SEED_MAX = 2**32 - 1
# The validation epochs go to Keras's `fit` as a list, one entry per
# validation, searched at every epoch (`TrainConfig.validation_epochs`): a count
# in the billions would exhaust memory before the first epoch. 10,000 is over
# 300 times the reference's 30.
MAX_EPOCHS = 10_000
# A held-out test share of half the ratings or more would leave the search less
# to train and select on than it sets aside.
MAX_TEST_FRACTION = 0.5
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_MISSING = object()


@dataclasses.dataclass(frozen=True)
class StudySettings:
    """The `[study]` table."""

    name: str
    n_trials: int
    seed: int = 42
    sampler: str = "tpe"
    pruner: str = "median"
    # The first epoch at which the pruner may stop a trial (None: its first
    # validation).
    prune_from_epoch: int | None = None
    # With pruner "percentile": the top percentage of trials kept at each
    # validation (Optuna's `PercentilePruner(percentile)`; the median is 50).
    pruner_percentile: float | None = None
    # Seconds after a launch or resume when no more trials start (None: none).
    timeout: float | None = None
    # Studies (in the same storage) whose finished trials a launch imports.
    warm_start: tuple[str, ...] = ()

    @property
    def pruner_text(self) -> str:
        """The pruner as a launch names it, e.g. "median from epoch 10"."""
        if self.pruner == "none":
            return self.pruner
        text = self.pruner
        if self.pruner_percentile is not None:
            text += f" {self.pruner_percentile:g}"
        if self.prune_from_epoch is not None:
            text += f" from epoch {self.prune_from_epoch}"
        return text


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
    """The `[training]` table: what every trial trains."""

    epochs: int
    validation_freq: int = 5
    batch_size: int = 1000


@dataclasses.dataclass(frozen=True)
class ConfirmSettings:
    """The `[confirm]` table: the finalists retrained after the search."""

    finalists: int = 3
    seeds: int = 3

    def as_attr(self) -> dict[str, int]:
        """The form kept in the study's user attrs."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """The `[data]` table: how the ratings are split."""

    # The share of the ratings held out before the train/validation split:
    # no trial trains or selects on them (0: the reference's 80/20 split).
    test_fraction: float = 0.0


@dataclasses.dataclass(frozen=True)
class Param:
    """One `[space]` entry: a range (`low`, `high`, `log`, `step`) or `choices`."""

    name: str
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None
    choices: tuple | None = None

    def contains(self, value) -> bool:
        """Whether `value` is one this entry can propose."""
        if self.choices is not None:
            return value in self.choices
        if not self.low <= value <= self.high:
            return False
        if self.step is None:
            return True
        steps = (value - self.low) / self.step
        return math.isclose(steps, round(steps), abs_tol=1e-9)

    def largest(self) -> int | float:
        """The largest value this entry can propose."""
        if self.choices is not None:
            return max(self.choices)
        if self.step is None:
            return self.high
        return self.low + math.floor((self.high - self.low) / self.step) * self.step

    def describe(self) -> str:
        """A short form such as `[1, 3]`, `[0.01, 0.5] log` or `{32, 64}`."""
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        text = f"between {self.low} and {self.high}"
        if self.step is not None:
            text += f" in steps of {self.step}"
        return text + (" (log scale)" if self.log else "")


@dataclasses.dataclass(frozen=True)
class Study:
    """A parsed study file.

    Attributes:
        path: The file it came from.
        text: The file's text (stored with the study, to detect changes).
        study: The `[study]` table.
        training: The `[training]` table.
        space: The `[space]` entries by hyperparameter name.
        baselines: Configurations to run before the search, in file order.
        confirm: The confirmation stage after the search (None: none).
        data: The `[data]` table.
    """

    path: Path
    text: str
    study: StudySettings
    training: TrainingSettings
    space: dict[str, Param]
    baselines: tuple[dict[str, Any], ...]
    confirm: ConfirmSettings | None = None
    data: DataSettings = DataSettings()


class _Reader:
    """Reads typed values out of the TOML tables, naming file and key on error."""

    def __init__(self, path: Path | str):
        self.path = path

    def fail(self, key: str, value: Any, expected: str) -> ConfigError:
        shown = "(missing)" if value is _MISSING else _toml(value)
        return ConfigError(f"{self.path}: {key} = {shown}: expected {expected}")

    def table(self, doc: dict, name: str, required: bool = True) -> dict:
        value = doc.get(name, _MISSING)
        if value is _MISSING:
            if required:
                raise ConfigError(
                    f"{self.path}: section [{name}] is missing; a study file needs "
                    "[study], [training] and [space] (see studies/smoke.toml)"
                )
            return {}
        if not isinstance(value, dict):
            raise self.fail(name, value, f"a [{name}] table")
        return value

    def no_unknown(self, table: dict, where: str, known) -> None:
        for key in table:
            if key not in known:
                raise ConfigError(
                    f"{self.path}: {where}{key} is not a known key; expected one of "
                    f"{', '.join(known)}"
                )

    def integer(
        self, table, where, key, default=_MISSING, minimum=1, maximum=None
    ) -> int:
        value = table.get(key, default)
        expected = f"a whole number of at least {minimum}"
        if maximum is not None:
            expected = f"a whole number from {minimum} to {maximum:,}"
        if (
            value is _MISSING
            or isinstance(value, bool)
            or not isinstance(value, int)
            or value < minimum
            or (maximum is not None and value > maximum)
        ):
            raise self.fail(where + key, value, expected)
        return value

    def choice(self, table, where, key, options, default) -> str:
        value = table.get(key, default)
        if value not in options:
            raise self.fail(where + key, value, "one of " + ", ".join(options))
        return value


def _pruner_percentile(read: _Reader, table: dict, pruner: str) -> float | None:
    value = table.get("pruner_percentile", _MISSING)
    if pruner != "percentile":
        if value is not _MISSING:
            raise read.fail(
                "[study] pruner_percentile",
                value,
                f'pruner = "percentile" beside it (pruner is {_toml(pruner)})',
            )
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value < 100
    ):
        raise read.fail(
            "[study] pruner_percentile",
            value,
            "a number between 0 and 100: the top percentage of trials kept at each "
            "validation (50 is the median pruner)",
        )
    return float(value)


def _sampler(read: _Reader, table: dict, pruner: str) -> str:
    sampler = read.choice(table, "[study] ", "sampler", SAMPLERS, "tpe")
    # GPSampler models complete trials only: a pruned trial teaches it nothing,
    # so under a pruner it proposes the pruned point again, trial after trial
    # (benchmarks/README.md, sweep_samplers_gp).
    if sampler == "gp" and pruner != "none":
        raise read.fail(
            "[study] sampler",
            sampler,
            'pruner = "none" beside it (Optuna\'s GPSampler ignores pruned trials '
            f"and proposes them again; pruner is {_toml(pruner)}), or another sampler",
        )
    # Optuna's GPSampler runs on PyTorch, which sweep does not depend on: say so
    # before anything is created, not in the first trial.
    if sampler == "gp" and importlib.util.find_spec("torch") is None:
        raise read.fail(
            "[study] sampler",
            sampler,
            "PyTorch installed for Optuna's GPSampler "
            "(.venv/bin/pip install -e '.[gp]'), or another sampler",
        )
    return sampler


def _toml(value) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def load_study(path: str | Path) -> Study:
    """Reads and validates a study file.

    Args:
        path: The TOML file.

    Returns:
        The study, every value checked.

    Raises:
        ConfigError: The file is missing, not TOML, or a value is not valid.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such study file; see studies/ for examples"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read ({e})") from None
    return parse_study(text, path)


def launched_file(name: str, text: str | None) -> Study:
    """The study file study `name` was launched with, from the text it keeps.

    Raises:
        ConfigError: No text was kept (the study was not created by sweep).
    """
    if text is None:
        raise ConfigError(f"study {name!r} was not created by sweep (no study file)")
    return parse_study(text, Path(f"<study {name}>"), stored=True)


def parse_study(text: str, path: Path = Path("<study>"), stored: bool = False) -> Study:
    """Validates a study file's text (see `load_study`).

    Args:
        text: The file's text.
        path: Its path, for messages.
        stored: The text a study keeps (`launched_file`): what earlier versions
            accepted is read as they read it, since it cannot be edited.

    Returns:
        The study, every value checked.

    Raises:
        ConfigError: The text is not TOML, or a value is not valid.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    read = _Reader(path)
    read.no_unknown(
        doc, "", ("study", "training", "space", "baselines", "confirm", "data")
    )

    table = read.table(doc, "study")
    read.no_unknown(
        table,
        "[study] ",
        (
            "name",
            "n_trials",
            "seed",
            "sampler",
            "pruner",
            "prune_from_epoch",
            "pruner_percentile",
            "timeout",
            "warm_start",
        ),
    )
    name = table.get("name", _MISSING)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise read.fail(
            "[study] name",
            name,
            "a name of letters, digits, '.', '_' or '-' (it names the Optuna study "
            "and the MLflow experiment)",
        )
    seed = table.get("seed", 42)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise read.fail("[study] seed", seed, f"a whole number from 0 to {SEED_MAX}")
    pruner = read.choice(table, "[study] ", "pruner", PRUNERS, "median")
    if pruner == "none" and "prune_from_epoch" in table:
        if not stored:
            raise read.fail(
                "[study] prune_from_epoch",
                table["prune_from_epoch"],
                'a pruner beside it (pruner is "none": no trial is stopped); '
                "remove the key or choose a pruner",
            )
        # Kept by a study launched when the key was accepted here: it never
        # pruned, and its text cannot be edited.
        table = {k: v for k, v in table.items() if k != "prune_from_epoch"}
    study = StudySettings(
        name=name,
        n_trials=read.integer(table, "[study] ", "n_trials"),
        seed=seed,
        sampler=_sampler(read, table, pruner),
        pruner=pruner,
        prune_from_epoch=table.get("prune_from_epoch"),
        pruner_percentile=_pruner_percentile(read, table, pruner),
        timeout=_timeout(read, table.get("timeout")),
        warm_start=_warm_start(read, table.get("warm_start", []), name),
    )

    table = read.table(doc, "training")
    read.no_unknown(table, "[training] ", ("epochs", "validation_freq", "batch_size"))
    training = TrainingSettings(
        epochs=read.integer(table, "[training] ", "epochs", maximum=MAX_EPOCHS),
        validation_freq=read.integer(table, "[training] ", "validation_freq", 5),
        batch_size=read.integer(table, "[training] ", "batch_size", 1000),
    )
    if study.prune_from_epoch is not None:
        # Checked against [training]: past the last epoch nothing is pruned.
        read.integer(
            {"prune_from_epoch": study.prune_from_epoch},
            "[study] ",
            "prune_from_epoch",
            maximum=training.epochs,
        )

    table = read.table(doc, "space")
    read.no_unknown(table, "[space] ", params.NAMES)
    space = {}
    for key in params.NAMES:
        if key not in table:
            raise read.fail(
                f"[space] {key}",
                _MISSING,
                "{ low = ..., high = ... } or { choices = [...] }; every one of "
                f"{', '.join(params.NAMES)} is searched (use choices = [x] to fix one)",
            )
        space[key] = _param(read, key, table[key])
    _check_memory(read, space, training)

    baselines = doc.get("baselines", [])
    if not isinstance(baselines, list) or not all(
        isinstance(b, dict) for b in baselines
    ):
        raise read.fail("baselines", baselines, "[[baselines]] tables")
    for index, baseline in enumerate(baselines):
        _check_baseline(read, index, baseline, space)

    confirm = None
    if "confirm" in doc:
        table = read.table(doc, "confirm")
        read.no_unknown(table, "[confirm] ", ("finalists", "seeds"))
        confirm = ConfirmSettings(
            finalists=read.integer(table, "[confirm] ", "finalists", 3),
            seeds=read.integer(table, "[confirm] ", "seeds", 3),
        )
    table = read.table(doc, "data", required=False)
    read.no_unknown(table, "[data] ", ("test_fraction",))
    fraction = table.get("test_fraction", 0.0)
    if not is_test_fraction(fraction):
        raise read.fail(
            "[data] test_fraction",
            fraction,
            f"a number from 0 up to (not including) {MAX_TEST_FRACTION}",
        )
    data = DataSettings(test_fraction=float(fraction))
    return Study(path, text, study, training, space, tuple(baselines), confirm, data)


def _timeout(read: _Reader, value) -> float | None:
    """`[study] timeout`: a duration such as "30m", or seconds (None: none)."""
    if value is None:
        return None
    expected = 'a duration such as "90s", "30m" or "2h", or a number of seconds'
    if isinstance(value, bool):
        raise read.fail("[study] timeout", value, expected)
    try:
        seconds = (
            servers.parse_duration(value) if isinstance(value, str) else float(value)
        )
    except (ValueError, TypeError):
        raise read.fail("[study] timeout", value, expected) from None
    if not 0 < seconds < math.inf:
        raise read.fail("[study] timeout", value, expected + ", above 0")
    return seconds


def _warm_start(read: _Reader, value, name: str) -> tuple[str, ...]:
    """`[study] warm_start`: names of other studies."""
    if not isinstance(value, list) or not all(_other_study(v, name) for v in value):
        raise read.fail(
            "[study] warm_start",
            value,
            'a list of names of other studies, such as ["old-study"]',
        )
    return tuple(dict.fromkeys(value))


def _other_study(value, name: str) -> bool:
    """Whether `value` is a study name, and not `name` (the study's own)."""
    return isinstance(value, str) and bool(_NAME.fullmatch(value)) and value != name


def is_test_fraction(value) -> bool:
    """Whether `value` is a held-out share: a number in [0, MAX_TEST_FRACTION)."""
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and 0 <= value < MAX_TEST_FRACTION
    )


def _param(read: _Reader, name: str, entry) -> Param:
    hyper = params.BY_NAME[name]
    expected = hyper.expected
    where = f"[space] {name}"
    shape = (
        "{ low = ..., high = ...[, log = true][, step = ...] } or { choices = [...] }"
    )
    if not isinstance(entry, dict):
        raise read.fail(where, entry, shape)
    if "choices" in entry:
        read.no_unknown(entry, where + ".", ("choices",))
        choices = entry["choices"]
        if not isinstance(choices, list) or not choices:
            raise read.fail(where + ".choices", choices, "a non-empty list of values")
        for value in choices:
            if not hyper.valid(value):
                raise read.fail(where + ".choices", choices, f"each {expected}")
        if len(set(choices)) != len(choices):
            raise read.fail(where + ".choices", choices, "values without repeats")
        return _check_depth(
            read, where + ".choices", Param(name, choices=tuple(choices))
        )

    read.no_unknown(entry, where + ".", ("low", "high", "log", "step"))
    for bound in ("low", "high"):
        if bound not in entry:
            raise read.fail(f"{where}.{bound}", _MISSING, f"{expected} ({shape})")
        if not hyper.valid(entry[bound]):
            raise read.fail(f"{where}.{bound}", entry[bound], expected)
    low, high = entry["low"], entry["high"]
    if low > high:
        raise read.fail(
            where, entry, f"low <= high; the range is inverted (swap {low} and {high})"
        )
    if low == high:
        raise read.fail(
            where, entry, f"low < high; the range is empty (use choices = [{low}])"
        )
    log = entry.get("log", False)
    if not isinstance(log, bool):
        raise read.fail(f"{where}.log", log, "true or false")
    step = entry.get("step")
    if step is not None:
        if not hyper.valid(step):
            raise read.fail(f"{where}.step", step, f"a step that is {expected}")
        if log:
            raise read.fail(where, entry, "either log = true or a step, not both")
        if step > high - low:
            raise read.fail(f"{where}.step", step, f"at most high - low = {high - low}")
    return _check_depth(
        read, where + ".high", Param(name, low=low, high=high, log=log, step=step)
    )


def _check_depth(read: _Reader, where: str, param: Param) -> Param:
    """Refuses a range or choice above the hyperparameter's bound (depth's)."""
    problem = params.BY_NAME[param.name].over_maximum(param.largest())
    if problem:
        raise read.fail(
            where, param.high if param.choices is None else list(param.choices), problem
        )
    return param


def _check_memory(read: _Reader, space: dict[str, Param], training) -> None:
    """Refuses a space whose largest configuration would not fit in memory.

    The estimate grows with each of depth, width and embedding_dim, so the
    largest point of the space bounds every trial, and every baseline (which
    must lie in the space) too.
    """
    largest = {
        p.name: space[p.name].largest() for p in params.SEARCHED if p.sizes_model
    }
    excess = memory.over_limit(**largest, batch_size=training.batch_size)
    if excess:
        raise ConfigError(
            f"{read.path}: [space] is too large for this machine: its largest "
            f"configuration, {excess}; lower the largest width, embedding_dim or "
            "depth (or [training] batch_size)"
        )


def parse_assignments(pairs: list[str]) -> dict[str, Any]:
    """`depth=2 width=64 ...` from the command line -> a configuration.

    Each value is read as a TOML value (2 is a whole number, 0.1 a number);
    what is not one is kept as text, for `check_configuration` to refuse.

    Raises:
        ConfigError: An argument is not NAME=VALUE, or a name is given twice.
    """
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise ConfigError(
                f"{pair!r} is not NAME=VALUE; expected e.g. depth=2 width=64 "
                "embedding_dim=32 learning_rate=0.1"
            )
        if name in values:
            raise ConfigError(f"{name} is given twice ({pair!r}); give it once")
        try:
            values[name] = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            values[name] = text
    return values


def load_configurations(path: str | Path) -> list[dict[str, Any]]:
    """The `[[baselines]]` tables of a TOML file, each a configuration.

    Raises:
        ConfigError: The file is missing, not TOML, or holds no such tables.
    """
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    read = _Reader(path)
    read.no_unknown(doc, "", ("baselines",))
    tables = doc.get("baselines")
    if not tables or not isinstance(tables, list):
        raise read.fail("baselines", doc.get("baselines", _MISSING),
                        "one or more [[baselines]] tables")  # fmt: skip
    if not all(isinstance(t, dict) for t in tables):
        raise read.fail("baselines", tables, "[[baselines]] tables")
    return tables


def check_configuration(values: dict, space: dict[str, Param], source: str) -> None:
    """Refuses a configuration the study's space cannot propose, in one line.

    Args:
        values: A value for each hyperparameter (as a `[[baselines]]` table).
        space: The study's `[space]`.
        source: Where the values come from, to start the message with (a file
            and its table, or the study they are for).

    Raises:
        ConfigError: A key is unknown or missing, or a value is not valid or
            outside the space.
    """
    _check_configuration(_Reader(source), "", values, space)


def _check_baseline(read: _Reader, index: int, baseline: dict, space) -> None:
    _check_configuration(read, f"[[baselines]] #{index + 1} ", baseline, space)


def _check_configuration(read: _Reader, where: str, baseline: dict, space) -> None:
    read.no_unknown(baseline, where, params.NAMES)
    for name, param in space.items():
        hyper = params.BY_NAME[name]
        value = baseline.get(name, _MISSING)
        if value is _MISSING or not hyper.valid(value):
            raise read.fail(where + name, value, hyper.expected)
        if not param.contains(value):
            raise read.fail(
                where + name,
                value,
                f"a value the [space] can propose ({param.describe()})",
            )


def differences(old: Study, new: Study) -> str:
    """What differs between two study files, key by key ("" if nothing does)."""
    changes = []
    pairs = [
        (f"[study] {f.name}", getattr(old.study, f.name), getattr(new.study, f.name))
        for f in dataclasses.fields(StudySettings)
        # What a launch imports changes nothing once the study exists, and a
        # time budget belongs to each command run, not to the study.
        if f.name not in ("warm_start", "timeout")
    ]
    pairs += [
        (
            f"[training] {f.name}",
            getattr(old.training, f.name),
            getattr(new.training, f.name),
        )
        for f in dataclasses.fields(TrainingSettings)
    ]
    pairs += [
        (f"[space] {name}", old.space.get(name), new.space.get(name))
        for name in params.NAMES
    ]
    pairs.append(("[[baselines]]", list(old.baselines), list(new.baselines)))
    pairs.append(("[confirm]", old.confirm, new.confirm))
    pairs.append(
        ("[data] test_fraction", old.data.test_fraction, new.data.test_fraction)
    )
    for key, was, now in pairs:
        if was != now:
            changes.append(f"{key}: {_shown(was)} -> {_shown(now)}")
    return "; ".join(changes)


def with_warm_start(study: Study, names: Sequence[str]) -> Study:
    """`study` also warm-starting from `names` (`sweep launch --warm-start`).

    Raises:
        ConfigError: A name is not a study name, or is the study's own.
    """
    for name in names:
        if not _other_study(name, study.study.name):
            raise ConfigError(
                f"--warm-start {name!r}: expected the name of another study "
                f"than {study.study.name!r} (letters, digits, '.', '_' or '-')"
            )
    settings = dataclasses.replace(
        study.study, warm_start=tuple(dict.fromkeys((*study.study.warm_start, *names)))
    )
    return dataclasses.replace(study, study=settings)


def _shown(value) -> str:
    if isinstance(value, Param):
        return value.describe()
    if isinstance(value, ConfirmSettings):
        return _toml(value.as_attr())
    if value is None:
        return "(none)"
    return _toml(value)
