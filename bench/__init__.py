"""jobsd benchmarks: every docs/contract.md#performance figure as a ratio to a limit anchor measured in the same run."""
