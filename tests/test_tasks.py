"""Tasks: the synthetic one held out by name, ViGGO from CSV files, the user's own CSV/JSONL."""

import csv
import json
import pickle
from pathlib import Path

import pytest

from ftray.errors import FtrayInputError
from ftray.tasks.metrics import MR_METRIC_NAMES, parse_mr
from ftray.tasks import Example, SyntheticTask, TextTask, ViggoTask

VIGGO = Path(__file__).resolve().parents[2] / "shared/data/viggo"


# ---- synthetic -----------------------------------------------------------------------------------

def names_in(examples):
    return {v for e in examples for k, vs in parse_mr(e.completion).slots.items()
            if k in ("name", "developer") for v in vs}


def test_synthetic_is_deterministic_and_holds_out_names():
    a = SyntheticTask(n_train=2000, seed=5)
    assert a.examples("train") == SyntheticTask(n_train=2000, seed=5).examples("train")
    assert a.examples("train") != SyntheticTask(n_train=2000, seed=6).examples("train")
    train = names_in(a.examples("train"))
    assert len(train) > 1000  # thousands of distinct values: no memorising them all
    assert not names_in(a.examples("test")) & train
    assert not names_in(a.examples("valid")) & train
    assert {e.meta["dialogue_act"] for e in a.examples("train")} == {"inform", "request", "confirm", "give_opinion",
                                                                      "suggest"}
    assert [len(a.examples(s)) for s in ("train", "valid", "test")] == [2000, 200, 200]


def test_synthetic_examples_are_well_formed_and_short():
    task = SyntheticTask(n_train=500)
    ex = task.examples("train")
    for e in ex:
        sentence = e.prompt.removeprefix("Sentence: ").removesuffix("\nMeaning representation:")
        mr = parse_mr(e.completion)
        assert e.completion.startswith(" ") and mr is not None and mr.act == e.meta["dialogue_act"]
        assert 4 <= len(sentence.split()) <= 35
        if "name" in mr.slots:
            assert next(iter(mr.slots["name"])) in sentence.lower()  # the name is there to copy
    assert task.metric_names == MR_METRIC_NAMES
    valid = task.examples("valid")
    assert task.score([e.completion for e in valid], valid)["exact_match"] == 1.0
    assert pickle.loads(pickle.dumps(task)).examples("valid") == valid


def test_synthetic_fields_are_checked():
    for field in ("n_train", "n_valid", "n_test"):
        with pytest.raises(FtrayInputError, match=f"SyntheticTask.{field}"):
            SyntheticTask(**{field: 0})


# ---- ViGGO ---------------------------------------------------------------------------------------

OK = [("inform(name[Portal 2], genres[puzzle, platformer])", "Portal 2 is a puzzle platformer.")]


