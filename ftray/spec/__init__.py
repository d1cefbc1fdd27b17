"""The sweep's spec: what a user writes (`Sweep` and its parts, `TrialConfig`, the search space, the
sweep file), validated before any Ray work. Runs wherever a sweep is built; imports no driver code."""
