"""The report's PNGs: the frontier, quality against data, quality against LoRA rank."""

from __future__ import annotations

import os
from typing import Callable, Collection, Sequence

from ftray.results.evidence import Evidence, best_group, mean_objective, source_view
from ftray.results.digits import format_count
from ftray.results.trialresult import TrialResult

# Resamples for the plots' error bars: fewer than the report's, as a bar's end moves by pixels only.
PLOT_RESAMPLES = 1000


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _params_axis(ax, params: Sequence[float]) -> None:
    """A log axis of parameter counts labelled 50K, 100K, 1.5B; 1-2-5 ticks when it spans under 3 decades
    (matplotlib's own minor labels overlap there)."""
    import math

    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    def count(x, _pos=None) -> str:
        return format_count(x, significant=3)  # ticks at 1, 2 and 5 times a power of ten

    ax.set_xscale("log")
    lo, hi = (max(min(params), 1), max(max(params), 1)) if params else (1, 1)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if math.log10(hi / lo) < 3 else (1.0,)))
    ax.xaxis.set_major_formatter(FuncFormatter(count))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _step_front(ax, trials, front: Collection[str], **kwargs):
    """The front as steps; `front` is the run's own (frontier.decide_front), not decided again here."""
    front = sorted((t for t in trials if t.id in set(front)), key=lambda t: t.params)
    if front:
        xs, ys = [], []
        for t in front:
            if xs:  # a step: the best value so far holds until the next larger model beats it
                xs.append(t.params)
                ys.append(ys[-1])
            xs.append(t.params)
            ys.append(t.objective)
        ax.plot(xs, ys, drawstyle="default", **kwargs)


def _error_bars(ax, xs, ys, ivs, **kwargs) -> None:
    """Vertical bars from each interval's low to high end; points without one get none."""
    keep = [(x, y, iv) for x, y, iv in zip(xs, ys, ivs) if iv and iv.get("lo") is not None]
    if keep:
        ax.errorbar([x for x, _, _ in keep], [y for _, y, _ in keep],
                    yerr=[[max(0.0, y - iv["lo"]) for _, y, iv in keep], [max(0.0, iv["hi"] - y) for _, y, iv in keep]],
                    fmt="none", capsize=2, lw=0.8, zorder=1, **kwargs)


def write_plots(trials: Sequence[TrialResult], metric: str, mode: str, out_dir: str, front: Collection[str]) -> list[str]:
    """frontier.png, data_fraction.png, lora_rank.png in out_dir; none when no trial was scored.

    Scores are the analysis' own (held-out test where every trial has it) and `front` the run's front,
    decided on those scores; where trials kept per-row scores, each point carries its interval as an
    error bar.
    """
    source, view, _ = source_view(trials, metric)
    scored = [t for t in view if t.scored]
    if not scored:
        return []
    ev = Evidence(scored, metric, n_boot=PLOT_RESAMPLES)
    plt = _plt()
    paths = []
    better = "higher is better" if mode == "max" else "lower is better"
    shown = f"{metric} ({'test' if source == 'test' else 'validation'}, {better})"
    bars = "; bars: 95% intervals" if ev.draws is not None else ""

    fig, ax = plt.subplots(figsize=(7, 4.5))
    _error_bars(ax, [t.params for t in scored], [t.objective for t in scored],
                [ev.interval(t.objective, ev.reps([t], seeds=False)) for t in scored], ecolor="0.55")
    sc = ax.scatter([t.params for t in scored], [t.objective for t in scored],
                    c=[t.data_fraction for t in scored], cmap="viridis", s=45, edgecolors="k", linewidths=0.5,
                    vmin=0, vmax=1, zorder=2)
    _step_front(ax, scored, front, color="crimson", lw=1.5, label="frontier")
    for t in scored:
        if t.id in set(front):
            ax.annotate(t.model, (t.params, t.objective), textcoords="offset points", xytext=(4, 4), fontsize=8)
    fig.colorbar(sc, ax=ax, label="data fraction")
    _params_axis(ax, [t.params for t in scored])
    ax.set_xlabel("model parameters")
    ax.set_ylabel(shown)
    ax.set_title(f"{metric} against model size: the frontier{bars}")
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    paths.append(_save(fig, out_dir, "frontier.png"))

    for key, name, label in ((lambda t: t.data_fraction, "data_fraction.png", "data fraction"),
                             (lambda t: t.lora_rank, "lora_rank.png", "LoRA rank")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, model in enumerate(sorted({t.model for t in scored},
                                         key=lambda m: min(t.params for t in scored if t.model == m))):
            xs, ys, ivs = _best_per_value(scored, model, key, mode, ev)
            _error_bars(ax, xs, ys, ivs, ecolor=f"C{i}")
            ax.plot(xs, ys, marker="o", label=model, color=f"C{i}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(label)
        ax.set_ylabel(f"best {shown}")
        ax.set_title(f"{metric} against {label}, one line per model size{bars}")
        ax.legend(loc="best")
        ax.grid(alpha=0.3)
        paths.append(_save(fig, out_dir, name))
    return paths


def _best_per_value(scored: Sequence[TrialResult], model: str, key: Callable[[TrialResult], float | None], mode: str,
                    ev: Evidence):
    """Per value of a setting (`key` reads it), the best configuration's mean over its seeds and its interval
    (rows and seeds)."""
    by_value: dict = {}
    for t in scored:
        if t.model == model and key(t) is not None:
            by_value.setdefault(key(t), []).append(t)
    xs = sorted(by_value)
    groups = [best_group(by_value[x], mode) for x in xs]
    ys = [mean_objective(g) for g in groups]
    return xs, ys, [ev.interval(y, ev.reps(g)) for y, g in zip(ys, groups)]


def compare_plot(runs: Sequence[tuple[str, Sequence[TrialResult], Collection[str]]], metric: str, path: str) -> str:
    """The fronts of several runs on one plot: each run as (label, its trials as its front's scores show
    them (`source_view`), its front)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, trials, front) in enumerate(runs):
        scored = [t for t in trials if t.scored]
        color = f"C{i}"
        ax.scatter([t.params for t in scored], [t.objective for t in scored], color=color, alpha=0.35, s=25)
        _step_front(ax, scored, front, color=color, lw=1.8, label=label)
    _params_axis(ax, [t.params for _, trials, _ in runs for t in trials if t.scored])
    ax.set_xlabel("model parameters")
    ax.set_ylabel(metric)
    ax.set_title(f"fronts of {len(runs)} sweep runs")
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, os.path.dirname(path) or ".", os.path.basename(path))


def _save(fig, out_dir: str, name: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
