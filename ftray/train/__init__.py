"""The trial's training: the code that runs in a Train worker (or one plain process): the recipe and
its context, data, prompts, models and LoRA, the training step, evaluation. It imports the spec, the
tasks and ftray.errors/storage; nothing of the driver, and of the results only the run folder's format
(ftray.results.runfolder: a one-worker trial stores its checkpoints in the run)."""
