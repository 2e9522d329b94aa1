import importlib.util

import pytest

from sweep import memory
from sweep.config import differences, load_study, parse_study
from sweep.errors import ConfigError
from tests.helpers import GOOD, REPO


def write(tmp_path, text):
    path = tmp_path / "study.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["deep_retrieval.toml", "smoke.toml"])
def test_shipped_studies_are_valid(name):
    study = load_study(REPO / "studies" / name)
    assert study.study.n_trials >= 1
    assert set(study.space) == {"depth", "width", "embedding_dim", "learning_rate"}


def test_default_study_holds_the_reference_configurations():
    study = load_study(REPO / "studies" / "deep_retrieval.toml")
    assert study.study.name == "deep-retrieval"
    assert [(b["depth"], b["width"]) for b in study.baselines] == [
        (1, 32), (2, 32), (3, 32),
    ]  # fmt: skip
    assert all(b["learning_rate"] == 0.05 for b in study.baselines)
    # Its finalists are confirmed; the smoke study's are not.
    assert (study.confirm.finalists, study.confirm.seeds) == (2, 3)
    assert load_study(REPO / "studies" / "smoke.toml").confirm is None


def test_good_file_parses(tmp_path):
    study = load_study(write(tmp_path, GOOD))
    assert study.space["learning_rate"].log is True
    assert study.space["width"].choices == (32, 64)
    assert study.training.epochs == 4
    assert study.text == GOOD
    assert study.data.test_fraction == 0
    held = load_study(write(tmp_path, GOOD + "\n[data]\ntest_fraction = 0.1\n"))
    assert held.data.test_fraction == 0.1
    assert "[data] test_fraction: 0.0 -> 0.1" in differences(study, held)
    # A time budget is each run's own: a file that only changes it is the same study.
    budget = load_study(
        write(tmp_path, GOOD.replace("[training]", 'timeout = "5m"\n[training]', 1))
    )
    assert budget.study.timeout == 300 and differences(study, budget) == ""


