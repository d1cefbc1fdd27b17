"""Weights & Biases: one run per trial, grouped by sweep run, written from the Tune driver.

Why not Ray's WandbLoggerCallback: it copies WANDB_API_KEY into its logging actors' runtime_env,
and our rule is that secrets never reach Ray's runtime_env. Here the driver holds one W&B run per
live trial (wandb allows several runs in one process) and wandb reads the key from its own
environment or netrc; the key is never passed, logged or stored by ftray.
"""

from __future__ import annotations

import math
import os
from typing import Mapping

from ray import tune

from ftray.sweep import WandB

# Sampled settings and model facts that go into each run's config (W&B's parallel-coordinates
# and scatter panels need model size as a number beside rank and data fraction).
CONFIG_KEYS = ("model", "model_params", "lora_rank", "lora_alpha", "lora_dropout", "lr", "weight_decay",
               "warmup_ratio", "data_fraction", "data_filter", "batch_size", "grad_accum")
NOT_LOGGED = {"config", "trial_id", "experiment_tag", "date", "hostname", "node_ip", "pid", "checkpoint_path",
              "checkpoint_dir_name", "should_checkpoint", "done", "trial_log_path", "experiment_id"}


def wandb_mode(settings: WandB) -> str:
    if settings.mode != "auto":
        return settings.mode
    return "online" if has_api_key() else "offline"


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc

        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbTracking(tune.Callback):
    def __init__(self, settings: WandB, group: str, model_params: Mapping[str, int], sweep_config: Mapping | None = None):
        self.settings = settings
        self.group = group
        self.model_params = dict(model_params)
        self.sweep_config = dict(sweep_config or {})
        self.mode = wandb_mode(settings)
        self._runs: dict[str, object] = {}
        self._said = False

    def setup(self, **info):
        if self.mode == "offline" and not self._said:
            print("ftray: W&B has no API key here: logging offline into each trial's folder "
                  "(upload later with `wandb sync <trial folder>/wandb/offline-run-*`)", flush=True)
            self._said = True

    def _run(self, trial):
        run = self._runs.get(trial.trial_id)
        if run is not None or self.mode == "disabled":
            return run
        import wandb

        config = {k: trial.config[k] for k in CONFIG_KEYS if k in trial.config}
        config.update({k: v for k, v in trial.config.items() if not k.startswith("_") and "/" not in k})
        config["sweep_run"] = self.group
        config.update(self.sweep_config)
        name = f"{config.get('model', 'trial')}-r{config.get('lora_rank', '')}-{trial.trial_id}"
        run = wandb.init(
            project=self.settings.project, entity=self.settings.entity, group=self.group,
            id=f"{self.group}-{trial.trial_id}", name=name, config=config, dir=trial.local_path,
            mode=self.mode, resume="allow", reinit="create_new",
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
        )
        self._runs[trial.trial_id] = run
        return run

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run = self._run(trial)
        if run is None:
            return
        row = {k: v for k, v in result.items() if k not in NOT_LOGGED and _is_number(v)}
        if "trainable_params" in result and "trainable_params" not in run.config:
            run.config.update({"trainable_params": result["trainable_params"], "params": result.get("params")},
                              allow_val_change=True)
        run.log(row, step=int(result.get("step", iteration)))

    def _finish(self, trial, status: str):
        run = self._runs.pop(trial.trial_id, None)
        if run is not None:
            run.summary["status"] = status
            run.finish()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, "TERMINATED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, "ERROR")

    def on_experiment_end(self, trials, **info):
        for trial in trials:
            self._finish(trial, str(trial.status))


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def log_sweep_summary(run: dict, report: dict, files: list[str]) -> str | None:
    """A summary run in the sweep's W&B group: the frontier as a Table, the plots, and the verdicts.

    Returns the W&B run id, or None when W&B is disabled for the sweep.
    """
    settings = WandB(**(run.get("record", {}).get("sweep", {}).get("wandb") or {}))
    mode = wandb_mode(settings)
    if mode == "disabled":
        return None
    import wandb

    from ftray import storage as st

    group = st.basename(run["run_dir"])
    local_dir = run["run_dir"] if not st.is_uri(run["run_dir"]) else None
    front = set(report["frontier"])
    columns = ["trial", "model", "params", "lora_rank", "data_fraction", "lr", "objective", "base_objective",
               "wall_s", "on_front", "status"]
    table = wandb.Table(columns=columns)
    for t in report["trials"]:
        table.add_data(t["id"], t["model"], t["params"], t["lora_rank"], t["data_fraction"], t["lr"], t["objective"],
                       t["base_objective"], t["wall_s"], t["id"] in front, t["reason"] or t["status"])
    analysis = report["analysis"]
    wb = wandb.init(
        project=settings.project, entity=settings.entity, group=group, job_type="frontier-summary",
        id=f"{group}-summary", name=f"{group}-frontier", dir=local_dir, mode=mode, resume="allow",
        reinit="create_new", config={"sweep_run": group, "objective": run["objective"]},
        settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
    )
    row = {"frontier": table}
    for path in files:
        if path.endswith(".png") and not st.is_uri(path):
            row[f"plots/{path.rsplit('/', 1)[-1][:-4]}"] = wandb.Image(path)
    wb.log(row)
    wb.summary["verdicts"] = "\n".join(analysis["verdicts"])
    wb.summary["hypervolume"] = analysis["hypervolume"]["value"]
    wb.summary["frontier_trials"] = ", ".join(report["frontier"])
    wb.finish()
    return wb.id
