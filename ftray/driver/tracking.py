"""Weights & Biases: one run per trial, grouped by sweep run, written from the Tune driver.

Why not Ray's WandbLoggerCallback: it copies WANDB_API_KEY into its logging actors' runtime_env,
and our rule is that secrets never reach Ray's runtime_env. Here the driver holds one W&B run per
live trial (wandb allows several runs in one process) and wandb reads the key from its own
environment or netrc; the key is never passed, logged or stored by ftray.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, Mapping

from ray import tune

from ftray.checks import is_number
from ftray.spec.config import TrialConfig
from ftray.results.runfolder import TUNE_LABELS
from ftray.spec.groups import WandB

if TYPE_CHECKING:
    from ftray.results.report import LoadedRun


# WANDB_MODE values wandb accepts, as the mode ftray passes to wandb.init.
ENV_MODES = {"online": "online", "run": "online", "shared": "online", "offline": "offline", "dryrun": "offline",
             "disabled": "disabled"}
TRUE = ("1", "true", "yes", "on")


def wandb_mode(settings: WandB) -> str:
    """"online", "offline" or "disabled": see wandb_mode_and_reason."""
    return wandb_mode_and_reason(settings)[0]


def wandb_mode_and_reason(settings: WandB) -> tuple[str, str]:
    """The W&B mode for a sweep and why, e.g. ("offline", "WANDB_MODE=offline in the environment").

    The user's environment wins over the sweep file: WANDB_DISABLED=true means disabled, else a set
    WANDB_MODE (online, offline, disabled; dryrun is offline) is used even when the sweep names a
    mode. The file is written once and shared; the environment is this run's choice (as in wandb,
    where WANDB_MODE beats its settings file). ftray passes the resolved mode to wandb.init
    explicitly, which in wandb would beat WANDB_MODE, so the environment is applied here. Without
    either, the sweep's wandb.mode; "auto" is online when an API key is available, else offline.
    """
    from ftray.errors import FtrayInputError

    def over(mode: str) -> str:
        return f" (over the sweep's wandb.mode={settings.mode!r})" if settings.mode not in ("auto", mode) else ""

    disabled = os.environ.get("WANDB_DISABLED", "").strip()
    if disabled.lower() in TRUE:
        return "disabled", f"WANDB_DISABLED={disabled} in the environment{over('disabled')}"
    env_mode = os.environ.get("WANDB_MODE", "").strip()
    if env_mode:
        mode = ENV_MODES.get(env_mode.lower())
        if mode is None:
            raise FtrayInputError(f"WANDB_MODE={env_mode!r} in the environment is not a W&B mode; "
                                  "use online, offline or disabled (or unset it)")
        alias = f" ({env_mode} means {mode})" if env_mode.lower() != mode else ""
        return mode, f"WANDB_MODE={env_mode} in the environment{alias}{over(mode)}"
    if settings.mode != "auto":
        return settings.mode, f"the sweep sets wandb.mode={settings.mode!r}"
    source = _api_key_source()
    if source:
        return "online", f"wandb.mode is 'auto' and an API key is set ({source})"
    return "offline", "wandb.mode is 'auto' and no API key is set here (WANDB_API_KEY or a netrc entry)"


def has_api_key() -> bool:
    return _api_key_source() is not None


def _api_key_source() -> str | None:
    """Where wandb would find an API key ("WANDB_API_KEY", "~/.netrc"), never the key itself."""
    if os.environ.get("WANDB_API_KEY", "").strip():
        return "WANDB_API_KEY"
    import netrc
    from urllib.parse import urlparse

    # wandb keeps a key in netrc under its server's host: api.wandb.ai, or a self-hosted one.
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        found = netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return None
    return f"{'NETRC' if os.environ.get('NETRC') else '~/.netrc'} for {host}" if found else None


class WandbTracking(tune.Callback):
    """A W&B run per trial. Its config is the trial's whole TrialConfig (`trial_config` turns Tune's
    sampled values into it) plus the model's parameter count: W&B's parallel-coordinates and scatter
    panels need model size as a number beside rank and data fraction."""

    def __init__(self, settings: WandB, group: str, model_params: Mapping[str, int],
                 trial_config: Callable[[dict], TrialConfig]):
        self.settings = settings
        self.group = group
        self.model_params = dict(model_params)
        self.trial_config = trial_config
        self.mode = wandb_mode(settings)
        self._runs: dict[str, object] = {}
        self._said = False

    def setup(self, **info):
        if self._said:
            return
        _, reason = wandb_mode_and_reason(self.settings)
        what = {"online": "logging online", "disabled": "not logging",
                "offline": "logging offline into each trial's folder "
                           "(upload later with `wandb sync <trial folder>/wandb/offline-run-*`)"}[self.mode]
        if self.mode == "online" and not has_api_key():
            what += "; no API key is set here (WANDB_API_KEY or a netrc entry), so wandb will ask for one"
        print(f"ftray: W&B {self.mode}, because {reason}; {what}", flush=True)
        self._said = True

    def _run(self, trial):
        run = self._runs.get(trial.trial_id)
        if run is not None or self.mode == "disabled":
            return run
        import wandb

        settings = self.trial_config(trial.config)
        config = {**settings.to_dict(), "model_params": self.model_params.get(settings.model), "sweep_run": self.group}
        name = f"{settings.model}-r{settings.lora_rank}-{trial.trial_id}"
        run = wandb.init(
            project=self.settings.project, entity=self.settings.entity, group=self.group,
            id=f"{self.group}-{trial.trial_id}", name=name, config=config, dir=trial.local_path,
            mode=self.mode, resume="allow", reinit="create_new",
            settings=_wandb_settings(),
        )
        self._runs[trial.trial_id] = run
        return run

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run = self._run(trial)
        if run is None:
            return
        row = {k: v for k, v in result.items() if k not in TUNE_LABELS and is_number(v, plain=True)}
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


def _wandb_settings():
    """No console capture, no system stats, and no system metadata: the metadata holds the command line,
    and a storage URI on it may carry credentials (`--storage s3://KEY:SECRET@...`)."""
    import wandb

    return wandb.Settings(console="off", silent=True, x_disable_stats=True, x_disable_meta=True)


def log_sweep_summary(run: LoadedRun, report: dict, files: list[str]) -> str | None:
    """A summary run in the sweep's W&B group: the frontier as a Table, the plots, and the verdicts.

    Returns the W&B run id, or None when W&B is disabled for the sweep.
    """
    settings = WandB(**(run.sweep.get("wandb") or {}))
    mode = wandb_mode(settings)
    if mode == "disabled":
        return None
    import wandb

    from ftray import storage as st

    group = st.basename(run.run_dir)
    local_dir = run.run_dir if not st.is_uri(run.run_dir) else None
    front = set(report["frontier"])  # the run's one front (frontier.decide_front), as pruning kept it
    analysis = report["analysis"]
    metric = run.metric
    # The interval is over the rows the report's numbers rest on (test rows where the trials have them).
    intervals = (analysis.get("intervals") or {}).get("trials") or {}
    columns = ["trial", "model", "params", "lora_rank", "data_fraction", "lr", "seed", "objective", "test_objective",
               "interval_lo", "interval_hi", "interval_rows", "base_objective", "wall_s", "on_front", "status"]
    table = wandb.Table(columns=columns)
    for t in run.trials:
        iv = intervals.get(t.id) or {}
        table.add_data(t.id, t.model, t.params, t.lora_rank, t.data_fraction, t.lr, t.seed, t.objective,
                       t.test_score(metric), iv.get("lo"), iv.get("hi"), iv.get("n"), t.base_objective, t.wall_s,
                       t.id in front, t.reason or t.status)
    wb = wandb.init(
        project=settings.project, entity=settings.entity, group=group, job_type="frontier-summary",
        id=f"{group}-summary", name=f"{group}-frontier", dir=local_dir, mode=mode, resume="allow",
        reinit="create_new", config={"sweep_run": group, "objective": run.objective},
        settings=_wandb_settings(),
    )
    row = {"frontier": table}
    for path in files:
        if path.endswith(".png") and not st.is_uri(path):
            row[f"plots/{path.rsplit('/', 1)[-1][:-4]}"] = wandb.Image(path)
    wb.log(row)
    wb.summary["verdicts"] = "\n".join(analysis["verdicts"])
    wb.summary["hypervolume"] = analysis["hypervolume"]["value"]
    wb.summary["frontier_trials"] = ", ".join(report["frontier"])
    wb.summary["frontier_source"] = analysis["source"]  # the scores the front was decided on: test or validation
    wb.finish()
    return wb.id
