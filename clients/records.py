"""Flower's array records as numpy dicts and back, for every ClientApp handler."""

from __future__ import annotations

from flwr.app import Array, ArrayRecord


def arrays_of(record: ArrayRecord) -> dict:
    return {k: v.numpy() for k, v in record.items()}


def record_of(arrays: dict) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})
