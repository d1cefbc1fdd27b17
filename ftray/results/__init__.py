"""The run's results: the run folder's format, and what reads it back without Ray: the frontier
analysis and its statistics, the report, the plots."""
