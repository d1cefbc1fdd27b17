"""sweeps/real_ladder.py's question on a GPU cluster: published sizes against pruned larger models.

Qwen2.5-Instruct at its published 0.5B, 1.5B and 3B sizes, beside depth rungs cut from the larger two
to about the size of the next smaller one (first layers and the last kept: ftray/train/depth.py):
3B@18L (about 1.7B parameters, against the published 1.5B) and 1.5B@8L (about 0.6B, against the
published 0.5B). Does a pruned, finetuned bigger model beat the model trained at that size? ViGGO, text
-> meaning representation, prompts in the chat template ("auto"), LoRA rank 16, learning rate searched
per rung, ASHA per rung. The exact parameter count of every rung is in the report (`ftray validate`
prints them before the run).

The weights come from the Hugging Face hub on each node (the same loading code as every other rung).
The CPU sweep's random-weights control has no counterpart here: random initialisation is offered for
the offline preset "smollm2-135m-random" only.

Resources per trial follow sweeps/viggo_frontier.py (24 GB GPUs): up to 1.7B on one GPU, 3B on two.
Cost, a rough estimate and not a measurement (no GPU cluster timed it): ViGGO rows are ~100 tokens in
the chat template, so 600 steps of 16 rows are ~1M training tokens a trial, plus seven evaluations of
256 generated answers; about 10-20 GPU-minutes a trial, so the 15 trials take some 3-6 GPU-hours, less
where ASHA stops the weak early. `ftray report` on the first trials gives real figures for your hardware.

    ray job submit --working-dir . -- ftray run sweeps/real_ladder_gpu.py --storage s3://YOUR-BUCKET/ftray
"""

from ray import tune

from ftray import ASHA, ModelSpec, Sweep, ViggoTask

QWEN = "Qwen/Qwen2.5-{}-Instruct"

sweep = Sweep(
    name="real-ladder-gpu",
    task=ViggoTask(hf_dataset="GEM/viggo"),  # ViggoTask(path=...) reads local CSVs instead
    models=[
        ModelSpec(QWEN.format("0.5B"), workers=1, gpus_per_worker=1, batch_size=16),
        ModelSpec(QWEN.format("1.5B"), layers=8, workers=1, gpus_per_worker=1, batch_size=16),  # of 28 layers
        ModelSpec(QWEN.format("1.5B"), workers=1, gpus_per_worker=1, batch_size=16),
        ModelSpec(QWEN.format("3B"), layers=18, workers=1, gpus_per_worker=1, batch_size=16),  # of 36 layers
        ModelSpec(QWEN.format("3B"), workers=2, gpus_per_worker=1, batch_size=8),
    ],
    space={
        "lr": tune.loguniform(5e-5, 5e-4),  # searched per rung
    },
    objective="slot_f1",
    num_trials=15,  # round-robin: three learning rates per rung
    steps=600,
    lora_rank=16,
    max_length=256,
    prompt_format="auto",
    eval_every=100,
    eval_samples=256,
    max_new_tokens=96,
    asha=ASHA(grace_steps=200, reduction_factor=3),
    storage="./ftray_runs",
)
