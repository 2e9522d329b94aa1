"""MovieLens 100k sources, each parsed to the records tensorflow-datasets produces.

Three sources give the same records (`movielens/100k-ratings` and
`movielens/100k-movies` as tfds encodes them: titles with their year, genre and
occupation class labels, raw and bucketized age):

- `tfds`: tensorflow-datasets itself, the reference's path.
- `grouplens:PATH`: a GroupLens `ml-100k` folder (`u.data`, `u.item`, `u.user`),
  parsed with tfds's own rules.
- `recbole`: the complete MovieLens 100k that the `recbole==1.2.1` wheel carries
  as data files. The wheel is fetched with pip (no dependencies) and only those
  files are read from the archive; recbole is never imported (it needs torch).

`auto` tries, in order: tfds's prepared copy if it is on disk, a GroupLens folder
named by `SWEEP_MOVIELENS_DIR`, the RecBole copy, a tfds download.

The module is longer than most because each source's parser must reproduce
tfds's encoding field by field (the class label tables, the age buckets, the
title and date rules); split apart, those rules would be read in three places
to check one record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from sweep.errors import DataError

# tfds's ClassLabel names for `movie_genres` (shared by every MovieLens size).
GENRE_NAMES = (
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical",
    "Mystery", "Romance", "Sci-Fi", "Thriller", "Unknown", "War", "Western",
    "(no genres listed)",
)  # fmt: skip
# tfds's ClassLabel names for `user_occupation_label`.
OCCUPATION_NAMES = (
    "academic/educator", "artist", "clerical/admin", "customer service",
    "doctor/health care", "entertainment", "executive/managerial", "farmer",
    "homemaker", "lawyer", "librarian", "other/not specified", "programmer",
    "retired", "sales/marketing", "scientist", "self-employed", "student",
    "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)  # fmt: skip
# The 19 genre flags of GroupLens `u.item`, in file order, spelled as tfds does.
GROUPLENS_GENRES = (
    "Unknown", "Action", "Adventure", "Animation", "Children", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
# tfds maps the 100k occupation texts onto the labels the 1m data set uses.
OCCUPATION_LABELS = {
    "administrator": "clerical/admin", "artist": "artist",
    "doctor": "doctor/health care", "educator": "academic/educator",
    "engineer": "technician/engineer", "entertainment": "entertainment",
    "executive": "executive/managerial", "healthcare": "doctor/health care",
    "homemaker": "homemaker", "lawyer": "lawyer", "librarian": "librarian",
    "marketing": "sales/marketing", "none": "other/not specified",
    "other": "other/not specified", "programmer": "programmer",
    "retired": "retired", "salesman": "sales/marketing", "scientist": "scientist",
    "student": "student", "technician": "technician/engineer", "writer": "writer",
}  # fmt: skip
AGE_THRESHOLDS = (18, 25, 35, 45, 50, 56)

GROUPLENS_FILES = ("u.data", "u.item", "u.user")
RECBOLE_REQUIREMENT = "recbole==1.2.1"
RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
RECBOLE_MEMBERS = {
    "inter": "recbole/dataset_example/ml-100k/ml-100k.inter",
    "item": "recbole/dataset_example/ml-100k/ml-100k.item",
    "user": "recbole/dataset_example/ml-100k/ml-100k.user",
}
# SHA-256 of the three files inside the 1.2.1 wheel: a different or damaged copy
# is refused instead of silently giving other records.
RECBOLE_SHA256 = {
    "inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}
# RecBole writes this (sic) for the one GroupLens movie whose title is "unknown"
# and which has no release date.
RECBOLE_UNKNOWN = "unkonwn"

TFDS_RATINGS = "movielens/100k-ratings"
TFDS_MOVIES = "movielens/100k-movies"


@dataclasses.dataclass(frozen=True)
class Movie:
    """One `movielens/100k-movies` record."""

    movie_id: str
    movie_title: str
    movie_genres: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class User:
    """The demographic fields tfds joins onto each of a user's ratings."""

    user_id: str
    user_gender: bool
    bucketized_user_age: float
    raw_user_age: float
    user_occupation_label: int
    user_occupation_text: str
    user_zip_code: str


