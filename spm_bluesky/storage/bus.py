"""Facility mode: Bluesky documents over a RabbitMQ broker (AMQP 0-9-1, via pika).

What every side of the bus agrees on, in one place: the exchange and the Tiled writer's
queue, the routing key, the message format, and how a broker address is checked, scrubbed
of its password and connected to. The session publishes (:mod:`~spm_bluesky.storage.bus_publish`);
the Tiled writer is a separate consumer process (:mod:`~spm_bluesky.storage.bus_consumer`);
anyone else may bind a queue of their own to the exchange.

A message is one document:

- exchange :data:`EXCHANGE` (topic, durable; one per Tiled, ``up --bus-exchange``), the
  Tiled writer's queue ``<exchange>.tiled`` (:func:`tiled_queue`);
- routing key ``<session uid>.<run uid>.<name>`` (:func:`routing_key`; ``-`` for a run
  outside a session), e.g. ``3f2a....9c1e.event``;
- body: msgpack of ``{"k": "doc", "n": <document name>, "d": <document>}``, numpy arrays as
  msgpack extension type 1 (msgpack ``[dtype, shape]`` then the raw bytes); the same bytes
  as a record of the local journal (:mod:`spm_bluesky.storage.journal`), never pickle;
- properties: ``content_type`` :data:`CONTENT_TYPE`, ``type`` the document name,
  ``message_id`` the document's uid, ``delivery_mode`` 2 (persistent), and headers with the
  session and run uids.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pika
import pika.exceptions

from spm_bluesky import schema
from spm_bluesky.storage.journal import RecordKind, decode_payload, encode

#: The durable topic exchange every document is published to, unless another is given.
EXCHANGE = "spm-bluesky.documents"
#: The body's media type.
CONTENT_TYPE = "application/msgpack"
#: Header naming the run a document belongs to (the session's uid is under
#: :data:`spm_bluesky.schema.SESSION_UID`).
RUN_HEADER = "run_uid"
#: Routing-key word for a run that belongs to no session.
NO_SESSION = "-"
#: Environment variable holding the broker password (wins over one in the URL).
PASSWORD_ENV = "SPM_BUS_PASSWORD"
#: Environment variable the consumer process reads its broker URL from (never argv).
URL_ENV = "SPM_BUS_URL"
#: What the Tiled consumer prints once it consumes (``spm-bluesky up`` waits for it).
READY = "ready: consuming"
SCHEMES = ("amqp", "amqps")
_RECORD_LENGTH = struct.Struct("<I")


class BusError(RuntimeError):
    """The broker cannot be used (bad address, unreachable, refused); one line for the user."""


# -- the message ------------------------------------------------------------------------------


def encode_message(name: str, doc: Mapping[str, Any]) -> bytes:
    """The body of the message carrying document ``(name, doc)``."""
    record = encode(RecordKind.DOCUMENT, name, doc)
    (length,) = _RECORD_LENGTH.unpack_from(record, 4)  # the record's header: magic, length, crc
    return record[len(record) - length:]


def decode_message(body: bytes) -> tuple[str, dict[str, Any]]:
    """The document name and document a message body carries; ValueError if it is none."""
    try:
        kind, name, doc = decode_payload(body)
    except Exception as err:  # msgpack raises several kinds on bytes it cannot read
        raise ValueError(f"not a document message: {type(err).__name__}: {err}") from None
    if kind is not RecordKind.DOCUMENT or not isinstance(doc, dict):
        raise ValueError(f"not a document message: a {kind.value} record")
    return name, doc


def routing_key(session_uid: str | None, run_uid: str, name: str) -> str:
    """``<session uid>.<run uid>.<name>``: consumers bind e.g. ``<session>.#`` or ``#.event``."""
    return f"{session_uid or NO_SESSION}.{run_uid or NO_SESSION}.{name}"


