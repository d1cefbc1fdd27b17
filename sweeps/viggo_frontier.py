"""ViGGO on a GPU cluster: how small can a Qwen2.5 be for text -> meaning representation?

A ladder of one family across four sizes x LoRA ranks x data fractions, learning rate searched per
size, ASHA stopping the hopeless early. Objective: slot F1 of the generated MR on the validation split.

Resources (per trial, from each rung below): 0.5B and 1.5B on one 24 GB GPU, 3B on two, 7B on four
with gradient checkpointing. With `cluster.yaml` (A10G nodes) up to 8 trials run at once.
Rough cost, an estimate and not a measurement (no GPU was available to us to time it): ViGGO's 5.1K
training rows are ~70 tokens each, 3 epochs at the 100% fraction is ~1.1M tokens; at a few thousand
tokens/s per A10G for 0.5B-1.5B and ~1K for 7B, a 48-trial sweep with ASHA is in the order of
20-40 GPU-hours. Run `ftray report` on the first trials to see real figures for your hardware.

    ray job submit --working-dir . -- ftray run sweeps/viggo_frontier.py --storage s3://YOUR-BUCKET/ftray
"""

from ray import tune

from ftray import ASHA, ModelSpec, Sweep, ViggoTask

sweep = Sweep(
    name="viggo-qwen2.5-frontier",
    # From the Hugging Face hub on the cluster; ViggoTask(path="data/viggo") reads local CSVs instead.
    task=ViggoTask(hf_dataset="GEM/viggo"),
    models=[
        ModelSpec("Qwen/Qwen2.5-0.5B", workers=1, gpus_per_worker=1, batch_size=16),
        ModelSpec("Qwen/Qwen2.5-1.5B", workers=1, gpus_per_worker=1, batch_size=16),
        ModelSpec("Qwen/Qwen2.5-3B", workers=2, gpus_per_worker=1, batch_size=8, grad_accum=1),
        ModelSpec("Qwen/Qwen2.5-7B", workers=4, gpus_per_worker=1, batch_size=4, grad_accum=1,
                  gradient_checkpointing=True),
    ],
    space={
        "lora_rank": tune.choice([4, 8, 16, 64]),
        "data_fraction": tune.choice([0.1, 0.25, 0.5, 1.0]),
        "lr": tune.loguniform(5e-5, 5e-4),  # searched per model size
    },
    objective="slot_f1",
    num_trials=48,
    epochs=3,
    max_length=256,
    eval_every=100,
    eval_samples=256,
    max_new_tokens=96,
    asha=ASHA(grace_steps=200, reduction_factor=3),
    storage="./ftray_runs",
)
