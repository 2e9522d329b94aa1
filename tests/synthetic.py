"""A small synthetic MovieLens 100k, written in GroupLens and in RecBole layout.

It holds the cases the real files have that a parser can get wrong: the movie
titled "unknown" with no date, a title whose last parenthesis is not a year, a
non-ASCII title (ISO-8859-1 in GroupLens, UTF-8 in RecBole), "Children's",
the "unknown" genre, several genres per movie, ages on the bucket thresholds,
occupations that tfds merges, zip codes with letters and leading zeros.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

GENRE_FLAGS = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip

MOVIES = [
    ("Toy Story (1995)", "01-Jan-1995", ["Animation", "Children's", "Comedy"]),
    ("GoldenEye (1995)", "01-Jan-1995", ["Action", "Adventure", "Thriller"]),
    ("unknown", "", ["unknown"]),
    ("Misérables, Les (1995)", "01-Jan-1995", ["Drama", "Musical"]),
    ("Land Before Time III: The Time of the Great Giving (1995) (V)", "", [
        "Animation", "Children's"]),
    ("Shanghai Triad (Yao a yao yao dao waipo qiao) (1995)", "01-Jan-1995", ["Drama"]),
    ("Good Morning (1971)", "4-Feb-1971", ["unknown"]),
    ("Star Wars (1977)", "01-Jan-1977", [
        "Action", "Adventure", "Romance", "Sci-Fi", "War"]),
    ("Fargo (1996)", "14-Feb-1997", ["Crime", "Drama", "Thriller"]),
    ("Blade Runner (1982)", "01-Jan-1982", ["Film-Noir", "Sci-Fi"]),
    ("Heavy Metal (1981)", "08-Mar-1981", [
        "Action", "Adventure", "Animation", "Horror", "Sci-Fi"]),
    ("Nosferatu (Nosferatu, eine Symphonie des Grauens) (1922)", "01-Jan-1922", [
        "Horror"]),
]  # fmt: skip

# Plain movies so that the catalogue exceeds the 100 the metric retrieves.
MOVIES += [
    (f"Filler Picture {n} (19{50 + n % 48})", f"01-Jan-19{50 + n % 48}",
     [GENRE_FLAGS[1 + n % 18], GENRE_FLAGS[1 + (n * 7) % 18]])
    for n in range(1, 139)
]  # fmt: skip

USERS = [
    (1, 24, "M", "technician", "85711"),
    (2, 53, "F", "other", "94043"),
    (3, 17, "M", "student", "T8H1N"),
    (4, 18, "F", "none", "01002"),
    (5, 25, "M", "healthcare", "15213"),
    (6, 56, "F", "doctor", "98101"),
    (7, 73, "M", "administrator", "05201"),
    (8, 7, "F", "salesman", "E2A4H"),
]


def ratings(count: int = 600, seed: int = 0) -> list[tuple[int, int, int, int]]:
    """Seeded ratings covering every user and every movie."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        user = USERS[i % len(USERS)][0]
        movie = i % len(MOVIES) + 1
        rows.append((user, movie, int(rng.integers(1, 6)), 874724710 + 97 * i))
    return rows


def write_grouplens(folder: Path, rows=None) -> Path:
    """Writes u.item, u.user and u.data as GroupLens does (ISO-8859-1)."""
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for number, (title, date, genres) in enumerate(MOVIES, 1):
        flags = "|".join("1" if g in genres else "0" for g in GENRE_FLAGS)
        url = "" if title == "unknown" else "http://us.imdb.com/M/title-exact?x"
        items.append(f"{number}|{title}|{date}||{url}|{flags}\n")
    (folder / "u.item").write_bytes("".join(items).encode("iso-8859-1"))
    (folder / "u.user").write_text(
        "".join(f"{u}|{a}|{g}|{o}|{z}\n" for u, a, g, o, z in USERS)
    )
    (folder / "u.data").write_text(
        "".join(f"{u}\t{m}\t{r}\t{t}\n" for u, m, r, t in rows or ratings())
    )
    return folder


def recbole_title(title: str) -> tuple[str, str]:
    """Splits a GroupLens title the way RecBole's conversion did."""
    match = re.fullmatch(r"(.*) \(([^()]*)\)", title)
    if not match:
        return "unkonwn", "unkonwn"
    return match.group(1), match.group(2)


def recbole_texts(rows=None) -> dict[str, str]:
    """The three RecBole atomic files of the same data, as text."""
    item = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    for number, (title, _, genres) in enumerate(MOVIES, 1):
        name, year = recbole_title(title)
        item.append(f"{number}\t{name}\t{year}\t{' '.join(genres)}")
    user = ["user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"]
    user += [f"{u}\t{a}\t{g}\t{o}\t{z}" for u, a, g, o, z in USERS]
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    inter += [f"{u}\t{m}\t{r}\t{t}" for u, m, r, t in rows or ratings()]
    return {
        "inter": "\n".join(inter) + "\n",
        "item": "\n".join(item) + "\n",
        "user": "\n".join(user) + "\n",
    }