def properties(name: str, doc: Mapping[str, Any], session_uid: str | None,
               run_uid: str) -> pika.BasicProperties:
    """The message properties of a document (persistent delivery)."""
    uid = doc.get("uid")
    return pika.BasicProperties(
        content_type=CONTENT_TYPE, type=name, delivery_mode=pika.DeliveryMode.Persistent,
        message_id=str(uid) if uid is not None else None, app_id="spm-bluesky",
        headers={schema.SESSION_UID: session_uid or "", RUN_HEADER: run_uid})


# -- the broker's address ---------------------------------------------------------------------


@dataclass(frozen=True)
class BusAddress:
    """A broker URL split into what may be shown (:attr:`url`, no password) and the password."""

    url: str
    password: str | None

    @property
    def full(self) -> str:
        """The URL with the password in it (for pika only: never print or log it)."""
        return with_password(self.url, self.password)


def parse_bus_url(url: str, environ: Mapping[str, str] = os.environ) -> BusAddress:
    """Check an ``amqp://`` URL; its scrubbed form and the password (``$SPM_BUS_PASSWORD``
    wins over one in the URL). BusError, without the password, if it is no broker URL."""
    parts = urlsplit(url)
    shown = scrub(url)
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise BusError(f"{shown!r} is not a broker URL: give amqp://[USER[:PASSWORD]@]HOST"
                       "[:PORT][/VHOST]")
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise BusError(f"{shown!r} has a bad port") from None
    password = environ.get(PASSWORD_ENV) or (
        unquote(parts.password) if parts.password is not None else None)
    return BusAddress(shown, password)


def scrub(url: str) -> str:
    """``url`` without its password (what logs, the state file and ``status`` show)."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return urlunsplit(parts._replace(netloc=f"{userinfo.partition(':')[0]}@{host}"))


def with_password(url: str, password: str | None) -> str:
    """``url`` (scrubbed) with ``password`` put back; unchanged if None."""
    if password is None:
        return url
    parts = urlsplit(url)
    user, _, host = parts.netloc.rpartition("@")
    if not user:
        user, host = "guest", parts.netloc
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))


def connect(address: BusAddress, timeout: float = 5.0) -> pika.BlockingConnection:
    """A connection to the broker; BusError (one line, no password) if it cannot be made."""
    params = pika.URLParameters(address.full)
    params.connection_attempts = 1
    params.socket_timeout = timeout
    params.blocked_connection_timeout = 60.0
    try:
        return pika.BlockingConnection(params)
    except pika.exceptions.ProbableAuthenticationError:
        raise BusError(f"the broker at {address.url} refused the login: give the password "
                       f"in ${PASSWORD_ENV} or in the URL at `spm-bluesky up --bus`") from None
    except pika.exceptions.AMQPError as err:
        reason = str(err) or type(err).__name__
        raise BusError(f"the broker at {address.url} does not answer ({reason}): start "
                       "RabbitMQ or give another --bus") from None


def tiled_queue(exchange: str) -> str:
    """The durable queue the Tiled writer consumes, bound to ``exchange`` with ``#``."""
    return f"{exchange}.tiled"


def declare(channel: Any, exchange: str) -> str:
    """Declare the exchange and the Tiled writer's queue bound to every document; the queue
    (idempotent; both sides call it, so no document is published with nowhere to go)."""
    queue = tiled_queue(exchange)
    channel.exchange_declare(exchange, exchange_type="topic", durable=True)
    frame = channel.queue_declare(queue, durable=True)
    channel.queue_bind(queue, exchange, routing_key="#")
    return str(frame.method.queue)


def queue_state(address: BusAddress, exchange: str, timeout: float = 5.0
                ) -> tuple[int, int]:
    """(messages ready, consumers) of the Tiled writer's queue of ``exchange``, declaring
    both if need be; BusError if the broker does not answer or refuses them."""
    connection = connect(address, timeout)
    try:
        channel = connection.channel()
        queue = declare(channel, exchange)
        frame = channel.queue_declare(queue, passive=True)
    except pika.exceptions.AMQPError as err:
        raise BusError(f"the broker at {address.url} refused the exchange {exchange} or its "
                       f"queue: {err}") from None
    finally:
        if connection.is_open:
            connection.close()
    return int(frame.method.message_count), int(frame.method.consumer_count)
