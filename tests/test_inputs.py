"""Bad inputs give one line naming the file and row (data files), the field (templates), and never a
secret (storage URIs, W&B); storage paths keep a URI's query string; W&B follows the environment.

Fast: no Ray, no models. The S3 test runs against moto's server on 127.0.0.1 when moto is installed.
"""

import codecs
import json
import os
import threading

import pytest

from ftray import storage as st
from ftray.errors import FtrayInputError
from ftray.spec.groups import WandB
from ftray.tasks import TextTask, ViggoTask
from ftray.tasks._files import read_rows

BIG = 131_073  # one past Python csv's default field size limit

# (what is wrong, file name, file bytes, the part of the error that says where and why)
BAD_FILES = [
    ("a Latin-1 byte", "latin1.csv", b"input,output\nq,caf\xe9\n",
     "latin1.csv: line 2: byte 0xe9 at offset 18 is not UTF-8"),
    ("a Latin-1 byte after a BOM", "bomlatin1.csv", codecs.BOM_UTF8 + b"input,output\nq,a\nr,\xff\n",
     "bomlatin1.csv: line 3: byte 0xff at offset 22 is not UTF-8"),
    ("a Latin-1 byte, CR line ends", "cr.csv", b"input,output\ra,b\rc,\xff\r", "cr.csv: line 3: byte 0xff"),
    ("a Latin-1 byte in JSONL", "latin1.jsonl", b'{"input": "a", "output": "b"}\n{"input": "\xe9"}\n',
     "latin1.jsonl: line 2: byte 0xe9"),
    ("a UTF-16 file", "utf16.csv", "input,output\nq,a\n".encode("utf-16"), "utf16.csv: line 1: the file is UTF-16"),
    ("a NUL byte", "nul.csv", b"input,output\na,b\nc\x00,d\n", "nul.csv: line 3 contains a NUL byte"),
    ("a NUL byte in JSONL", "nul.jsonl", b'{"input": "a", "output": "b"}\n\x00\n', "nul.jsonl: line 2 contains a NUL"),
    ("a cell over the csv limit", "big.csv", b"input,output\na,b\nc," + b"x" * BIG + b"\n",
     "big.csv: row 2 (line 3): a cell is longer than 131,072 characters"),
    ("an unclosed quote", "quote.csv", b'input,output\n"a,b\nc,d\n',
     "quote.csv: row 1 (line 2): a quoted cell that starts in this row is never closed"),
    ("text after a closing quote", "after.csv", b'input,output\na,b\n"c"d,e\n',
     "after.csv: row 2 (line 3): it is not valid CSV"),
    ("a row with more cells than the header", "surplus.csv", b"input,output\na,b\nc, d,e\n",
     "surplus.csv: row 2 (line 3) has 3 cells but the header names 2 columns"),
    ("a row after a cell over two lines", "multiline.csv", b'input,output\n"a\nb",c\nd,e,f\n',
     "multiline.csv: row 2 (line 4) has 3 cells"),
    ("blank lines are not rows", "blank.csv", b'input,output\na,b\n\n\n"c"d,e\n',
     "blank.csv: row 2 (line 5): it is not valid CSV"),
    ("a repeated column", "dup.csv", b"input,output,input\na,b,c\n",
     "dup.csv: line 1 (the header): column name 'input' appears more than once"),
    ("two repeated columns", "dup2.csv", b"output,input,output,input\na,b,c,d\n",
     "dup2.csv: line 1 (the header): column names 'output', 'input' appear more than once"),
    ("an empty column name", "empty_col.csv", b"input,,output\na,b,c\n",
     "empty_col.csv: line 1 (the header): column 2 has no name"),
    ("a trailing comma in the header", "trailing.csv", b"input,output,\na,b,\n",
     "trailing.csv: line 1 (the header): column 3 has no name"),
    ("an empty header line", "noheader.csv", b"\ninput,output\na,b\n", "noheader.csv: line 1 (the header) is empty"),
    ("invalid JSON", "bad.jsonl", b'{"input": "a", "output": "b"}\n{oops\n', "bad.jsonl: line 2 is not valid JSON"),
    ("a JSON array in a .json file", "array.json", b'[{"input": "a", "output": "b"}]\n',
     "array.json: line 1 is a JSON array, not an object; a .json file is read as JSON Lines"),
    ("a JSON string", "str.jsonl", b'{"input": "a", "output": "b"}\n"just text"\n',
     "str.jsonl: line 2 is a JSON string"),
    ("a repeated JSON key", "dupkey.jsonl", b'{"input": "a", "output": "b", "input": "c"}\n',
     "dupkey.jsonl: line 1: the key 'input' appears more than once"),
]


