"""The sweep's driver: checks before Ray starts, Ray start-up, the search (Tune, Optuna, schedulers),
the trial function, resources, held-out scoring as Ray tasks, and W&B. It may import every layer
(spec, train, results, tasks) but not the entry points (ftray.api, ftray.cli)."""
