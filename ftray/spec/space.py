"""A sweep's search space: Ray Tune's sampling primitives, checked, and written as JSON data and back.

Space entries are constants or Tune primitives: `tune.choice`, `tune.uniform` / `loguniform` /
`quniform` / `qloguniform`, `tune.randint` / `lograndint` / `qrandint`, and `tune.grid_search`.
"""

from __future__ import annotations

from typing import Any, Mapping

from ray.tune.search.sample import Categorical, Domain, Float, Integer

from ftray.errors import FtrayInputError


def is_grid(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"grid_search"}


def is_domain(value: Any) -> bool:
    return isinstance(value, Domain)


def domain_to_data(value: Any) -> dict:
    """A space entry as JSON data, e.g. {"float": "loguniform", "lower": 0.001, "upper": 0.01}."""
    if isinstance(value, Categorical):
        return {"choice": list(value.categories)}
    if is_grid(value):
        return {"grid_search": list(value["grid_search"])}
    if isinstance(value, (Float, Integer)):
        sampler = value.sampler
        q = getattr(sampler, "q", None)
        kind = type(getattr(sampler, "sampler", sampler)).__name__.lstrip("_").lower()
        return {"int" if isinstance(value, Integer) else "float": kind, "lower": value.lower, "upper": value.upper,
                **({"q": q} if q is not None else {})}
    if isinstance(value, Domain):
        return {"code": repr(value)}  # a function of the config: only the sweep file can rebuild it
    return {"value": value}


def domain_from_data(d: Mapping) -> Any:
    """The space entry `domain_to_data` described (None when it was code)."""
    from ray import tune

    if "choice" in d:
        return tune.choice(d["choice"])
    if "grid_search" in d:
        return tune.grid_search(d["grid_search"])
    if "value" in d:
        return d["value"]
    kind = "float" if "float" in d else "int" if "int" in d else None
    q, log = d.get("q"), d.get(kind) == "loguniform"
    if kind is None or d[kind] not in ("uniform", "loguniform"):
        return None
    make = {("float", False): (tune.uniform, tune.quniform), ("float", True): (tune.loguniform, tune.qloguniform),
            ("int", False): (tune.randint, tune.qrandint), ("int", True): (tune.lograndint, tune.qlograndint)}
    plain, quantized = make[(kind, log)]
    return plain(d["lower"], d["upper"]) if q is None else quantized(d["lower"], d["upper"], q)


def candidate_values(key: str, value: Any) -> list:
    """The values a space entry can take, to validate them (bounds for ranges)."""
    if isinstance(value, Categorical) or is_grid(value):
        values = list(value.categories) if isinstance(value, Categorical) else value["grid_search"]
        if not (isinstance(values, (list, tuple)) and len(values) > 0):
            raise FtrayInputError(f"space[{key!r}] is an empty {'choice' if isinstance(value, Categorical) else 'grid_search'}")
        return list(values)
    if isinstance(value, (Float, Integer)):
        if not value.lower < value.upper:
            raise FtrayInputError(f"space[{key!r}] has lower >= upper ({value.lower}, {value.upper})")
        upper = value.upper - 1 if isinstance(value, Integer) else value.upper
        if key == "data_fraction":  # a float range's upper bound is open in Tune: check it as 1.0 max
            return [value.lower, value.upper] if value.lower > 0 else [value.lower]
        return [value.lower, upper]
    if isinstance(value, Domain):
        raise FtrayInputError(f"space[{key!r}]: {type(value).__name__} is not supported; use tune.choice, "
                              "tune.uniform, tune.loguniform, tune.randint, tune.quniform, tune.grid_search or a constant")
    if isinstance(value, (list, tuple, dict, set)):
        raise FtrayInputError(f"space[{key!r}] must be a constant or a Tune primitive (tune.choice([...])), got {value!r}")
    return [value]
