"""The test environment's S3 server (hack/s3.sh, versitygw) through obstore, the client the operator
uses: what later store tests rely on (signed put, get, list under a prefix, a multipart upload)."""

from __future__ import annotations

import asyncio
import uuid

import obstore
from obstore.store import S3Store
from s3_env import S3Server


def _store(s3: S3Server) -> S3Store:
    return S3Store(
        s3.bucket,
        endpoint=s3.endpoint,
        region=s3.region,
        access_key_id=s3.access_key,
        secret_access_key=s3.secret_key,
        client_options={"allow_http": True},
    )


def test_objects_put_are_read_back_and_listed_under_their_prefix(s3_server: S3Server) -> None:
    store, prefix = _store(s3_server), f"test-s3-server/{uuid.uuid4().hex}"
    objects = {f"{prefix}/item-{i}.json": f'{{"i": {i}}}'.encode() for i in range(3)}
    for key, body in objects.items():
        obstore.put(store, key, body)

    listed = {meta["path"] for batch in obstore.list(store, prefix=prefix) for meta in batch}
    read = {key: obstore.get(store, key).bytes().to_bytes() for key in objects}
    obstore.delete(store, list(objects))

    assert listed == set(objects)
    assert read == objects
    assert not [meta for batch in obstore.list(store, prefix=prefix) for meta in batch]


def test_a_multipart_upload_reads_back_whole(s3_server: S3Server) -> None:
    store, key = _store(s3_server), f"test-s3-server/{uuid.uuid4().hex}/big.bin"
    body = uuid.uuid4().bytes * (12 * 1024 * 1024 // 16)  # 12 MiB: three 5 MiB parts

    async def roundtrip() -> bytes:
        await obstore.put_async(store, key, body, use_multipart=True)
        try:
            return (await (await obstore.get_async(store, key)).bytes_async()).to_bytes()
        finally:
            await obstore.delete_async(store, key)

    assert asyncio.run(roundtrip()) == body
