"""Receive Maximum towards a paho subscriber (MQTT 5.0 §3.3.4): with Receive Maximum 2 and
manual acknowledgements it gets two QoS 1 messages of ten until it acknowledges, then the
rest, all in order."""

from _mq import Client, PacketTypes, check, props, run


def test(port):
    sub = Client(
        port,
        "prm-sub",
        manual_ack=True,
        properties=props(PacketTypes.CONNECT, ReceiveMaximum=2),
    )
    sub.subscribed("prm/t")
    pub = Client(port, "prm-pub")
    for i in range(10):
        pub.publish("prm/t", str(i).encode(), qos=1)
    first = [sub.message("message 0"), sub.message("message 1")]
    first += sub.within("message", 0.5)
    check(
        [m.payload for m in first] == [b"0", b"1"],
        f"before any acknowledgement: {[m.payload for m in first]}",
    )
    got, unacked = list(first), list(first)
    while len(got) < 10:
        oldest = unacked.pop(0)
        sub.c.ack(oldest.mid, oldest.qos)
        m = sub.message(f"message {len(got)} after an acknowledgement")
        got.append(m)
        unacked.append(m)
    for m in unacked:
        sub.c.ack(m.mid, m.qos)
    want = [str(i).encode() for i in range(10)]
    check([m.payload for m in got] == want, f"got {[m.payload for m in got]}")
    sub.quiet(0.3, "more than ten")
    pub.disconnect()
    sub.disconnect()


run(test)
