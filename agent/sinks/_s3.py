"""S3 and S3-compatible object stores, through boto3: one spooled file -> one object.

Owned here: the boto3 client (endpoint, region, path-style addressing; its own
retries off, since the sink retries with its own backoff), credentials through
boto3's standard chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/
``AWS_SESSION_TOKEN``, ``AWS_SHARED_CREDENTIALS_FILE``/``AWS_CONFIG_FILE``,
``AWS_WEB_IDENTITY_TOKEN_FILE`` + ``AWS_ROLE_ARN`` for a pod's web identity, then
the instance's), presigned GET URLs, and turning S3's error codes into
:class:`agent.sinks._sink.SendError` kinds.

boto3 blocks: every call runs in a worker thread. Files up to 8 MiB are one
PutObject; larger ones go through boto3's multipart transfer.
"""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any

import boto3
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from agent.sinks._sink import SendError
from agent.sinks._spool import Item

MULTIPART_FROM = 8 << 20
_CONFIG_CODES = {
    "InvalidAccessKeyId": "the access key is unknown to the store",
    "SignatureDoesNotMatch": "the secret key does not match the access key",
    "AccessDenied": "the credentials may not write to this bucket",
    "ExpiredToken": "the session token has expired",
    "InvalidToken": "the session token is not valid",
    "NoSuchBucket": "the bucket does not exist",
    "AllAccessDisabled": "all access to this bucket is disabled",
    "AuthorizationHeaderMalformed": "the region does not match the bucket's",
    "PermanentRedirect": "the bucket is in another region, or needs another endpoint",
}
_REJECTED_CODES = {"EntityTooLarge", "InvalidArgument", "KeyTooLongError", "InvalidObjectName"}
_CODE_IN_TEXT = re.compile(r"\((\w+)\)")


class S3Sender:
    name = "s3"

    def __init__(
        self,
        *,
        bucket: str,
        endpoint: str | None,
        region: str | None,
        path_style: bool,
        timeout_s: float,
    ) -> None:
        self.bucket = bucket
        self.endpoint = endpoint
        self.region = region
        self.path_style = path_style
        self.timeout_s = timeout_s
        self._client: Any = None
        self._lock = threading.Lock()

    def describe(self) -> dict[str, object]:
        return {
            "bucket": self.bucket,
            "endpoint": self.endpoint or "AWS S3",
            "region": self.region,
            "path_style": self.path_style,
        }

    def client(self) -> Any:
        """The boto3 client, made once (and again after a configuration error, so fixed
        credentials are picked up)."""
        with self._lock:
            if self._client is None:
                config = Config(
                    signature_version="s3v4",
                    s3={"addressing_style": "path" if self.path_style else "auto"},
                    retries={"max_attempts": 1, "mode": "standard"},
                    connect_timeout=min(self.timeout_s, 10.0),
                    read_timeout=self.timeout_s,
                )
                session = boto3.session.Session()
                self._client = session.client(
                    "s3", endpoint_url=self.endpoint, region_name=self.region, config=config
                )
            return self._client

    def _upload(self, item: Item) -> None:
        key = str(item.meta["key"])
        content_type = str(item.meta.get("content_type") or "application/octet-stream")
        client = self.client()
        if item.size < MULTIPART_FROM:
            with item.data.open("rb") as f:
                client.put_object(Bucket=self.bucket, Key=key, Body=f, ContentType=content_type)
            return
        client.upload_file(
            str(item.data),
            self.bucket,
            key,
            ExtraArgs={"ContentType": content_type},
            Config=TransferConfig(multipart_threshold=MULTIPART_FROM, use_threads=False),
        )

    async def send(self, item: Item) -> None:
        try:
            await asyncio.to_thread(self._upload, item)
        except Exception as e:
            err = self._classify(e)
            if err.kind == "config":
                with self._lock:
                    self._client = None
            raise err from e

    def presign(self, key: str, expiry_s: int) -> str:
        url: str = self.client().generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expiry_s
        )
        return url

    async def close(self) -> None:
        with self._lock:
            self._client = None

    def _classify(self, e: Exception) -> SendError:
        where = f"bucket {self.bucket!r} at {self.endpoint or 'AWS S3'}"
        if isinstance(e, botocore.exceptions.NoCredentialsError):
            return SendError(
                f"no S3 credentials for {where}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, a credentials file, or the pod's web identity",
                kind="config",
            )
        if isinstance(e, botocore.exceptions.ClientError):
            code = str(e.response.get("Error", {}).get("Code", ""))
            status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            message = str(e.response.get("Error", {}).get("Message", "")) or str(e)
        elif isinstance(e, boto3.exceptions.S3UploadFailedError):
            m = _CODE_IN_TEXT.search(str(e))
            code, status, message = (m.group(1) if m else ""), 0, str(e)
        elif isinstance(e, botocore.exceptions.BotoCoreError):  # connection, timeout, endpoint
            return SendError(f"cannot reach {where}: {e}", kind="transient")
        elif isinstance(e, OSError):
            return SendError(f"the spooled file is unreadable: {e}", kind="rejected")
        else:
            what = f"{type(e).__name__}: {e}"
            return SendError(f"uploading to {where} failed: {what}", kind="transient")
        if code in _CONFIG_CODES:
            return SendError(f"S3 {code} for {where}: {_CONFIG_CODES[code]}", kind="config")
        if code in _REJECTED_CODES:
            return SendError(f"S3 rejected an object ({code}): {message}", kind="rejected")
        if status in (401, 403):
            return SendError(f"S3 refused {where} (HTTP {status} {code}): {message}", kind="config")
        return SendError(f"S3 error for {where} ({code or status}): {message}", kind="transient")
