"""What the app knows about a request and the worker's access line needs: the route template,
the repository, who asked and the upload id, left in the WSGI environ for the worker
(observability/requests.py), which writes the line once the last byte is out. Also counts
upload requests in flight.

A Falcon middleware, first in the list: it sees every request the app routes, refused ones
included."""

from __future__ import annotations

from observability import metrics

# Keys in the WSGI environ.
ROUTE, REPOSITORY, USER, PRINCIPAL, UPLOAD_ID = (
    "berth.route", "berth.repository", "berth.user", "berth.principal", "berth.upload_id"
)  # fmt: skip
UPLOAD_ROUTES = frozenset(
    {"/v2/{name}/blobs/uploads/", "/v2/{name}/blobs/uploads", "/v2/{name}/blobs/uploads/{upload_id}"}
)
UPLOAD_METHODS = frozenset({"POST", "PATCH", "PUT"})


class RequestFields:
    def process_resource(self, req, resp, resource, params) -> None:
        env = req.env
        template = req.uri_template or "-"
        env[ROUTE] = template
        name = params.get("name")
        if name:
            env[REPOSITORY] = name
        upload_id = params.get("upload_id")
        if upload_id:
            env[UPLOAD_ID] = upload_id
        if template in UPLOAD_ROUTES and req.method in UPLOAD_METHODS:
            metrics.UPLOAD_REQUESTS_IN_FLIGHT.inc()
            req.context.upload_in_flight = True

    def process_response(self, req, resp, resource, req_succeeded) -> None:
        env = req.env
        identity = req.context.get("identity")
        if identity is not None:  # never the credentials: a name and a principal
            env[USER] = identity.name or None
            env[PRINCIPAL] = identity.principal
        if UPLOAD_ID not in env:
            created = resp.get_header("Docker-Upload-UUID")
            if created:
                env[UPLOAD_ID] = created
        if req.context.get("upload_in_flight"):
            metrics.UPLOAD_REQUESTS_IN_FLIGHT.dec()
