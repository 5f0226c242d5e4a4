"""Topic aliases from a paho publisher (MQTT 5.0 §3.3.2.3.4): the broker resolves them, and
subscribers (which allow no aliases) get the full topic and never the publisher's alias."""

from _mq import Client, PacketTypes, check, prop, props, run


def alias(n):
    return props(PacketTypes.PUBLISH, TopicAlias=n)


def test(port):
    sub = Client(port, "pta-sub")
    sub.subscribed("pta/#")
    pub = Client(port, "pta-pub")
    maximum = prop(pub.connack, "TopicAliasMaximum", 0)
    check(maximum >= 2, f"CONNACK Topic Alias Maximum {maximum}")
    sent = [
        ("pta/one", b"1", 1),
        ("", b"2", 1),
        ("pta/two", b"3", 2),
        ("", b"4", 2),
        ("", b"5", 1),
        ("pta/three", b"6", 1),  # alias 1 re-mapped
        ("", b"7", 1),
        ("pta/one", b"8", None),  # no alias at all
    ]
    for topic, payload, a in sent:
        pub.publish(topic, payload, qos=1, properties=alias(a) if a else None)
    want = ["pta/one", "pta/one", "pta/two", "pta/two", "pta/one", "pta/three", "pta/three", "pta/one"]
    for (_, payload, _), topic in zip(sent, want):
        m = sub.message(f"message {payload!r}")
        check(
            (m.topic, m.payload) == (topic, payload),
            f"expected {(topic, payload)}, got {(m.topic, m.payload)}",
        )
        check(
            prop(m.properties, "TopicAlias") is None,
            f"subscriber saw topic alias {prop(m.properties, 'TopicAlias')} on {payload!r}",
        )
    sub.quiet(0.3, "unexpected extra messages")
    pub.disconnect()
    sub.disconnect()


run(test)
