"""Scoring saved adapters again: `ftray eval RUN_DIR --data FILE`, on new rows of the task.

A checkpoint carries what it needs to be evaluated anywhere: the adapter, the tokenizer and the
trial's settings (trial_config.json). The base model comes from the ladder rung (for a preset: built
from its config with the trial's seed, exactly as it was trained). One process, no Ray: the adapters
are small.
"""

from __future__ import annotations

import json
import os
import tempfile

from ftray import storage as st
from ftray.config import TrialConfig
from ftray.errors import FtrayInputError
from ftray.frontier import trial_front


def load_adapter(checkpoint: str, rung, device: str = "cpu"):
    """(model with its adapter, tokenizer, TrialConfig) from a local checkpoint folder."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from ftray.models import build_model
    from ftray.recipe import TRIAL_CONFIG

    with open(os.path.join(checkpoint, TRIAL_CONFIG)) as f:
        config = TrialConfig.from_dict(json.load(f))
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = PeftModel.from_pretrained(build_model(rung, tokenizer, seed=config.seed), checkpoint).to(device)
    return model, tokenizer, config


def score_checkpoint(checkpoint: str, task, rung, examples, batch_size: int = 16):
    """The task's metrics (and per-row parts) for the adapter in `checkpoint` (local or a URI) on `examples`."""
    from ftray.evaluate import score

    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer, config = load_adapter(st.local_copy(checkpoint, tmp), rung)
        return score(model=model, tokenizer=tokenizer, task=task, examples=examples, batch_size=batch_size,
                     max_length=config.max_length, max_new_tokens=config.max_new_tokens,
                     prompt_format=config.prompt_format, device="cpu")


def score_held_out(run: dict, sweep, quiet: bool = False) -> int:
    """Score every finished trial's adapter on the task's held-out test rows; returns how many were scored.

    The report's headline numbers then rest on rows that neither training nor selection saw (the
    validation rows chose the best trials, so their scores lean optimistic). A trial already scored
    on the same checkpoint and rows is not scored again. At most `test_samples` rows: a seeded subset of
    the split, the same for every trial, so their scores pair up row by row.
    """
    import torch

    from ftray import runfolder as rf
    from ftray.data import nested_subset
    from ftray.errors import HubUnavailable

    n = sweep.trial.test_samples
    try:
        split = sweep.task.examples("test") if n else []
    except HubUnavailable:
        split = []
    todo = [t for t in run["trials"] if t["objective"] is not None and t["checkpoint"]]
    if not split or not todo:
        return 0
    examples = [split[i] for i in nested_subset(len(split), min(1.0, n / len(split)), seed=0)]
    todo = [t for t in todo if (old := rf.read_test_scores(t["trial_dir"])) is None
            or (old.checkpoint, old.n) != (t["checkpoint"], len(examples))]
    if not quiet and todo:
        print(f"ftray: scoring {len(todo)} trials on {len(examples)} held-out test rows (of {len(split)})", flush=True)
    torch.set_num_threads(os.cpu_count() or 1)
    for t in todo:
        scores = score_checkpoint(t["checkpoint"], sweep.task, sweep.model(t["model"]), examples)
        rf.write_test_scores(t["trial_dir"], rf.TestScores(scores.metrics, scores.rows, len(examples), len(split),
                                                           t["checkpoint"]))
    return len(todo)


def rescore(run_dir: str, data_file: str, batch_size: int = 16) -> dict:
    from ftray.report import load_run
    from ftray.runfolder import sweep_of_run

    run = load_run(run_dir)
    sweep = sweep_of_run(run["run_dir"])
    examples = sweep.task.examples_from_file(data_file)
    if not examples:
        raise FtrayInputError(f"{data_file} holds no rows")
    obj = run["objective"]
    front = [t for t in run["trials"] if t["id"] in set(run["frontier"])]
    if not front:
        raise FtrayInputError(f"{st.redact(run['run_dir'])}: no trial is on the frontier, so there is nothing to score")
    rows = []
    for t in front:
        if not t.get("checkpoint"):
            raise FtrayInputError(f"trial {t['id']} has no checkpoint left to score")
        metrics = score_checkpoint(t["checkpoint"], sweep.task, sweep.model(t["model"]), examples, batch_size).metrics
        rows.append(dict(t, old_objective=t["objective"], objective=metrics[obj["metric"]], new_metrics=metrics))
    new_front = trial_front(rows, obj["mode"])
    return {"run_dir": st.redact(run["run_dir"]), "data": os.path.abspath(data_file), "rows": len(examples),
            "objective": obj, "trials": [{k: r[k] for k in ("id", "model", "params", "old_objective", "objective",
                                                             "new_metrics")} for r in rows],
            "frontier_before": run["frontier"], "frontier_after": new_front}


def format_rescore(result: dict) -> str:
    metric = result["objective"]["metric"]
    lines = [f"frontier trials of {result['run_dir']} scored on {result['data']} ({result['rows']} rows)",
             f"{'trial':10} {'model':24} {'params':>10} {metric + ' before':>16} {metric + ' now':>14}"]
    for t in result["trials"]:
        lines.append(f"{t['id']:10} {t['model']:24} {t['params']:>10,} {t['old_objective']:>16.4f} {t['objective']:>14.4f}"
                     + ("" if t["id"] in result["frontier_after"] else "   (off the front now)"))
    return "\n".join(lines)
