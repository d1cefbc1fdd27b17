"""Your own data: a CSV (or JSONL) of inputs and outputs, a prompt template, exact match and ROUGE-L.

The example rows in sweeps/data/ (support tickets -> a routing label) stand in for your files; point
`train`/`valid`/`test` at yours and name the columns in the templates. Runs offline on the tiny
presets as written (25 s on 2 cores, 2026-12-06); for a GPU cluster swap the ladder for hub ids, e.g.
["HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-360M", "HuggingFaceTB/SmolLM2-1.7B"] with
`gpus_per_worker=1` (roughly 1-3 GPU-hours for 12 trials on a few thousand rows: an estimate, not timed).
"""

from pathlib import Path

from ray import tune

from ftray import Sweep, TextTask

here = Path(__file__).parent / "data"

sweep = Sweep(
    name="tickets",
    task=TextTask(
        train=str(here / "tickets_train.csv"),
        valid=str(here / "tickets_valid.csv"),
        prompt="Ticket: {text}\nTeam:",
        completion=" {team}",
        metrics=("exact_match", "rouge_l"),
        name="tickets",
    ),
    models=["tiny-xs", "tiny-s"],
    space={
        "lora_rank": tune.choice([4, 16]),
        "lr": tune.loguniform(1e-3, 1e-2),
    },
    objective="exact_match",
    num_trials=4,
    workers=1,  # each trial in its Tune trial's process, two at a time on 2 cores; 2+ workers: a Ray Train (DDP) run
    steps=100,
    batch_size=16,
    eval_every=50,
    eval_samples=40,
    max_new_tokens=8,
)
