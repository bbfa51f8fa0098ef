"""The result protocol (how a worker reports) and pure aggregation of many results."""

from apwa.results.aggregate import Aggregate, SubtaskOutcome
from apwa.results.protocol import MAX_RESULT_BYTES, ResultTooLarge, decode_result, encode_result

__all__ = [
    "MAX_RESULT_BYTES",
    "Aggregate",
    "ResultTooLarge",
    "SubtaskOutcome",
    "decode_result",
    "encode_result",
]
