"""rosbag2 files without a ROS install: open and read any bag, write outputs, QoS profiles.

Built on ``rosbags``. Message types for what we write come from one typestore, ROS 2 Humble
(``TYPESTORE``) plus vision_msgs registered from their definitions: sensor_msgs/Image,
CompressedImage, std_msgs/Header and diagnostic_msgs are identical in Humble and Jazzy, so
a bag written here plays on either. Reading takes the definitions stored in the bag
(rosbag2 >= Iron and every mcap file carry them) and falls back to this typestore for older
sqlite3 bags that store none (Humble's ``ros2 bag record``).

rosbags writes rosbag2 metadata version 9 (``ros2 bag`` of Jazzy reads it; Humble's
``ros2 bag`` needs its backported metadata reader or an mcap file, which Foxglove and the
mcap tools read anyway).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.interfaces import (
    Connection,
    MessageDefinitionFormat,
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)
from rosbags.rosbag2 import ReaderError, StoragePlugin, Writer, WriterError
from rosbags.typesys import Stores, get_typestore
from rosbags.typesys.store import Typestore

from flowclas_ros.errors import UserError

TYPESTORE = Stores.ROS2_HUMBLE
STORAGES = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
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

    def copy(self, connection: Connection) -> Connection | None:
        """The same topic as ``connection`` of an input bag, with its definition and QoS.

        None when the input stores no definition and the type is unknown to our typestore
        (its raw messages cannot be described in the new bag).
        """
        profiles = getattr(connection.ext, "offered_qos_profiles", [])
        has_definition = connection.msgdef.format != MessageDefinitionFormat.NONE and connection.digest
        if has_definition and connection.msgdef.format == MessageDefinitionFormat.MSG:
            return self._writer.add_connection(
                connection.topic,
                connection.msgtype,
                msgdef=connection.msgdef.data,
                rihs01=connection.digest,
                offered_qos_profiles=profiles,
            )
        if connection.msgtype in self.store.types:
            return self._writer.add_connection(
                connection.topic, connection.msgtype, typestore=self.store, offered_qos_profiles=profiles
            )
        return None

    def write(self, connection: Connection, timestamp_ns: int, msg) -> None:
        """Serialise a message of our typestore and write it."""
        self._writer.write(connection, timestamp_ns, self.store.serialize_cdr(msg, connection.msgtype))

    def write_raw(self, connection: Connection, timestamp_ns: int, data: bytes | memoryview) -> None:
        """Write already serialised CDR bytes (copied input messages)."""
        self._writer.write(connection, timestamp_ns, data)


@contextmanager
def open_bag(path: str | Path) -> Iterator[AnyReader]:
    """An open AnyReader on a rosbag2 directory, ``.mcap`` or ``.db3`` file.

    Types come from the bag's stored definitions, else from our typestore. Raises
    UserError when the path is missing or not a readable rosbag2.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"bag not found: {path}")
    try:
        reader = AnyReader([path], default_typestore=typestore())
        reader.open()
    except (AnyReaderError, ReaderError, WriterError, OSError, ValueError, KeyError) as exc:
        raise UserError(f"cannot read bag {path}: {exc}") from None
    try:
        yield reader
    finally:
        reader.close()


def topic_types(reader: AnyReader) -> dict[str, str]:
    """Topic name -> message type of an open bag."""
    return {c.topic: c.msgtype for c in reader.connections}


def read_messages(reader: AnyReader, topic: str) -> Iterator[tuple[int, object]]:
    """``(log time ns, message)`` of one topic, in log-time order."""
    connections = [c for c in reader.connections if c.topic == topic]
    if not connections:
        raise UserError(f"topic {topic} is not in the bag (topics: {', '.join(sorted(topic_types(reader)))})")
    for connection, timestamp, data in reader.messages(connections=connections):
        yield timestamp, reader.deserialize(data, connection.msgtype)
