"""How the service reports: logs, Prometheus metrics and their multiprocess files."""
