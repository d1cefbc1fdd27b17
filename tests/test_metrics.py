"""MR parsing and scoring on real ViGGO lines (copied from the data set's train.csv)."""

import pytest

from ftray.tasks.metrics import MR_METRIC_NAMES, exact_match, mr_metrics, normalize_mr, parse_mr, rouge_l

# train.csv, lines 2, 5, 17, 311 and 455.
DIRT = ("inform(name[Dirt: Showdown], release_year[2012], esrb[E 10+ (for Everyone 10 and Older)], "
        "genres[driving/racing, sport], platforms[PlayStation, Xbox, PC], available_on_steam[no], "
        "has_linux_release[no], has_mac_release[no])")
REQUEST = "request(release_year[2014], specifier[terrible])"
CONFIRM = ("confirm(name[Layers of Fear], genres[adventure, indie, point-and-click], "
           "player_perspective[first person])")
OPINION = "give_opinion(name[SpellForce 3], rating[poor], player_perspective[bird view], has_mac_release[no])"
ATTRIBUTE = "request_attribute(player_perspective[])"
REQUEST_REF = "Were there even any terrible games in 2014?"


def test_parse_real_viggo_lines():
    mr = parse_mr(DIRT)
    assert mr.act == "inform"
    assert mr.slots["name"] == {"dirt: showdown"}
    assert mr.slots["genres"] == {"driving/racing", "sport"}
    assert mr.slots["platforms"] == {"playstation", "xbox", "pc"}
    assert mr.slots["esrb"] == {"e 10+ (for everyone 10 and older)"}  # parentheses inside a value
    assert len(mr.slots) == 8
    assert parse_mr(REQUEST).act == "request"
    assert parse_mr(OPINION).slots["player_perspective"] == {"bird view"}
    attribute = parse_mr(ATTRIBUTE)
    assert (attribute.act, attribute.slots) == ("request_attribute", {"player_perspective": frozenset()})
    assert normalize_mr(ATTRIBUTE) == "request_attribute(player_perspective[])"


@pytest.mark.parametrize("bad", ["", "inform", "inform(name[x]", "inform(name[x] genres[y])", "the game is fun",
                                 "inform(name[x]) and more", "inform(name[a[b]])"])
def test_what_is_not_an_mr(bad):
    assert parse_mr(bad) is None
    assert normalize_mr(bad) is None


def test_list_values_are_sets_and_case_and_spacing_do_not_matter():
    shuffled = ("INFORM( platforms[PC, PlayStation,  Xbox], name[Dirt: Showdown], genres[sport, driving/racing], "
                "release_year[2012], esrb[E 10+ (for Everyone 10 and Older)], available_on_steam[no], "
                "has_linux_release[no], has_mac_release[no] )")
    assert normalize_mr(shuffled) == normalize_mr(DIRT)
    assert normalize_mr(CONFIRM) == ("confirm(genres[adventure, indie, point-and-click], name[layers of fear], "
                                     "player_perspective[first person])")
    m = mr_metrics([shuffled], [DIRT])
    assert m["exact_match"] == m["slot_f1"] == m["act_accuracy"] == 1.0


def test_partly_right_predictions_worked_by_hand():
    # 1. CONFIRM has 5 reference pairs: name, genres x3 (adventure, indie, point-and-click), player_perspective.
    #    This prediction has 5 pairs, 3 of them right (name, point-and-click, adventure); horror and
    #    third person are wrong, indie is missed.
    partial = ("confirm(name[Layers of Fear], genres[point-and-click, adventure, horror], "
               "player_perspective[third person])")
    # 2. Does not parse: REQUEST's 2 pairs are all missed, and it adds no predicted pairs.
    broken = "request(release_year[2014], specifier[terrible]"
    # 3. Exactly right, including the value-less slot, which counts as one pair.
    predictions, references = [partial, broken, ATTRIBUTE], [CONFIRM, REQUEST, ATTRIBUTE]
    # true positives 3 + 0 + 1 = 4; predicted pairs 5 + 0 + 1 = 6; reference pairs 5 + 2 + 1 = 8
    m = mr_metrics(predictions, references)
    assert m["slot_precision"] == pytest.approx(4 / 6)
    assert m["slot_recall"] == pytest.approx(4 / 8)
    assert m["slot_f1"] == pytest.approx(2 * (4 / 6) * (4 / 8) / (4 / 6 + 4 / 8))  # = 4/7
    assert m["act_accuracy"] == pytest.approx(2 / 3)
    assert m["exact_match"] == pytest.approx(1 / 3)
    assert m["parse_failure_rate"] == pytest.approx(1 / 3)


