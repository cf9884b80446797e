"""Storage drivers: the backends behind the interface in storage/driver.py. Local disk
(filesystem.py) and S3-compatible object storage (s3.py, with its multipart writer s3_writer.py
and its upload lock s3_lease.py). Nothing above storage/ imports these directly but
storage.driver_from_settings, which picks one from the settings."""