# Each kind of bad study file: (change to GOOD, the message it must give).
BAD = {
    "unknown key": (
        ('pruner = "median"', 'pruner = "median"\nworkers = 3'),
        "[study] workers is not a known key; expected one of name, n_trials",
    ),
    "unknown section": (
        ("[training]", "[trainig]\nepochs = 3\n[training]"),
        "trainig is not a known key; expected one of study, training, space",
    ),
    "wrong type": (
        ("epochs = 4", 'epochs = "four"'),
        '[training] epochs = "four": expected a whole number from 1 to 10,000',
    ),
    "float where int": (
        ("depth = { low = 1, high = 3 }", "depth = { low = 1.5, high = 3 }"),
        "[space] depth.low = 1.5: expected a whole number of dense layers",
    ),
    "inverted range": (
        ("depth = { low = 1, high = 3 }", "depth = { low = 3, high = 1 }"),
        "[space] depth = { low = 3, high = 1 }: expected low <= high; the range is "
        "inverted",
    ),
    "empty range": (
        ("depth = { low = 1, high = 3 }", "depth = { low = 2, high = 2 }"),
        "expected low < high; the range is empty (use choices = [2])",
    ),
    "empty choices": (
        ("width = { choices = [32, 64] }", "width = { choices = [] }"),
        "[space] width.choices = []: expected a non-empty list of values",
    ),
    "non-positive rate": (
        ("low = 0.01, high = 0.5", "low = 0.0, high = 0.5"),
        "[space] learning_rate.low = 0.0: expected a positive Adagrad learning rate",
    ),
    "negative rate in choices": (
        (
            "learning_rate = { low = 0.01, high = 0.5, log = true }",
            "learning_rate = { choices = [0.05, -0.1] }",
        ),
        "[space] learning_rate.choices = [0.05, -0.1]: expected each a positive",
    ),
    "missing section": (
        ("[training]\nepochs = 4\nvalidation_freq = 2\nbatch_size = 1000\n", ""),
        "section [training] is missing",
    ),
    "missing param": (
        ("embedding_dim = { choices = [16, 32] }\n", ""),
        "[space] embedding_dim = (missing): expected { low = ..., high = ... }",
    ),
    "unknown sampler": (
        ('sampler = "tpe"', 'sampler = "bayes"'),
        '[study] sampler = "bayes": expected one of tpe, tpe-multivariate, cmaes, '
        "qmc, gp, random",
    ),
    "zero trials": (
        ("n_trials = 3", "n_trials = 0"),
        "[study] n_trials = 0: expected a whole number of at least 1",
    ),
    "bad name": (
        ('name = "t"', 'name = "my study!"'),
        '[study] name = "my study!": expected a name of letters, digits',
    ),
    "baseline outside the space": (
        ("learning_rate = 0.05", "learning_rate = 0.9"),
        "[[baselines]] #1 learning_rate = 0.9: expected a value the [space] can "
        "propose (between 0.01 and 0.5 (log scale))",
    ),
    "baseline with unknown key": (
        ("embedding_dim = 32\n", "embedding_dim = 32\ndropout = 0.1\n"),
        "[[baselines]] #1 dropout is not a known key",
    ),
    "seed past 32 bits": (
        ("seed = 1", "seed = 4294967296"),
        "[study] seed = 4294967296: expected a whole number from 0 to 4294967295",
    ),
    "epochs past the bound": (
        ("epochs = 4", "epochs = 1000000000000"),
        "[training] epochs = 1000000000000: expected a whole number from 1 to 10,000",
    ),
    "depth past the bound": (
        ("depth = { low = 1, high = 3 }", "depth = { low = 1, high = 100000 }"),
        "[space] depth.high = 100000: expected at most 16 dense layers: each "
        "earlier layer doubles",
    ),
    "depth choice past the bound": (
        ("depth = { low = 1, high = 3 }", "depth = { choices = [1, 17] }"),
        "[space] depth.choices = [1, 17]: expected at most 16 dense layers",
    ),
    "width too large for memory": (
        ("width = { choices = [32, 64] }", "width = { choices = [32, 10000000] }"),
        "[space] is too large for this machine: its largest configuration, depth 3, "
        "width 10000000, embedding_dim 32, batch_size 1000 needs about",
    ),
    "embedding_dim too large for memory": (
        (
            "embedding_dim = { choices = [16, 32] }",
            "embedding_dim = { low = 16, high = 100000000, step = 16 }",
        ),
        "embedding_dim 100000000, batch_size 1000 needs about",
    ),
    "not toml": (
        ("[space]", "[space"),
        "not valid TOML",
    ),
    "test share too large": (
        ("[space]", "[data]\ntest_fraction = 0.5\n[space]"),
        "[data] test_fraction = 0.5: expected a number from 0 up to (not including)"
        " 0.5",
    ),
    "test share as text": (
        ("[space]", '[data]\ntest_fraction = "10%"\n[space]'),
        '[data] test_fraction = "10%": expected a number from 0',
    ),
    "pruning past the last epoch": (
        ('pruner = "median"', 'pruner = "median"\nprune_from_epoch = 5'),
        "[study] prune_from_epoch = 5: expected a whole number from 1 to 4",
    ),
    "pruning from a fraction of an epoch": (
        ('pruner = "median"', 'pruner = "median"\nprune_from_epoch = 2.5'),
        "[study] prune_from_epoch = 2.5: expected a whole number from 1 to 4",
    ),
    "percentile pruner without its percentile": (
        ('pruner = "median"', 'pruner = "percentile"'),
        "[study] pruner_percentile = (missing): expected a number between 0 and 100",
    ),
    "percentile past 100": (
        ('pruner = "median"', 'pruner = "percentile"\npruner_percentile = 150'),
        "[study] pruner_percentile = 150: expected a number between 0 and 100",
    ),
    "percentile beside another pruner": (
        ('pruner = "median"', 'pruner = "median"\npruner_percentile = 75'),
        '[study] pruner_percentile = 75: expected pruner = "percentile" beside it '
        '(pruner is "median")',
    ),
    "pruning from an epoch without a pruner": (
        ('pruner = "median"', 'pruner = "none"\nprune_from_epoch = 2'),
        '[study] prune_from_epoch = 2: expected a pruner beside it (pruner is "none"',
    ),
    "a rate past float32": (
        (
            "learning_rate = { low = 0.01, high = 0.5, log = true }",
            "learning_rate = { low = 0.01, high = 1e300, log = true }",
        ),
        "[space] learning_rate.high = 1e+300: expected at most 3.4e+38",
    ),
    "unknown data key": (
        ("[space]", "[data]\nsource = 1\n[space]"),
        "[data] source is not a known key; expected one of test_fraction",
    ),
}