def one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message and "\r" not in message, message
    return message


@pytest.mark.parametrize("what, name, data, expected", BAD_FILES, ids=[row[0] for row in BAD_FILES])
def test_bad_data_files_give_one_line_naming_file_and_line(tmp_path, what, name, data, expected):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(FtrayInputError) as e:
        read_rows(str(tmp_path / name))
    message = one_line(e)
    assert str(tmp_path / name) in message and expected in message, message
    # TextTask reads the same way, and builds fine before it reads.
    task = TextTask(train=str(tmp_path / name), valid=str(tmp_path / name))
    with pytest.raises(FtrayInputError) as e:
        task.examples("train")
    assert expected in one_line(e)


@pytest.mark.parametrize("data, expected", [
    (b"mr,ref\ninform(name[A]),A.\ninform(name[B])\n", "train.csv: row 2 has no 'ref'"),
    (b"mr,ref,mr\ninform(name[A]),A.,x\n", "column name 'mr' appears more than once"),
    (b"mr,ref\ninform(name[A]),caf\xe9\n", "train.csv: line 2: byte 0xe9"),
    (b"mr,ref\n\"inform(name[A]),A.\n",
     "train.csv: row 1 (line 2): a quoted cell that starts in this row is never closed"),
])
def test_bad_viggo_files(tmp_path, data, expected):
    folder = tmp_path / "v"
    folder.mkdir()
    (folder / "train.csv").write_bytes(data)
    with pytest.raises(FtrayInputError) as e:
        ViggoTask(path=str(folder)).examples("train")
    assert expected in one_line(e)


def test_a_short_row_lacks_only_its_missing_columns(tmp_path):
    (tmp_path / "t.csv").write_bytes(b"input,output,note\na,b\nc,d,e\n")
    assert read_rows(str(tmp_path / "t.csv")) == [{"input": "a", "output": "b"},
                                                   {"input": "c", "output": "d", "note": "e"}]
    assert [e.completion for e in TextTask(train=str(tmp_path / "t.csv"), valid=str(tmp_path / "t.csv"))
            .examples("valid")] == [" b", " d"]
    with pytest.raises(FtrayInputError, match=r"t\.csv: row 1 has no column 'note'"):
        TextTask(train=str(tmp_path / "t.csv"), prompt="{input} {note}").examples("train")


def test_a_utf8_bom_is_skipped(tmp_path):
    (tmp_path / "bom.csv").write_bytes(codecs.BOM_UTF8 + "input,output\nq,réponse\n".encode())
    (tmp_path / "bom.jsonl").write_bytes(codecs.BOM_UTF8 + b'{"input": "q", "output": "a"}\n')
    assert read_rows(str(tmp_path / "bom.csv")) == [{"input": "q", "output": "réponse"}]
    assert read_rows(str(tmp_path / "bom.jsonl"), required=("input",)) == [{"input": "q", "output": "a"}]
    for name in ("bom.csv", "bom.jsonl"):
        task = TextTask(train=str(tmp_path / name), valid=str(tmp_path / name))
        assert task.examples("valid")[0].prompt == "q\n"


