"""The result protocol (how a worker reports) and pure aggregation of many results."""

from apwa.results.aggregate import Aggregate, SubtaskOutcome
from apwa.results.protocol import (
    MAX_RESULT_BYTES,
    ResultTooLarge,
    ResultTruncated,
    decode_result,
    encode_result,
    message_budget,
)

__all__ = [
    "MAX_RESULT_BYTES",
    "Aggregate",
    "ResultTooLarge",
    "ResultTruncated",
    "SubtaskOutcome",
    "decode_result",
    "encode_result",
    "message_budget",
]
