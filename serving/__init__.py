"""How Berth is served: the gunicorn worker class and its socket-level behaviour."""