def test_cells_may_hold_quotes_commas_and_newlines_when_quoted(tmp_path):
    (tmp_path / "ok.csv").write_bytes(b'input,output\n"a, ""b""\nc",d\n' + b'x,' + b"y" * (BIG - 1) + b"\n")
    rows = read_rows(str(tmp_path / "ok.csv"))
    assert rows[0] == {"input": 'a, "b"\nc', "output": "d"} and len(rows[1]["output"]) == BIG - 1


# ---- templates -----------------------------------------------------------------------------------

@pytest.mark.parametrize("field, template, placeholder, reason", [
    ("prompt", "{input:>100000}\n", "{input:>100000}", "a format spec (:>100000)"),
    ("prompt", "Q: {input!r}", "{input!r}", "a conversion (!r)"),
    ("prompt", "{row[0]}", "{row[0]}", "indexing"),
    ("completion", " {output.__class__}", "{output.__class__}", "attribute access"),
    ("completion", " {output.a[0]}", "{output.a[0]}", "attribute access"),
    ("completion", " {output!s:^9}", "{output!s:^9}", "a conversion (!s)"),
    ("prompt", "{0}", "{0}", "must name columns"),
    ("prompt", "{}", "{}", "must name columns"),
])
def test_templates_take_plain_columns_only(tmp_path, field, template, placeholder, reason):
    (tmp_path / "t.csv").write_text("input,output\na,b\n")
    with pytest.raises(FtrayInputError) as e:
        TextTask(train=str(tmp_path / "t.csv"), **{field: template})
    message = one_line(e)
    assert message.startswith(f"TextTask.{field}") and repr(placeholder) in message and reason in message, message


def test_escaped_braces_and_braces_in_data_stay_literal(tmp_path):
    (tmp_path / "t.csv").write_text("input,my answer\n{input.__class__},{0}\n")
    task = TextTask(train=str(tmp_path / "t.csv"), valid=str(tmp_path / "t.csv"),
                    prompt="{{\"q\": \"{input}\"}}\n", completion=" {my answer}}}")
    e = task.examples("valid")[0]
    assert (e.prompt, e.completion) == ('{"q": "{input.__class__}"}\n', " {0}}")
    with pytest.raises(FtrayInputError, match="not a valid template"):
        TextTask(train=str(tmp_path / "t.csv"), prompt="{input")


# ---- storage -------------------------------------------------------------------------------------

Q = "?endpoint_override=127.0.0.1:9000&scheme=http"


def test_uri_paths_keep_the_query_at_the_end():
    base = f"s3://bucket/runs{Q}"
    assert st.join(base, "name", "file.json") == f"s3://bucket/runs/name/file.json{Q}"
    assert st.dirname(f"s3://bucket/runs/name/file.json{Q}") == f"s3://bucket/runs/name{Q}"
    assert st.basename(f"s3://bucket/runs/name/{Q}") == "name"
    assert st.normalize(f"s3://bucket/runs/{Q}") == base
    assert st.join("s3://bucket/runs", "a") == "s3://bucket/runs/a" and st.dirname("s3://b/a/c") == "s3://b/a"
    assert st.local_path(f"file:///tmp/a%20b/c{Q}") == "/tmp/a b/c" and st.local_path("s3://b/x") is None


@pytest.mark.parametrize("uri, expected", [
    ("s3://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/path", "s3://***@bucket/path"),
    ("s3://AKIAEXAMPLE:wJalr/XUtn@bucket/path", "s3://***@bucket/path"),  # an unescaped "/" in the secret
    ("s3://bucket/runs?access_key=AKIAEXAMPLE&secret_key=wJalr%2FX&session_token=FQo&scheme=http",
     "s3://bucket/runs?access_key=***&secret_key=***&session_token=***&scheme=http"),
    ("abfs://container/x?account_key=abc&sas_token=sv%3D1", "abfs://container/x?account_key=***&sas_token=***"),
    (f"s3://bucket/user@example.com/runs{Q}", f"s3://bucket/user@example.com/runs{Q}"),
    ("hdfs://namenode:8020/data/user@example.com", "hdfs://namenode:8020/data/user@example.com"),
    ("/home/me/runs", "/home/me/runs"),
])
def test_redact_hides_credentials(uri, expected):
    assert st.redact(uri) == expected