@dataclasses.dataclass(frozen=True)
class MovieLens:
    """MovieLens 100k as normalized tables; `rating_records` gives tfds's join.

    Attributes:
        movies: The movies, in source order.
        users: The users by user id.
        user_id: The rating's user id, one entry per rating, in source order.
        movie_id: The rating's movie id.
        user_rating: The rating, 1 to 5.
        timestamp: The rating's Unix time.
    """

    movies: tuple[Movie, ...]
    users: dict[str, User]
    user_id: np.ndarray
    movie_id: np.ndarray
    user_rating: np.ndarray
    timestamp: np.ndarray

    def rating_records(self) -> Iterator[dict]:
        """Yields each rating as the dict `movielens/100k-ratings` holds."""
        movies = {m.movie_id: m for m in self.movies}
        for uid, mid, rating, ts in zip(
            self.user_id, self.movie_id, self.user_rating, self.timestamp, strict=True
        ):
            record = dataclasses.asdict(movies[str(mid)])
            record.update(dataclasses.asdict(self.users[str(uid)]))
            record.update(user_rating=float(rating), timestamp=int(ts))
            yield record

    def movie_records(self) -> Iterator[dict]:
        """Yields each movie as the dict `movielens/100k-movies` holds."""
        for movie in self.movies:
            yield dataclasses.asdict(movie)


@dataclasses.dataclass(frozen=True)
class Source:
    """Where MovieLens comes from.

    Attributes:
        kind: `tfds`, `grouplens` or `recbole`.
        path: The GroupLens folder, the RecBole wheel or the tfds data dir.
        checksum: SHA-256 identifying the source's content.
    """

    kind: str
    path: Path | None
    checksum: str

    def describe(self) -> str:
        """A short human description, e.g. `recbole (/x/recbole-1.2.1...whl)`."""
        return f"{self.kind} ({self.path})" if self.path else self.kind

    def read(self) -> MovieLens:
        """Parses the source into tfds-identical records."""
        if self.kind == "grouplens":
            return read_grouplens(self.path)
        if self.kind == "recbole":
            return read_recbole(fetch_recbole(self.path.parent))
        return read_tfds(self.path)


# --- GroupLens ---------------------------------------------------------------


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    # tfds decodes every GroupLens file as ISO-8859-1 and strips each line.
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(
            f"{path} is missing: a GroupLens ml-100k folder holds "
            f"{', '.join(GROUPLENS_FILES)}; point --data-source grouplens:PATH "
            "at such a folder"
        ) from None
    except OSError as e:
        raise DataError(f"{path} cannot be read ({e.strerror})") from None
    for number, line in enumerate(data.decode("iso-8859-1").splitlines(), 1):
        line = line.strip()
        if line:
            yield number, line


def _fields(path: Path, number: int, line: str, sep: str, count: int) -> list[str]:
    fields = line.split(sep)
    if len(fields) != count:
        raise DataError(
            f"{path} line {number}: expected {count} {sep!r}-separated fields, "
            f"found {len(fields)} in {line[:60]!r}; the file is not GroupLens "
            "ml-100k format"
        )
    return fields


def _number(path: Path, number: int, value: str, kind: type, what: str):
    try:
        return kind(value)
    except ValueError:
        raise DataError(
            f"{path} line {number}: {what} {value!r} is not a valid "
            f"{kind.__name__}; the file is not GroupLens ml-100k format"
        ) from None


def _bucketize_age(age: int) -> int:
    bucket = 1
    for threshold in AGE_THRESHOLDS:
        if age < threshold:
            break
        bucket = threshold
    return bucket


def _user(user_id: str, age: int, gender: str, occupation: str, zip_code: str) -> User:
    return User(
        user_id=user_id,
        user_gender=gender == "M",
        bucketized_user_age=float(_bucketize_age(age)),
        raw_user_age=float(age),
        user_occupation_label=OCCUPATION_NAMES.index(OCCUPATION_LABELS[occupation]),
        user_occupation_text=occupation,
        user_zip_code=zip_code,
    )


def _check_occupation(path: Path, number: int, occupation: str) -> None:
    if occupation not in OCCUPATION_LABELS:
        raise DataError(
            f"{path} line {number}: unknown occupation {occupation!r}; expected "
            f"one of {', '.join(sorted(OCCUPATION_LABELS))}"
        )


