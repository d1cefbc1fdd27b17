"""Every place ftray relies on Ray's internals: private attributes, internal modules, private arguments,
undocumented environment variables.

Each function says what it does, why ftray needs it, and the Ray version it was checked against. A Ray
upgrade that moves one of them fails loudly in tests/test_raypatches.py, one named test per function,
without starting a cluster. Ray is imported inside the functions: importing ftray stays light.

Two behaviours of Tune that ftray relies on elsewhere, without a function here (checked against Ray 2.60):
- ftray/results/runfolder.py (`_experiment_trials`) parses Tune's experiment_state-*.json files (their
  "trial_data" of [state, metadata] pairs: trial_id, status, relative_logdir, last_result) to list a
  run's trials without Ray;
- ftray/driver/resuming.py (`KeepHistory`) relies on Tune running a sweep's own callbacks before its
  loggers, so a resumed trial's earlier reports are fetched before its logger appends to them.
"""

from __future__ import annotations

import os
from typing import Any

# ---- Ray start-up ------------------------------------------------------------------------------------


def workers_not_niced() -> dict[str, Any]:
    """`ray.init` keyword arguments that run a local Ray's workers at the driver's priority.

    Why: Ray's default (worker_niceness 15) lets every wake-up of Ray's own daemons preempt a Train
    worker, and its DDP peers then wait for it at the next all-reduce (README, Benchmarks).
    How: `_system_config` is ray.init's private override of RayConfig; `worker_niceness` is the key
    (RAY_worker_niceness as an environment variable). Checked against Ray 2.60."""
    return {"_system_config": {"worker_niceness": 0}}


def keep_out_of_runtime_env(names: set[str]) -> None:
    """Tune stops copying the environment variables `names` into each trial actor's runtime_env.

    Why: Ray Tune copies a fixed list of variables (AWS credentials among them) from the driver's
    environment into every trial actor's runtime_env, and Ray's runtime-env agent writes that into its
    log. How: that list is the module global `ray.tune.execution.class_cache.ENV_VARS_TO_PROPAGATE`,
    read each time `_ActorClassCache.get` builds an actor class; it is replaced here by the list without
    `names`. Checked against Ray 2.60."""
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE = set(class_cache.ENV_VARS_TO_PROPAGATE) - set(names)


# ---- Tune: searcher, scheduler, controller, trials -------------------------------------------------


def optuna_suggested(search, trial_id: str) -> bool:
    """Whether Tune's OptunaSearch `search` suggested the trial `trial_id` (holds an Optuna trial for it).

    Why: a trial Optuna never suggested (`--restart-errored` runs an errored trial again as a new Tune
    trial, with a new id) is not Optuna's to hear of: OptunaSearch fails on its id (KeyError).
    How: OptunaSearch keeps its Optuna trials by Tune trial id in the private dict `_ot_trials`.
    Checked against Ray 2.60."""
    return trial_id in search._ot_trials


def mark_trial_for_snapshot(tune_controller, trial) -> None:
    """Have Tune write `trial`'s status into the experiment-state file at its next snapshot.

    Why: Tune writes a trial's status there only when the trial was marked since the last snapshot, and a
    trial whose process died is set to ERROR without that mark (`TuneController._schedule_trial_stop`
    returns early for a trial without a live process): the file kept it RUNNING, the report said RUNNING
    and a resume took it for unfinished (schedulers.FIFOKeepingErrors). How: the private
    `TuneController._mark_trial_to_checkpoint`; a Ray without it keeps its own behaviour (nothing is
    marked). Checked against Ray 2.60."""
    mark = getattr(tune_controller, "_mark_trial_to_checkpoint", None)
    if mark is not None:
        mark(trial)


def search_follows_restored_trials() -> None:
    """After Tune restores a sweep, its search algorithm counts the trials Tune restored.

    Why: Tune snapshots a sweep's trials (experiment_state-*.json) and its search algorithm's state
    (search_gen_state-*.json: trials created, trials running) into separate files and uploads them one by
    one; a driver killed between the two leaves the search state a snapshot behind its trials (or ahead).
    Restored so, the search waits forever for a trial that finished before the kill to finish (the
    concurrency limit stays full) or creates more trials than the sweep's `num_trials`; or, ahead, never
    creates again a trial the kill lost. How: after the private `TuneController._requeue_restored_trials`
    (the restore's last step, before any new trial), `align_search` on the controller's `_search_alg` and
    `_trials`. Installed once per process; a Ray without that method keeps its own behaviour. Checked
    against Ray 2.60."""
    from ray.tune.execution.tune_controller import TuneController

    original = getattr(TuneController, "_requeue_restored_trials", None)
    if original is None or getattr(original, "ftray_aligns_search", False):
        return

    def requeue_then_align(self, trials, resume_config):
        original(self, trials, resume_config)
        if said := align_search(self._search_alg, self._trials):
            print(f"ftray: Tune's stored search state did not match its stored trials ({said}): it now follows "
                  f"the {len(self._trials)} restored trials", flush=True)

    requeue_then_align.ftray_aligns_search = True
    TuneController._requeue_restored_trials = requeue_then_align


