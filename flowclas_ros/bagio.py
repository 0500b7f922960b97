"""rosbag2 files without a ROS install: open and read any bag, write outputs, QoS profiles.

Built on ``rosbags``. Message types for what we write come from one typestore, ROS 2 Humble
(``TYPESTORE``) plus vision_msgs registered from their definitions: sensor_msgs/Image,
CompressedImage, std_msgs/Header and diagnostic_msgs are identical in Humble and Jazzy, so
a bag written here plays on either.

Reading (:func:`open_bag`) accepts what real recorders wrote: a bag folder (split files and
zstd compression included), a bare ``.mcap`` or ``.db3`` file, a folder of storage files
whose metadata.yaml was lost, and the legacy type form ``sensor_msgs/Image`` (normalised to
``sensor_msgs/msg/Image``). Types come from the definitions stored in the bag (rosbag2 >=
Iron and every mcap file carry them), each connection's parsed on its own, so one that
rosbags cannot parse (service events) spoils only its own messages; older sqlite3 bags that
store none fall back to our typestore. Each message is decoded with its own connection's
type. Each storage file is opened by rosbags on its own (read-only; its folder reader would
match a file's connections to metadata.yaml's and, for real ``ros2 bag record`` bags whose
QoS strings differ, find no messages): metadata.yaml, read with bounded nesting and alias
expansion, only lists the files and says how they are compressed. zstd-compressed messages
are inflated one by one, at most ``MAX_MESSAGE_BYTES`` each; per-file compressed bags into a
temporary folder. Nothing is ever written into the bag's folder.

rosbags writes rosbag2 metadata version 9 (``ros2 bag`` of Jazzy reads it; Humble's
``ros2 bag`` needs its backported metadata reader or an mcap file, which Foxglove and the
mcap tools read anyway).
"""

from __future__ import annotations

import heapq
import logging
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from functools import lru_cache
from pathlib import Path, PurePath
from typing import Any

from rosbags.interfaces import (
    Connection,
    MessageDefinitionFormat,
    Nodetype,
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from flowclas_ros.errors import UserError
from flowclas_ros.runtime.codecs import MessageError
from flowclas_ros.structured import expect_mapping, read_yaml

log = logging.getLogger(__name__)

TYPESTORE = Stores.ROS2_HUMBLE
STORAGES = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)
STORAGE_SUFFIXES = (".mcap", ".db3")
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MAX_MESSAGE_BYTES = 2**29  # one inflated message; a raw frame of MAX_FRAME_PIXELS in rgba16 is 2**28
MAX_INFLATION = 1000  # a per-file compressed storage file may grow this many times
START_NS = 1_700_000_000 * 10**9  # default stamp of a written bag's first frame


@lru_cache(maxsize=1)
def typestore() -> Typestore:
    """The Humble typestore with vision_msgs registered (shared; treat as read-only)."""
    from flowclas_ros.runtime.messages import register_vision_msgs

    store = get_typestore(TYPESTORE)
    register_vision_msgs(store)
    return store


