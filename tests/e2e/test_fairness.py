"""Fair under load (serving/worker.py): gevent never preempts, so a keep-alive client whose
next request is always already there used to keep its worker's event loop to itself, while
new clients waited unaccepted. bench/fairness.py measures this at scale against CNCF
distribution; this is the regression test, on one worker."""

from __future__ import annotations

import threading
import time

import pytest

from . import rawhttp
from .servers import BerthServer

pytestmark = pytest.mark.e2e

PIPELINED = 3000


def test_a_new_client_is_served_while_a_pipelining_client_keeps_the_worker_busy(
    make_registry, registry_class
):
    if registry_class is not BerthServer:
        pytest.fail("Berth-specific: unset E2E_TARGET", pytrace=False)
    berth = make_registry(workers=1)
    request = rawhttp.request("GET", "/v2/")  # 401: cheap, and the connection stays open
    first_answer = threading.Event()
    finished = {}

    def pipeline():
        with rawhttp.connect(berth.port, timeout=60) as sock:
            sock.sendall(request * PIPELINED)  # every next request is there before it is asked for
            seen, tail = 0, b""
            while seen < PIPELINED:
                data = tail + sock.recv(1 << 20)
                seen += data.count(b"HTTP/1.1 401")
                tail = data[-11:]  # a status line cut in two is counted once
                first_answer.set()
        finished["pipeline"] = time.monotonic()

    worker = threading.Thread(target=pipeline)
    worker.start()
    assert first_answer.wait(30)
    started = time.monotonic()
    with rawhttp.connect(berth.port, timeout=60) as sock:
        sock.sendall(rawhttp.request("GET", "/v2/", berth.rw))
        assert rawhttp.read_response(sock)[0] == 200
    finished["new client"] = time.monotonic()
    worker.join(60)
    assert "pipeline" in finished
    assert finished["new client"] < finished["pipeline"], "the new client waited for the whole pipeline"
    assert finished["new client"] - started < 1
