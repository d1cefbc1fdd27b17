"""Where the training recipe runs: Ray Train's workers (`RayContext`), a Tune trial's own process
(`TuneTrialContext`, a one-worker trial) or this one process (`LocalContext`, the bench and tests).

The recipe needs five things from its surroundings: its rank, the world size, its device, the
checkpoint to resume from, and a way to report metrics with a checkpoint. Ray's calls are here and
nowhere else in the worker code, so the same loop runs without Ray in the bench and tests (Ray's internals
used here are in ftray/raypatches.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from typing import Callable, Collection, Iterator

import torch

from ftray import raypatches


class RayContext:
    """Ray Train's calls, as the recipe uses them."""

    def __init__(self):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        raypatches.quiet_train_report_lines()

    @contextlib.contextmanager
    def resume_folder(self) -> Iterator[str | None]:
        """The latest reported checkpoint, when Train restarted this worker group from one."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as folder:
            yield folder

    def report(self, metrics: dict, save: Callable[[str], None] | None) -> None:
        import ray.train

        folder = tempfile.mkdtemp(prefix="ftray-ckpt-") if save else None
        try:
            checkpoint = None
            if folder:
                save(folder)
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            # SYNC: report() returns once the files are copied to the run's storage, so the
            # temporary folder can go right after it.
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_upload_mode=ray.train.CheckpointUploadMode.SYNC)
        finally:
            if folder:
                shutil.rmtree(folder, ignore_errors=True)

    def log(self, message: str) -> None:
        if self.rank == 0:
            # Ray forwards worker stdout to the driver. Not print(): Train's patched print would send the
            # line there twice, once as printed and once through its logger.
            sys.stdout.write(f"ftray: {message}\n")
            sys.stdout.flush()


class TuneTrialContext:
    """A one-worker trial in its Tune trial's process, without a Train worker group: reports go to Tune,
    and ftray stores the checkpoints itself in the trial's checkpoints folder of the run (runfolder.py),
    keeping the best `keep` by the objective and the latest, as Train does for larger trials."""

    def __init__(self, run_dir: str, trial_id: str, *, keep: int, objective: str, mode: str,
                 device: torch.device, report: Callable[[dict], None] | None = None,
                 recorded: Collection[int] | None = None):
        """`recorded`: the steps whose reports Tune recorded for this trial (rf.unrecorded: why)."""
        from ftray.results import runfolder as rf

        self.rank, self.world, self.device = 0, 1, device
        self.run_dir, self.trial_id, self.keep, self.objective, self.mode = run_dir, trial_id, keep, objective, mode
        if report is None:
            from ray import tune

            report = tune.report
        self._report = report
        self.kept = rf.stored_checkpoints(run_dir, trial_id)  # from an earlier try of this trial
        self.unrecorded = rf.unrecorded(self.kept[-1].report if self.kept else None, recorded)

    @contextlib.contextmanager
    def resume_folder(self) -> Iterator[str | None]:
        if not self.kept:
            yield None
            return
        from ftray import storage as st

        with tempfile.TemporaryDirectory(prefix="ftray-resume-") as tmp:
            yield st.local_copy(self.kept[-1].path, tmp)
        if self.unrecorded is not None:
            self._report(self.unrecorded)
            self.unrecorded = None

    def report(self, metrics: dict, save: Callable[[str], None] | None) -> None:
        from ftray.results import runfolder as rf
        from ftray import storage as st

        if save:
            # As Train reports its own: the report names its checkpoint.
            path = rf.stored_checkpoint_path(self.run_dir, self.trial_id, metrics["step"])
            metrics = dict(metrics, checkpoint_path=st.fs_path(path))
            with tempfile.TemporaryDirectory(prefix="ftray-ckpt-") as folder:
                save(folder)
                stored = rf.store_checkpoint(self.run_dir, self.trial_id, folder, metrics["step"],
                                             metrics.get(self.objective), report=metrics)
            self.kept = rf.drop_checkpoints([c for c in self.kept if c.step != stored.step] + [stored], self.keep,
                                            self.mode)
        self._report(metrics)

    def log(self, message: str) -> None:
        sys.stdout.write(f"ftray: {message}\n")
        sys.stdout.flush()


class LocalContext:
    """One plain process, rank 0 of 1: keeps what is reported; checkpoint n goes to checkpoint_dir/step_{n:06d}."""

    def __init__(self, checkpoint_dir: str | None = None, resume_from: str | None = None,
                 device: torch.device | str = "cpu", verbose: bool = False):
        self.rank, self.world, self.device = 0, 1, torch.device(device)
        self.checkpoint_dir, self.resume_from, self.verbose = checkpoint_dir, resume_from, verbose
        self.reports: list[dict] = []

    @contextlib.contextmanager
    def resume_folder(self) -> Iterator[str | None]:
        yield self.resume_from

    def report(self, metrics: dict, save: Callable[[str], None] | None) -> None:
        if save and self.checkpoint_dir:
            folder = local_checkpoint(self.checkpoint_dir, metrics["step"])
            os.makedirs(folder, exist_ok=True)
            save(folder)
        self.reports.append(metrics)

    def log(self, message: str) -> None:
        if self.verbose:
            print(f"ftray: {message}", flush=True)


def local_checkpoint(checkpoint_dir: str, step: int) -> str:
    """Where run_local puts the checkpoint of `step`."""
    return os.path.join(checkpoint_dir, f"step_{step:06d}")