def write_csv(path: Path, rows, header=("mr", "ref")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def write_viggo(folder: Path, train_rows) -> Path:
    folder.mkdir()
    for split, rows in (("train", train_rows), ("valid", OK), ("test", OK)):
        write_csv(folder / f"{split}.csv", rows)
    return folder


def test_viggo_from_csv_folder(tmp_path, monkeypatch):
    write_viggo(tmp_path / "v", [("request(release_year[2014], specifier[terrible])", "Any terrible games  in 2014?")])
    monkeypatch.chdir(tmp_path)
    task = ViggoTask(path="v")  # relative to the working directory
    monkeypatch.chdir("/")
    [e] = task.examples("train")
    assert e == Example("Sentence: Any terrible games in 2014?\nMeaning representation:",
                        " request(release_year[2014], specifier[terrible])", {"dialogue_act": "request"})
    assert task.name == "viggo" and task.metric_names == MR_METRIC_NAMES
    rev = ViggoTask(path=str(tmp_path / "v"), direction="mr_to_text")
    assert rev.examples("train")[0].prompt == ("Meaning representation: request(release_year[2014], "
                                               "specifier[terrible])\nSentence:")
    assert rev.examples("train")[0].completion == " Any terrible games in 2014?"
    assert rev.metric_names == ("exact_match", "rouge_l")
    valid = task.examples("valid")
    assert task.score(["inform(name[Portal 2], genres[platformer, puzzle])"], valid)["exact_match"] == 1.0
    assert pickle.loads(pickle.dumps(task)) == task


@pytest.mark.parametrize("rows, expected", [
    ([("inform(name[A])", "A."), ("inform(name[B]", "B.")], r"train\.csv: row 2: the mr 'inform\(name\[B\]'"),
    ([("inform(name[A])", "A."), ("inform(name[B])", "  ")], r"train\.csv: row 2: the ref is empty"),
    ([], r"train\.csv.*empty"),
])
def test_viggo_bad_rows(tmp_path, rows, expected):
    task = ViggoTask(path=str(write_viggo(tmp_path / "bad", rows)))
    with pytest.raises(FtrayInputError, match=expected):
        task.examples("train")


def test_viggo_bad_files_and_fields(tmp_path):
    folder = tmp_path / "nocol"
    folder.mkdir()
    write_csv(folder / "train.csv", [("inform(name[A])", "A.")], header=("meaning", "ref"))
    with pytest.raises(FtrayInputError, match=r"train\.csv.*no column 'mr'"):
        ViggoTask(path=str(folder)).examples("train")
    with pytest.raises(FtrayInputError, match=r"valid\.csv.*does not exist"):
        ViggoTask(path=str(folder)).examples("valid")
    (folder / "test.csv").write_text("")
    with pytest.raises(FtrayInputError, match=r"test\.csv.*empty"):
        ViggoTask(path=str(folder)).examples("test")
    with pytest.raises(FtrayInputError, match="not a folder"):
        ViggoTask(path=str(tmp_path / "missing"))
    with pytest.raises(FtrayInputError, match="direction"):
        ViggoTask(direction="sideways")


@pytest.mark.skipif(not VIGGO.exists(), reason="the real ViGGO files are not on this machine")
def test_real_viggo_files():
    task = ViggoTask(path=str(VIGGO))
    task.check()
    assert [len(task.examples(s)) for s in ("train", "valid", "test")] == [5103, 714, 1083]
    assert len({e.meta["dialogue_act"] for e in task.examples("train")}) == 9
    valid = task.examples("valid")
    scores = task.score([e.completion for e in valid], valid)
    assert scores["exact_match"] == scores["slot_f1"] == 1.0 and scores["parse_failure_rate"] == 0.0


# ---- your own text -------------------------------------------------------------------------------

def test_text_task_from_csv(tmp_path):
    write_csv(tmp_path / "t.csv", [("What is 2+2?", "4", "math"), ("Capital of France?", "Paris", "geo")],
              header=("question", "answer", "topic"))
    task = TextTask(train=str(tmp_path / "t.csv"), valid=str(tmp_path / "t.csv"), prompt="Q: {question}\nA:",
                    completion=" {answer}", meta_columns=["topic"])  # a list works as well as a tuple
    e = task.examples("train")[1]
    assert (e.prompt, e.completion, e.meta) == ("Q: Capital of France?\nA:", " Paris", {"topic": "geo"})
    assert task.score(["4", "Lyon"], task.examples("valid")) == {"exact_match": 0.5, "rouge_l": 0.5}
    assert task.examples("test") == []
    assert task.name == "text" and task.metric_names == ("exact_match", "rouge_l")


def test_text_task_from_jsonl_holds_out_valid(tmp_path):
    rows = [{"input": f"say {i}", "output": i, "tags": ["a", "b"]} for i in range(30)]  # non-string values too
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    task = TextTask(train=str(tmp_path / "t.jsonl"))  # no valid file: a fixed 10% is held out
    train, valid = task.examples("train"), task.examples("valid")
    assert len(valid) == 3 and len(train) == 27
    assert not {e.prompt for e in valid} & {e.prompt for e in train}
    assert valid == TextTask(train=str(tmp_path / "t.jsonl")).examples("valid")
    assert train[0].prompt.startswith("say ") and train[0].completion.strip().isdigit()


def test_text_task_mr_metrics(tmp_path):
    write_csv(tmp_path / "mr.csv", OK, header=("mr", "ref"))
    task = TextTask(train=str(tmp_path / "mr.csv"), valid=str(tmp_path / "mr.csv"), prompt="{ref}\n",
                    completion=" {mr}", metrics="mr")
    assert task.metric_names == MR_METRIC_NAMES
    assert task.score(["inform(genres[platformer, puzzle], name[Portal 2])"], task.examples("valid"))["slot_f1"] == 1.0


def test_text_task_errors(tmp_path):
    write_csv(tmp_path / "t.csv", [("What?", "x"), ("Why?", "y")], header=("question", "answer"))
    with pytest.raises(FtrayInputError, match=r"t\.csv: row 1 has no column 'input'"):
        TextTask(train=str(tmp_path / "t.csv")).examples("train")
    with pytest.raises(FtrayInputError, match="unknown metric 'bleu'"):
        TextTask(train=str(tmp_path / "t.csv"), metrics=("bleu",))
    with pytest.raises(FtrayInputError, match="must name columns"):
        TextTask(train=str(tmp_path / "t.csv"), prompt="{}")
    (tmp_path / "bad.jsonl").write_text('{"input": "a", "output": "b"}\n{oops\n')
    with pytest.raises(FtrayInputError, match=r"bad\.jsonl: line 2"):
        TextTask(train=str(tmp_path / "bad.jsonl")).examples("train")
    (tmp_path / "t.txt").write_text("x")
    with pytest.raises(FtrayInputError, match=r"t\.txt.*unknown extension"):
        TextTask(train=str(tmp_path / "t.txt")).examples("train")
    with pytest.raises(FtrayInputError, match=r"nope\.csv.*does not exist"):
        TextTask(train=str(tmp_path / "nope.csv")).examples("train")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(FtrayInputError, match=r"empty\.jsonl.*empty"):
        TextTask(train=str(tmp_path / "empty.jsonl")).examples("train")
    with pytest.raises(FtrayInputError, match="exactly one of train"):
        TextTask()


# ---- per-row scores ------------------------------------------------------------------------------

def test_score_rows_give_back_score(tmp_path):
    from ftray.tasks.metrics import aggregate

    synthetic = SyntheticTask(n_train=50, n_valid=6)
    valid = synthetic.examples("valid")
    # Half right, one empty answer, one with a wrong slot value: every kind of row.
    preds = [e.completion for e in valid[:3]] + ["", valid[4].completion.replace("[", "[x ", 1), "inform()"]
    rows = synthetic.score_rows(preds, valid)
    assert set(rows) == set(MR_METRIC_NAMES) and all(len(v) == 6 for v in rows.values())
    assert aggregate(rows) == synthetic.score(preds, valid)

    write_csv(tmp_path / "t.csv", [("What is 2+2?", "4"), ("Capital of France?", "Paris")], header=("input", "output"))
    text = TextTask(train=str(tmp_path / "t.csv"), valid=str(tmp_path / "t.csv"),
                    metrics=("mr", "exact_match", "rouge_l"))
    ex = text.examples("valid")
    rows = text.score_rows(["4", "Lyon"], ex)
    assert rows["exact_match"] == [(1.0, 1.0), (0.0, 1.0)]  # the plain-text exact match, not the MR one
    assert aggregate(rows) == text.score(["4", "Lyon"], ex)

    two = OK + [("request(release_year[2014], specifier[terrible])", "Any terrible games in 2014?")]
    for split in ("train", "valid", "test"):
        write_csv(tmp_path / f"{split}.csv", two, header=("mr", "ref"))
    for direction in ("text_to_mr", "mr_to_text"):
        viggo = ViggoTask(path=str(tmp_path), direction=direction)
        ex = viggo.examples("valid")
        preds = [ex[0].completion, "nonsense"]
        assert aggregate(viggo.score_rows(preds, ex)) == viggo.score(preds, ex)
        assert viggo.score_rows(preds, ex)["exact_match"] == [(1.0, 1.0), (0.0, 1.0)]


def test_a_custom_task_gets_per_row_means():
    from ftray.tasks.base import Task

    class Lengths(Task):  # a user's task that only knows how to score a batch
        def score(self, predictions, examples):
            return {"short": sum(len(p) < 3 for p in predictions) / len(predictions)}

    task = Lengths()
    ex = [Example("q", " a")] * 3
    assert task.score_rows(["a", "abcd", "b"], ex) == {"short": [(1.0, 1.0), (0.0, 1.0), (1.0, 1.0)]}
    with pytest.raises(ValueError):
        task.score_rows(["a"], ex)
