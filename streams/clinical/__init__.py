"""Clinical meaning around the extraction agent's output, as commands and checks: assertion over a file of spans,
the coding check, the Synthea layout check."""