def test_check_writable_names_the_uri_without_secrets(tmp_path):
    (tmp_path / "file").write_text("a file, not a folder")
    uri = f"file://{tmp_path}/file/runs?secret_key=SUPERSECRET"
    with pytest.raises(FtrayInputError) as e:
        st.check_writable(uri, "storage")
    message = one_line(e)
    assert "SUPERSECRET" not in message and "secret_key=***" in message and "cannot be written" in message


@pytest.mark.parametrize("scheme", ["", "file://"])
def test_a_trial_whose_reported_checkpoint_is_gone_gets_its_newest_kept_folder(tmp_path, scheme):
    """Train keeps checkpoint_manager_snapshot.json beside a trial's checkpoint folders: a file that sorts
    after them, and no checkpoint (a job on file:// storage once tried to score it)."""
    from ftray.results import runfolder as rf

    folder = tmp_path / "run" / rf.CHECKPOINTS / "t1"
    for name in ("checkpoint_2026-11-29_17-42-35.959666", "checkpoint_2026-11-29_17-42-38.000001"):
        (folder / name).mkdir(parents=True)
    (folder / "checkpoint_manager_snapshot.json").write_text("{}")
    run_dir = f"{scheme}{tmp_path / 'run'}"
    gone = str(folder / "checkpoint_2026-11-29_17-42-40.000000")
    newest = f"{scheme}{folder / 'checkpoint_2026-11-29_17-42-38.000001'}"
    assert rf.trial_checkpoint(run_dir, "t1", gone) == newest
    assert rf.trial_checkpoint(run_dir, "t1", None) == newest
    kept = str(folder / "checkpoint_2026-11-29_17-42-35.959666")
    assert rf.trial_checkpoint(run_dir, "t1", kept) == f"{scheme}{kept}"  # the reported one, while it is there
    assert rf.trial_checkpoint(run_dir, "t2", None) is None


def _experiment_state(trial_ids) -> str:
    return json.dumps({"trial_data": [[json.dumps({"trial_id": t, "status": "TERMINATED", "relative_logdir": t}),
                                        json.dumps({"last_result": {"step": 10}})] for t in trial_ids]})


