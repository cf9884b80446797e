"""The storage driver contract: one suite that every backend must pass."""

from __future__ import annotations

import os
import threading
import time

import pytest

from storage.driver import InvalidKey, ObjectBusy, ObjectNotFound, StorageDriver
from storage.drivers.filesystem import FilesystemDriver


@pytest.fixture(params=["filesystem", "s3"])
def make_driver(request, tmp_path):
    """A factory: each call is a fresh driver instance over the same storage, as a different
    process or instance would have."""
    if request.param == "filesystem":
        return lambda: FilesystemDriver(tmp_path / "store")
    return request.getfixturevalue("make_s3_driver")


@pytest.fixture
def driver(make_driver) -> StorageDriver:
    d = make_driver()
    d.check()
    return d


def test_small_objects_round_trip_and_replace(driver):
    driver.write_bytes("a/b/c", b"one")
    assert driver.read_bytes("a/b/c") == b"one"
    driver.write_bytes("a/b/c", b"two!")
    assert driver.read_bytes("a/b/c") == b"two!"
    assert driver.size("a/b/c") == 4
    assert driver.exists("a/b/c")
    assert not driver.exists("a/b/missing")


def test_missing_objects(driver):
    with pytest.raises(ObjectNotFound):
        driver.read_bytes("nope/x")
    with pytest.raises(ObjectNotFound):
        driver.size("nope/x")
    with pytest.raises(ObjectNotFound):
        driver.open_range("nope/x")
    driver.delete("nope/x")  # absent is fine
    driver.delete_prefix("nope")
    assert driver.list_children("nope") == []


def test_a_prefix_is_not_an_object(driver):
    driver.write_bytes("dir/file", b"x")
    assert not driver.exists("dir")
    with pytest.raises(ObjectNotFound):
        driver.read_bytes("dir")


@pytest.mark.parametrize("start,length", [(0, None), (3, None), (3, 4), (0, 0), (9, 5), (10, None), (50, 3)])
def test_open_range(driver, start, length):
    data = bytes(range(10))
    driver.write_bytes("blob", data)
    reader = driver.open_range("blob", start, length)
    try:
        got = b"".join(iter(lambda: reader.read(3), b""))
    finally:
        reader.close()
    end = len(data) if length is None else start + length
    assert got == data[start:end]


def test_ranged_file_under_sendfile_fallback(tmp_path):
    """Local files go to gunicorn with fileno(): socket.sendfile starts at the reader's offset,
    and under gevent falls back to seek() + read(), which must stay inside the range."""
    driver = FilesystemDriver(tmp_path)
    data = bytes(range(256)) * 4
    driver.write_bytes("blob", data)
    reader = driver.open_range("blob", 100, 50)
    try:
        offset = os.lseek(reader.fileno(), 0, os.SEEK_CUR)
        assert offset == 100
        reader.seek(offset)
        got = b"".join(iter(lambda: reader.read(8192), b""))
    finally:
        reader.close()
    assert got == data[100:150]


def test_list_children_and_prefix_safety(driver):
    for key in ("r/a/x", "r/a/y", "r/b", "r2/z", "rr/q"):
        driver.write_bytes(key, b"1")
    assert sorted(driver.list_children("r")) == ["a", "b"]
    assert sorted(driver.list_children("r/a")) == ["x", "y"]
    driver.delete_prefix("r/a")
    assert driver.list_children("r") == ["b"]
    assert driver.read_bytes("r2/z") == b"1"  # a sibling sharing the prefix's letters survives
    driver.delete("r/b")
    assert driver.list_children("r") == []
    assert driver.list_children("r2") == ["z"]


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a", "a/."])
def test_invalid_keys(driver, key):
    with pytest.raises(InvalidKey):
        driver.write_bytes(key, b"x")


def test_append_writer_resumes_in_a_fresh_driver(make_driver):
    first = make_driver()
    first.check()
    writer = first.append_writer("up/1/data")
    writer.write(b"hello ")
    state = writer.state()
    assert writer.size == 6
    # A later request, in another process: a new driver instance resumes from the state.
    second = make_driver()
    writer2 = second.append_writer("up/1/data", resume=state)
    assert writer2.size == 6
    writer2.write(b"world")
    state2 = writer2.state()
    writer3 = make_driver().append_writer("up/1/data", resume=state2)
    assert b"".join(writer3.read_back()) == b"hello world"
    writer3.commit("final/object")
    assert second.read_bytes("final/object") == b"hello world"
    assert not second.exists("up/1/data")


