"""What a message weighs on the wire: counted without serialising, equal to Flower's serialiser."""

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.serde import recorddict_to_proto

from strategies.wire import record_bytes, to_record


def random_content(rng) -> RecordDict:
    records = {}
    for j in range(int(rng.integers(0, 5))):
        arrays = {}
        for k in range(int(rng.integers(0, 4))):
            shape = tuple(int(n) for n in rng.integers(0, 150, size=int(rng.integers(0, 3))))
            dtype = [np.float32, np.float64, np.int64][int(rng.integers(0, 3))]
            arrays["k" * int(rng.integers(1, 200)) + str(k)] = rng.normal(size=shape).astype(dtype)
        records["r" * int(rng.integers(1, 140)) + str(j)] = to_record(arrays)
    return RecordDict(records)


def test_the_count_equals_flowers_serialised_size_byte_for_byte():
    rng = np.random.default_rng(0)
    fixed = [
        RecordDict({}),
        RecordDict({"a": ArrayRecord({})}),
        RecordDict({"a": to_record({"empty": np.zeros(0)})}),
        RecordDict({"stats": to_record({"ids": np.arange(5), "gram": rng.normal(size=(300, 300))}),
                    "cfg": ConfigRecord({"round": 3, "s": "x" * 300}), "m": MetricRecord({"a": 1.0})}),
        RecordDict({"big": to_record({"g": rng.normal(size=(1500, 1500))})}),  # 18 MB: multi-byte length prefixes
    ]
    for content in fixed + [random_content(rng) for _ in range(50)]:
        assert record_bytes(content) == recorddict_to_proto(content).ByteSize()
