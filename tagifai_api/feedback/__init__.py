"""Feedback: corrections of the service's tags from the people who use it, and the live accuracy of each
version they give (``POST /feedback``, ``GET /models/<version>/quality``, ``feedback export``, ``log export``)."""