def test_append_writer_copies_what_it_keeps_from_a_reused_buffer(make_driver):
    """Uploads hand writers views of the request's receive buffer, which is overwritten as soon
    as write() returns (serving/body.py): a writer must not keep a reference to it."""
    d = make_driver()
    d.check()
    writer = d.append_writer("up/views/data")
    buffer = bytearray(1024 * 1024 + 17)
    view = memoryview(buffer)
    expected = bytearray()
    for i in range(12):  # 12 MiB and change: crosses S3's 5 MiB parts with a remainder
        data = os.urandom(len(buffer) - i)
        buffer[: len(data)] = data
        writer.write(view[: len(data)])
        expected += data
        buffer[:] = b"\xff" * len(buffer)  # the next recv_into overwrites the buffer
    state = writer.state()
    resumed = make_driver().append_writer("up/views/data", resume=state)
    assert b"".join(resumed.read_back()) == expected
    resumed.commit("final/views")
    assert d.read_bytes("final/views") == expected


def test_bytes_after_the_last_state_are_discarded(make_driver):
    d = make_driver()
    d.check()
    writer = d.append_writer("up/2/data")
    writer.write(b"kept")
    state = writer.state()
    writer.write(b"-lost-in-a-crash")
    writer.state()  # flushed, but the upload's saved state still says 4 bytes
    resumed = make_driver().append_writer("up/2/data", resume=state)
    assert resumed.size == 4
    resumed.write(b"!")
    resumed.commit("final/2")
    assert d.read_bytes("final/2") == b"kept!"


def test_abort_leaves_nothing(driver):
    writer = driver.append_writer("up/3/data")
    writer.write(os.urandom(1000))
    writer.state()
    writer.abort()
    assert not driver.exists("up/3/data")


def test_resume_of_a_vanished_upload(driver):
    writer = driver.append_writer("up/gone/data")
    writer.write(b"some bytes")
    state = writer.state()
    driver.delete_prefix("up/gone")  # cancelled by another request
    with pytest.raises(ObjectNotFound):
        resumed = driver.append_writer("up/gone/data", resume=state)
        resumed.write(b"more")
        resumed.commit("final/gone")


def test_exclusive_lock(make_driver):
    a, b = make_driver(), make_driver()
    a.check()
    a.write_bytes("up/4/state", b"{}")
    with a.exclusive("up/4/lock"), pytest.raises(ObjectBusy), b.exclusive("up/4/lock"):
        pass
    with b.exclusive("up/4/lock"):
        pass  # released


def test_concurrent_replace_is_atomic(driver):
    """Readers see whole old or whole new content, never a mix."""
    old, new = b"a" * 100_000, b"b" * 100_000
    driver.write_bytes("k", old)
    stop = threading.Event()
    seen, errors = set(), []

    def read():
        while not stop.is_set():
            try:
                seen.add(driver.read_bytes("k"))
            except ValueError as exc:
                # In-process moto is not thread-safe here: replacing an object closes the
                # temp file that a concurrent GetObject is still reading. Not the driver's doing.
                if "closed file" not in str(exc):
                    errors.append(exc)
            except Exception as exc:
                errors.append(exc)

    t = threading.Thread(target=read)
    t.start()
    for _ in range(20):
        driver.write_bytes("k", new)
        driver.write_bytes("k", old)
    stop.set()
    t.join()
    assert not errors
    assert seen and seen <= {old, new}


def test_filesystem_write_survives_a_concurrent_prune(tmp_path, monkeypatch):
    """Deletes remove directories left empty; a write landing in one just as another process
    prunes it retries instead of failing."""
    import builtins

    from storage.drivers import filesystem

    driver = FilesystemDriver(tmp_path)
    real_open, pruned = builtins.open, []

    def racing_open(path, *args, **kwargs):
        if not pruned and filesystem.TMP_PREFIX in str(path):
            pruned.append(path)
            os.rmdir(os.path.dirname(path))  # the other process's prune wins the race once
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", racing_open)
    driver.write_bytes("repo/_tags/v1", b"sha256:abc")
    assert pruned
    assert driver.read_bytes("repo/_tags/v1") == b"sha256:abc"


