"""Registry semantics (blobs, uploads, manifests, tags, referrers) over small storage drivers."""

from __future__ import annotations

from settings import Settings
from storage.driver import StorageDriver
from storage.drivers.filesystem import FilesystemDriver


def driver_from_settings(settings: Settings) -> StorageDriver:
    """The backend named by REGISTRY_STORAGE."""
    if settings.storage == "filesystem":
        return FilesystemDriver(settings.data_dir)
    if settings.storage == "s3" and settings.s3 is not None:
        from storage.drivers.s3 import S3Driver  # boto3 is imported only when S3 is used

        return S3Driver(settings.s3)
    raise ValueError(f"unknown storage backend {settings.storage!r}")
