import base64
import hashlib
import os
import random

import pytest

from storage.hashing import HashStateError, ResumableHash


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_state_round_trips_at_any_split(algorithm):
    data = os.urandom(5000)
    rng = random.Random(7)
    for _ in range(20):
        cuts = sorted(rng.sample(range(len(data)), 4))
        h = ResumableHash(algorithm)
        pos = 0
        for cut in [*cuts, len(data)]:
            h.update(data[pos:cut])
            h = ResumableHash.restore(algorithm, h.export())
            pos = cut
        assert h.hexdigest() == hashlib.new(algorithm, data).hexdigest()


def test_hexdigest_does_not_end_the_hash():
    h = ResumableHash()
    h.update(b"abc")
    first = h.hexdigest()
    assert first == h.hexdigest()
    h.update(b"def")
    assert h.digest() == "sha256:" + hashlib.sha256(b"abcdef").hexdigest()


@pytest.mark.parametrize(
    "state",
    [
        "not base64!",
        base64.b64encode(b"short").decode(),
        # right size, but `num` (bytes pending in the block) is out of range
        base64.b64encode(b"\xff" * 112).decode(),
    ],
)
def test_corrupt_states_are_refused(state):
    with pytest.raises(HashStateError):
        ResumableHash.restore("sha256", state)


def test_unknown_algorithm():
    with pytest.raises(HashStateError):
        ResumableHash.restore("md5", "")


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_buffers_of_every_kind_hash_alike(algorithm):
    data = random.Random(3).randbytes(100_000)
    expected = hashlib.new(algorithm, data).hexdigest()
    writable = bytearray(data)
    kinds = [
        data,
        writable,
        memoryview(writable)[:50_000],  # a view into a receive buffer: hashed in place
        memoryview(data),  # read-only view
    ]
    for kind in kinds:
        h = ResumableHash(algorithm)
        h.update(kind)
        if len(kind) < len(data):
            h.update(memoryview(writable)[50_000:])
        assert h.hexdigest() == expected
