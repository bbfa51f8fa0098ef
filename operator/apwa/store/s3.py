"""A small async facade over obstore's S3 client, with errors turned into messages people can act on."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import obstore
from obstore.exceptions import NotFoundError, PermissionDeniedError, UnauthenticatedError
from obstore.store import S3Store

from apwa.results.keys import location_env

# Keys of the credentials Secret (and of the environment the sidecar gets them in).
SECRET_ACCESS_KEY_ID = "accessKeyId"
SECRET_SECRET_ACCESS_KEY = "secretAccessKey"
SECRET_SESSION_TOKEN = "sessionToken"
MULTIPART_CHUNK = 8 * 1024 * 1024
# S3 error codes that mean "these credentials won't do" (versitygw answers an unknown key with a
# 404 XAdminUserNotFound where AWS says 403 InvalidAccessKeyId).
_AUTH_CODES = (
    "<Code>AccessDenied<",
    "<Code>InvalidAccessKeyId<",
    "<Code>SignatureDoesNotMatch<",
    "<Code>XAdminUserNotFound<",
    "<Code>InvalidToken<",
    "<Code>ExpiredToken<",
)


class StoreError(Exception):
    """A store request failed. `kind`: "auth" (credentials refused), "missing" (no such bucket or
    object), "unavailable" (network or server error: retry later)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class Location:
    bucket: str
    endpoint: str | None = None
    region: str = "us-east-1"
    path_style: bool = False

    @classmethod
    def from_spec(cls, s3: Any) -> Location:
        return cls(s3.bucket, s3.endpoint, s3.region, s3.path_style)

    def describe(self) -> str:
        return f"bucket {self.bucket!r} at {self.endpoint or 'AWS S3 ' + self.region}"

    def env(self) -> dict[str, str]:
        """The non-secret settings, as the store sidecar reads them."""
        return location_env(self.bucket, self.region, self.endpoint, self.path_style)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Location:
        return cls(
            env["APWA_S3_BUCKET"],
            env.get("APWA_S3_ENDPOINT") or None,
            env.get("APWA_S3_REGION", "us-east-1"),
            env.get("APWA_S3_PATH_STYLE", "").lower() == "true",
        )


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:  # never in a log line or a traceback
        return "Credentials(<redacted>)"

    @classmethod
    def from_secret_data(cls, data: Mapping[str, str], secret: str) -> Credentials:
        import base64

        missing = [k for k in (SECRET_ACCESS_KEY_ID, SECRET_SECRET_ACCESS_KEY) if k not in data]
        if missing:
            raise StoreError("auth", f"Secret {secret!r} has no key {' or '.join(missing)}")
        value = {k: base64.b64decode(v).decode() for k, v in data.items()}
        return cls(value[SECRET_ACCESS_KEY_ID], value[SECRET_SECRET_ACCESS_KEY], value.get(SECRET_SESSION_TOKEN))

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Credentials:
        return cls(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env.get("AWS_SESSION_TOKEN") or None)


