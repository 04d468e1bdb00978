"""``python -m streams.cli``: the worker pool starts its workers this way."""

from streams.cli import run

run()