def align_search(search_alg, trials) -> str:
    """Make Tune's search algorithm `search_alg` agree with the `trials` a restore brought back; returns
    what changed ("" where nothing did).

    A trial the search counts as running but that is finished (or was not restored) is completed in it,
    as Tune would have done: Optuna hears its last result, the concurrency limit frees its slot. A
    SearchGenerator's count of created trials becomes the number restored, so it creates exactly the
    ones still missing. (A BasicVariantGenerator, the confirmation phase's, has its running set aligned;
    its position in its list of points is its own.) How: the private `SearchGenerator._counter`,
    `ConcurrencyLimiter.live_trials` and `BasicVariantGenerator._live_trials`. Checked against Ray 2.60."""
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter, SearchGenerator

    by_id = {t.trial_id: t for t in trials}
    changes = []
    if isinstance(search_alg, SearchGenerator) and search_alg._counter != len(trials):
        n = search_alg._counter
        changes.append(f"it had created {n} trial{'s' * (n != 1)}, the snapshot holds {len(trials)}")
        search_alg._counter = len(trials)
    limiters = []
    searcher = getattr(search_alg, "searcher", None)
    while searcher is not None:
        if isinstance(searcher, ConcurrencyLimiter):
            limiters.append((searcher, searcher.live_trials))
        searcher = getattr(searcher, "searcher", None)
    if isinstance(search_alg, BasicVariantGenerator):
        limiters.append((search_alg, search_alg._live_trials))
    for limiter, running in limiters:
        finished = sorted(i for i in running if i in by_id and by_id[i].is_finished())
        lost = sorted(i for i in running if i not in by_id)
        for trial_id in finished:
            trial = by_id[trial_id]
            limiter.on_trial_complete(trial_id, result=trial.last_result, error=trial.status == "ERROR")
        for trial_id in lost:
            limiter.on_trial_complete(trial_id, error=True)
        if finished:
            changes.append(f"it counted {', '.join(finished)} as running, which had finished")
        if lost:
            changes.append(f"it counted {', '.join(lost)} as running, which the snapshot lacks")
    return "; ".join(changes)


def asha_holds(asha, trial) -> bool:
    """Whether Tune's AsyncHyperBandScheduler `asha` has `trial` in one of its brackets.

    Why: PerModelASHA removes a trial from its model's ASHA on error; ASHA's on_trial_remove fails on a
    trial it does not hold (one already completed or removed). How: ASHA keeps a trial's bracket by trial
    id in the private dict `_trial_info`. Checked against Ray 2.60."""
    return trial.trial_id in asha._trial_info


def asha_replay_result(asha, trial, time: float, value: float) -> None:
    """Enter a result `trial` reported before a resume into `asha`'s rungs, without a decision on it.

    Why: Tune saves a searcher's state for `Tuner.restore` but not a scheduler's, so a resumed sweep's
    ASHA would judge its next trials against empty rungs (schedulers.PerModelASHA). How: the trial's
    bracket (private `_trial_info[trial_id]`, a `_Bracket`) records the value through its `on_result`,
    signed by ASHA's private `_metric_op` (1 for max, -1 for min) as ASHA's own on_trial_result does.
    Checked against Ray 2.60."""
    asha._trial_info[trial.trial_id].on_result(trial, time, asha._metric_op * value)


def asha_stopped(asha) -> int:
    """How many trials `asha` stopped early (for the scheduler's progress line).

    How: ASHA's private counter `_num_stopped`, which its own debug_string prints. Checked against Ray 2.60."""
    return asha._num_stopped


def trial_storage(trial) -> tuple[Any, str]:
    """(pyarrow filesystem, path on it) of the folder where Tune stores `trial`'s files (result.json, ...).

    Why: ftray reads a trial's earlier reports back from storage (KeepHistory, PerModelASHA on resume),
    which may be a URI. How: `Trial.storage` is a `ray.train._internal.storage.StorageContext`; its
    `storage_filesystem` and `trial_fs_path`. Checked against Ray 2.60."""
    return trial.storage.storage_filesystem, trial.storage.trial_fs_path


