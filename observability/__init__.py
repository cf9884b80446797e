"""Observability: Prometheus metrics, structured request logs with request ids, storage usage.

Modules the gunicorn master loads (before gevent patches anything) use the standard library
only: request_context, log_format and instance_dir. Everything that imports prometheus_client
is imported in the workers, by the app or by the worker once the app is loaded: the library
chooses its multiprocess mode when it is first imported, and its exposition module imports ssl.
"""
