"""Faults: the process or its environment failing under it (descriptors, restarts, signals), on real processes."""