def _ratings(
    path: Path, rows: list[tuple[int, list[str]]], users: dict, movies: dict
) -> tuple[np.ndarray, ...]:
    user_ids, movie_ids, ratings, stamps = [], [], [], []
    for number, (uid, mid, rating, stamp) in rows:
        if uid not in users:
            raise DataError(f"{path} line {number}: user {uid!r} is not a known user")
        if mid not in movies:
            raise DataError(f"{path} line {number}: movie {mid!r} is not a known movie")
        user_ids.append(uid)
        movie_ids.append(mid)
        ratings.append(_number(path, number, rating, float, "rating"))
        stamps.append(_number(path, number, stamp, int, "timestamp"))
    if not user_ids:
        raise DataError(f"{path} holds no ratings")
    return (
        np.array(user_ids),
        np.array(movie_ids),
        np.array(ratings, dtype=np.float32),
        np.array(stamps, dtype=np.int64),
    )


def read_grouplens(folder: Path) -> MovieLens:
    """Parses a GroupLens `ml-100k` folder with tfds's rules.

    Args:
        folder: The folder holding `u.data`, `u.item` and `u.user`.

    Returns:
        The records tfds would produce from that folder.

    Raises:
        DataError: A file is missing or a line is malformed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(
            f"{folder} is not a folder: expected a GroupLens ml-100k folder "
            f"holding {', '.join(GROUPLENS_FILES)}"
        )
    movies = {}
    path = folder / "u.item"
    for number, line in _lines(path):
        fields = _fields(path, number, line, "|", 5 + len(GROUPLENS_GENRES))
        flags = fields[5:]
        if any(flag not in ("0", "1") for flag in flags):
            raise DataError(
                f"{path} line {number}: genre flags must be 0 or 1, found "
                f"{'|'.join(flags)}"
            )
        genres = tuple(
            GENRE_NAMES.index(GROUPLENS_GENRES[i])
            for i, flag in enumerate(flags)
            if flag == "1"
        )
        movies[fields[0]] = Movie(fields[0], fields[1], genres)

    users = {}
    path = folder / "u.user"
    for number, line in _lines(path):
        uid, age, gender, occupation, zip_code = _fields(path, number, line, "|", 5)
        _check_occupation(path, number, occupation)
        users[uid] = _user(
            uid, _number(path, number, age, int, "age"), gender, occupation, zip_code
        )

    path = folder / "u.data"
    rows = [(n, _fields(path, n, line, "\t", 4)) for n, line in _lines(path)]
    return MovieLens(
        tuple(movies.values()), users, *_ratings(path, rows, users, movies)
    )


def grouplens_checksum(folder: Path) -> str:
    """SHA-256 over the three GroupLens files (missing ones give a DataError)."""
    digest = hashlib.sha256()
    for name in GROUPLENS_FILES:
        path = Path(folder) / name
        try:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        except FileNotFoundError:
            raise DataError(
                f"{path} is missing: a GroupLens ml-100k folder holds "
                f"{', '.join(GROUPLENS_FILES)}"
            ) from None
    return digest.hexdigest()


# --- RecBole -------------------------------------------------------------------


def recbole_title(title: str, year: str) -> str:
    """Rebuilds the GroupLens title, which RecBole split into title and year.

    RecBole moved the last parenthesized part of the title into its own column
    (so "... (1995) (V)" became title "... (1995)" and year "V").
    """
    if title == RECBOLE_UNKNOWN and year == RECBOLE_UNKNOWN:
        return "unknown"
    return f"{title} ({year})"


def _recbole_rows(name: str, text: str, columns: int) -> Iterator[tuple[int, list]]:
    lines = text.split("\n")
    for number, line in enumerate(lines[1:], 2):  # the first line is a header
        line = line.rstrip("\r")
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) != columns:
            raise DataError(
                f"{name} line {number}: expected {columns} tab-separated fields, "
                f"found {len(fields)}"
            )
        yield number, fields


def parse_recbole(inter: str, item: str, user: str, name: str = "recbole") -> MovieLens:
    """Parses RecBole's atomic files (`.inter`, `.item`, `.user`) of ml-100k.

    RecBole differs from GroupLens in a few ways undone here: titles lack the
    year, which has its own column; genres are names, not 19 flags; the text is
    UTF-8 rather than ISO-8859-1 (the decoded strings are the same).

    Args:
        inter: The text of `ml-100k.inter`.
        item: The text of `ml-100k.item`.
        user: The text of `ml-100k.user`.
        name: How to name the source in errors.

    Returns:
        Records identical to what tfds parses from the GroupLens files.
    """
    spelled = {g.lower(): g for g in GROUPLENS_GENRES}
    spelled["children's"] = "Children"  # GroupLens's spelling; tfds drops the 's
    movies = {}
    for number, (mid, title, year, classes) in _recbole_rows(f"{name}.item", item, 4):
        unknown = [c for c in classes.split() if c.lower() not in spelled]
        if unknown:
            raise DataError(f"{name}.item line {number}: unknown genre {unknown[0]!r}")
        present = {spelled[c.lower()] for c in classes.split()}
        genres = tuple(GENRE_NAMES.index(g) for g in GROUPLENS_GENRES if g in present)
        movies[mid] = Movie(mid, recbole_title(title, year), genres)

    users = {}
    for number, fields in _recbole_rows(f"{name}.user", user, 5):
        uid, age, gender, occupation, zip_code = fields
        _check_occupation(Path(f"{name}.user"), number, occupation)
        age = _number(Path(f"{name}.user"), number, age, int, "age")
        users[uid] = _user(uid, age, gender, occupation, zip_code)

    rows = list(_recbole_rows(f"{name}.inter", inter, 4))
    return MovieLens(
        tuple(movies.values()),
        users,
        *_ratings(Path(f"{name}.inter"), rows, users, movies),
    )


def read_recbole(wheel: Path) -> MovieLens:
    """Reads MovieLens 100k from the data files inside a recbole 1.2.1 wheel."""
    texts = _recbole_texts(wheel)
    return parse_recbole(texts["inter"], texts["item"], texts["user"], name=str(wheel))


def _recbole_texts(wheel: Path) -> dict[str, str]:
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = {
                key: archive.read(member) for key, member in RECBOLE_MEMBERS.items()
            }
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise DataError(
            f"{wheel} is not a usable {RECBOLE_REQUIREMENT} wheel ({e}); delete it "
            "and run again to fetch it anew"
        ) from None
    for key, blob in data.items():
        if hashlib.sha256(blob).hexdigest() != RECBOLE_SHA256[key]:
            raise DataError(
                f"{wheel}: {RECBOLE_MEMBERS[key]} does not match the "
                f"{RECBOLE_REQUIREMENT} release; delete the wheel and run again"
            )
    return {key: blob.decode("utf-8") for key, blob in data.items()}


def recbole_checksum() -> str:
    """The RecBole copy's checksum: fixed, since its file hashes are pinned."""
    digest = hashlib.sha256()
    for key in sorted(RECBOLE_SHA256):
        digest.update(bytes.fromhex(RECBOLE_SHA256[key]))
    return digest.hexdigest()