def test_exclusive_lock_waits_for_its_holder(make_driver):
    """A lock taken with a wait is granted when the holder lets go within it; when the holder
    keeps it, the wait ends with ObjectBusy after about `wait` seconds."""
    a, b = make_driver(), make_driver()
    a.check()
    a.write_bytes("up/5/state", b"{}")
    holding = a.exclusive("up/5/lock")
    holding.__enter__()
    threading.Timer(0.3, lambda: holding.__exit__(None, None, None)).start()
    started = time.monotonic()
    with b.exclusive("up/5/lock", wait=10):
        assert time.monotonic() - started >= 0.25
    with a.exclusive("up/5/lock"):
        started = time.monotonic()
        with pytest.raises(ObjectBusy), b.exclusive("up/5/lock", wait=0.5):
            pass
        assert 0.45 <= time.monotonic() - started < 5


@pytest.mark.parametrize("size", [1000, 6 * 1024 * 1024 + 11], ids=["small", "multipart"])
def test_sealed_writer_is_committed_by_a_resumed_writer(make_driver, size):
    """seal() makes every byte durable for a commit that another process may finish: a writer
    resumed from the sealed state commits the same bytes (None: the commit is one atomic
    step, done by the writer itself)."""
    d = make_driver()
    d.check()
    data = os.urandom(size)
    writer = d.append_writer("up/6/data")
    writer.write(data[:700])
    resumed = make_driver().append_writer("up/6/data", resume=writer.state())
    resumed.write(data[700:])
    sealed = resumed.seal("final/6")
    committer = resumed if sealed is None else make_driver().append_writer("up/6/data", resume=sealed)
    assert committer.size == size
    committer.commit("final/6")
    assert d.read_bytes("final/6") == data


def test_abort_of_a_sealed_writer_leaves_nothing(make_driver):
    d = make_driver()
    d.check()
    writer = d.append_writer("up/7/data")
    writer.write(os.urandom(6 * 1024 * 1024 + 5))
    sealed = writer.seal("final/7")
    if sealed is not None:
        make_driver().append_writer("up/7/data", resume=sealed).abort()
    else:
        writer.abort()
    assert not d.exists("up/7/data")
    assert not d.exists("final/7")


def test_stat_and_walk_report_sizes_times_and_versions(driver):
    before = time.time() - 5
    driver.write_bytes("w/a", b"one")
    driver.write_bytes("w/x/b", b"three")
    driver.write_bytes("w/x/y/c", b"")
    driver.write_bytes("other/d", b"d")
    info = driver.stat("w/x/b")
    assert (info.key, info.size) == ("w/x/b", 5)
    assert before <= info.modified <= time.time() + 5
    found = {i.key: i for i in driver.walk("w")}
    assert set(found) == {"w/a", "w/x/b", "w/x/y/c"}
    assert found["w/x/b"] == info
    assert found["w/x/y/c"].size == 0
    assert list(driver.walk("nothing/here")) == []
    with pytest.raises(ObjectNotFound):
        driver.stat("w/x")  # a prefix is not an object
    # Writing again, even the same bytes, gives a new version: the garbage collector tells a
    # link touched after its first look this way.
    driver.write_bytes("w/a", b"one, again")
    assert driver.stat("w/a").version != found["w/a"].version


def test_delete_many(driver):
    keys = [f"many/{i:04d}" for i in range(1105)]  # more than one S3 batch
    for key in keys[:5] + keys[-5:]:
        driver.write_bytes(key, b"x")
    driver.delete_many(iter(keys))
    assert list(driver.walk("many")) == []
    driver.delete_many([])


def test_pending_uploads_can_be_listed_and_aborted(driver):
    writer = driver.append_writer("up/one/data")
    writer.write(os.urandom(6 * 1024 * 1024))  # more than a part on S3
    writer.state()
    pending = list(driver.pending_uploads())
    if isinstance(driver, FilesystemDriver):
        assert pending == []
    else:
        assert [(p.key, p.started <= time.time() + 5) for p in pending] == [("up/one/data", True)]
        for upload in pending:
            driver.abort_pending(upload)
            driver.abort_pending(upload)  # already gone is fine
        assert list(driver.pending_uploads()) == []
    writer.abort()
