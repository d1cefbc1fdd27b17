"""Bad input of every kind, through the CLI in this process (no Ray is started): `ftray validate` and
`ftray run` exit 2 with one line that names the file, line, row or field and the cause, print no
traceback, and write no run folder.

To add a case, add a row to CASES: a name, the files to write (a sweep file `s.py` and any data
files; `{dir}` in them is this test's folder), and text the one error line must hold.
"""

import pytest

from ftray.cli import main

HEAD = "from ray import tune\nfrom ftray import Sweep, SyntheticTask, TextTask, ViggoTask, ModelSpec, ASHA\n"
OK = "task=SyntheticTask(n_train=40, n_valid=8, n_test=8), models=['tiny-xs']"
GOOD_CSV = "sentence,mr\nA game.,inform(name[A])\nB game.,inform(name[B])\n"
TEXT = "task=TextTask(train='{dir}/d.csv', prompt='{sentence}', completion=' {mr}'), models=['tiny-xs']"


def sweep(body: str) -> dict:
    return {"s.py": HEAD + body + "\n"}


def text_sweep(csv: bytes | str) -> dict:
    return {**sweep(f"sweep = Sweep(name='b', {TEXT})"), "d.csv": csv}


CASES = [
    # ---- the sweep file itself
    ("no such file", {}, "does not exist"),
    ("not Python", {"s.txt": "x"}, "must be a Python file"),
    ("syntax error", sweep("x = ("), "syntax error at line 3"),
    ("raises at import", sweep("raise RuntimeError('boom')"), "line 3: RuntimeError: boom"),
    ("imports a missing module", sweep("import not_a_module_here"), "ModuleNotFoundError"),
    ("misspelt Tune call", sweep(f"sweep = Sweep(name='b', {OK}, space={{'lr': tune.choise([1e-3])}})"),
     "AttributeError"),
    ("misspelt Sweep field", sweep(f"sweep = Sweep(name='b', {OK}, lora_ranks=4)"), "did you mean 'lora_rank'"),
    ("misspelt task field", sweep("task = TextTask(train='t.csv', promt='{x}', completion='{y}')"),
     "unexpected keyword argument 'promt'; did you mean 'prompt'?"),
    ("no sweep defined", sweep("x = 1"), "does not define a module-level `sweep"),
    ("sweep of another type", sweep("sweep = 1"), "must be a ftray.Sweep"),
    ("not UTF-8 source", {"s.py": HEAD.encode() + b"# caf\xe9\n"}, "cannot be read as Python source"),
    # ---- fields of the sweep
    ("bad name", sweep(f"sweep = Sweep(name='a b', {OK})"), "name must be"),
    ("unknown space key", sweep(f"sweep = Sweep(name='b', {OK}, space={{'learning_rate': 1e-3}})"),
     "space['learning_rate'] is not a searchable setting"),
    ("rank 0 in a choice", sweep(f"sweep = Sweep(name='b', {OK}, space={{'lora_rank': tune.choice([0, 4])}})"),
     "space['lora_rank'] must be an int > 0, got 0"),
    ("fraction above 1", sweep(f"sweep = Sweep(name='b', {OK}, space={{'data_fraction': tune.choice([0.5, 1.5])}})"),
     "space['data_fraction']"),
    ("empty grid", sweep(f"sweep = Sweep(name='b', {OK}, space={{'lora_rank': tune.grid_search([])}})"),
     "empty grid_search"),
    ("a list, not a primitive", sweep(f"sweep = Sweep(name='b', {OK}, space={{'lr': [1e-3, 1e-2]}})"),
     "must be a constant or a Tune primitive"),
    ("steps and epochs", sweep(f"sweep = Sweep(name='b', {OK}, steps=10, epochs=1.0)"), "exactly one of steps and epochs"),
    ("negative lr", sweep(f"sweep = Sweep(name='b', {OK}, lr=-1.0)"), "lr must be a number > 0, got -1.0"),
    # Over many lines, the error points at the field's line, not at `sweep = Sweep(`.
    ("a field on its own line", sweep("sweep = Sweep(\n    name='b',\n    task=SyntheticTask(),\n    models=['tiny-xs'],"
                                      "\n    lr=-1.0,\n)"), "s.py, line 7: lr must be"),
    ("a space key on its own line", sweep("sweep = Sweep(\n    name='b',\n    task=SyntheticTask(),\n    models=['tiny-xs'],"
                                          "\n    space={\n        'lora_rank': 4,\n        'lr': -1.0,\n    },\n)"),
     "s.py, line 9: space['lr'] must be"),
    # Python's own error names no field, though it starts with a word ("name") that is one.
    ("an undefined name in a long call", sweep("sweep = Sweep(task=SyntheticTask(), models=MODELZ,\n    name='b')"),
     "s.py, line 3: NameError"),
    ("unknown model", sweep("sweep = Sweep(name='b', task=SyntheticTask(), models=['gpt-17'])"), "unknown model 'gpt-17'"),
    ("objective not reported", sweep(f"sweep = Sweep(name='b', {OK}, objective='bleu')"), "objective 'bleu'"),
    ("ASHA that can never stop", sweep(f"sweep = Sweep(name='b', {OK}, steps=40, asha=ASHA(grace_steps=50))"),
     "asha.grace_steps"),
    ("more workers than cores", sweep(f"sweep = Sweep(name='b', {OK}, workers=64)"), "a trial of 64 workers"),
    ("a GPU that is not there", sweep(f"sweep = Sweep(name='b', {OK}, gpus_per_worker=1)"), "GPUs"),
    ("a GPU fraction above 1", sweep(f"sweep = Sweep(name='b', {OK}, gpus_per_worker=1.5)"),
     "gpus_per_worker must be 0 (no GPU), a fraction in (0, 1]"),
    ("a rung's negative GPU fraction", sweep("sweep = Sweep(name='b', task=SyntheticTask(), "
                                         "models=[ModelSpec('tiny-xs', gpus_per_worker=-0.25)])"),
     "model 'tiny-xs': gpus_per_worker must be"),
    ("a GPU fraction for two workers", sweep(f"sweep = Sweep(name='b', {OK}, workers=2, gpus_per_worker=0.5)"),
     "a fraction of a GPU is for one-worker trials"),
    ("trials that do not fit their share of a GPU",
     sweep(f"sweep = Sweep(name='b', {OK}, workers=1, gpus_per_worker=0.25, gpu_memory_gb=1)"),
     "model 'tiny-xs': gpus_per_worker=0.25 puts 4 trials on each 1 GiB GPU (gpu_memory_gb), 0.2 GiB each"),
    ("LoRA targets matching nothing",
     sweep("sweep = Sweep(name='b', task=SyntheticTask(), models=[ModelSpec('tiny-xs', lora_targets=['c_attn'])])"),
     "match no layer of model 'tiny-xs'"),
    ("a filter without its column", sweep(f"sweep = Sweep(name='b', {OK}, data_filter='inform')"), "data_filter_column"),
    ("max_length that cuts every completion", sweep(f"sweep = Sweep(name='b', {OK}, max_length=4)"),
     "max_length=4 cuts into the completion of all 40 training rows (the longest row is "),
    # ---- data files
    ("template with a format spec",
     sweep("sweep = Sweep(name='b', task=TextTask(train='{dir}/d.csv', prompt='{sentence:>9}', "
           "completion=' {mr}'), models=['tiny-xs'])") | {"d.csv": GOOD_CSV}, "TextTask.prompt"),
    ("template with attribute access",
     sweep("sweep = Sweep(name='b', task=TextTask(train='{dir}/d.csv', prompt='{sentence.__class__}', "
           "completion=' {mr}'), models=['tiny-xs'])") | {"d.csv": GOOD_CSV}, "TextTask.prompt"),
    ("missing data file", sweep(f"sweep = Sweep(name='b', {TEXT})"), "does not exist"),
    ("duplicate column", text_sweep("sentence,mr,mr\nA.,x(a[b]),y\n"), "'mr'"),
    ("empty column name", text_sweep("sentence,,mr\nA.,1,x(a[b])\n"), "column 2 has no name"),
    ("not UTF-8 data", text_sweep(b"sentence,mr\nA caf\xe9.,inform(name[A])\n"), "line 2"),
    ("NUL byte in data", text_sweep("sentence,mr\nA.,inform(name[A])\nB\x00.,inform(name[B])\n"), "line 3 contains a NUL"),
    ("no data rows", text_sweep("sentence,mr\n"), "empty"),
    ("a column the template needs", text_sweep("text,mr\nA.,inform(name[A])\n"), "no column 'sentence'"),
    ("ViGGO MR that does not parse",
     sweep("sweep = Sweep(name='b', task=ViggoTask(path='{dir}/v'), models=['tiny-xs'])")
     | {"v/train.csv": 'mr,ref\n"inform(name[A])","A."\n"inform(name[B]","B."\n',
        "v/valid.csv": 'mr,ref\n"inform(name[A])","A."\n', "v/test.csv": 'mr,ref\n"inform(name[A])","A."\n'},
     "train.csv: row 2"),
]


