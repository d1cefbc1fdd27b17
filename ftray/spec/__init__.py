"""The sweep's spec: what a user writes (`Sweep` and its parts, `TrialConfig`, the model ladder and
LoRA settings, the search space, the sweep file) and its checks, run before any Ray work. It imports
ftray.errors, ftray.checks, ftray.storage, ftray.tasks and Ray Tune's search-space types: no train, driver or results code."""