@pytest.mark.parametrize("kind", BAD)
def test_bad_study_file_names_file_key_value_and_expectation(kind, tmp_path):
    (old, new), message = BAD[kind]
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as error:
        load_study(path)
    text = str(error.value)
    assert text.startswith(f"{path}: ")
    assert message in text
    assert "\n" not in text


def test_the_gp_sampler_asks_for_pytorch_where_it_is_missing(tmp_path):
    # Optuna's GPSampler runs on PyTorch, an optional extra: without it the
    # study file is refused in one line that says how to install it.
    gp = GOOD.replace('sampler = "tpe"', 'sampler = "gp"', 1)
    path = write(tmp_path, gp.replace('pruner = "median"', 'pruner = "none"', 1))
    if importlib.util.find_spec("torch") is not None:
        assert load_study(path).study.sampler == "gp"
        return
    with pytest.raises(ConfigError) as error:
        load_study(path)
    assert str(error.value) == (
        f'{path}: [study] sampler = "gp": expected PyTorch installed for Optuna\'s '
        "GPSampler (.venv/bin/pip install -e '.[gp]'), or another sampler"
    )


def test_the_gp_sampler_is_refused_under_a_pruner(tmp_path):
    # It models complete trials only, so it would propose a pruned point again
    # and again; the pruner is the study's default when the file names none.
    gp = GOOD.replace('sampler = "tpe"', 'sampler = "gp"', 1)
    for pruner, text in [
        ("median", gp),
        ("median", gp.replace('pruner = "median"\n', "", 1)),
        ("hyperband", gp.replace('pruner = "median"', 'pruner = "hyperband"', 1)),
    ]:
        path = write(tmp_path, text)
        with pytest.raises(ConfigError) as error:
            load_study(path)
        assert str(error.value) == (
            f'{path}: [study] sampler = "gp": expected pruner = "none" beside it '
            "(Optuna's GPSampler ignores pruned trials and proposes them again; "
            f'pruner is "{pruner}"), or another sampler'
        )


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="no such study file"):
        load_study(tmp_path / "nope.toml")


def test_step_must_fit_the_range():
    text = GOOD.replace(
        "depth = { low = 1, high = 3 }", "depth = { low = 1, high = 3, step = 5 }"
    )
    with pytest.raises(
        ConfigError, match=r"depth.step = 5: expected at most high - low = 2"
    ):
        parse_study(text)


def test_memory_error_names_the_limit():
    text = GOOD.replace(
        "width = { choices = [32, 64] }",
        "width = { low = 8, high = 10000000, log = true }",
    )
    with pytest.raises(ConfigError) as error:
        parse_study(text)
    message = str(error.value)
    assert "depth 3, width 10000000, embedding_dim 32" in message
    assert memory.gib(memory.limit_bytes()) in message
    assert "lower the largest width, embedding_dim or depth" in message


def test_largest_point_respects_the_step():
    text = GOOD.replace(
        "depth = { low = 1, high = 3 }", "depth = { low = 1, high = 4, step = 2 }"
    )
    assert parse_study(text).space["depth"].largest() == 3


def test_a_stored_study_text_is_read_as_it_was_accepted(tmp_path):
    # A study keeps its file's text; one launched when prune_from_epoch was
    # accepted beside no pruner still resumes (the key meant nothing there).
    text = GOOD.replace('pruner = "median"', 'pruner = "none"\nprune_from_epoch = 2')
    study = parse_study(text, stored=True)
    assert study.study.pruner == "none" and study.study.prune_from_epoch is None
    with pytest.raises(ConfigError, match="expected a pruner beside it"):
        load_study(write(tmp_path, text))
