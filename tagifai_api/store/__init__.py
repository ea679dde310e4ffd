"""The service's mutable state: the registry's pointers and history, and the one locked, atomic file write."""
