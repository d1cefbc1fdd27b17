"""The training recipe: the code that trains one trial, on each Ray Train worker, in a one-worker
trial's Tune process, or in one plain process.

Reads in the order it runs: `setup` (tokenizer, data, model with LoRA, optimizer, and the checkpoint
to resume from), the base evaluation, then `train`: get a batch, forward, backward, step, and every
`eval_every` steps `report` (evaluate, save a checkpoint, hand both to the context).

Ray is behind a small context (ftray/train/context.py): rank, world size, device, the checkpoint to resume
from, and report. `RayContext` is a Train worker's, `TuneTrialContext` a Tune trial's; `LocalContext` is
one plain process (rank 0 of 1), which is how the bench and the unit tests run this very loop
(`run_local`).

A checkpoint folder holds all a resumed run needs, and all an evaluation outside ftray needs: peft's
adapter files, the tokenizer, the trial's settings (trial_config.json) and trainer_state.pt (tensors
and plain numbers only, loaded with weights_only=True).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import statistics
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

import torch

from ftray.errors import DidNotFitError, DivergedError
from ftray.spec.config import TrialConfig
from ftray.spec.ladder import LoraSettings, ModelSpec
from ftray.train.context import LocalContext, RayContext, TuneTrialContext
from ftray.train.data import Layout, batches, select, tokenize_examples
from ftray.train.evaluate import score, sum_over_workers
from ftray.train.lora import adapters_to_fp32, apply_lora, count_params
from ftray.train.models import autocast, base_dtype, build_model, load_tokenizer
from ftray.train.steps import FusedLossLM, compile_layers, forward_backward, loss_note, lr_lambda, make_optimizer
from ftray.tasks.base import Task

TRAINER_STATE = "trainer_state.pt"
TRIAL_CONFIG = "trial_config.json"  # the settings the adapter was trained with, for whoever evaluates it later
LOG_EVERY_S = 30.0


@dataclass(frozen=True)
class TrialJob:
    """Everything a worker needs to train one trial: no Ray, no driver objects."""

    config: TrialConfig
    task: Task
    model: ModelSpec  # the ladder rung
    lora: LoraSettings
    tokenizer_json: str | None = None  # the presets' tokenizer, built on the driver
    threads: int = 1
    faults: Mapping[str, Any] = field(default_factory=dict)  # test hooks, e.g. {"nan_at_step": 5}
    objective: str | None = None  # the sweep's, shown in each evaluation's log line beside the losses
    trial_id: str | None = None  # the Tune trial's, at the head of each log line (two trials of a size may run at once)


@dataclass
class TrainState:
    """How far the trial has come. With the adapter and the optimizer, all that a resumed run needs."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # the epoch the next micro-batch comes from
    position: int = 0  # index of the next micro-batch in that epoch's batch list (the same on every worker)
    tokens: float = 0.0  # all workers, prompt and completion, no padding
    train_s: float = 0.0  # seconds in the training loop (evaluation left out)
    eval_s: float = 0.0  # seconds in evaluation, the base evaluation included
    # Seconds since the trial was launched to the latest report (its evaluation included), summed over its
    # tries: a resumed try adds its own to its checkpoint's, so what an interrupted try did after that
    # checkpoint is not counted (Tune's time_total_s starts again at 0 in a resumed trial).
    wall_s: float = 0.0
    base_metrics: dict[str, float] = field(default_factory=dict)  # base_<metric>: the model before finetuning
    # The latest report's training figures (train_loss, train_tokens_per_s, step_s): a run restored from its
    # final checkpoint reports them again, having trained no step to measure them on.
    interval: dict[str, float] = field(default_factory=dict)

    def state_dict(self) -> dict:
        return dict(asdict(self), base_metrics={k: float(v) for k, v in self.base_metrics.items()},
                    interval={k: float(v) for k, v in self.interval.items()})

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        for f in fields(self):
            if f.name in saved:  # a checkpoint from an older ftray lacks the newer fields
                setattr(self, f.name, saved[f.name])


