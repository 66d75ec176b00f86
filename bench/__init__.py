"""jobsd benchmarks: every SPEC §13 figure as a ratio to a limit anchor measured in the same run."""
