"""The object store: an S3-compatible bucket for results and outcomes that don't belong in etcd.

`s3` is the async client used by the operator, `apwa results` and the pods' store sidecar
(`agent`). Request signing, retries and multipart uploads are obstore's (the Rust object_store
crate): docs/s3-clients.md says why that library.
"""

import os
import sys


def exit_without_finalizing(code: int) -> None:
    """End a short-lived process that used obstore: flush, then exit without interpreter
    finalization. obstore's Tokio worker threads are not shut down at exit, and one still running
    while Python finalizes can abort the process (SIGABRT after all the work was done; seen here
    with `apwa results`, the same race as lancedb/lancedb#4175 and PyO3/pyo3-async-runtimes#40)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
