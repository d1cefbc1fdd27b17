"""Continued evaluation: score the saved adapters of a run's frontier trials on new rows of its task.

`ftray eval RUN_DIR --data FILE` rebuilds each frontier trial's model (base weights + its adapter
checkpoint), generates greedily for every row of FILE, scores it with the task's metrics, and says
how the front moved. One process, no Ray: the adapters are small.
"""

from __future__ import annotations

import os
import tempfile

import torch

from ftray import storage as st
from ftray.errors import FtrayInputError
from ftray.frontier import trial_front


def rescore(run_dir: str, data_file: str, batch_size: int = 16) -> dict:
    from peft import PeftModel

    from ftray.models import build_model, load_tokenizer
    from ftray.report import load_run
    from ftray.search import prepare, sweep_of_run
    from ftray.train import evaluate

    run = load_run(run_dir)
    sweep = sweep_of_run(run["run_dir"])
    examples = sweep.task.examples_from_file(data_file)
    if not examples:
        raise FtrayInputError(f"{data_file} holds no rows")
    _, tokenizer_json, _ = prepare(sweep)
    obj = run["objective"]
    front = [t for t in run["trials"] if t["id"] in set(run["frontier"])]
    if not front:
        raise FtrayInputError(f"{run['run_dir']}: no trial is on the frontier, so there is nothing to score")
    rows = []
    for t in front:
        if not t.get("checkpoint"):
            raise FtrayInputError(f"trial {t['id']} has no checkpoint left to score")
        spec = sweep.model(t["model"])
        tokenizer = load_tokenizer(spec, tokenizer_json)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = st.local_copy(t["checkpoint"], tmp)
            model = PeftModel.from_pretrained(build_model(spec, tokenizer, seed=sweep.seed), ckpt)

            class Settings:  # what evaluate() reads from a TrialSpec
                max_length, max_new_tokens = sweep.max_length, sweep.max_new_tokens

            Settings.batch_size = batch_size
            from ftray.data import tokenize_examples

            data = tokenize_examples(examples, tokenizer, sweep.max_length)
            metrics = evaluate(model, tokenizer, sweep.task, examples, data, Settings, torch.device("cpu"), 0, 1,
                               torch.no_grad())
        rows.append(dict(t, old_objective=t["objective"], objective=metrics[obj["metric"]], new_metrics=metrics))
    new_front = trial_front(rows, obj["mode"])
    return {"run_dir": run["run_dir"], "data": os.path.abspath(data_file), "rows": len(examples),
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
