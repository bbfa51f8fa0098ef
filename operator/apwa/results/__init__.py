"""The result protocol (how a worker reports) and pure aggregation of many results."""

from apwa.results.aggregate import Aggregate, SubtaskOutcome
from apwa.results.protocol import (
    FINAL_EXIT_CODE,
    MAX_RESULT_BYTES,
    ResultTooLarge,
    ResultTruncated,
    decode_failure,
    decode_result,
    encode_failure,
    encode_result,
    message_budget,
)

__all__ = [
    "FINAL_EXIT_CODE",
    "MAX_RESULT_BYTES",
    "Aggregate",
    "ResultTooLarge",
    "ResultTruncated",
    "SubtaskOutcome",
    "decode_failure",
    "decode_result",
    "encode_failure",
    "encode_result",
    "message_budget",
]
