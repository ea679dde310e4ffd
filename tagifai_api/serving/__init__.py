"""Serving machinery between the views and the model: batching, caching, model state."""
