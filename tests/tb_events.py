"""Reads TensorBoard event files back for the tests: TFRecord framing (length, masked CRC-32C of it, data,
masked CRC-32C of that; the checksums computed by tensorboardX) around `Event` protos parsed with the
classes tensorboardX ships. Independent of how infinity_jax writes them."""

from __future__ import annotations

import struct

from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c


def read_records(path: str) -> list[bytes]:
    """The records of a TFRecord file; ValueError naming the byte offset on a bad checksum or a cut record."""
    with open(path, "rb") as f:
        data = f.read()
    out, i = [], 0
    while i < len(data):
        if i + 12 > len(data):
            raise ValueError(f"{path}: record header cut short at byte {i}")
        header = data[i : i + 8]
        (n,) = struct.unpack("<Q", header)
        if struct.unpack("<I", data[i + 8 : i + 12])[0] != masked_crc32c(header):
            raise ValueError(f"{path}: bad length checksum at byte {i}")
        if i + 16 + n > len(data):
            raise ValueError(f"{path}: record cut short at byte {i}")
        body = data[i + 12 : i + 12 + n]
        if struct.unpack("<I", data[i + 12 + n : i + 16 + n])[0] != masked_crc32c(body):
            raise ValueError(f"{path}: bad data checksum at byte {i}")
        out.append(body)
        i += 16 + n
    return out


def read_event_protos(path: str) -> list[event_pb2.Event]:
    return [event_pb2.Event.FromString(r) for r in read_records(path)]


def read_events(path: str) -> list[tuple[int, dict[str, float]]]:
    """(step, {tag: simple_value}) per step that has scalars, in file order (consecutive events of one step
    merged: a writer logs one event per tag)."""
    out: list[tuple[int, dict[str, float]]] = []
    for e in read_event_protos(path):
        values = {v.tag: v.simple_value for v in e.summary.value if v.HasField("simple_value")}
        if not values:
            continue
        if out and out[-1][0] == e.step:
            out[-1][1].update(values)
        else:
            out.append((e.step, values))
    return out
