"""The learning loop's I/O: training data from ClickHouse, LLM pre-labelling of note files."""
