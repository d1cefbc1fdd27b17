"""MR parsing and scoring on real ViGGO lines (copied from the data set's train.csv)."""

import pytest

from ftray.metrics import exact_match, mr_metrics, normalize_mr, parse_mr, rouge_l

DIRT = ("inform(name[Dirt: Showdown], release_year[2012], esrb[E 10+ (for Everyone 10 and Older)], "
        "genres[driving/racing, sport], platforms[PlayStation, Xbox, PC], available_on_steam[no], "
        "has_linux_release[no], has_mac_release[no])")
REQUEST = "request(release_year[2014], specifier[terrible])"
SPELLFORCE = "give_opinion(name[SpellForce 3], release_year[2017], developer[Grimlore Games], rating[poor])"
ATTRIBUTE = "request_attribute(player_perspective[])"


def test_parse_real_viggo_lines():
    mr = parse_mr(DIRT)
    assert mr.act == "inform"
    assert mr.slots["genres"] == {"driving/racing", "sport"}
    assert mr.slots["platforms"] == {"playstation", "xbox", "pc"}
    assert mr.slots["esrb"] == {"e 10+ (for everyone 10 and older)"}  # parentheses inside a value
    assert parse_mr(ATTRIBUTE).slots == {"player_perspective": frozenset()}
    assert parse_mr(REQUEST).act == "request"
    for bad in ("", "inform", "inform(name[x]", "inform(name[x] genres[y])", "the game is fun"):
        assert parse_mr(bad) is None, bad


def test_list_values_are_sets():
    swapped = DIRT.replace("genres[driving/racing, sport]", "genres[sport, driving/racing]")
    assert normalize_mr(swapped) == normalize_mr(DIRT)
    assert mr_metrics([swapped], [DIRT])["exact_match"] == 1.0


def test_partially_right_prediction_worked_by_hand():
    # Reference SPELLFORCE has 4 pairs: name, release_year, developer, rating.
    # The prediction gets name and rating right, release_year wrong, misses developer, adds genres:
    # pairs predicted 4 (name, release_year, rating, genres), true positives 2.
    pred = "give_opinion(name[SpellForce 3], release_year[2016], rating[poor], genres[strategy])"
    # Second pair: unparseable prediction for REQUEST (2 reference pairs, all missed).
    m = mr_metrics([pred, "no idea"], [SPELLFORCE, REQUEST])
    assert m["slot_precision"] == pytest.approx(2 / 4)
    assert m["slot_recall"] == pytest.approx(2 / 6)
    assert m["slot_f1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    assert m["act_accuracy"] == 0.5 and m["exact_match"] == 0.0
    assert m["parse_failure_rate"] == 0.5


def test_empty_inputs_score_zero():
    assert mr_metrics([], [])["slot_f1"] == 0.0
    assert exact_match([], []) == 0.0


def test_rouge_l_worked_by_hand():
    # LCS of "the cat sat on the mat" and "the cat is on the mat" = "the cat on the mat" (5 tokens):
    # precision 5/6, recall 5/6, F1 5/6.
    assert rouge_l(["the cat sat on the mat"], ["The cat is on the mat"]) == pytest.approx(5 / 6)
    assert rouge_l(["a b"], ["c d"]) == 0.0
    assert exact_match([" Hello  World"], ["hello world"]) == 1.0