def ns_to_stamp(store: Typestore, ns: int):
    """A builtin_interfaces/Time for nanoseconds since the epoch."""
    return store.types["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9)


def stamp_to_ns(stamp) -> int:
    """Nanoseconds of a builtin_interfaces/Time (any object with ``sec`` and ``nanosec``)."""
    return int(stamp.sec) * 10**9 + int(stamp.nanosec)


def qos(durability: QosDurability = QosDurability.VOLATILE, depth: int = 10) -> Qos:
    """A reliable keep-last QoS profile as recorded in rosbag2 metadata."""
    zero = QosTime(0, 0)
    return Qos(
        history=QosHistory.KEEP_LAST,
        depth=depth,
        reliability=QosReliability.RELIABLE,
        durability=durability,
        deadline=zero,
        lifespan=zero,
        liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=zero,
        avoid_ros_namespace_conventions=False,
    )


LATCHED = qos(QosDurability.TRANSIENT_LOCAL, depth=1)


class BagWriter:
    """A new rosbag2 (sqlite3 or mcap) to which topics are added and messages written.

    Use as a context manager; the bag is closed (and its metadata written) even when the
    block raises, so an interrupted run leaves a readable bag.
    """

    def __init__(self, path: str | Path, storage: str = "mcap", store: Typestore | None = None) -> None:
        if storage not in STORAGES:
            raise UserError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
        self.path = Path(path)
        if self.path.exists():
            raise UserError(f"output bag {self.path} exists already; choose another output")
        self.store = store or typestore()
        self._writer = Writer(self.path, version=Writer.VERSION_LATEST, storage_plugin=STORAGES[storage])

    def __enter__(self) -> "BagWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer.open()
        return self

    def __exit__(self, *exc) -> None:
        self._writer.close()

    def add(self, topic: str, msgtype: str, profile: Qos | None = None) -> Connection:
        """A topic of a type known to our typestore."""
        return self._writer.add_connection(
            topic, msgtype, typestore=self.store, offered_qos_profiles=[profile or qos()]
        )

    def copy(self, connection: Connection, source: BagReader) -> Connection | None:
        """The same topic as ``connection`` of the input bag ``source``, with its stored
        definition when it has one (else the one ``source``'s typestore holds) and QoS.

        None when the type has no usable definition (its raw messages cannot be described in
        the new bag).
        """
        profiles = getattr(connection.ext, "offered_qos_profiles", [])
        if connection.msgdef.format == MessageDefinitionFormat.MSG and connection.digest:
            return self._writer.add_connection(
                connection.topic,
                connection.msgtype,
                msgdef=connection.msgdef.data,
                rihs01=connection.digest,
                offered_qos_profiles=profiles,
            )
        if connection.msgtype in source.typestore.fielddefs and connection.msgtype not in source.problems:
            return self._writer.add_connection(
                connection.topic, connection.msgtype, typestore=source.typestore, offered_qos_profiles=profiles
            )
        return None

    def write(self, connection: Connection, timestamp_ns: int, msg) -> None:
        """Serialise a message of our typestore and write it."""
        self._writer.write(connection, timestamp_ns, self.store.serialize_cdr(msg, connection.msgtype))

    def write_raw(self, connection: Connection, timestamp_ns: int, data: bytes | memoryview) -> None:
        """Write already serialised CDR bytes (copied input messages)."""
        self._writer.write(connection, timestamp_ns, data)


# ---------------------------------------------------------------------------------------------
# reading


class DamagedBagError(UserError):
    """A bag that opened but whose storage failed while its messages were read."""


def normalize_type(name: str) -> str:
    """``pkg/msg/Name`` for the legacy form ``pkg/Name`` (written by early rosbag2 recorders and
    ROS 1 tools); any other name as it is."""
    package, sep, rest = name.partition("/")
    return f"{package}/msg/{rest}" if sep and package and rest and "/" not in rest else name


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _zstd():
    if sys.version_info >= (3, 14):
        from compression import zstd
    else:
        from backports import zstd  # rosbags' own dependency
    return zstd


def _inflate(data: bytes) -> bytes:
    """A message payload, decompressed when it is a zstd frame (rosbag2's per-message
    compression; CDR never starts with zstd's magic) of at most MAX_MESSAGE_BYTES; else as it is."""
    if data[:4] != ZSTD_MAGIC:
        return data
    zstd = _zstd()
    decompressor = zstd.ZstdDecompressor()
    try:
        inflated = decompressor.decompress(data, max_length=MAX_MESSAGE_BYTES)
    except zstd.ZstdError:
        return data
    return inflated if decompressor.eof else data  # still compressed: deserialize says why


def _inflate_file(path: Path, folder: Path) -> Path:
    """A per-file compressed storage file (``x.mcap.zstd``) decompressed into ``folder``, at
    most MAX_INFLATION times its size (and at least 1 GiB)."""
    zstd = _zstd()
    target = folder / path.stem
    budget = max(MAX_INFLATION * path.stat().st_size, 2**30)
    written = 0
    try:
        with path.open("rb") as raw, zstd.open(raw, "rb") as inflated, target.open("wb") as out:
            while chunk := inflated.read(2**20):
                written += len(chunk)
                if written > budget:
                    raise UserError(f"bag file {path} inflates to more than {budget} bytes; not a bag")
                out.write(chunk)
    except (zstd.ZstdError, EOFError) as exc:
        raise UserError(f"bag file {path} does not decompress: {_one_line(exc)}") from None
    return target


def _listed_files(folder: Path, stack: ExitStack) -> list[Path]:
    """The storage files a bag folder's metadata.yaml lists (decompressed into a temporary folder
    when the bag is compressed per file). metadata.yaml is read with bounded nesting and alias
    expansion, and only for what the storage files do not say themselves."""
    meta = folder / "metadata.yaml"
    if not meta.is_file():
        raise UserError(f"bag {folder}: metadata.yaml is not a regular file")
    top = expect_mapping(read_yaml(meta), str(meta), empty_ok=False)
    info = expect_mapping(top.get("rosbag2_bagfile_information"), f"{meta}: rosbag2_bagfile_information",
                          empty_ok=False)
    files = info.get("relative_file_paths")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise UserError(f"{meta}: relative_file_paths is not a list of file names")
    names = [PurePath(f).name for f in files]  # as rosbag2 does: never outside the folder
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise UserError(f"bag {folder}: {len(missing)} of the {len(files)} storage files its metadata.yaml lists "
                        f"are missing ({shown}); copy the whole bag folder")
    topics = info.get("topics_with_message_count")
    formats = {str(t["topic_metadata"].get("serialization_format"))
               for t in (topics if isinstance(topics, list) else [])
               if isinstance(t, dict) and isinstance(t.get("topic_metadata"), dict)}
    if formats - {"cdr"}:
        raise UserError(f"bag {folder}: messages serialised as {', '.join(sorted(formats - {'cdr'}))}; "
                        "only cdr (the ROS 2 default) can be read")
    mode = str(info.get("compression_mode") or "none").lower()
    if mode != "none" and info.get("compression_format") != "zstd":
        raise UserError(f"{meta}: compression format {info.get('compression_format')!r} is not supported (only zstd)")
    paths = [folder / name for name in names]
    if mode in ("none", "message"):  # compressed messages are recognised and inflated one by one
        return paths
    if mode != "file":
        raise UserError(f"{meta}: compression_mode {mode!r} is not one of none, message, file")
    scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flowclas-bag-")))
    return [_inflate_file(path, scratch) for path in paths]


def _storage_files(path: Path, stack: ExitStack) -> list[Path]:
    """The storage files of a bag: those a folder's metadata.yaml lists, else (metadata lost,
    e.g. a split bag) every .mcap and .db3 file in the folder, else the file itself."""
    if path.is_dir():
        if (path / "metadata.yaml").exists():
            return _listed_files(path, stack)
        files = sorted(p for p in path.iterdir() if p.suffix in STORAGE_SUFFIXES and p.is_file())
        if not files:
            raise UserError(f"bag {path}: the folder has neither metadata.yaml nor a .mcap or .db3 file")
        if len(files) > 1:
            log.info("bag %s has no metadata.yaml: reading its %d storage files together", path, len(files))
        return files
    if path.suffix == ".bag":
        raise UserError(f"bag {path} is a ROS 1 bag; convert it to rosbag2 first (e.g. with rosbags-convert)")
    if path.suffix not in STORAGE_SUFFIXES or not path.is_file():
        raise UserError(f"bag {path} is not a rosbag2: give its folder (with metadata.yaml) or a .mcap or .db3 file")
    return [path]


def _definition(connection: Connection, name: str) -> dict:
    """The types (rosbags parse trees by name) that one connection's stored definition holds."""
    data = connection.msgdef.data
    if connection.msgdef.format == MessageDefinitionFormat.MSG:
        return get_types_from_msg(data, name)
    separator = "=" * 80 + "\n"
    types: dict = {}
    for part in data.split(separator)[1:] if data.startswith(separator + "IDL: ") else [data]:
        types.update(get_types_from_idl(part.split("\n", 1)[1] if part.startswith("IDL: ") else part))
    return types


def _bag_typestore(connections: list[Connection]) -> tuple[Typestore, dict[str, str]]:
    """The bag's own definitions (each connection's parsed on its own, first one of a type
    wins) completed by ours for types the bag does not define; and type -> why its messages
    cannot be decoded (a definition that does not parse or does not match its hash)."""
    defined = [c for c in connections if c.msgdef.format != MessageDefinitionFormat.NONE]
    if not defined:
        return typestore(), {}
    store = get_typestore(Stores.EMPTY)
    problems: dict[str, str] = {}
    for connection in defined:
        name = connection.msgtype
        if name in store.fielddefs or name in problems:
            continue
        try:
            types = _definition(connection, name)
            store.register({k: v for k, v in types.items() if k not in store.fielddefs})
            digest = store.hash_rihs01(name)  # also fails for undefined or recursive field types
            matches = not connection.digest or digest == connection.digest
        except Exception as exc:  # rosbags' parsers and code generator raise many kinds on what they cannot read
            problems[name] = f"its definition in the bag cannot be used ({_one_line(exc, 120)})"
            continue
        if not matches:
            problems[name] = "its definition in the bag does not match the bag's type hash"
    for name, why in problems.items():
        log.debug("%s: %s", name, why)
    ours = typestore()
    undefined = {c.msgtype for c in connections if c.msgtype not in store.fielddefs and c.msgtype in ours.fielddefs}
    store.register({k: ours.fielddefs[k] for k in _dependencies(ours, undefined) if k not in store.fielddefs})
    return store, problems


def _dependencies(store: Typestore, names: Iterable[str]) -> set[str]:
    """``names`` and every type their fields use, transitively."""
    found: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        for _, (node, spec) in store.fielddefs[name][1]:
            if node in (Nodetype.ARRAY, Nodetype.SEQUENCE):
                node, spec = spec[0]
            if node == Nodetype.NAME:
                todo.append(spec)
    return found


class BagReader:
    """An open rosbag2 (see :func:`open_bag`): its connections, with type names normalised and
    ids unique across storage files; its messages in log-time order; and a deserialiser for
    each connection's own type."""

    def __init__(self, path: Path, readers: list[Reader]) -> None:
        self.path = path
        self._readers = readers
        self._ours: dict[tuple[int, int], Connection] = {}  # (reader index, its connection id) -> ours
        self._theirs: dict[int, tuple[int, Connection]] = {}  # our id -> (reader index, its connection)
        self.connections: list[Connection] = []
        for index, reader in enumerate(readers):
            for theirs in reader.connections:
                ours = theirs._replace(id=len(self.connections) + 1, msgtype=normalize_type(theirs.msgtype))
                self._ours[index, theirs.id] = ours
                self._theirs[ours.id] = (index, theirs)
                self.connections.append(ours)
        formats = {getattr(c.ext, "serialization_format", "cdr") for c in self.connections} - {"cdr"}
        if formats:
            raise UserError(f"bag {path}: messages serialised as {', '.join(sorted(formats))}; "
                            "only cdr (the ROS 2 default) can be read")
        self.typestore, self.problems = _bag_typestore(self.connections)

    def messages(self, connections: Iterable[Connection] = (), start: int | None = None,
                 stop: int | None = None) -> Iterator[tuple[Connection, int, bytes]]:
        """``(connection, log time ns, CDR bytes)`` of the given connections (all when none), in
        log-time order, optionally within ``[start, stop)``. DamagedBagError when the storage
        fails part way (the messages before it have been yielded)."""
        wanted = [self._theirs[c.id] for c in connections]

        def stream(index: int, reader: Reader, theirs: list[Connection]) -> Iterator[tuple[Connection, int, bytes]]:
            for connection, timestamp, data in reader.messages(connections=theirs, start=start, stop=stop):
                yield self._ours[index, connection.id], timestamp, _inflate(data)

        streams = []
        for index, reader in enumerate(self._readers):
            theirs = [c for i, c in wanted if i == index]
            if theirs or not wanted:
                streams.append(stream(index, reader, theirs))
        merged = heapq.merge(*streams, key=lambda message: message[1])
        count = 0
        # the count the bag's own index (metadata or mcap summary) promises: a damaged chunk can
        # end the storage library's stream early without an error
        promised = sum(c.msgcount for c in (connections or self.connections)) if start is None and stop is None else 0
        while True:
            try:
                message = next(merged)
            except StopIteration:
                if count < promised:
                    raise DamagedBagError(f"bag {self.path} is damaged: its index lists {promised} messages, "
                                          f"only {count} could be read") from None
                return
            except Exception as exc:  # sqlite, mcap and zstd raise many kinds on damaged files
                raise DamagedBagError(f"bag {self.path} is damaged after {count} messages: {_one_line(exc)}") from None
            count += 1
            yield message

    def deserialize(self, data: bytes | memoryview, msgtype: str) -> Any:
        """A message of ``msgtype`` (legacy names accepted) from CDR bytes; MessageError with
        reason ``type`` (no usable definition) or ``cdr`` (malformed bytes) otherwise."""
        name = normalize_type(msgtype)
        if data[:4] == ZSTD_MAGIC:
            raise MessageError(f"{name} message is zstd-compressed and does not inflate within {MAX_MESSAGE_BYTES} bytes",
                               "cdr")
        if name in self.problems:
            raise MessageError(f"{name} messages cannot be decoded: {self.problems[name]}", "type")
        if name not in self.typestore.fielddefs:
            raise MessageError(f"{name} has no definition, neither in the bag nor in ROS 2 Humble", "type")
        try:
            return self.typestore.deserialize_cdr(data, name)
        except Exception as exc:  # rosbags' generated deserialisers raise several kinds on malformed CDR
            raise MessageError(f"malformed {name} message: {_one_line(exc, 160)}", "cdr") from None


@contextmanager
def open_bag(path: str | Path) -> Iterator[BagReader]:
    """An open :class:`BagReader` on a rosbag2 folder, ``.mcap`` or ``.db3`` file, or a folder
    of storage files without metadata.yaml. Nothing is written into the bag's folder.

    Types come from the bag's stored definitions, else from our typestore; legacy names
    (``sensor_msgs/Image``) are normalised. Raises UserError when the path is missing or not
    a readable rosbag2.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"bag not found: {path}")
    with ExitStack() as stack:
        readers = []
        for source in _storage_files(path, stack):
            try:
                reader = Reader(source)
                reader.open()
            except Exception as exc:  # rosbags and the storage libraries raise many kinds on damaged bags
                raise UserError(f"cannot read bag {source}: {_one_line(exc)}") from None
            stack.callback(reader.close)
            readers.append(reader)
        yield BagReader(path, readers)


def topic_types(reader: BagReader) -> dict[str, str]:
    """Topic name -> message type of an open bag (the last connection's when a topic has several)."""
    return {c.topic: c.msgtype for c in reader.connections}


def read_messages(reader: BagReader, topic: str) -> Iterator[tuple[int, Any]]:
    """``(log time ns, message)`` of one topic, in log-time order, each decoded with its connection's type."""
    connections = [c for c in reader.connections if c.topic == topic]
    if not connections:
        raise UserError(f"topic {topic} is not in the bag (topics: {', '.join(sorted(topic_types(reader)))})")
    for connection, timestamp, data in reader.messages(connections=connections):
        yield timestamp, reader.deserialize(data, connection.msgtype)
