"""boto3 talking straight to the S3 endpoint (moto) that Berth writes to in bench_s3.py: the
client, emptying the bucket, and the direct uploads/downloads Berth is compared with."""

from __future__ import annotations

import os
from pathlib import Path

from common import MIB, BenchError

BUCKET = "berth-bench"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}  # moto takes any
REGION = "us-east-1"


def s3_client(endpoint: str):
    import boto3
    from botocore.config import Config

    config = Config(
        region_name=REGION,
        signature_version="s3v4",
        max_pool_connections=32,
        retries={"mode": "standard", "max_attempts": 4},
        read_timeout=300,
        request_checksum_calculation="when_required",  # as Berth: no CRC32 aws-chunked trailers
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"},
    )
    return boto3.session.Session(
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    ).client("s3", endpoint_url=endpoint, config=config)


def wipe_bucket(client) -> None:
    """Delete every object and open multipart upload: moto holds them all (in memory and
    spooled temp files), and Berth must see each push as a first push (no dedup short cut)."""
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=BUCKET):
        for up in page.get("Uploads", []):
            client.abort_multipart_upload(Bucket=BUCKET, Key=up["Key"], UploadId=up["UploadId"])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys, "Quiet": True})


def boto3_seq_upload(client, blob: Path, part_size: int) -> None:
    """What Berth's writer does: one multipart upload, parts of part_size sent one at a time."""
    key = "direct/seq"
    upload = client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    parts = []
    with open(blob, "rb") as f:
        while data := f.read(part_size):
            number = len(parts) + 1
            etag = client.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=number, Body=data)
            parts.append({"ETag": etag["ETag"], "PartNumber": number})
    client.complete_multipart_upload(
        Bucket=BUCKET, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
    )


def boto3_seq_download(client, size: int) -> None:
    """What Berth's GET does: one GetObject, body read in 1 MiB pieces (here: discarded)."""
    body = client.get_object(Bucket=BUCKET, Key="direct/seq")["Body"]
    n = 0
    while chunk := body.read(MIB):
        n += len(chunk)
    if n != size:
        raise BenchError(f"boto3 GetObject: {n} bytes, expected {size}")


def transfer_config(part_size: int, threads: int):
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=part_size, multipart_chunksize=part_size, max_concurrency=threads
    )


def boto3_xfer_upload(client, blob: Path, part_size: int, threads: int) -> None:
    with open(blob, "rb") as f:
        client.upload_fileobj(f, BUCKET, "direct/xfer", Config=transfer_config(part_size, threads))


def boto3_xfer_download(client, part_size: int, threads: int) -> None:
    with open(os.devnull, "wb") as f:
        client.download_fileobj(BUCKET, "direct/xfer", f, Config=transfer_config(part_size, threads))
