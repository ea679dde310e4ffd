"""What the Gunicorn master loads: the worker class, start-up checks, its own error answers.

Standard library and Gunicorn only: never Flask, never the app.
"""
