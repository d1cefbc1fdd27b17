"""Tasks: the synthetic one held out by name, ViGGO from CSV files, the user's own CSV/JSONL."""

import json
from pathlib import Path

import pytest

from ftray.errors import FtrayInputError
from ftray.metrics import parse_mr
from ftray.tasks import SyntheticTask, TextTask, ViggoTask

VIGGO = Path(__file__).resolve().parents[2] / "shared" / "data" / "viggo"


def test_synthetic_is_deterministic_and_holds_out_names():
    a, b = SyntheticTask(n_train=2000, seed=5), SyntheticTask(n_train=2000, seed=5)
    assert a.examples("train") == b.examples("train")
    assert a.examples("train") != SyntheticTask(n_train=2000, seed=6).examples("train")
    names = lambda split: {v for e in a.examples(split) for k, vs in parse_mr(e.completion).slots.items()
                           if k in ("name", "developer") for v in vs}
    train = names("train")
    assert len(train) > 1000  # thousands of distinct values: no memorising them all
    assert not (names("test") & train) and not (names("valid") & train)
    acts = {e.meta["dialogue_act"] for e in a.examples("train")}
    assert {"inform", "confirm", "request"} <= acts
    # the reference itself scores perfectly
    ex = a.examples("valid")
    assert a.score([e.completion for e in ex], ex)["exact_match"] == 1.0


def write_viggo(folder: Path, train_rows):
    folder.mkdir(exist_ok=True)
    ok = [("inform(name[Portal 2], genres[puzzle])", "Portal 2 is a puzzle game.")]
    for split, rows in (("train", train_rows), ("valid", ok), ("test", ok)):
        lines = ["mr,ref"] + [f'"{mr}","{ref}"' for mr, ref in rows]
        (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")


def test_viggo_from_csv_folder(tmp_path):
    write_viggo(tmp_path / "v", [("request(release_year[2014], specifier[terrible])", "Any terrible games in 2014?")])
    task = ViggoTask(path=str(tmp_path / "v"))
    [e] = task.examples("train")
    assert e.prompt == "Sentence: Any terrible games in 2014?\nMeaning representation:"
    assert e.completion == " request(release_year[2014], specifier[terrible])"
    assert e.meta == {"dialogue_act": "request"}
    rev = ViggoTask(path=str(tmp_path / "v"), direction="mr_to_text")
    assert rev.examples("train")[0].completion == " Any terrible games in 2014?"
    assert "rouge_l" in rev.metric_names


def test_viggo_errors_name_file_row_and_column(tmp_path):
    write_viggo(tmp_path / "bad", [("inform(name[A])", "A."), ("inform(name[B]", "B.")])
    with pytest.raises(FtrayInputError, match=r"train\.csv: row 2: the mr"):
        ViggoTask(path=str(tmp_path / "bad")).examples("train")
    (tmp_path / "nocol").mkdir()
    (tmp_path / "nocol" / "train.csv").write_text("meaning,ref\nx,y\n")
    with pytest.raises(FtrayInputError, match=r"train\.csv.*no column 'mr'"):
        ViggoTask(path=str(tmp_path / "nocol")).examples("train")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "train.csv").write_text("mr,ref\n")
    with pytest.raises(FtrayInputError, match="empty"):
        ViggoTask(path=str(tmp_path / "empty")).examples("train")
    with pytest.raises(FtrayInputError, match="not a folder"):
        ViggoTask(path=str(tmp_path / "missing"))
    with pytest.raises(FtrayInputError, match="direction"):
        ViggoTask(direction="sideways")


@pytest.mark.skipif(not VIGGO.exists(), reason="the real ViGGO files are not on this machine")
def test_real_viggo_files():
    task = ViggoTask(path=str(VIGGO))
    assert [len(task.examples(s)) for s in ("train", "valid", "test")] == [5103, 714, 1083]
    acts = {e.meta["dialogue_act"] for e in task.examples("train")}
    assert len(acts) == 9
    ex = task.examples("valid")[:100]
    assert task.score([e.completion for e in ex], ex)["slot_f1"] == 1.0


def test_text_task_csv_and_jsonl(tmp_path):
    (tmp_path / "t.csv").write_text("question,answer,topic\nWhat is 2+2?,4,math\nCapital of France?,Paris,geo\n")
    task = TextTask(train=str(tmp_path / "t.csv"), valid=str(tmp_path / "t.csv"), prompt="Q: {question}\nA:",
                    completion=" {answer}", meta_columns=("topic",))
    e = task.examples("train")[1]
    assert (e.prompt, e.completion, e.meta) == ("Q: Capital of France?\nA:", " Paris", {"topic": "geo"})
    assert task.score(["4", "Lyon"], task.examples("valid")) == {"exact_match": 0.5, "rouge_l": 0.5}
    rows = [{"input": f"say {i}", "output": str(i)} for i in range(30)]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    j = TextTask(train=str(tmp_path / "t.jsonl"))  # no valid file: a seeded 10% is held out
    assert len(j.examples("valid")) == 3 and len(j.examples("train")) == 27
    assert not {e.prompt for e in j.examples("valid")} & {e.prompt for e in j.examples("train")}


def test_text_task_errors(tmp_path):
    (tmp_path / "t.csv").write_text("question,answer\nWhat?,x\n")
    with pytest.raises(FtrayInputError, match=r"t\.csv: row 1 has no column 'input'"):
        TextTask(train=str(tmp_path / "t.csv")).examples("train")
    with pytest.raises(FtrayInputError, match="bleu"):
        TextTask(train=str(tmp_path / "t.csv"), metrics=("bleu",))
    (tmp_path / "bad.jsonl").write_text('{"input": "a", "output": "b"}\n{oops\n')
    with pytest.raises(FtrayInputError, match=r"bad\.jsonl: line 2"):
        TextTask(train=str(tmp_path / "bad.jsonl")).examples("train")
    (tmp_path / "t.txt").write_text("x")
    with pytest.raises(FtrayInputError, match="unknown extension"):
        TextTask(train=str(tmp_path / "t.txt")).examples("train")
