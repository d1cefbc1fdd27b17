"""The report's parameter axis: counts labelled 50K, 200K, 1B, readable on narrow and wide ladders."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from ftray.results.plots import _params_axis  # noqa: E402


@pytest.mark.parametrize("params, expected, absent", [
    ([53_408, 787_584], {"100K", "200K", "500K"}, set()),  # under a decade: 1-2-5 ticks
    ([50_000, 7_000_000_000], {"100K", "1M", "10M", "100M", "1B"}, {"200K", "2B"}),  # five decades: powers of 10
])
def test_parameter_axis_labels(params, expected, absent):
    fig, ax = plt.subplots()
    ax.scatter(params, [0.1] * len(params))
    _params_axis(ax, params)
    fig.canvas.draw()
    major = {t.get_text() for t in ax.get_xticklabels() if t.get_text()}
    minor = {t.get_text() for t in ax.get_xticklabels(minor=True) if t.get_text()}
    plt.close(fig)
    assert expected <= major and not (absent & major), major
    assert not minor  # matplotlib's own minor labels are what overlapped


def test_error_bars_where_intervals_exist(tmp_path):
    import numpy as np

    from dataclasses import replace

    from ftray.results.plots import _error_bars, write_plots
    from ftray.results.trialresult import TrialResult

    fig, ax = plt.subplots()
    _error_bars(ax, [1, 2, 3], [0.5, 0.6, 0.7], [{"lo": 0.4, "hi": 0.6}, None, {"lo": None, "hi": None}])
    (bars,) = ax.containers
    assert len(bars.lines[2][0].get_segments()) == 1  # only the point with an interval has a bar
    plt.close(fig)

    rng = np.random.default_rng(0)
    trials = []
    for i, (model, params) in enumerate([("s", 50_000), ("m", 200_000)]):
        for f in (0.5, 1.0):
            hits = (rng.random(40) < 0.4 + 0.2 * i).astype(float)
            trials.append(TrialResult(id=f"{model}{f}", status="TERMINATED", model=model, params=params,
                                      objective=float(hits.mean()), config={"model": model, "data_fraction": f, "lora_rank": 8},
                                      rows={"acc": [[h, 1] for h in hits]}))
    front = ["s1.0", "m1.0"]
    names = [p.rsplit("/", 1)[-1] for p in write_plots(trials, "acc", "max", str(tmp_path / "rows"), front)]
    assert names == ["frontier.png", "data_fraction.png", "lora_rank.png"]
    trials = [replace(t, rows=None) for t in trials]  # an older run folder: the same plots, no bars
    assert len(write_plots(trials, "acc", "max", str(tmp_path / "old"), front)) == 3
