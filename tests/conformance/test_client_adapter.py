"""Self-test of the client adapter against a toy Falcon app (no registry needed)."""

from __future__ import annotations

import falcon

from .client import WsgiClient, _merge_query


class Echo:
    def on_get(self, req, resp):
        resp.media = {"path": req.path, "query": req.query_string, "auth": req.get_header("Authorization")}

    def on_put(self, req, resp):
        resp.media = {"len": len(req.bounded_stream.read()), "query": req.query_string}


def make_client():
    app = falcon.App()
    app.add_sink(lambda req, resp: (Echo().on_get if req.method == "GET" else Echo().on_put)(req, resp), "/")
    return WsgiClient(app, auth=("u", "p"))


def test_absolute_location_is_stripped_and_query_kept():
    c = make_client()
    r = c.request(
        "GET",
        "http://example.test:5000/v2/a/b/blobs/uploads/x?_state=abc%3D&z=1",
        params={"digest": "sha256:1"},
    )
    doc = r.json()
    assert doc["path"] == "/v2/a/b/blobs/uploads/x"
    assert doc["query"] == "_state=abc%3D&z=1&digest=sha256%3A1"
    assert doc["auth"] == "Basic dTpw"


def test_iterator_body_is_joined():
    c = make_client()
    r = c.request("PUT", "/v2/x/blobs/uploads/1", body=iter([b"ab", b"cd"]))
    assert r.json()["len"] == 4


def test_merge_query_replaces_same_key():
    assert _merge_query("digest=old&a=1", {"digest": "new"}) == "a=1&digest=new"
