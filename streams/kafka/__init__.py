"""Kafka around the agent: the clients (TLS/SASL once for both libraries), consumer lag, the schema registry."""