def test_a_part_written_experiment_state_gives_way_to_a_whole_one(tmp_path, monkeypatch, capsys):
    """Tune rewrites its experiment state in place; a reader (ftray report on a live run, ftray resume)
    that catches it mid-write on object storage takes the newest whole one, or reads again."""
    from ftray.results import runfolder as rf

    monkeypatch.setattr(rf, "STATE_REREAD_S", 0.0)
    run = tmp_path / "run"
    run.mkdir()
    (run / "experiment_state-2026-12-04_10-00-00.json").write_text(_experiment_state(["a", "b"]))
    torn = _experiment_state(["a", "b", "c"])
    (run / "experiment_state-2026-12-04_10-05-00.json").write_text(torn[: len(torn) // 2])
    assert [t.id for t in rf.tune_trials(str(run))] == ["a", "b"]
    err = capsys.readouterr().err
    assert "experiment_state-2026-12-04_10-00-00.json read instead of the newer" in err and "part-written" in err

    # The only file, caught mid-write once: read again after a pause, whole the second time.
    (run / "experiment_state-2026-12-04_10-00-00.json").unlink()
    reads, real = [], st.read_text

    def torn_once(path):
        reads.append(path)
        return torn[:40] if len(reads) == 1 else real(path)

    (run / "experiment_state-2026-12-04_10-05-00.json").write_text(torn)
    monkeypatch.setattr(st, "read_text", torn_once)
    assert [t.id for t in rf.tune_trials(str(run))] == ["a", "b", "c"]
    assert "read on try 2" in capsys.readouterr().err
    # Never whole: one line naming the folder, not a JSONDecodeError.
    monkeypatch.setattr(st, "read_text", lambda path: torn[:40])
    with pytest.raises(FtrayInputError, match="experiment state stayed part-written over 5 reads"):
        rf.tune_trials(str(run))


def test_file_uri_writes_are_atomic(tmp_path, monkeypatch):
    target = tmp_path / "run" / "record.json"
    uri = f"file://{target}"
    st.write_text(uri, "first")
    assert target.read_text() == "first" and st.read_text(uri) == "first"

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        st.write_text(uri, "second")
    monkeypatch.undo()
    assert target.read_text() == "first" and os.listdir(target.parent) == ["record.json"]  # no temporary left

    errors = []

    def write(i):
        try:
            for _ in range(20):
                st.write_text(uri, f"thread {i}")
        except Exception as e:  # a shared temporary name would make one thread's rename fail
            errors.append(e)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and target.read_text().startswith("thread ") and os.listdir(target.parent) == ["record.json"]


def test_s3_round_trip_through_a_uri_with_a_query(monkeypatch):
    server_module = pytest.importorskip("moto.server")
    import pyarrow.fs

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                       "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"{host}:{port}"
        pyarrow.fs.S3FileSystem(endpoint_override=endpoint, scheme="http", region="us-east-1",
                                allow_bucket_creation=True).create_dir("bucket")
        query = f"?endpoint_override={endpoint}&scheme=http&region=us-east-1"
        base = f"s3://bucket/x{query}"
        st.check_writable(base, "storage")
        record = st.join(base, "run", "record.json")
        assert record == f"s3://bucket/x/run/record.json{query}"
        st.write_text(record, '{"ok": true}')
        st.write_text(record, '{"ok": 2}')  # replaced whole
        assert st.exists(record) and st.is_file(record) and st.read_text(record) == '{"ok": 2}'
        assert st.list_names(st.dirname(record)) == ["record.json"]
        st.remove_tree(st.join(base, "run"))
        assert not st.exists(record) and st.list_names(st.join(base, "run")) == []
        with pytest.raises(FtrayInputError) as e:
            st.check_writable(f"s3://AKIAEXAMPLE:NOTASECRETREALLY@no-such-bucket/x{query}", "storage")
        message = one_line(e)
        assert "NOTASECRETREALLY" not in message and "AKIAEXAMPLE" not in message
        assert "s3://***@no-such-bucket" in message
    finally:
        server.stop()


# ---- W&B mode ------------------------------------------------------------------------------------

@pytest.fixture
def clean_wandb_env(monkeypatch, tmp_path):
    for key in ("WANDB_MODE", "WANDB_DISABLED", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    return monkeypatch


@pytest.mark.parametrize("env, sweep_mode, mode, reason", [
    ({"WANDB_MODE": "offline"}, "online", "offline",
     "WANDB_MODE=offline in the environment (over the sweep's wandb.mode='online')"),
    ({"WANDB_MODE": "offline", "WANDB_API_KEY": "k" * 40}, "auto", "offline", "WANDB_MODE=offline in the environment"),
    ({"WANDB_MODE": "dryrun"}, "auto", "offline", "WANDB_MODE=dryrun in the environment (dryrun means offline)"),
    ({"WANDB_MODE": "disabled"}, "offline", "disabled", "WANDB_MODE=disabled"),
    ({"WANDB_MODE": "online"}, "disabled", "online", "WANDB_MODE=online"),
    ({"WANDB_DISABLED": "true", "WANDB_MODE": "online"}, "auto", "disabled", "WANDB_DISABLED=true in the environment"),
    ({}, "offline", "offline", "the sweep sets wandb.mode='offline'"),
    ({"WANDB_API_KEY": "k" * 40}, "auto", "online", "an API key is set (WANDB_API_KEY)"),
    ({}, "auto", "offline", "no API key is set here"),
])
def test_wandb_mode_follows_the_environment(clean_wandb_env, env, sweep_mode, mode, reason):
    from ftray.driver.tracking import wandb_mode, wandb_mode_and_reason

    for key, value in env.items():
        clean_wandb_env.setenv(key, value)
    got_mode, got_reason = wandb_mode_and_reason(WandB(mode=sweep_mode))
    assert got_mode == mode == wandb_mode(WandB(mode=sweep_mode)) and reason in got_reason
    assert "k" * 40 not in got_reason


def test_wandb_netrc_key_and_bad_mode(clean_wandb_env, tmp_path):
    from ftray.driver.tracking import wandb_mode_and_reason

    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "n" * 40 + "\n")
    netrc.chmod(0o600)
    clean_wandb_env.setenv("NETRC", str(netrc))
    mode, reason = wandb_mode_and_reason(WandB())
    assert mode == "online" and "NETRC for api.wandb.ai" in reason and "n" * 40 not in reason
    clean_wandb_env.setenv("WANDB_MODE", "ofline")
    with pytest.raises(FtrayInputError, match="WANDB_MODE='ofline' in the environment is not a W&B mode"):
        wandb_mode_and_reason(WandB())


def test_wandb_setup_message_says_mode_and_why_never_the_key(clean_wandb_env, capsys):
    from ftray.spec.config import TrialConfig
    from ftray.driver.tracking import WandbTracking

    key = "s3cr3t" * 7
    clean_wandb_env.setenv("WANDB_API_KEY", key)
    tracking = WandbTracking(WandB(mode="offline"), group="g", model_params={}, trial_config=TrialConfig.from_dict)
    tracking.setup()
    tracking.setup()  # said once
    out = capsys.readouterr().out
    assert out.count("ftray: W&B") == 1 and "W&B offline, because the sweep sets wandb.mode='offline'" in out
    assert "no API key" not in out and key not in out
    clean_wandb_env.setenv("WANDB_MODE", "disabled")
    WandbTracking(WandB(), group="g", model_params={}, trial_config=TrialConfig.from_dict).setup()
    assert "W&B disabled, because WANDB_MODE=disabled in the environment" in capsys.readouterr().out


def test_s3_credentials_leave_the_uri_for_the_environment(monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        # Set, then removed: monkeypatch then restores the variable's absence after the test, so the
        # credentials without_credentials puts into os.environ do not outlive it.
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    plain = st.without_credentials("s3://KEY:SE%2FCRET@bucket/runs?endpoint_override=h:9000&session_token=T0K")
    assert plain == "s3://bucket/runs?endpoint_override=h:9000"
    assert (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"], os.environ["AWS_SESSION_TOKEN"]) \
        == ("KEY", "SE/CRET", "T0K")
    assert st.without_credentials("gs://bucket/runs") == "gs://bucket/runs"
    assert st.without_credentials("/local/runs") == "/local/runs"


def test_the_shared_checks_of_ints_and_numbers():
    import math

    import numpy as np

    from ftray.checks import check_gpus_per_worker, is_int, is_number

    assert is_int(3, 1) and is_int(np.int64(3), 1) and not is_int(0, 1) and not is_int(True) and not is_int(2.0)
    assert not is_int(np.int64(3), plain=True) and is_int(3, 0, plain=True)
    assert is_number(0.5) and is_number(np.float32(0.5)) and not is_number(math.inf) and not is_number(False)
    assert not is_number(np.float32(0.5), plain=True) and is_number(np.float64(0.5), plain=True)  # float's subclass
    for ok in (0, 0.25, 1, 2):
        check_gpus_per_worker(ok, "gpus_per_worker")
    with pytest.raises(FtrayInputError, match=r"^gpus_per_worker must be 0 \(no GPU\).*got 1.5$"):
        check_gpus_per_worker(1.5, "gpus_per_worker")
