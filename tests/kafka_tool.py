#!/usr/bin/env python3
"""The Kafka tests' independent client (confluent-kafka, PyPI): creates topics, reads them
whole, and measures a broker's own produce and consume rates. Never sluice's code.

    kafka_tool.py create BROKERS TOPIC:PARTITIONS...
    kafka_tool.py consume BROKERS TOPIC...      every message as a JSON line
    kafka_tool.py produce BROKERS TOPIC KEYHEX:VALUEHEX...   one message each, in order, to
                                                 one partition; prints it
    kafka_tool.py committed BROKERS GROUP TOPIC   the group's committed offsets, one JSON object
    kafka_tool.py produce-rate BROKERS TOPIC COUNT SIZE   one JSON object
    kafka_tool.py consume-rate BROKERS TOPIC    one JSON object
"""
import json
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def create(brokers, specs):
    admin = AdminClient({"bootstrap.servers": brokers})
    topics = []
    for spec in specs:
        name, _, parts = spec.partition(":")
        topics.append(NewTopic(name, num_partitions=int(parts or 1), replication_factor=1))
    for name, fut in admin.create_topics(topics, operation_timeout=30).items():
        try:
            fut.result(timeout=60)
        except KafkaException as e:
            if "TOPIC_ALREADY_EXISTS" not in str(e):
                raise


def reader(brokers):
    return Consumer({
        "bootstrap.servers": brokers,
        "group.id": "kafka-tool-" + uuid.uuid4().hex,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })


def partitions(c, topic):
    md = c.list_topics(topic, timeout=30)
    t = md.topics[topic]
    if t.error is not None:
        raise SystemExit(f"{topic}: {t.error}")
    return sorted(t.partitions)


def read_whole(c, topic, on_message):
    """Reads every partition of `topic` from its low to its high watermark."""
    ends = {}
    assign = []
    for p in partitions(c, topic):
        low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
        if high > low:
            ends[p] = high
            assign.append(TopicPartition(topic, p, low))
    if not assign:
        return
    c.assign(assign)
    deadline = time.time() + 300
    while ends and time.time() < deadline:
        for m in c.consume(num_messages=10000, timeout=1.0):
            if m.error():
                raise SystemExit(f"{topic}: {m.error()}")
            on_message(m)
            if m.offset() + 1 >= ends.get(m.partition(), 0):
                ends.pop(m.partition(), None)
    if ends:
        raise SystemExit(f"{topic}: partitions {sorted(ends)} not read to their end in time")
    c.unassign()


def consume(brokers, topics):
    c = reader(brokers)
    out = sys.stdout
    for topic in topics:
        def emit(m, topic=topic):
            key = m.key()
            value = m.value() or b""
            out.write(json.dumps({
                "topic": topic,
                "partition": m.partition(),
                "offset": m.offset(),
                "key": key.hex() if key is not None else None,
                "value": value.decode("utf-8", "replace"),
            }) + "\n")
        read_whole(c, topic, emit)
    c.close()


def produce_rate(brokers, topic, count, size):
    p = Producer({
        "bootstrap.servers": brokers,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 100000,
    })
    value = b"x" * size
    failed = [0]

    def done(err, _msg):
        if err is not None:
            failed[0] += 1

    t0 = time.time()
    for i in range(count):
        while True:
            try:
                p.produce(topic, value, key=i.to_bytes(8, "big"), on_delivery=done)
                break
            except BufferError:
                p.poll(0.01)
        if i % 1000 == 0:
            p.poll(0)
    p.flush(120)
    s = time.time() - t0
    print(json.dumps({"records": count, "bytes": size, "seconds": s,
                      "records_per_sec": count / s, "failed": failed[0]}))


def produce(brokers, topic, specs):
    """Produces each `KEYHEX:VALUEHEX` message, in order, to partition 0 of `topic`."""
    p = Producer({"bootstrap.servers": brokers, "acks": "all", "enable.idempotence": True})
    failed = []
    for spec in specs:
        key, _, value = spec.partition(":")
        p.produce(topic, key=bytes.fromhex(key), value=bytes.fromhex(value), partition=0,
                  on_delivery=lambda err, msg: err is not None and failed.append(str(err)))
    p.flush(60)
    if failed:
        raise SystemExit(f"produce failed: {failed[0]}")
    print(json.dumps({"produced": len(specs), "partition": 0}))


def committed(brokers, group, topic):
    """The offsets `group` committed for `topic`, without joining the group."""
    c = Consumer({"bootstrap.servers": brokers, "group.id": group,
                  "enable.auto.commit": False})
    parts = [TopicPartition(topic, p) for p in partitions(c, topic)]
    offsets = {}
    for tp in c.committed(parts, timeout=30):
        offsets[str(tp.partition)] = max(tp.offset, 0)
    c.close()
    print(json.dumps({"total": sum(offsets.values()), "partitions": offsets}))


def consume_rate(brokers, topic):
    c = reader(brokers)
    n = [0]

    def count(_m):
        n[0] += 1

    t0 = time.time()
    read_whole(c, topic, count)
    s = time.time() - t0
    c.close()
    print(json.dumps({"records": n[0], "seconds": s, "records_per_sec": n[0] / s if s else 0}))


def main():
    cmd, brokers, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
    if cmd == "create":
        create(brokers, rest)
    elif cmd == "consume":
        consume(brokers, rest)
    elif cmd == "produce":
        produce(brokers, rest[0], rest[1:])
    elif cmd == "committed":
        committed(brokers, rest[0], rest[1])
    elif cmd == "produce-rate":
        produce_rate(brokers, rest[0], int(rest[1]), int(rest[2]))
    elif cmd == "consume-rate":
        consume_rate(brokers, rest[0])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
