"""The trial's training: the code that runs in a Train worker (or one plain process): the recipe and
its context, data, prompts, models and LoRA, the training step, evaluation. It imports the spec it is
given and nothing of the driver; of the run's results only the run folder's format (checkpoints)."""
