"""Arrays in and out of Flower records, and what a message weighs on the wire."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.common.serde import array_to_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import ArrayRecord as ProtoArrayRecord
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict


def to_record(arrays: dict) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


def from_record(record: ArrayRecord) -> dict:
    return {k: v.numpy() for k, v in record.items()}


def _varint(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


def _field(size: int) -> int:
    """A length-delimited field of ``size`` bytes with a one-byte tag (field numbers 1..15)."""
    return 1 + _varint(size) + size


def _array_bytes(array: Array) -> int:
    # the array's bytes are already serialised (Array.data): only its small header is
    # put through protobuf, then the data field's length is added
    header = array_to_proto(Array(dtype=array.dtype, shape=array.shape, stype=array.stype, data=b"")).ByteSize()
    return header + (_field(len(array.data)) if array.data else 0)


def _array_record_bytes(record: ArrayRecord) -> int:
    return sum(_field(ProtoArrayRecord.Item(key=key).ByteSize() + _field(_array_bytes(array)))
               for key, array in record.items())


def record_bytes(content: RecordDict) -> int:
    """Serialized size of a message's content, as Flower puts it on the wire, counted
    without serialising the arrays again.

    Written here because Flower's own serialiser (``recorddict_to_proto``) copies every
    array into a protobuf message: half a second for a 64 MB reply, paid once more for
    each message only to count it. A RecordDict is a repeated field of items, so its size
    is the sum of its items'; an ArrayRecord item's is computed from the arrays' lengths
    (tests/test_wire.py checks the count against ``recorddict_to_proto`` byte for byte).
    """
    total = 0
    for key, record in content.items():
        if isinstance(record, ArrayRecord):
            total += _field(ProtoRecordDict.Item(key=key).ByteSize() + _field(_array_record_bytes(record)))
        else:
            total += recorddict_to_proto(RecordDict({key: record})).ByteSize()
    return total


def message_bytes(messages: Iterable[Message]) -> int:
    """Serialized size of the messages' contents, as Flower puts them on the wire."""
    return sum(record_bytes(m.content) for m in messages)
