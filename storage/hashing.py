"""Resumable SHA-256/SHA-512 whose intermediate state can be saved in storage.

An upload arrives in several requests that may be served by different processes or instances,
and finishing it must not re-read the whole blob. hashlib objects cannot be serialised, so this
drives libcrypto's SHA256_CTX/SHA512_CTX through ctypes: the context is a plain C struct whose raw
bytes can be stored and restored. The bytes come back from storage, so they are validated before
libcrypto sees them (a bad `num` would make SHA*_Update write out of bounds). Nothing is pickled.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import struct
from dataclasses import dataclass


def _load_libcrypto() -> ctypes.CDLL:
    # Prefer the exact library Python's own hashlib links against.
    for name in ("libcrypto.so.3", ctypes.util.find_library("crypto")):
        if not name:
            continue
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise RuntimeError("libcrypto (OpenSSL) not found: Berth needs it for resumable hashing")


_lib = _load_libcrypto()


@dataclass(frozen=True)
class _Algorithm:
    name: str
    ctx_size: int  # sizeof(SHA*_CTX)
    block_size: int
    digest_size: int
    num_offset: int  # offset of `unsigned int num` in the struct
    init: ctypes._CFuncPtr
    update: ctypes._CFuncPtr
    final: ctypes._CFuncPtr


def _bind(prefix: str) -> tuple[ctypes._CFuncPtr, ctypes._CFuncPtr, ctypes._CFuncPtr]:
    init = getattr(_lib, f"{prefix}_Init")
    update = getattr(_lib, f"{prefix}_Update")
    final = getattr(_lib, f"{prefix}_Final")
    init.argtypes = [ctypes.c_void_p]
    update.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    final.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    for fn in (init, update, final):
        fn.restype = ctypes.c_int
    return init, update, final


# SHA256_CTX: h[8], Nl, Nh, data[16] (all 32-bit), num, md_len -> 112 bytes, num at 104.
# SHA512_CTX: h[8], Nl, Nh (64-bit), u.p[128], num, md_len (32-bit) -> 216 bytes, num at 208.
ALGORITHMS: dict[str, _Algorithm] = {
    "sha256": _Algorithm("sha256", 112, 64, 32, 104, *_bind("SHA256")),
    "sha512": _Algorithm("sha512", 216, 128, 64, 208, *_bind("SHA512")),
}


class HashStateError(ValueError):
    """A saved hash state is malformed (corrupt or not written by this code)."""


class ResumableHash:
    """An incremental hash whose state round-trips through `export()`/`restore()`."""

    def __init__(self, algorithm: str = "sha256") -> None:
        self._alg = ALGORITHMS[algorithm]
        self._ctx = ctypes.create_string_buffer(self._alg.ctx_size)
        if self._alg.init(self._ctx) != 1:
            raise RuntimeError(f"{algorithm}_Init failed")

    @property
    def algorithm(self) -> str:
        return self._alg.name

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if isinstance(data, bytes):
            self._alg.update(self._ctx, data, len(data))
            return
        view = memoryview(data).cast("B")
        if view.readonly:  # ctypes takes a pointer into writable buffers only
            copy = bytes(view)
            self._alg.update(self._ctx, copy, len(copy))
            return
        # Hash the caller's buffer in place (an upload's receive buffer): no copy.
        self._alg.update(self._ctx, (ctypes.c_char * len(view)).from_buffer(view), len(view))

    def hexdigest(self) -> str:
        # Finalise a copy so the running state stays usable.
        ctx = ctypes.create_string_buffer(self._ctx.raw, self._alg.ctx_size)
        out = ctypes.create_string_buffer(self._alg.digest_size)
        self._alg.final(out, ctx)
        return out.raw.hex()

    def digest(self) -> str:
        """The OCI digest string, e.g. ``sha256:<hex>``."""
        return f"{self._alg.name}:{self.hexdigest()}"

    def export(self) -> str:
        """The running state as text, safe to store in JSON."""
        return base64.b64encode(self._ctx.raw).decode("ascii")

    @classmethod
    def restore(cls, algorithm: str, state: str) -> ResumableHash:
        alg = ALGORITHMS.get(algorithm)
        if alg is None:
            raise HashStateError(f"unknown hash algorithm {algorithm!r}")
        try:
            raw = base64.b64decode(state, validate=True)
        except (ValueError, TypeError) as exc:
            raise HashStateError("hash state is not base64") from exc
        if len(raw) != alg.ctx_size:
            raise HashStateError("hash state has the wrong size")
        num, md_len = struct.unpack_from("=II", raw, alg.num_offset)
        if num >= alg.block_size or md_len != alg.digest_size:
            raise HashStateError("hash state is corrupt")
        obj = cls.__new__(cls)
        obj._alg = alg
        obj._ctx = ctypes.create_string_buffer(raw, alg.ctx_size)
        return obj