# ---- Train -------------------------------------------------------------------------------------------


def train_env(local: bool) -> dict[str, str]:
    """Ray Train settings for the trials, as environment variables, where the user has not set them.

    Why: the controller checks on its workers every 0.5 s instead of 2 s: a trial otherwise idles up to
    2 s before its end is noticed, then again while its workers shut down; and on a local Ray, no
    preemption watcher: one machine is never drained, and the watcher is one more actor process to start
    per trial. Together about 6 s less per trial on 2 CPUs (README, Benchmarks). A cluster may lose spot
    nodes: the watcher stays on there.
    How: the Train controller reads `RAY_TRAIN_HEALTH_CHECK_INTERVAL_S` and
    `RAY_TRAIN_ENABLE_PREEMPTION_WATCHER` (ray/train/v2/_internal/constants.py), and Train passes both on
    from a trial's driver to its controller and workers. Checked against Ray 2.60."""
    env = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
    if local:
        env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
    return {k: v for k, v in env.items() if k not in os.environ}



def quiet_train_report_lines() -> None:
    """Ray Train stops logging every report in a worker.

    Why: Train logs every report with all its metrics, the per-row scores and generations included
    (tens of kB a line on a full validation set), on every worker; ftray prints its own progress line.
    How: that logger is named after its file, `ray/train/v2/_internal/execution/context.py`
    (`logging.getLogger(__file__)`); it is set to WARNING. Should Ray move that file, the lines come back
    and nothing else changes. Checked against Ray 2.60."""
    import logging

    try:
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:
        return
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


def quiet_token_auth_notice() -> None:
    """A new local Ray stops warning that it turned token authentication on.

    Why: Ray 2.60 turns token authentication on for every new local cluster (a token made under ~/.ray
    where none is) and logs a WARNING saying so on each `ftray run`: it is what ftray wants, so the line
    only alarms. Setting RAY_AUTH_MODE=token before `ray.init` is not enough to avoid it: Ray's C++ config
    is read at import. How: that module's logger (`logging.getLogger(__name__)`) is set to ERROR. Should
    Ray rename the module, the line comes back and nothing else changes. Checked against Ray 2.60."""
    import logging

    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)


class _NoRestoreHint:
    """A logging filter (logging takes any object with .filter): drops Tune's resume hint."""

    def filter(self, record) -> bool:
        return not str(record.msg).startswith("Experiment has been interrupted")


def quiet_tune_resume_hint() -> None:
    """Tune stops telling an interrupted sweep's user to resume with `Tuner.restore(path=..., trainable=...)`.

    Why: after Ctrl-C ftray prints the command that resumes a sweep (`ftray resume RUN_DIR`); Tune's
    hint, a line above it, names Python an ftray user does not write. How: a filter on the logger of
    `ray/tune/tune.py` drops that one warning ("Experiment has been interrupted ..."); its "Stop signal
    received" line stays. Should Ray reword it, the hint comes back and nothing else changes. Checked
    against Ray 2.60."""
    import logging

    tune_logger = logging.getLogger("ray.tune.tune")
    if not any(isinstance(f, _NoRestoreHint) for f in tune_logger.filters):
        tune_logger.addFilter(_NoRestoreHint())


def train_latest_checkpoint(storage_dir: str) -> tuple[dict, str] | None:
    """(the report, the checkpoint's path) of the latest checkpoint of a Ray Train run stored in
    `storage_dir` (its RunConfig's storage_path/name): the one Train goes on from when the run is made
    again there. None where Train stored none.

    Why: a trial trained by Ray Train and resumed after Ctrl-C goes on from that checkpoint, whose report
    Tune may never have taken in (rf.unrecorded); the trial's driver reports it again. How: Train keeps
    its checkpoints' reports in `checkpoint_manager_snapshot.json` beside them (`latest_checkpoint_result`:
    `checkpoint_dir_name`, `metrics`), a file of Train's own format. Should Ray change it, no report is
    sent again and nothing else changes. Checked against Ray 2.60."""
    import json

    from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME

    from ftray import storage as st

    path = st.join(storage_dir, CHECKPOINT_MANAGER_SNAPSHOT_FILENAME)
    try:
        latest = json.loads(st.read_text(path)).get("latest_checkpoint_result") if st.exists(path) else None
    except (OSError, ValueError):
        return None
    if not isinstance(latest, dict) or not isinstance(latest.get("metrics"), dict) or not latest.get("checkpoint_dir_name"):
        return None
    return latest["metrics"], st.join(storage_dir, latest["checkpoint_dir_name"])
