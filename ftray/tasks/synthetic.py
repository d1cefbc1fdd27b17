"""A synthetic task of ViGGO's shape, generated in code: sentence -> meaning representation.

Game and developer names are made up from syllables (thousands of them), and the names seen in
validation and test never occur in training, so a model scores only by learning to copy and to
compose slots, not by memorising values. Deterministic for a seed; needs no files and no hub.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Sequence

from ftray.checks import is_int
from ftray.errors import FtrayInputError
from ftray.tasks.metrics import mr_metrics, mr_rows
from ftray.tasks.base import Example, ScoreRows, Task
from ftray.tasks.metrics import MR_METRIC_NAMES as MR_METRICS

SYLLABLES = ["ka", "lo", "mir", "zen", "tor", "vel", "qua", "rin", "bo", "sha", "dra", "ex", "pol", "ny", "gar",
             "fi", "lum", "os", "tek", "ra", "vox", "ji", "mo", "sel", "cor", "ul", "pha", "din", "wy", "ber"]
TITLE_WORDS = ["Quest", "Legends", "Rising", "Tactics", "Odyssey", "Arena", "Chronicles", "Rush", "Saga", "Frontier"]
STUDIO_WORDS = ["Games", "Studios", "Interactive", "Works", "Soft", "Labs"]
GENRES = ["action", "adventure", "puzzle", "racing", "shooter", "strategy", "simulation", "platformer",
          "role-playing", "sport", "fighting", "music", "horror", "survival", "trivia"]
PLATFORMS = ["PC", "PlayStation", "Xbox", "Nintendo Switch", "Android", "iOS"]
RATINGS = ["poor", "average", "good", "excellent"]
PERSPECTIVES = ["first person", "third person", "side view", "bird view"]


def _word(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(n)).capitalize()


def _names(seed: int, count: int, studio: bool) -> list[str]:
    rng = random.Random(f"{seed}-{'studio' if studio else 'game'}")
    seen: set[str] = set()
    out = []
    while len(out) < count:
        base = _word(rng, rng.choice((2, 2, 3)))
        extra = rng.choice(STUDIO_WORDS) if studio else rng.choice(TITLE_WORDS + [""] * 4)
        name = f"{base} {extra}".strip()
        if name not in seen:
            seen.add(name)
            out.append(name)
    return out


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _mr(act: str, slots: list[tuple[str, list[str]]]) -> str:
    return f"{act}(" + ", ".join(f"{k}[{', '.join(v)}]" for k, v in slots) + ")"


def _example(rng: random.Random, names: list[str], studios: list[str]) -> tuple[str, str, str]:
    name, studio = rng.choice(names), rng.choice(studios)
    genres = rng.sample(GENRES, rng.choice((1, 1, 2, 3)))
    platforms = rng.sample(PLATFORMS, rng.choice((1, 2)))
    year, rating, view = str(rng.randint(1990, 2024)), rng.choice(RATINGS), rng.choice(PERSPECTIVES)
    g, p = _join(genres), _join(platforms)
    act = rng.choice(["inform", "inform", "confirm", "give_opinion", "suggest", "request"])
    if act == "inform":
        slots = [("name", [name]), ("release_year", [year]), ("genres", genres), ("platforms", platforms)]
        text = rng.choice([
            f"{name} is a {g} game from {year} for {p}.",
            f"Released in {year}, {name} is a {g} game on {p}.",
            f"{name} came out in {year}; it is a {g} game you can play on {p}.",
        ])
        if rng.random() < 0.5:
            slots.append(("developer", [studio]))
            text = text[:-1] + f", made by {studio}."
    elif act == "confirm":
        slots = [("name", [name]), ("developer", [studio])]
        text = rng.choice([f"Was {name} made by {studio}?", f"Did {studio} develop {name}?"])
    elif act == "give_opinion":
        slots = [("name", [name]), ("rating", [rating]), ("genres", genres)]
        text = rng.choice([f"I think {name} is a {rating} {g} game.", f"As {g} games go, {name} is {rating}."])
    elif act == "suggest":
        slots = [("name", [name]), ("platforms", platforms), ("player_perspective", [view])]
        text = rng.choice([f"Have you tried {name}, a {view} game on {p}?",
                           f"You might like {name}: it plays in {view} on {p}."])
    else:
        slots = [("genres", genres), ("release_year", [year])]
        text = rng.choice([f"Is there a {g} game from {year} that you liked?",
                           f"What {g} games from {year} do you enjoy?"])
    return text, _mr(act, slots), act


@dataclass(frozen=True)
class SyntheticTask(Task):
    n_train: int = 4000
    n_valid: int = 200
    n_test: int = 200
    seed: int = 0

    def __post_init__(self):
        for f in ("n_train", "n_valid", "n_test"):
            v = getattr(self, f)
            if not is_int(v, 1, plain=True):
                raise FtrayInputError(f"SyntheticTask.{f} must be an int >= 1, got {v!r}")
        if not isinstance(self.seed, int):
            raise FtrayInputError(f"SyntheticTask.seed must be an int, got {self.seed!r}")

    @property
    def name(self) -> str:
        return "synthetic"

    @property
    def metric_names(self) -> tuple[str, ...]:
        return MR_METRICS

    def examples(self, split: str) -> list[Example]:
        return list(_generate(self.n_train, self.n_valid, self.n_test, self.seed)[split])

    def score(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
        return mr_metrics(predictions, [e.completion.strip() for e in examples])

    def score_rows(self, predictions: Sequence[str], examples: Sequence[Example]) -> ScoreRows:
        return mr_rows(predictions, [e.completion.strip() for e in examples])


@functools.lru_cache(maxsize=8)
def _generate(n_train: int, n_valid: int, n_test: int, seed: int) -> dict[str, tuple[Example, ...]]:
    games, studios = _names(seed, 6000, studio=False), _names(seed, 1500, studio=True)
    # Names for held-out splits are never used in training: scoring rewards copying, not recall.
    cut_g, cut_s = int(len(games) * 0.8), int(len(studios) * 0.8)
    pools = {"train": (games[:cut_g], studios[:cut_s]), "valid": (games[cut_g:], studios[cut_s:]),
             "test": (games[cut_g:], studios[cut_s:])}
    out = {}
    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        rng = random.Random(f"{seed}-{split}")
        names, st = pools[split]
        rows = [_example(rng, names, st) for _ in range(n)]
        out[split] = tuple(Example(f"Sentence: {t}\nMeaning representation:", " " + mr, {"dialogue_act": act})
                           for t, mr, act in rows)
    return out
