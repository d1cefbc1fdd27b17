"""A synthetic task of ViGGO's shape, generated in code: sentence -> meaning representation.

Game and developer names are made up from syllables (thousands of them), and the names seen in
validation and test never occur in training, so a model scores only by learning to copy names and to
compose slots, not by memorising values. Every act has several sentence templates and a random set of
optional slots, so the model has to read the sentence to know which slots the MR holds.
Deterministic for a seed; needs no files and no hub.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Sequence

from ftray.errors import FtrayInputError
from ftray.metrics import MR_METRIC_NAMES, mr_metrics
from ftray.tasks.base import Example, Task

SYLLABLES = ["ka", "lo", "mir", "zen", "tor", "vel", "qua", "rin", "bo", "sha", "dra", "ex", "pol", "ny", "gar",
             "fi", "lum", "os", "tek", "ra", "vox", "ji", "mo", "sel", "cor", "ul", "pha", "din", "wy", "ber"]
TITLE_WORDS = ["Quest", "Legends", "Rising", "Tactics", "Odyssey", "Arena", "Chronicles", "Rush", "Saga", "Frontier"]
STUDIO_WORDS = ["Games", "Studios", "Interactive", "Works", "Soft", "Labs"]
GENRES = ["action", "adventure", "puzzle", "racing", "shooter", "strategy", "simulation", "platformer",
          "role-playing", "sport", "fighting", "music", "horror", "survival", "trivia"]
PLATFORMS = ["PC", "PlayStation", "Xbox", "Nintendo Switch", "Android", "iOS"]
RATINGS = ["poor", "average", "good", "excellent"]
PERSPECTIVES = ["first person", "third person", "side view", "bird view"]

# MR slots always come in this order, as in ViGGO, so the target text has one right spelling. It is also
# the order in which sentences mention them, so a model can mostly copy from left to right.
SLOT_ORDER = ["name", "rating", "genres", "developer", "release_year", "player_perspective", "platforms"]
CLAUSE_SLOTS = ["developer", "release_year", "player_perspective", "platforms"]  # stated after the noun
HELD_OUT_SHARE = 0.2  # of the name pools, kept for valid and test only
N_GAMES, N_STUDIOS = 6000, 1500


@dataclass(frozen=True)
class SyntheticTask(Task):
    n_train: int = 4000
    n_valid: int = 200
    n_test: int = 200
    seed: int = 0

    def __post_init__(self):
        for field in ("n_train", "n_valid", "n_test"):
            v = getattr(self, field)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise FtrayInputError(f"SyntheticTask.{field} must be an int > 0, got {v!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise FtrayInputError(f"SyntheticTask.seed must be an int, got {self.seed!r}")

    @property
    def name(self) -> str:
        return "synthetic"

    @property
    def metric_names(self) -> tuple[str, ...]:
        return MR_METRIC_NAMES

    def examples(self, split: str) -> list[Example]:
        splits = _generate(self.n_train, self.n_valid, self.n_test, self.seed)
        if split not in splits:
            raise ValueError(f"unknown split {split!r}; expected one of {', '.join(splits)}")
        return list(splits[split])

    def score(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
        return mr_metrics(predictions, [e.completion.strip() for e in examples])


@functools.lru_cache(maxsize=8)
def _generate(n_train: int, n_valid: int, n_test: int, seed: int) -> dict[str, tuple[Example, ...]]:
    games = _unique_names(random.Random(f"{seed}-games"), N_GAMES, _game_name)
    studios = _unique_names(random.Random(f"{seed}-studios"), N_STUDIOS, _studio_name)
    cut_g, cut_s = int(N_GAMES * (1 - HELD_OUT_SHARE)), int(N_STUDIOS * (1 - HELD_OUT_SHARE))
    pools = {"train": (games[:cut_g], studios[:cut_s])}
    pools["valid"] = pools["test"] = (games[cut_g:], studios[cut_s:])
    out = {}
    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        # One generator per split: the first k training rows do not depend on n_valid or n_test.
        rng = random.Random(f"{seed}-{split}")
        rows = []
        for _ in range(n):
            sentence, mr, act = _sample(rng, *pools[split])
            rows.append(Example(f"Sentence: {sentence}\nMeaning representation:", " " + mr, {"dialogue_act": act}))
        out[split] = tuple(rows)
    return out


# ---- names ---------------------------------------------------------------------------------------

def _word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 2, 3)))).capitalize()


def _game_name(rng: random.Random) -> str:
    word = _word(rng)
    return f"{word} {rng.choice(TITLE_WORDS)}" if rng.random() < 0.6 else word


def _studio_name(rng: random.Random) -> str:
    return f"{_word(rng)} {rng.choice(STUDIO_WORDS)}"


def _unique_names(rng: random.Random, count: int, make) -> list[str]:
    seen: dict[str, None] = {}  # a dict keeps first-seen order, so the pools are deterministic
    while len(seen) < count:
        seen.setdefault(make(rng), None)
    return list(seen)


# ---- sentences and MRs ---------------------------------------------------------------------------

def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _mr(act: str, slots: dict[str, list[str]]) -> str:
    inner = ", ".join(f"{k}[{', '.join(slots[k])}]" for k in SLOT_ORDER if k in slots)
    return f"{act}({inner})"


def _values(rng: random.Random, name: str, studio: str) -> dict[str, list[str]]:
    """One value for every slot; each act then keeps the ones it mentions."""
    return {
        "name": [name],
        "developer": [studio],
        "release_year": [str(rng.randint(1990, 2024))],
        "rating": [rng.choice(RATINGS)],
        "genres": rng.sample(GENRES, rng.choice((1, 1, 2, 3))),
        "player_perspective": [rng.choice(PERSPECTIVES)],
        "platforms": rng.sample(PLATFORMS, rng.choice((1, 1, 2, 3))),
    }


def _clause(rng: random.Random, slot: str, v: dict[str, list[str]]) -> str:
    """A phrase that states one slot after the noun ("released in 2012", "on PC and Xbox")."""
    value = _join(v[slot])
    return rng.choice({
        "developer": [f"made by {value}", f"developed by {value}"],
        "release_year": [f"released in {value}", f"from {value}"],
        "platforms": [f"on {value}", f"for {value}"],
        "player_perspective": [f"with a {value} perspective"],
    }[slot])


def _noun(rng: random.Random, keep: list[str], v: dict[str, list[str]], article: bool = True) -> str:
    """'an excellent racing and sport game made by X on PC': adjectives, the noun, then clauses."""
    adjectives = [_join(v[s]) for s in ("rating", "genres") if s in keep]
    words = " ".join(adjectives + ["game"])
    clauses = [_clause(rng, s, v) for s in CLAUSE_SLOTS if s in keep]
    return " ".join([_a(words) if article else words] + clauses)


def _pick(rng: random.Random, optional: list[str], low: int, high: int) -> list[str]:
    return rng.sample(optional, rng.randint(low, high))


def _sample(rng: random.Random, names: list[str], studios: list[str]) -> tuple[str, str, str]:
    """(sentence, MR, dialogue act) for one random game."""
    v = _values(rng, rng.choice(names), rng.choice(studios))
    name = v["name"][0]
    act = rng.choice(["inform", "inform", "request", "confirm", "give_opinion", "suggest"])
    if act == "inform":
        keep = ["name", "genres", *_pick(rng, ["release_year", "developer", "platforms", "player_perspective"], 1, 3)]
        noun = _noun(rng, keep, v)
        sentence = rng.choice([f"{name} is {noun}.", f"Let me tell you about {name}: it is {noun}.",
                               f"You may know {name}, {noun}."])
    elif act == "request":
        keep = _pick(rng, ["genres", "release_year", "platforms", "player_perspective"], 1, 2)
        template = rng.choice(["Is there {} that you really liked?", "What is your favorite {}?",
                               "Can you name {} that you enjoyed?"])
        sentence = template.format(_noun(rng, keep, v, article="favorite" not in template))
    elif act == "confirm":
        keep = ["name", *_pick(rng, ["developer", "release_year", "platforms"], 1, 2)]
        clauses = ", ".join(_clause(rng, s, v) for s in CLAUSE_SLOTS if s in keep)
        sentence = rng.choice([f"Did you mean {name}, the game {clauses}?", f"Are you talking about {name}, {clauses}?",
                               f"Just to check, is it {name}, the one {clauses}?"])
    elif act == "give_opinion":
        keep = ["name", "rating", *_pick(rng, ["genres", "platforms", "player_perspective"], 0, 2)]
        noun = _noun(rng, keep, v)
        sentence = rng.choice([f"I think {name} is {noun}.", f"If you ask me, {name} is {noun}.",
                               f"In my opinion {name} is {noun}."])
    else:  # suggest
        keep = ["name", *_pick(rng, ["genres", "developer", "platforms", "player_perspective"], 1, 2)]
        noun = _noun(rng, keep, v)
        sentence = rng.choice([f"Have you tried {name}, {noun}?", f"You might like {name}, {noun}.",
                               f"How about playing {name}? It is {noun}."])
    return sentence, _mr(act, {k: v[k] for k in keep}), act
