"""The result protocol (how a worker reports) and pure aggregation of many results."""

from apwa.results.aggregate import Aggregate, SubtaskOutcome
from apwa.results.protocol import (
    FINAL_EXIT_CODE,
    MAX_RESULT_BYTES,
    MAX_STORED_RESULT_BYTES,
    ResultInvalid,
    ResultTooLarge,
    ResultTruncated,
    StoreFailed,
    decode_failure,
    decode_result,
    decode_stored,
    decode_usage,
    decode_value,
    encode_failure,
    encode_result,
    encode_stored,
    encode_usage,
    message_budget,
)

__all__ = [
    "FINAL_EXIT_CODE",
    "MAX_RESULT_BYTES",
    "MAX_STORED_RESULT_BYTES",
    "Aggregate",
    "ResultInvalid",
    "ResultTooLarge",
    "ResultTruncated",
    "StoreFailed",
    "SubtaskOutcome",
    "decode_failure",
    "decode_result",
    "decode_stored",
    "decode_usage",
    "decode_value",
    "encode_failure",
    "encode_result",
    "encode_stored",
    "encode_usage",
    "message_budget",
]
