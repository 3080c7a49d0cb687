"""TensorBoard event files: one run per folder of `*tfevents*` files, read in name order (their
names start with the writer's start time).

A file is a sequence of TFRecords (u64 length, u32 masked CRC32C of the length, the payload, u32
masked CRC32C of the payload); each payload is an `Event` protocol buffer, decoded with
tensorboard's own generated classes (`tensorboard.compat.proto.event_pb2`). The framing is read
here rather than through tensorboard's `EventFileLoader` because that one checks CRC32C in a
per-byte Python loop when TensorFlow is absent (benchmarks/bench_sources.py measures it) and
cannot start at a byte offset kept from an earlier read. The CRCs are checked with google-crc32c
when it is installed (the `logs` extra); without it they are not checked, and a record is
accepted when its framing is whole and its payload parses as an Event (said in the run's
message).

Scalars: `simple_value` (TF1, torch's SummaryWriter) and rank-0 numeric tensors (TF2 summaries,
SummaryWriter(new_style=True)) whose tag is not another plugin's; each keeps its step and wall
time. A torn last record (a file being written) is left for the next read. A damaged record
(bad CRC, impossible length, not an Event) ends the reading of that file there: what came before
is kept, the damage is named, and the file is not read past it again.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from torchdeck.errors import OperationFailed
from torchdeck.sources import EXTRA_HINT, Batch

MAX_RECORD = 1 << 30  # a length past this is damage, not a record
READ_PIECE = 32 << 20  # bytes read at a time from one file
_HEADER = struct.Struct("<QI")
_U32 = struct.Struct("<I")

# DataType enum values (tensorboard/compat/proto/types.proto) -> (TensorProto field, struct code)
_DTYPES = {1: ("float_val", "<f"), 2: ("double_val", "<d"), 19: ("half_val", "<e"), 3: ("int_val", "<i"),
           9: ("int64_val", "<q"), 4: ("int_val", "<B"), 5: ("int_val", "<h"), 6: ("int_val", "<b"),
           17: ("int_val", "<H"), 22: ("uint32_val", "<I"), 23: ("uint64_val", "<Q")}


def crc32c_function():
    """google-crc32c's CRC32C when installed (C), else None: records are then not CRC-checked."""
    try:
        import google_crc32c
    except ImportError:
        return None
    return google_crc32c.value


def _event_class():
    try:
        from tensorboard.compat.proto import event_pb2
    except ImportError:
        raise OperationFailed(f"reading TensorBoard event files needs the tensorboard package: {EXTRA_HINT}",
                              field="path") from None
    return event_pb2.Event


def event_files(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if "tfevents" in p.name and p.is_file())
    except OSError:
        return []


def read(folder: Path, state: dict[str, Any]) -> Batch:
    """The scalars written since `state` (offsets per file name), state updated."""
    batch = Batch()
    files_state: dict[str, dict[str, Any]] = state.setdefault("files", {})
    plugins: dict[str, str] = state.setdefault("plugins", {})  # tag -> plugin named by its first metadata
    files = event_files(folder)
    for p in files:
        st = files_state.get(p.name)
        if st is None:
            continue
        try:
            size = p.stat().st_size
        except OSError:
            continue
        if size < st.get("offset", 0):  # truncated or replaced: everything again from the start
            files_state.clear()
            plugins.clear()
            batch.reset = True
            break
    event_cls = None
    crc = crc32c_function()
    state["crc_checked"] = crc is not None
    for p in files:
        st = files_state.get(p.name) or {"offset": 0}
        if st.get("damaged"):
            continue
        if event_cls is None:
            event_cls = _event_class()
        # A new file is read aside first: when its steps go back (a training started again over
        # this folder), what the earlier files hold from its first step on is replaced by it.
        fresh = not st.get("offset")
        target = Batch() if fresh else batch
        try:
            _read_file(p, st, event_cls, crc, plugins, target)
        except PermissionError as e:
            batch.problems.append(f"cannot read {p}: {e.strerror} (skipped)")
            continue
        except OSError as e:
            batch.problems.append(f"cannot read {p}: {e.strerror or e} (skipped)")
            continue
        if fresh:
            first = min((cols[0][0] for cols in target.points.values() if cols[0]), default=None)
            top = _max_step(batch.points, state.get("max_step"))
            if first is not None and top is not None and first <= top:
                if batch.count:
                    batch.more = True
                    break  # its replacement goes first in the next read (this one is not consumed)
                batch.replaces_from = first
            for name, cols in target.points.items():
                mine = batch.points.setdefault(name, ([], [], []))
                for a, b in zip(mine, cols):
                    a.extend(b)
            batch.pending += target.pending
            batch.problems += target.problems
            if target.params is not None:
                batch.params = {**(batch.params or {}), **target.params}
        files_state[p.name] = st
    top = _max_step(batch.points, None if batch.replaces_from is not None else state.get("max_step"))
    if top is not None:
        state["max_step"] = top
    for p in files:  # damage stays told on every read
        st = files_state.get(p.name) or {}
        if st.get("damaged"):
            batch.problems.append(st["damaged"])
    return batch


