"""Operating commands: the demo, the benchmark and the soak, each on the embedded stack."""
