"""Request / response (MQTT 5.0 §4.10): the requester takes its response topic prefix from
CONNACK Response Information; a responder answers on the Response Topic with the request's
Correlation Data."""

from _mq import Client, PacketTypes, check, prop, props, run


def test(port):
    req = Client(
        port,
        "prr-requester",
        properties=props(PacketTypes.CONNECT, RequestResponseInformation=1),
    )
    info = prop(req.connack, "ResponseInformation")
    check(info == "response/prr-requester", f"CONNACK Response Information {info!r}")
    reply_to = f"{info}/echo"
    req.subscribed(reply_to)

    responder = Client(port, "prr-responder")

    def answer(client, _userdata, msg):
        # On the responder's network thread.
        p = msg.properties
        out = props(PacketTypes.PUBLISH, CorrelationData=prop(p, "CorrelationData", b""))
        client.publish(prop(p, "ResponseTopic"), b"echo:" + msg.payload, qos=1, properties=out)

    responder.c.on_message = answer
    responder.subscribed("service/echo")

    for i, corr in enumerate([b"\x00corr-1\xff", b"corr-2"]):
        request = props(PacketTypes.PUBLISH, ResponseTopic=reply_to, CorrelationData=corr)
        req.publish("service/echo", f"ping {i}".encode(), qos=1, properties=request)
        m = req.message(f"the response to request {i}")
        check(m.topic == reply_to, f"response topic {m.topic!r}")
        check(m.payload == f"echo:ping {i}".encode(), f"response payload {m.payload!r}")
        got = prop(m.properties, "CorrelationData")
        check(got == corr, f"correlation data {got!r}, sent {corr!r}")
    responder.disconnect()
    req.disconnect()


run(test)
