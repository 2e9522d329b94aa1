import numpy as np
import pytest

from sweep import data
from sweep.errors import DataError
from tests import synthetic


@pytest.fixture
def grouplens_spec(tmp_path):
    return f"grouplens:{synthetic.write_grouplens(tmp_path / 'ml')}"


def test_features_follow_the_reference(synthetic_features):
    f = synthetic_features
    v = f.vocabulary
    assert v.users == len(synthetic.USERS)
    assert v.movies == len(synthetic.MOVIES)
    assert v.max_genres == 5
    assert v.genders == 2
    n = len(synthetic.ratings())
    assert f.label.shape == (n,)
    # (rating - 1) / 4, the reference's FeatureSpace.float_rescaled.
    ratings = np.array([r for _, _, r, _ in synthetic.ratings()], dtype=np.float32)
    np.testing.assert_allclose(f.label, (ratings - 1) / 4)
    assert f.movies["movie_title_vector"].shape == (v.movies + 1, 16)
    assert f.users["raw_user_age"].max() < v.age_bins
    assert f.users["user_gender_X_raw_user_age"].max() < v.gender_age_crosses


def test_genres_are_shifted_and_padded(synthetic_features):
    genres = synthetic_features.movies["movie_genres"]
    star_wars = genres[8]  # Action Adventure Romance Sci-Fi War
    assert (star_wars > 0).sum() == 5
    # "unknown" is a genre of its own (label 17 -> 18 after the shift).
    assert genres[3].tolist()[:2] == [18, 0]
    assert (genres[0] == 0).all()  # movie id 0 does not exist


def test_examples_gather_user_and_movie_features(synthetic_features):
    f = synthetic_features
    x, y = f.examples(np.array([0, 5]))
    user, movie, rating, _ = synthetic.ratings()[5]
    assert x["user_id"][1] == user
    assert x["movie_id"][1] == movie
    np.testing.assert_array_equal(
        x["movie_title_vector"][1], f.movies["movie_title_vector"][movie]
    )
    assert y[1] == pytest.approx((rating - 1) / 4)


def test_split_is_seeded_and_80_20(synthetic_features):
    train, val = synthetic_features.split()
    again, _ = synthetic_features.split()
    np.testing.assert_array_equal(train, again)
    assert len(train) == round(0.8 * len(synthetic.ratings()))
    assert set(train).isdisjoint(val)
    other, _ = synthetic_features.split(seed=7)
    assert not np.array_equal(train, other)


def test_held_out_test_rows_are_seeded_and_outside_the_split(synthetic_features):
    f = synthetic_features
    everything = len(synthetic.ratings())
    # No held-out share: the reference's split of every rating, as before.
    reference = np.random.default_rng(42).permutation(everything)
    np.testing.assert_array_equal(np.concatenate(f.split()), reference)
    assert len(f.test_rows(0.0)) == 0
    test = f.test_rows(0.2)
    np.testing.assert_array_equal(test, f.test_rows(0.2))
    assert len(test) == round(0.2 * everything)
    train, val = f.split(0.2)
    assert set(test).isdisjoint(train) and set(test).isdisjoint(val)
    assert len(train) + len(val) + len(test) == everything
    assert len(train) == round(0.8 * (everything - len(test)))
    # A share too small for one rating still holds one out: a test set asked
    # for is never empty.
    tiny = 0.1 / everything
    assert len(f.test_rows(tiny)) == 1
    assert sum(map(len, f.split(tiny))) == everything - 1


def test_second_load_uses_the_cache(grouplens_spec, isolated_home):
    first = data.load(grouplens_spec, log=lambda _: None)
    caches = list((isolated_home / "cache").glob("*.npz"))
    assert len(caches) == 1
    stamp = caches[0].stat().st_mtime_ns
    second = data.load(grouplens_spec, log=lambda _: None)
    assert caches[0].stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(first.label, second.label)
    assert second.vocabulary == first.vocabulary


@pytest.mark.parametrize("damage", ["truncate", "garbage", "tamper"])
def test_damaged_cache_is_rebuilt_not_used(damage, grouplens_spec, isolated_home):
    first = data.load(grouplens_spec, log=lambda _: None)
    (cache,) = (isolated_home / "cache").glob("*.npz")
    if damage == "truncate":
        cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    elif damage == "garbage":
        cache.write_bytes(b"not a cache")
    else:
        # A well-formed file whose arrays no longer match the recorded digest.
        with np.load(cache) as npz:
            arrays = dict(npz)
        arrays["label"] = arrays["label"] * 0
        np.savez(cache, **arrays)
    assert data.read_cache(cache) is None
    rebuilt = data.load(grouplens_spec, log=lambda _: None)
    np.testing.assert_array_equal(rebuilt.label, first.label)
    assert data.read_cache(cache) is not None


def test_cache_is_keyed_by_source_content(tmp_path, isolated_home):
    a = synthetic.write_grouplens(tmp_path / "a")
    b = synthetic.write_grouplens(tmp_path / "b", rows=synthetic.ratings(seed=1))
    data.load(f"grouplens:{a}", log=lambda _: None)
    data.load(f"grouplens:{b}", log=lambda _: None)
    assert len(list((isolated_home / "cache").glob("*.npz"))) == 2


def test_load_says_which_source_it_used(grouplens_spec):
    lines = []
    data.load(grouplens_spec, log=lines.append)
    assert lines == [f"MovieLens 100k from grouplens ({grouplens_spec[10:]})"]


def test_missing_grouplens_folder_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="is not a folder; expected a GroupLens"):
        data.load(f"grouplens:{tmp_path / 'nope'}")


def test_broken_source_leaves_no_cache(tmp_path, isolated_home):
    folder = synthetic.write_grouplens(tmp_path / "ml")
    (folder / "u.item").write_text("1|only three|fields\n")
    with pytest.raises(DataError, match=r"u\.item line 1"):
        data.load(f"grouplens:{folder}")
    assert not list((isolated_home / "cache").glob("*"))


def test_the_same_data_from_another_folder_is_said_to_come_from_there(
    tmp_path, isolated_home
):
    a = synthetic.write_grouplens(tmp_path / "a")
    b = synthetic.write_grouplens(tmp_path / "b")
    lines = []
    data.load(f"grouplens:{a}", log=lines.append)
    again = data.load(f"grouplens:{b}", log=lines.append)
    # One cache (the same checksum), and each load names its own folder.
    assert len(list((isolated_home / "cache").glob("*.npz"))) == 1
    assert lines == [f"MovieLens 100k from grouplens ({a})",
                     f"MovieLens 100k from grouplens ({b})"]  # fmt: skip
    assert again.source == f"grouplens ({b})"