class Bucket:
    """One bucket, with the calls APWA needs. Every error is a StoreError."""

    def __init__(self, where: Location, creds: Credentials, *, timeout: float = 30.0, retries: int = 3) -> None:
        self.where = where
        config: dict[str, Any] = {
            "region": where.region,
            "access_key_id": creds.access_key_id,
            "secret_access_key": creds.secret_access_key,
            "virtual_hosted_style_request": not where.path_style,
        }
        if creds.session_token:
            config["session_token"] = creds.session_token
        if where.endpoint:
            config["endpoint"] = where.endpoint.rstrip("/")
        self._store = S3Store(
            where.bucket,
            config=config,
            client_options={
                "allow_http": bool(where.endpoint and where.endpoint.startswith("http://")),
                "timeout": timedelta(seconds=timeout),
                "connect_timeout": timedelta(seconds=min(timeout, 10.0)),
            },
            retry_config={
                "max_retries": retries,
                "retry_timeout": timedelta(seconds=timeout * 2),
                "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=5)},
            },
        )

    def _error(self, e: BaseException, what: str) -> StoreError:
        where = self.where.describe()
        if isinstance(e, (PermissionDeniedError, UnauthenticatedError)) or _says(e, "403 Forbidden", *_AUTH_CODES):
            return StoreError("auth", f"{what}: {where} refused the credentials ({_short(e)})")
        if _says(e, "NoSuchBucket"):
            return StoreError("missing", f"{what}: {where} does not exist (create the bucket first)")
        if isinstance(e, (NotFoundError, FileNotFoundError)):
            return StoreError("missing", f"{what}: not found in {where}")
        return StoreError("unavailable", f"{what}: {where} is unavailable ({_short(e)})")

    async def put(self, key: str, data: bytes) -> None:
        try:
            await obstore.put_async(self._store, key, data)
        except Exception as e:
            raise self._error(e, f"writing {key}") from None

    async def put_file(self, key: str, path: Path) -> tuple[int, str]:
        """Upload a file (multipart when large); returns its size and sha256. The object appears
        only once complete: S3 makes a multipart upload visible at CompleteMultipartUpload."""
        digest = hashlib.sha256()
        size = 0

        async def chunks() -> AsyncIterator[bytes]:
            nonlocal size
            with path.open("rb") as f:
                while block := f.read(MULTIPART_CHUNK):
                    digest.update(block)
                    size += len(block)
                    yield block

        try:
            await obstore.put_async(
                self._store, key, chunks(), chunk_size=MULTIPART_CHUNK, max_concurrency=4, use_multipart=None
            )
        except Exception as e:
            raise self._error(e, f"uploading {key}") from None
        return size, digest.hexdigest()

    async def get(self, key: str) -> bytes | None:
        """The object's bytes; None when there is no such object."""
        try:
            result = await obstore.get_async(self._store, key)
            return bytes(await result.bytes_async())
        except (NotFoundError, FileNotFoundError) as e:
            if _says(e, "NoSuchBucket"):
                raise self._error(e, f"reading {key}") from None
            return None
        except Exception as e:
            raise self._error(e, f"reading {key}") from None

    async def stream(self, key: str) -> AsyncIterator[bytes]:
        """The object's bytes in pieces, for objects too big to hold (a 1 GiB result)."""
        try:
            result = await obstore.get_async(self._store, key)
            async for piece in result.stream(min_chunk_size=1024 * 1024):
                yield bytes(piece)
        except Exception as e:
            raise self._error(e, f"reading {key}") from None

    async def keys(
        self, prefix: str, *, start_after: str | None = None, page: int = 1000
    ) -> AsyncIterator[tuple[str, int]]:
        """(key, size) of every object under `prefix` in lexicographic order, a page at a time."""
        try:
            async for batch in obstore.list(self._store, prefix, offset=start_after, chunk_size=page):
                for meta in batch:
                    yield meta["path"], meta["size"]
        except Exception as e:
            raise self._error(e, f"listing {prefix}") from None

    async def folders(self, prefix: str) -> tuple[list[str], list[tuple[str, int]]]:
        """One level under `prefix` (a "folder", ending in '/'): its sub-folders (each ending in
        '/') and the (key, size) of the objects directly in it, in key order. Every page at once."""
        try:
            found = await obstore.list_with_delimiter_async(self._store, prefix)
        except Exception as e:
            raise self._error(e, f"listing {prefix}") from None
        objects = [(meta["path"], meta["size"]) for meta in found["objects"]]
        return [f"{p}/" for p in found["common_prefixes"]], objects

    async def check(self, prefix: str) -> None:
        """Fail early and clearly (credentials, bucket) before anything depends on the store."""
        async for _ in self.keys(prefix, page=1):
            break

    async def delete(self, key: str) -> None:
        try:
            await obstore.delete_async(self._store, key)
        except Exception as e:
            raise self._error(e, f"deleting {key}") from None


def _says(e: BaseException, *words: str) -> bool:
    text = str(e)
    return any(w in text for w in words)


def _short(e: BaseException) -> str:
    """The server's error code and message when it sent them, else the first line of the error."""
    text = str(e)
    code = re.search(r"<Code>([^<]*)</Code>", text)
    if code:
        message = re.search(r"<Message>([^<]*)</Message>", text)
        return f"{code.group(1)}: {message.group(1)}" if message else code.group(1)
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    # obstore ends its first line with the cause ("... after 3 retries ... - HTTP error: error
    # sending request"): the cause is what a person acts on.
    cause = first.rsplit(" - ", 1)[-1].strip()
    return cause if len(cause) <= 200 else cause[:200] + "..."
