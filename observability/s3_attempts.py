"""Object store metrics below the driver: every HTTP attempt boto3 makes, by S3 operation and
outcome, and which attempts were retries. The driver metrics (metered_driver.py) see one
operation however many attempts it took; these show the throttling (503 SlowDown, 429),
errors and retries behind it. They come from botocore's `response-received` event, emitted
once per attempt with the attempt's number."""

from __future__ import annotations

from typing import Any

from observability import metrics

THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests"}


def instrument(client: Any) -> None:
    """Count the attempts of a boto3 S3 client (one per worker process: S3Driver.client)."""
    client.meta.events.register("response-received.s3", _attempt)


def outcome(status: int | None, error_code: str, exception: BaseException | None) -> str:
    if exception is not None or status is None:
        return "network_error"
    if status < 400:
        return "ok"
    if status == 404:
        return "not_found"
    if status in (409, 412):
        return "precondition_failed"
    if status in (429, 503) or error_code in THROTTLED:
        return "throttled"
    return "client_error" if status < 500 else "server_error"


def _attempt(event_name: str = "", response_dict=None, parsed_response=None, context=None,
             exception=None, **kwargs: Any) -> None:  # fmt: skip
    operation = event_name.rsplit(".", 1)[-1] or "unknown"
    status = response_dict.get("status_code") if response_dict else None
    code = ""
    if isinstance(parsed_response, dict):
        code = str(parsed_response.get("Error", {}).get("Code", ""))
    metrics.S3_REQUESTS.labels(operation, outcome(status, code, exception)).inc()
    attempt = (context or {}).get("retries", {}).get("attempt", 1)
    if attempt > 1:
        metrics.S3_RETRIES.labels(operation).inc()
