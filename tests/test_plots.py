"""The report's parameter axis: counts labelled 50K, 200K, 1B, readable on narrow and wide ladders."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from ftray.plots import _params_axis  # noqa: E402


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
