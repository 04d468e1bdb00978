"""The human-review side: the reviewer web app and API, leases, decisions, exports."""
