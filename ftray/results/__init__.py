"""The run's results: the run folder's format, and what reads it back without Ray: the frontier
analysis and its statistics, the report, the plots. It imports the spec, the tasks' metric directions
and ftray.errors/storage; no driver, train, api or cli code (tests/test_layers.py checks each layer)."""