def fetch_recbole(downloads: Path) -> Path:
    """Returns the recbole wheel under `downloads`, fetching it with pip if absent.

    Only the wheel is downloaded (`--no-deps`); it is read as a zip archive.

    Raises:
        DataError: pip could not fetch the wheel.
    """
    wheel = Path(downloads) / RECBOLE_WHEEL
    if wheel.is_file():
        return wheel
    downloads.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
        "--only-binary=:all:", "--dest", str(downloads), RECBOLE_REQUIREMENT,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not wheel.is_file():
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(
            f"could not fetch the {RECBOLE_REQUIREMENT} wheel with pip ({last}); "
            "check access to the package index, or use --data-source "
            "grouplens:PATH with a GroupLens ml-100k folder"
        )
    return wheel


# --- tfds ----------------------------------------------------------------------


def tfds_data_dir() -> Path:
    """Tfds's data folder: `TFDS_DATA_DIR`, else `~/tensorflow_datasets`."""
    return Path(os.environ.get("TFDS_DATA_DIR", Path.home() / "tensorflow_datasets"))


def tfds_prepared_files(data_dir: Path) -> list[Path]:
    """The files of tfds's prepared 100k copies, or [] if either is missing."""
    files = []
    for name in (TFDS_RATINGS, TFDS_MOVIES):
        infos = sorted((Path(data_dir) / name).glob("*/dataset_info.json"))
        if not infos:
            return []
        files.extend(sorted(p for p in infos[-1].parent.iterdir() if p.is_file()))
    return files


