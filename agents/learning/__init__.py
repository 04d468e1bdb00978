"""The offline ML lifecycle: datasets, training (LoRA or full), evaluation, calibration, plots, LLM pre-labelling."""
