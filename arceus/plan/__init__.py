"""Plans as plain data (no torch, no Redis): which stage holds which layers, what every stage
of a run is told, and the order of a stage's actions."""
