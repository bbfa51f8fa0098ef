"""The object store: an S3-compatible bucket for results and outcomes that don't belong in etcd.

`s3` is the async client used by the operator, `apwa results` and the pods' store sidecar
(`agent`). Request signing, retries and multipart uploads are obstore's (the Rust object_store
crate): docs/s3-clients.md says why that library.
"""
