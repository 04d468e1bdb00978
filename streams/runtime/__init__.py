"""The embedded runtime: the Tansu broker, worker processes, the sink thread, and `ehrstream up`."""