def test_a_value_where_the_reference_has_none_is_wrong():
    m = mr_metrics(["request_attribute(player_perspective[first person])"], [ATTRIBUTE])
    assert m["act_accuracy"] == 1.0 and m["slot_precision"] == 0.0 and m["exact_match"] == 0.0


def test_empty_inputs_score_zero():
    assert mr_metrics([], []) == {k: 0.0 for k in MR_METRIC_NAMES}
    assert exact_match([], []) == 0.0 and rouge_l([], []) == 0.0
    with pytest.raises(ValueError):
        mr_metrics(["x"], [])


def test_rouge_l_worked_by_hand():
    # Tokens: were there even any terrible games in 2014?   (8)
    #         were there any terrible games in 2014 ?       (8)
    # LCS "were there any terrible games in" = 6: precision 6/8, recall 6/8, F1 3/4.
    assert rouge_l(["were there any terrible games in 2014 ?"], [REQUEST_REF]) == pytest.approx(3 / 4)
    # "a b c d" vs "a c": LCS 2, precision 2/4, recall 2/2, F1 2/3. Mean of the two pairs: (3/4 + 2/3) / 2 = 17/24.
    pairs = rouge_l(["were there any terrible games in 2014 ?", "a b c d"], [REQUEST_REF, "a c"])
    assert pairs == pytest.approx(17 / 24)
    assert rouge_l([REQUEST_REF.upper()], [REQUEST_REF]) == 1.0
    assert rouge_l(["a b"], ["c d"]) == 0.0
    assert exact_match([" Were there  even any TERRIBLE games in 2014? "], [REQUEST_REF]) == 1.0


# ---- per-row scores: ratios of sums that give back the aggregates ---------------------------------
def _old_micro_f1(predictions, references):
    """The micro F1 as 2PR / (P + R), the way the aggregate was computed before rows existed."""
    tp = n_pred = n_ref = 0
    for p, r in zip(predictions, references):
        ref, pred = parse_mr(r), parse_mr(p)
        ref_pairs = ref.pairs() if ref else set()
        n_ref += len(ref_pairs)
        if pred is not None:
            n_pred += len(pred.pairs())
            tp += len(pred.pairs() & ref_pairs)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_ref if n_ref else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def test_rows_sum_to_the_aggregates_including_the_zero_cases():
    from ftray.tasks.metrics import aggregate, mr_rows, ratio_of_sums

    partial = ("confirm(name[Layers of Fear], genres[point-and-click, adventure, horror], "
               "player_perspective[third person])")
    cases = [
        ([partial, "request(release_year[2014]", ATTRIBUTE], [CONFIRM, REQUEST, ATTRIBUTE]),
        (["not an mr", "also not"], [CONFIRM, REQUEST]),  # nothing parses: no predicted pairs at all
        (["inform(name[x])"], [ATTRIBUTE]),  # pairs predicted, none right: tp 0
        (["request_attribute()"], ["request_attribute()"]),  # no pairs on either side: den 0
        ([], []),
    ]
    for predictions, references in cases:
        rows = mr_rows(predictions, references)
        assert set(rows) == set(MR_METRIC_NAMES) and all(len(v) == len(references) for v in rows.values())
        assert aggregate(rows) == mr_metrics(predictions, references)
        assert ratio_of_sums(rows["slot_f1"]) == pytest.approx(_old_micro_f1(predictions, references), abs=1e-15)
    # The worked example above: F1 rows sum to 2 * 4 true positives over 6 + 8 pairs.
    rows = mr_rows(*cases[0])
    assert sum(n for n, _ in rows["slot_f1"]) == 8 and sum(d for _, d in rows["slot_f1"]) == 14
    assert rows["parse_failure_rate"] == [(0.0, 1.0), (1.0, 1.0), (0.0, 1.0)]


def test_text_rows_are_means():
    from ftray.tasks.metrics import exact_match_rows, ratio_of_sums, rouge_l_rows

    preds, refs = ["were there any terrible games in 2014 ?", "a b c d"], [REQUEST_REF, "a c"]
    assert rouge_l_rows(preds, refs) == [(pytest.approx(3 / 4), 1.0), (pytest.approx(2 / 3), 1.0)]
    assert ratio_of_sums(rouge_l_rows(preds, refs)) == rouge_l(preds, refs)
    assert exact_match_rows([REQUEST_REF.upper(), "x"], [REQUEST_REF, "y"]) == [(1.0, 1.0), (0.0, 1.0)]
    with pytest.raises(ValueError):
        exact_match_rows(["x"], [])
