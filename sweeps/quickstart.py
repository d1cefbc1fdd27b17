"""Quickstart: how small can the model be? Tiny offline models on the synthetic task.

Runs anywhere (no GPU, no hub, W&B offline): three randomly initialised tiny Llama sizes (53K, 148K and
788K parameters), LoRA ranks, and data fractions, on a generated text -> meaning
representation task whose test names never appear in training. Nine trials of 2 Train workers each;
14 min 8 s on a 2-core machine, the held-out test scoring included (measured 2026-11-29).

    ftray run sweeps/quickstart.py
"""

from ray import tune

from ftray import Sweep, SyntheticTask

sweep = Sweep(
    name="quickstart",
    task=SyntheticTask(n_train=4000, n_valid=200, n_test=200, seed=0),
    models=["tiny-xs", "tiny-s", "tiny-m"],
    space={
        "model": tune.choice(["tiny-xs", "tiny-s", "tiny-m"]),
        "lora_rank": tune.choice([4, 16]),
        "data_fraction": tune.choice([0.25, 1.0]),
        "lr": tune.loguniform(2e-3, 2e-2),  # searched per model size
    },
    objective="slot_f1",  # scored on greedily generated text for held-out validation rows
    num_trials=9,
    workers=2,
    steps=300,
    batch_size=16,
    max_length=128,
    eval_every=150,
    eval_samples=64,
    max_new_tokens=48,
)
