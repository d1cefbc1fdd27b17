"""Quickstart: how small can the model be? Tiny offline models on the synthetic task.

Runs anywhere (no GPU, no hub, W&B offline): three randomly initialised tiny Llama sizes (53K, 148K and
788K parameters), LoRA ranks, and data fractions, on a generated text -> meaning
representation task whose test names never appear in training. Nine one-worker trials (three per
size), two at a time on a 2-core machine, then each scored on 200 held-out test rows, again two at a
time: the first answer within 5 minutes on 2 cores (README: the measured time and where it goes).

    ftray run sweeps/quickstart.py
"""

from ray import tune

from ftray import Sweep, SyntheticTask

sweep = Sweep(
    name="quickstart",
    task=SyntheticTask(n_train=4000, n_valid=200, n_test=200, seed=0),
    models=["tiny-xs", "tiny-s", "tiny-m"],
    space={
        # Trials take the sizes in this order, round-robin: the slowest first, so that two at a time the
        # sweep does not end on a tiny-m trial running alone.
        "model": tune.choice(["tiny-m", "tiny-s", "tiny-xs"]),
        "lora_rank": tune.choice([4, 16]),
        "data_fraction": tune.choice([0.25, 1.0]),
        "lr": tune.loguniform(2e-3, 2e-2),  # searched per model size
    },
    objective="slot_f1",  # scored on greedily generated text for held-out validation rows
    num_trials=9,
    # One worker a trial, trained in its Tune trial's own process: two trials run at once on 2 cores and
    # no Ray Train worker group is started per trial (on 2 cores its start-up and synchronisation
    # outweighed these tiny models' training: README). The data-parallel path: sweeps/viggo_frontier.py
    # and the tests.
    workers=1,
    steps=300,
    batch_size=16,
    max_length=128,
    eval_every=150,
    eval_samples=64,
    max_new_tokens=48,
)
