"""Facility mode's message format and broker addresses: documents bit for bit (numpy arrays
included, nothing pickled), routing keys, persistent delivery, passwords kept out of what is
shown."""

from __future__ import annotations

import msgpack
import numpy as np
import pika
import pytest

from spm_bluesky import schema
from spm_bluesky.storage.bus import (
    CONTENT_TYPE,
    PASSWORD_ENV,
    RUN_HEADER,
    BusError,
    decode_message,
    encode_message,
    parse_bus_url,
    properties,
    routing_key,
    scrub,
    tiled_queue,
    with_password,
)
from spm_bluesky.storage.journal import RecordKind, encode


def _event() -> dict:
    rng = np.random.default_rng(5)
    return {"uid": "e1", "descriptor": "d1", "seq_num": 3, "time": 1.5,
            "data": {"img": rng.normal(size=(64, 64)).astype(np.float32),
                     "counts": np.arange(5, dtype=np.int64), "x": np.float64(2.5),
                     "verdict": "keep"},
            "timestamps": {"img": 1.0, "counts": 1.0, "x": 1.0, "verdict": 1.0}}


def test_a_document_comes_back_bit_for_bit():
    doc = _event()
    name, back = decode_message(encode_message("event", doc))
    assert name == "event"
    image = back["data"]["img"]
    assert image.dtype == np.float32 and image.shape == (64, 64)
    assert image.tobytes() == doc["data"]["img"].tobytes()
    assert back["data"]["counts"].tolist() == [0, 1, 2, 3, 4]
    assert back["data"]["x"] == 2.5 and back["data"]["verdict"] == "keep"
    assert back["seq_num"] == 3 and back["timestamps"] == doc["timestamps"]


def test_the_body_is_plain_msgpack_a_journal_record_payload():
    body = encode_message("start", {"uid": "r1", "time": 1.0})
    item = msgpack.unpackb(body, raw=False)  # any msgpack reader: no pickle, no framing
    assert item == {"k": "doc", "n": "start", "d": {"uid": "r1", "time": 1.0}}
    record = encode(RecordKind.DOCUMENT, "start", {"uid": "r1", "time": 1.0})
    assert record.endswith(body) and len(record) - len(body) == 12


@pytest.mark.parametrize("body", [b"", b"\xc1garbage", msgpack.packb([1, 2, 3]),
                                  encode(RecordKind.MARK, "crash", {"x": 1.0})[12:]])
def test_what_is_no_document_is_refused_in_one_line(body):
    with pytest.raises(ValueError, match="not a document message"):
        decode_message(body)


def test_objects_are_not_encoded():
    with pytest.raises(TypeError):
        encode_message("event", {"data": {"x": np.array([object()])}})


def test_routing_key_and_persistent_properties():
    assert routing_key("s1", "r1", "event") == "s1.r1.event"
    assert routing_key(None, "", "stop") == "-.-.stop"
    props = properties("event", {"uid": "e1"}, "s1", "r1")
    assert props.delivery_mode == pika.DeliveryMode.Persistent.value
    assert props.content_type == CONTENT_TYPE and props.type == "event"
    assert props.message_id == "e1"
    assert props.headers == {schema.SESSION_UID: "s1", RUN_HEADER: "r1"}
    assert tiled_queue("x.docs") == "x.docs.tiled"


def test_the_password_is_never_shown():
    address = parse_bus_url("amqp://alice:s%40cret@broker.example:5671/beamline",
                            environ={})
    assert address.url == "amqp://alice@broker.example:5671/beamline"
    assert address.password == "s@cret"
    assert address.full == "amqp://alice:s%40cret@broker.example:5671/beamline"
    assert scrub("amqp://127.0.0.1/") == "amqp://127.0.0.1/"
    assert with_password("amqp://127.0.0.1:5672/", "pw") == "amqp://guest:pw@127.0.0.1:5672/"
    assert with_password("amqp://bob@h/", None) == "amqp://bob@h/"


def test_the_environment_password_wins():
    address = parse_bus_url("amqp://alice:old@h/", environ={PASSWORD_ENV: "new"})
    assert address.url == "amqp://alice@h/" and address.password == "new"
    assert parse_bus_url("amqp://h/", environ={}).password is None


@pytest.mark.parametrize("url", ["http://u:topsecret@h/", "amqp://u:topsecret@/x",
                                 "amqp://u:topsecret@h:99999/", "h:5672"])
def test_a_bad_url_is_one_line_without_the_password(url):
    with pytest.raises(BusError) as err:
        parse_bus_url(url, environ={})
    assert "topsecret" not in str(err.value) and "\n" not in str(err.value)