def tfds_checksum(data_dir: Path) -> str:
    """SHA-256 over tfds's prepared files; for a download-to-be, a fixed name."""
    files = tfds_prepared_files(data_dir)
    if not files:
        return hashlib.sha256(b"tfds:" + TFDS_RATINGS.encode()).hexdigest()
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_tfds(data_dir: Path | None) -> MovieLens:
    """Loads MovieLens 100k through tensorflow-datasets (downloading if needed)."""
    import tensorflow_datasets as tfds

    try:
        ratings = tfds.load(TFDS_RATINGS, split="train", data_dir=data_dir)
        movie_set = tfds.load(TFDS_MOVIES, split="train", data_dir=data_dir)
    except Exception as e:  # tfds raises many kinds; all mean "not available"
        raise DataError(
            f"tensorflow-datasets could not load {TFDS_RATINGS} ({type(e).__name__}: "
            f"{str(e)[:200]}); use --data-source recbole or grouplens:PATH"
        ) from None
    movies = tuple(
        Movie(
            _text(m["movie_id"]),
            _text(m["movie_title"]),
            tuple(int(g) for g in m["movie_genres"]),
        )
        for m in tfds.as_numpy(movie_set)
    )
    users: dict[str, User] = {}
    columns: dict[str, list] = {k: [] for k in ("uid", "mid", "rating", "ts")}
    for r in tfds.as_numpy(ratings):
        uid = _text(r["user_id"])
        if uid not in users:
            users[uid] = User(
                user_id=uid,
                user_gender=bool(r["user_gender"]),
                bucketized_user_age=float(r["bucketized_user_age"]),
                raw_user_age=float(r["raw_user_age"]),
                user_occupation_label=int(r["user_occupation_label"]),
                user_occupation_text=_text(r["user_occupation_text"]),
                user_zip_code=_text(r["user_zip_code"]),
            )
        columns["uid"].append(uid)
        columns["mid"].append(_text(r["movie_id"]))
        columns["rating"].append(float(r["user_rating"]))
        columns["ts"].append(int(r["timestamp"]))
    return MovieLens(
        movies,
        users,
        np.array(columns["uid"]),
        np.array(columns["mid"]),
        np.array(columns["rating"], dtype=np.float32),
        np.array(columns["ts"], dtype=np.int64),
    )


# --- choosing a source ---------------------------------------------------------


def resolve_source(spec: str, downloads: Path) -> Source:
    """Turns a `--data-source` value into a `Source`.

    Args:
        spec: `auto`, `tfds`, `grouplens:PATH` or `recbole`.
        downloads: Where the RecBole wheel is kept.

    Returns:
        The source to read, with its checksum.

    Raises:
        DataError: The value is not one of the above, or its data is missing.
    """
    if spec == "auto":
        return _auto_source(downloads)
    if spec == "tfds":
        return Source("tfds", tfds_data_dir(), tfds_checksum(tfds_data_dir()))
    if spec == "recbole":
        return _recbole_source(downloads)
    if spec.startswith("grouplens:") and spec[len("grouplens:") :]:
        folder = Path(spec[len("grouplens:") :]).expanduser()
        if not folder.is_dir():
            raise DataError(
                f"--data-source {spec}: {folder} is not a folder; expected a "
                f"GroupLens ml-100k folder holding {', '.join(GROUPLENS_FILES)}"
            )
        return Source("grouplens", folder, grouplens_checksum(folder))
    raise DataError(
        f"--data-source {spec!r} is not known; expected auto, tfds, recbole or "
        "grouplens:PATH"
    )


def _recbole_source(downloads: Path) -> Source:
    wheel = Path(downloads) / RECBOLE_WHEEL
    # The checksum is pinned, so a cache built from the wheel is found without it.
    return Source("recbole", wheel, recbole_checksum())


def _auto_source(downloads: Path) -> Source:
    if tfds_prepared_files(tfds_data_dir()):
        return Source("tfds", tfds_data_dir(), tfds_checksum(tfds_data_dir()))
    folder = os.environ.get("SWEEP_MOVIELENS_DIR")
    if folder:
        return resolve_source(f"grouplens:{folder}", downloads)
    return _recbole_source(downloads)
