"""Arrays in and out of Flower records, and what a message weighs on the wire."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.common.serde import recorddict_to_proto


def to_record(arrays: dict) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


def from_record(record: ArrayRecord) -> dict:
    return {k: v.numpy() for k, v in record.items()}


def record_bytes(content: RecordDict) -> int:
    """Serialized size of a message's content, as Flower puts it on the wire."""
    return recorddict_to_proto(content).ByteSize()


def message_bytes(messages: Iterable[Message]) -> int:
    """Serialized size of the messages' contents, as Flower puts them on the wire."""
    return sum(record_bytes(m.content) for m in messages)