def _read_file(path: Path, st: dict[str, Any], event_cls, crc, plugins: dict[str, str], batch: Batch) -> None:
    """One file's whole records from its kept offset (one loop, locals only: a million records a
    few seconds)."""
    from google.protobuf.message import DecodeError

    from_string = event_cls.FromString
    header = _HEADER.unpack_from
    u32 = _U32.unpack_from
    points = batch.points
    offset = int(st.get("offset", 0))
    with open(path, "rb") as f:
        f.seek(offset)
        buf = b""
        eof = False
        while not eof:
            piece = f.read(READ_PIECE)
            eof = len(piece) < READ_PIECE
            buf = buf + piece if buf else piece
            pos = 0
            n = len(buf)
            damage = None
            while n - pos >= 12:
                length, head_crc = header(buf, pos)
                if length > MAX_RECORD:
                    damage = "a record's length is damaged"
                    break
                if crc is not None:
                    c = crc(buf[pos:pos + 8])
                    if (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF != head_crc:
                        damage = "a record's length is damaged"
                        break
                end = pos + 12 + length
                if end + 4 > n:
                    break  # the rest of this record is not here yet
                payload = buf[pos + 12:end]
                if crc is not None:
                    c = crc(payload)
                    if (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF != u32(buf, end)[0]:
                        damage = "a record fails its CRC32C check"
                        break
                try:
                    event = from_string(payload)
                except DecodeError:
                    damage = "a record is not a TensorBoard event"
                    break
                pos = end + 4
                values = event.summary.value
                if not values:
                    continue
                step, wall = event.step, event.wall_time
                for v in values:
                    if v.HasField("simple_value"):
                        cols = points.get(v.tag)
                        if cols is None:
                            cols = points[v.tag] = ([], [], [])
                        cols[0].append(step)
                        cols[1].append(v.simple_value)
                        cols[2].append(wall)
                    elif v.HasField("tensor"):
                        _tensor_value(v, step, wall, plugins, batch)
                    elif v.tag == HPARAMS_TAG:
                        _hparams(v, batch)
            offset += pos
            if damage is not None:
                st["damaged"] = (f"{path.name}: {damage} at byte {offset:,}: read up to there, the rest of the "
                                 f"file ({_size(path) - offset:,} bytes) is not shown")
                break
            buf = buf[pos:]
        else:
            batch.pending += len(buf)
    st["offset"] = offset


def _max_step(points, start: int | None) -> int | None:
    top = start
    for cols in points.values():
        if cols[0]:
            m = max(cols[0])
            top = m if top is None else max(top, m)
    return top


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


HPARAMS_TAG = "_hparams_/session_start_info"  # the HParams plugin's record of a run's hyper-parameters


def _hparams(v, batch: Batch) -> None:
    """The HParams plugin's session start (SummaryWriter.add_hparams, Lightning's TensorBoardLogger):
    the run's hyper-parameters (numbers, strings, bools) into batch.params."""
    if v.metadata.plugin_data.plugin_name != "hparams":
        return
    from google.protobuf.message import DecodeError

    try:
        from tensorboard.plugins.hparams import plugin_data_pb2
    except ImportError:  # read with tensorboard's own classes, like the events themselves
        return
    try:
        data = plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
    except DecodeError:
        batch.problems.append("the HParams plugin's record is damaged: hyper-parameters not read")
        return
    if not data.HasField("session_start_info"):
        return
    params = {}
    for key, value in data.session_start_info.hparams.items():
        kind = value.WhichOneof("kind")
        if kind in ("number_value", "string_value", "bool_value"):
            params[key] = getattr(value, kind)
    batch.params = {**(batch.params or {}), **params}


def _tensor_value(v, step: int, wall: float, plugins: dict[str, str], batch: Batch) -> None:
    """A TF2 summary's tensor: a scalar when rank 0, numeric, and its tag not another plugin's
    (the plugin is named in the tag's first metadata only)."""
    tag = v.tag
    if v.HasField("metadata") and v.metadata.plugin_data.plugin_name:
        plugins[tag] = v.metadata.plugin_data.plugin_name
    if plugins.get(tag, "scalars") != "scalars":
        return  # a histogram's, a text's, an image's tensor
    value = _tensor_scalar(v.tensor)
    if value is not None:
        batch.add(tag, step, value, wall)


def _tensor_scalar(t) -> float | None:
    if len(t.tensor_shape.dim):
        return None  # not rank 0
    spec = _DTYPES.get(t.dtype)
    if spec is None:
        return None
    name, code = spec
    if t.tensor_content:
        size = struct.calcsize(code)
        if len(t.tensor_content) != size:
            return None
        return float(struct.unpack(code, t.tensor_content)[0])
    vals = getattr(t, name)
    if not len(vals):
        return None
    if t.dtype == 19:  # half values travel as the bits of a float16 in an int
        return float(struct.unpack("<e", struct.pack("<H", vals[0] & 0xFFFF))[0])
    return float(vals[0])
