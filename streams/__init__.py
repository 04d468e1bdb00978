"""Record movement: the Faust app, topics, routing, the ClickHouse sink, the embedded runtime, the CLI."""
