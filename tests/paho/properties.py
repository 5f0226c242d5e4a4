"""PUBLISH properties reach a paho subscriber unaltered (MQTT 5.0 §3.3.2.3), at every QoS;
a Subscription Identifier comes back on delivery (§3.8.2.1.2)."""

from _mq import Client, PacketTypes, check, prop, props, run

USER = [("k", "1"), ("z", "last"), ("k", "2"), ("k", "1")]


def app():
    return props(
        PacketTypes.PUBLISH,
        PayloadFormatIndicator=1,
        ContentType="application/json",
        ResponseTopic="ppr/reply",
        CorrelationData=b"\x01\x02corr",
        UserProperty=list(USER),
    )


def test(port):
    sub = Client(port, "ppr-sub")
    sub.subscribed("ppr/#", qos=2)
    pub = Client(port, "ppr-pub")
    for qos in (0, 1, 2):
        pub.publish("ppr/t", b'{"n": 1}', qos=qos, properties=app())
        m = sub.message(f"the QoS {qos} message")
        p = m.properties
        got = {
            "PayloadFormatIndicator": prop(p, "PayloadFormatIndicator"),
            "ContentType": prop(p, "ContentType"),
            "ResponseTopic": prop(p, "ResponseTopic"),
            "CorrelationData": prop(p, "CorrelationData"),
            "UserProperty": prop(p, "UserProperty"),
        }
        want = {
            "PayloadFormatIndicator": 1,
            "ContentType": "application/json",
            "ResponseTopic": "ppr/reply",
            "CorrelationData": b"\x01\x02corr",
            "UserProperty": USER,
        }
        check(got == want, f"QoS {qos}: got {got}")
        check(m.qos == qos, f"delivered at QoS {m.qos}, sent {qos}")
        for absent in ("TopicAlias", "MessageExpiryInterval", "SubscriptionIdentifier"):
            check(prop(p, absent) is None, f"QoS {qos}: unexpected {absent} {prop(p, absent)}")

    ids = Client(port, "ppr-ids")
    ids.subscribed("ppr/+", properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=42))
    ids.subscribed("ppr/#", properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=7))
    pub.publish("ppr/x", b"x", qos=1)
    m = ids.message("the message for two identified subscriptions")
    got = sorted(prop(m.properties, "SubscriptionIdentifier", []))
    check(got == [7, 42], f"subscription identifiers {got}")
    ids.quiet(0.3, "a second delivery for the overlapping subscriptions")
    for c in (ids, pub, sub):
        c.disconnect()


run(test)
