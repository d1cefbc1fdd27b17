"""Is ftray's worker loop itself slower than a bare loop? Both in this process, no Ray: ftray's training
recipe (`ftray.train.recipe.run_local`: the loop Train workers run, as rank 0 of 1, no checkpoint kept) against
bench/gpu.py's bare step, on the same data, model (a small Qwen2-shaped model, built locally) and batch.
CPU or GPU.

    python bench/loop_diag.py [--reps 2] [--steps 60]
"""

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench.gpu as g  # noqa: E402
from ftray.spec.config import TrialConfig  # noqa: E402
from ftray.spec.ladder import LoraSettings, ModelSpec  # noqa: E402
from ftray.train.recipe import TrialJob, run_local  # noqa: E402
from ftray.tasks import SyntheticTask  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    if args.steps <= g.WARMUP:
        ap.error(f"--steps must be more than the bare loop's {g.WARMUP} warm-up steps, got {args.steps}")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(1)  # as ftray's workers run
    task = SyntheticTask(n_train=2000, n_valid=8, n_test=8)
    tok, data = g.task_data(task, 256)
    folder = Path(tempfile.mkdtemp()) / "model"
    g.make_model(folder, dict(g.SHAPES["tiny"], num_hidden_layers=4), tok, device)
    cfg = dict(rank=16, lr=1e-4, steps=args.steps, batch=16, max_length=256)

    config = TrialConfig(model=str(folder), lora_rank=16, lr=1e-4, steps=args.steps, batch_size=16, max_length=256,
                         seed=0, eval_every=max(1, args.steps // 2), eval_samples=8, max_new_tokens=8, eval_base=False)
    job = TrialJob(config=config, task=task, model=ModelSpec(str(folder)), lora=LoraSettings(16, 32), threads=1)
    for _ in range(args.reps):
        b = g.bare(folder, data, tok, cfg, device)
        reports = run_local(job, device=device)
        ours = ", ".join(f"{r['step_s'] * 1000:.1f}" for r in reports)
        print(f"bare loop {b['step_s'] * 1000:.1f} ms/step   ftray's loop, in process: {ours} ms/step (per report)")


if __name__ == "__main__":
    main()