@pytest.fixture
def no_ray(monkeypatch):
    """A case that got as far as starting Ray is a failed case, not a slow one."""
    import ftray.driver.tuner

    def refuse(*a, **k):
        raise AssertionError("Ray was started for bad input")

    monkeypatch.setattr(ftray.driver.tuner, "init_ray", refuse)


@pytest.mark.parametrize("name, files, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, no_ray, name, files, expected):
    for rel, content in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.replace("{dir}", str(tmp_path)).encode()
        path.write_bytes(content)
    sweep_file = str(tmp_path / next((f for f in files if f.startswith("s.")), "s.py"))
    for argv in (["validate", sweep_file], ["run", sweep_file, "--storage", str(tmp_path / "runs")]):
        status = main(argv)
        err = capsys.readouterr().err.strip()
        assert status == 2, (argv[0], err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert expected in err, err
    assert not (tmp_path / "runs" / "b").exists()  # nothing was started


@pytest.mark.parametrize("argv, expected", [
    (["report", "{dir}/nope"], "nope does not exist"),
    (["report", "{dir}"], "is not an ftray run folder (no ftray_run.json)"),
    (["eval", "{dir}/nope", "--data", "x.csv"], "nope does not exist"),
    (["resume", "{dir}/nope"], "nope does not exist"),
    (["compare", "{dir}", "{dir}"], "named more than once"),
])
def test_a_run_folder_that_is_not_one(tmp_path, capsys, no_ray, argv, expected):
    assert main([a.replace("{dir}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err


def test_a_name_outside_the_storage_and_unwritable_storage(tmp_path, capsys, no_ray):
    f = tmp_path / "s.py"
    f.write_text(HEAD + f"sweep = Sweep(name='b', {OK})\n")
    assert main(["run", str(f), "--storage", str(tmp_path / "runs"), "--name", "../../x"]) == 2
    assert "--name must be" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    for argv in (["run", str(f), "--storage", str(blocker / "runs")], ["validate", str(f), "--storage", str(blocker)]):
        assert main(argv) == 2
        assert "storage" in (err := capsys.readouterr().err) and "cannot be written" in err


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.delenv("FTRAY_DEBUG", raising=False)
    f = tmp_path / "s.py"
    f.write_text(HEAD + "raise RuntimeError('boom')\n")
    for argv in (["--debug", "validate", str(f)], ["validate", str(f), "--debug"]):  # before or after the command
        monkeypatch.delenv("FTRAY_DEBUG", raising=False)
        with pytest.raises(RuntimeError, match="boom"):
            main(argv)


# ---- inputs that run but mean little: a warning on stderr, the exit status unchanged
def _words(prefix: str, n: int) -> str:
    # Distinct words: the byte-level pre-tokenizer never merges across spaces, so each is a token at least.
    return " ".join(f"{prefix}{i}" for i in range(n))


def test_max_length_that_cuts_some_rows_warns_with_the_counts(tmp_path, capsys):
    from ftray.train.data import tokenize_examples
    from ftray.train.models import tokenizer_from_json
    from ftray.driver.preflight import prepare
    from ftray.spec.sweepfile import load_sweep

    # Short rows fit in 48 tokens even one byte a token; the long training row's completion and the long
    # evaluation row's prompt cannot.
    short = [(f"Game {i}.", f"inform(name[{i}])") for i in range(9)]
    (tmp_path / "train.csv").write_text("sentence,mr\n" + "".join(f"{s},{m}\n" for s, m in short)
                                        + f"{_words('w', 40)},{_words('v', 60)}\n")
    (tmp_path / "valid.csv").write_text("sentence,mr\nGame 1.,inform(name[1])\nGame 2.,inform(name[2])\n"
                                        f"{_words('u', 80)},inform(name[3])\n")
    f = tmp_path / "s.py"
    f.write_text(HEAD + f"sweep = Sweep(name='b', task=TextTask(train='{tmp_path}/train.csv', "
                 f"valid='{tmp_path}/valid.csv', prompt='{{sentence}}', completion=' {{mr}}'), "
                 "models=['tiny-xs'], max_length=48)\n")
    assert main(["validate", str(f), "--storage", str(tmp_path / "runs")]) == 0
    err = capsys.readouterr().err.strip()
    # The longest row as a trial tokenizes it, with the tokenizer the run ships to its trials.
    sweep = load_sweep(str(f))
    tokenizer = tokenizer_from_json(prepare(sweep).tokenizer_json)
    rows = sweep.task.examples("train") + sweep.task.examples("valid")
    longest = max(len(t["input_ids"]) for t in tokenize_examples(rows, tokenizer, 10**6))
    assert err == (f"ftray: warning: max_length=48 cuts 1 of 10 training rows (1 into the completion) and 1 of 3 "
                   f"evaluation rows (in the prompt only); the longest row is {longest} tokens"), err


def test_grid_cells_that_num_trials_leaves_out_are_named(tmp_path, capsys):
    import optuna

    from ftray.driver.searcher import DefineByRun
    from ftray.spec.sweepfile import load_sweep

    f = tmp_path / "s.py"
    f.write_text(HEAD + "sweep = Sweep(name='b', task=SyntheticTask(n_train=40, n_valid=8, n_test=8), "
                 "models=['tiny-xs', 'tiny-s'], space={'lora_rank': tune.grid_search([4, 8, 16])}, num_trials=2)\n")
    assert main(["validate", str(f), "--storage", str(tmp_path / "runs")]) == 0
    err = capsys.readouterr().err.strip()
    assert err == ("ftray: warning: num_trials=2 runs 2 of the 6 grid cells (model x lora_rank); left out (no trial "
                   "at all for tiny-s): model=tiny-xs, lora_rank=16; model=tiny-s, lora_rank=4; model=tiny-s, "
                   "lora_rank=8; model=tiny-s, lora_rank=16; num_trials=6 (or a multiple) runs every cell"), err
    # The two cells not named are the ones the search gives the two trials.
    space, study = DefineByRun(load_sweep(str(f))), optuna.create_study()
    assert [(c["model"], c["lora_rank"]) for c in (space(study.ask()) for _ in range(2))] == \
        [("tiny-xs", 4), ("tiny-xs", 8)]