# ---- the recipe ---------------------------------------------------------------------------------------
class LoRARecipe:
    """One trial's LoRA finetune: setup, base evaluation, the loop, evaluations and checkpoints."""

    def __init__(self, job: TrialJob, ctx: RayContext | TuneTrialContext | LocalContext, *, restarts: int = 0,
                 launched_at: float | None = None, trace: list | None = None):
        self.job, self.cfg, self.ctx = job, job.config, ctx
        self.rank, self.world, self.device = ctx.rank, ctx.world, ctx.device
        self.on_gpu = self.device.type == "cuda"
        self.restarts = restarts
        self.started = time.time()
        # From the trial driver's launch of the Train run to here: the Train controller and the worker
        # processes starting, their imports, and the process group (on a cluster, the nodes' clocks may
        # differ by a little).
        self.launched_at = launched_at or self.started
        self.worker_start_s = max(0.0, self.started - self.launched_at)
        self.trace = trace  # a list: gets (step, epoch, position, batch indices, loss) of each micro-batch
        self.state = TrainState()
        self.diverged_at: int | None = None
        self.resumed = False  # from a checkpoint (setup)
        self._epoch_batches: tuple[int, list[list[int]]] | None = None

    def run(self) -> None:
        self.setup()
        if self.cfg.eval_base and self.state.step == 0:
            # LoRA's B matrices start at zero, so this is the base model's own score.
            self.log("base evaluation")
            base, _ = self.evaluate()
            self.state.base_metrics = {f"base_{k}": v for k, v in base.items()}
        self.train()

    # ---- setup ----
    def setup(self) -> None:
        self.log("loading the data and the model")
        torch.set_num_threads(max(1, self.job.threads))
        if self.on_gpu:  # a reused trial process: its peak so far is an earlier trial's
            torch.cuda.reset_peak_memory_stats(self.device)
        self.tokenizer = load_tokenizer(self.job.model, self.job.tokenizer_json)
        self._setup_data()
        self._setup_model()
        self._setup_optimizer()
        with self.ctx.resume_folder() as folder:
            self.resumed = bool(folder)
            if folder:
                self.load_checkpoint(folder)
                self.launched_at -= self.state.wall_s  # the earlier tries' seconds count too (TrainState.wall_s)
                self.log(f"resumed at step {self.state.step}/{self.total_steps}")
        self.setup_s = time.time() - self.started

    def _setup_data(self) -> None:
        """The same nested subset on every worker; each takes its own shard of every epoch's batches."""
        cfg = self.cfg
        filters = {cfg.data_filter_column: cfg.data_filter} if cfg.data_filter is not None else None
        train_examples = select(self.job.task.examples("train"), cfg.data_fraction, cfg.seed, filters)
        self.valid_examples = self.job.task.examples("valid")[: cfg.eval_samples]
        self.train_data = tokenize_examples(train_examples, self.tokenizer, cfg.max_length, fmt=cfg.prompt_format)
        self.valid_data = tokenize_examples(self.valid_examples, self.tokenizer, cfg.max_length, fmt=cfg.prompt_format)
        self.layout = Layout.of(cfg)
        if cfg.steps:
            self.total_steps = cfg.steps
        elif cfg.batch_tokens is None:
            per_step = cfg.batch_size * cfg.grad_accum * self.world
            self.total_steps = max(1, math.ceil(cfg.epochs * len(self.train_data) / per_step))
        else:  # token budgets: an epoch is as many micro-batches as the data cuts into (the same every epoch, or nearly)
            self._epoch_batches = (0, self._batches(0))  # kept: the loop starts with them
            self.total_steps = max(1, math.ceil(cfg.epochs * len(self._epoch_batches[1]) / cfg.grad_accum))

    def _setup_model(self) -> None:
        """Base weights (bf16 on GPU), LoRA adapters (fp32), DDP across the workers."""
        torch.manual_seed(self.cfg.seed)  # LoRA's initial weights: the same on every worker, and per seed
        model = build_model(self.job.model, self.tokenizer, seed=self.cfg.seed, dtype=base_dtype(self.device))
        self.model = apply_lora(model, self.job.model, self.job.lora)
        self.params, self.trainable_params = count_params(self.model)
        if self.on_gpu:
            adapters_to_fp32(self.model)  # fp32 master weights; the frozen base stays bf16
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.model.to(self.device)
        if self.cfg.compile:
            self.log(f"compiling {compile_layers(self.model)} decoder layers")
        # What training calls (evaluation calls the model itself): the model, or it with the fused loss.
        trained, self.loss_kind = FusedLossLM.wrap(self.model, self.cfg.fused_loss, self.on_gpu)
        if self.cfg.fused_loss != "off":
            note = loss_note(self.loss_kind, self.cfg.fused_loss, self.on_gpu)
            self.log(f"fused_loss={self.cfg.fused_loss!r}: {note}")
        self.ddp = trained
        if self.world > 1:
            device_ids = [self.device.index] if self.on_gpu else None
            self.ddp = torch.nn.parallel.DistributedDataParallel(trained, device_ids=device_ids)

    def _setup_optimizer(self) -> None:
        self.optimizer = make_optimizer(self.trainable, self.cfg, self.on_gpu)
        # The learning rate is a function of the step alone (set before each step): nothing to save.
        self.lr_factor = lr_lambda(int(self.cfg.warmup_ratio * self.total_steps), self.total_steps)

    # ---- checkpoints: one save and one load over the same parts ----
    def _resumable(self) -> dict[str, Any]:
        """What trainer_state.pt holds, by key: objects with state_dict() and load_state_dict()."""
        return {"trainer": self.state, "optimizer": self.optimizer}

    def save_checkpoint(self, folder: str) -> None:
        """The adapter (peft's files), the tokenizer, the trial's settings and the trainer state."""
        self.model.save_pretrained(folder)  # adapter (and trained embeddings) only, safetensors
        self.tokenizer.save_pretrained(folder)
        with open(os.path.join(folder, TRIAL_CONFIG), "w") as f:
            json.dump(self.cfg.to_dict(), f, indent=1)
        torch.save({key: part.state_dict() for key, part in self._resumable().items()},
                   os.path.join(folder, TRAINER_STATE))

    def load_checkpoint(self, folder: str) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        adapter = load_file(os.path.join(folder, "adapter_model.safetensors"), device=str(self.device))
        set_peft_model_state_dict(self.model, adapter)
        saved = torch.load(os.path.join(folder, TRAINER_STATE), map_location=self.device, weights_only=True)
        for key, part in self._resumable().items():
            part.load_state_dict(saved[key])

    # ---- the loop ----
    def _batches(self, epoch: int) -> list[list[int]]:
        """This worker's micro-batches of one epoch, in order: `batch_size` rows each, or `batch_tokens`."""
        return batches(self.train_data, self.cfg.batch_size, self.cfg.seed, epoch, self.rank, self.world,
                       drop_last=True, batch_tokens=self.cfg.batch_tokens, layout=self.layout)

    def next_batch(self) -> list[int]:
        """This worker's next micro-batch: position `state.position` of epoch `state.epoch`'s seeded order."""
        s = self.state
        while True:
            if self._epoch_batches is None or self._epoch_batches[0] != s.epoch:
                self._epoch_batches = (s.epoch, self._batches(s.epoch))
            order = self._epoch_batches[1]
            if s.position < len(order):
                s.position += 1
                return order[s.position - 1]
            s.epoch, s.position = s.epoch + 1, 0

    def train(self) -> None:
        cfg, state = self.cfg, self.state
        if state.step >= self.total_steps:
            # Restored from the final checkpoint (the sweep's driver was lost after training ended):
            # report the result again rather than train again.
            self._start_interval()
            self.report(nan_now=False)
            return
        self.log(f"training from step {state.step}/{self.total_steps}")
        self._start_interval()
        self.model.train()
        while state.step < self.total_steps:
            t_step = time.perf_counter()
            self._seed_step()
            for group in self.optimizer.param_groups:
                group["lr"] = cfg.lr * self.lr_factor(state.step)
            for micro in range(cfg.grad_accum):
                epoch, position, idx = state.epoch, state.position, self.next_batch()
                samples = [self.train_data[i] for i in idx]
                cpu_batch = self.layout.collate(samples, self.tokenizer.pad_token_id)
                n_tokens = int((cpu_batch["labels"][:, 1:] != -100).sum())  # counted on the host: no wait
                self.tokens_seen += sum(len(s["input_ids"]) for s in samples)
                batch = {k: v.to(self.device, non_blocking=True) for k, v in cpu_batch.items()}
                sync = micro == cfg.grad_accum - 1 or self.world == 1
                loss = forward_backward(self.ddp, batch, autocast=self.autocast(), accum=cfg.grad_accum,
                                        no_sync=contextlib.nullcontext() if sync else self.ddp.no_sync(),
                                        on_loss=self._inject_faults)
                self.loss_sum[0] += loss.detach().double() * n_tokens
                self.loss_sum[1] += n_tokens
                if self.trace is not None:
                    self.trace.append((state.step + 1, epoch, position, tuple(idx), loss.detach()))
            grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            state.step += 1
            # Every worker must agree to stop, or the others would wait for it forever. The norm is of the
            # gradients DDP has already averaged, so it is the same on every worker, and a NaN loss on any
            # worker (in any micro-batch) makes it NaN: no collective of its own, one wait per step.
            nan_now = not math.isfinite(grad_norm.item())
            self.step_times.append(time.perf_counter() - t_step)
            if time.time() - self.last_log >= LOG_EVERY_S:
                self._log_progress()
            if state.step % cfg.eval_every == 0 or state.step == self.total_steps or nan_now:
                if self.report(nan_now):
                    return

    def _inject_faults(self, loss: torch.Tensor) -> torch.Tensor:
        """The faults ftray's own tests inject (TrialJob.faults) at a step: a NaN loss, an out-of-memory;
        unless resumed from a checkpoint, the process lost (SIGKILL) or stalled (a test kills the driver)."""
        at = self.state.step + 1
        if self.job.faults.get("lost_at_step") == at and not self.resumed:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.job.faults.get("stall_at_step") == at and not self.resumed:
            time.sleep(900)
        if self.job.faults.get("oom_at_step") == at:
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected at step {at})")
        if self.job.faults.get("nan_at_step") == at:
            return loss * float("nan")
        return loss

    def _seed_step(self) -> None:
        """Dropout's randomness as a function of (seed, worker, step): a resumed run draws the masks the
        uninterrupted one would have, and there is no generator state to save."""
        seed = ((self.cfg.seed * 1_000_003 + self.rank) * 1_000_003 + self.state.step) % 2**63
        # This device's generator only: torch.manual_seed would also queue a seeding of every CUDA device
        # for later, one more each step, where CUDA is not in use.
        if self.on_gpu:
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            torch.cuda.default_generators[index].manual_seed(seed)
        else:
            torch.default_generator.manual_seed(seed)

    def _start_interval(self) -> None:
        """Zero what each report covers: the steps since the last one."""
        # Sum of token losses and loss tokens, kept on the device: adding to it needs no wait for it.
        self.loss_sum = torch.zeros(2, dtype=torch.float64, device=self.device)
        self.tokens_seen = 0  # this worker's
        self.step_times: list[float] = []  # wall seconds of each optimizer step
        self.interval_start = self.last_log = time.time()

    # ---- evaluation and reports ----
    def autocast(self):
        return autocast(self.device)

    def evaluate(self) -> tuple[dict[str, float], dict]:
        """The metrics; and each task metric's per-row parts (for the report's intervals) with the
        generated answers, row by row."""
        t = time.time()
        # Compiled layers run eagerly here: generation's shapes change token by token.
        with torch.compiler.set_stance("force_eager") if self.cfg.compile else contextlib.nullcontext():
            scores = score(model=self.model, tokenizer=self.tokenizer, task=self.job.task,
                           examples=self.valid_examples, data=self.valid_data, batch_size=self.cfg.batch_size,
                           max_length=self.cfg.max_length, max_new_tokens=self.cfg.max_new_tokens,
                           prompt_format=self.cfg.prompt_format, device=self.device, rank=self.rank,
                           world=self.world, autocast=self.autocast())
        self.state.eval_s += time.time() - t
        return scores.metrics, {"eval_rows": scores.rows, "eval_predictions": scores.predictions}

    def report(self, nan_now: bool) -> bool:
        """Evaluate, save a checkpoint (rank 0) and report; True when training must stop."""
        state = self.state
        interval_s = time.time() - self.interval_start
        state.train_s += interval_s
        counts = torch.tensor([self.tokens_seen], dtype=torch.float64)
        totals = sum_over_workers(torch.cat([self.loss_sum.cpu(), counts]), self.world)
        state.tokens += totals[2].item()
        if self.step_times:  # since the last report
            state.interval = {"train_tokens_per_s": totals[2].item() / max(interval_s, 1e-9),
                              "step_s": statistics.median(self.step_times)}
            if totals[1].item() > 0:
                state.interval["train_loss"] = totals[0].item() / totals[1].item()
        train_loss = state.interval.get("train_loss")
        diverged = nan_now or (train_loss is not None and not math.isfinite(train_loss))
        metrics = {
            "step": state.step,
            "total_steps": self.total_steps,
            "lr": self.cfg.lr * self.lr_factor(state.step),  # the next step's
            "tokens": state.tokens,  # all workers, prompt and completion, no padding, since the trial began
            "train_s": state.train_s,
            **state.interval,
            "setup_s": self.setup_s,
            "worker_start_s": self.worker_start_s,
            "params": self.params,
            "trainable_params": self.trainable_params,
            "train_examples": len(self.train_data),
            "restarts": self.restarts,
            "world_size": self.world,
            "diverged": int(diverged),
            **state.base_metrics,
        }
        if self.on_gpu:  # rank 0's peak: weights, activations and optimizer state together
            metrics["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        if not diverged:
            self.log(f"evaluation at step {state.step}/{self.total_steps}")
            scores, rows = self.evaluate()
            metrics.update(scores, eval_s=state.eval_s, **rows)
        state.wall_s = metrics["wall_s"] = time.time() - self.launched_at
        self.ctx.report(metrics, self.save_checkpoint if self.rank == 0 and not diverged else None)
        if diverged:
            self.log(f"diverged at step {state.step}: the loss is not a number; the trial stops")
            self.diverged_at = state.step
            return True  # a NaN loss cannot recover: stop at once, the report marks the trial diverged
        self.log(f"step {state.step}/{self.total_steps}: " + ", ".join(
            f"{k} {metrics[k]:.4g}" for k in dict.fromkeys(("train_loss", "eval_loss", self.job.objective))
            if isinstance(metrics.get(k), (int, float))))
        self._start_interval()
        self.model.train()
        return False

    def log(self, message: str) -> None:
        who = f"trial {self.job.trial_id} {self.job.model.name}" if self.job.trial_id else self.job.model.name
        self.ctx.log(f"{who}: {message}")

    def _log_progress(self) -> None:
        loss = (self.loss_sum[0] / self.loss_sum[1].clamp(min=1)).item()  # this worker's, since the last report
        rate = self.tokens_seen * self.world / max(time.time() - self.interval_start, 1e-9)
        self.log(f"step {self.state.step}/{self.total_steps} loss {loss:.4f} {rate:,.0f} tokens/s")
        self.last_log = time.time()


# ---- entry points -------------------------------------------------------------------------------------
@contextlib.contextmanager
def _memory_errors(job: TrialJob):
    try:
        yield
    except torch.OutOfMemoryError as e:
        c = job.config
        size, lower = ((f"{c.batch_size} x up to {c.max_length} tokens", "batch_size") if c.batch_tokens is None
                       else (f"{c.batch_tokens} tokens", "batch_tokens"))
        raise DidNotFitError(
            f"{job.model.id} with batch {size} did not fit in memory ({str(e).splitlines()[0][:200]}); lower "
            f"{lower} (raise grad_accum), max_length, or turn on gradient_checkpointing for this model"
        ) from None


def train_loop(loop_config: dict) -> None:
    """Ray Train's train_loop_per_worker.

    loop_config: {"job": TrialJob, "restarts": int, "launched_at": time.time() when the trial's driver
    launched the Train run}.
    """
    run_recipe(loop_config["job"], RayContext(), restarts=int(loop_config.get("restarts", 0)),
               launched_at=loop_config.get("launched_at"))


def run_recipe(job: TrialJob, ctx, *, restarts: int = 0, launched_at: float | None = None) -> None:
    """The recipe under a context; a NaN loss ends it with DivergedError, which the trial classifies
    (ftray/driver/trial.py). On Train, every worker sees the same NaN gradient norm, so all stop here together."""
    with _memory_errors(job):
        recipe = LoRARecipe(job, ctx, restarts=restarts, launched_at=launched_at)
        recipe.run()
    if recipe.diverged_at is not None:
        raise DivergedError(f"the training loss became NaN or infinite at step {recipe.diverged_at}")


def run_local(job: TrialJob, checkpoint_dir: str | None = None, *, resume_from: str | None = None,
              device: torch.device | str = "cpu", trace: list | None = None, verbose: bool = False) -> list[dict]:
    """The same recipe in this process, as rank 0 of 1: returns the reported metrics, in order.

    Each report's checkpoint goes to `ftray.train.context.local_checkpoint(checkpoint_dir, step)` (none kept when
    checkpoint_dir is None); `resume_from` is such a folder to go on from. `trace`, a list, receives
    (step, epoch, position, batch indices, loss tensor) for every micro-batch trained.
    """
    ctx = LocalContext(checkpoint_dir, resume_from, device, verbose)
    with _memory_errors(job):
        LoRARecipe(job, ctx, trace=trace).run()
    return ctx.reports
