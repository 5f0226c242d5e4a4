#!/usr/bin/env python3
"""Soak test: mixed MQTT 3.1.1 / 5.0 traffic against a running shardmq for a bounded time, then
loss, duplicate and resource-growth checks. scripts/soak.sh starts the broker and runs this;
against a broker started by hand:

    scripts/soak.py --port P --pid PID [--metrics-port M] [--data-dir DIR] [--minutes N] [--clients N]
                    [--rate R] [--payload BYTES] [--drain SECS] [--rss-tolerance PCT]
                    [--store-allowance MIB] [--fd-tolerance PCT] [--seed S]

Traffic, on topics soak/<run>/<publisher>:
  * 6 publishers (clean sessions): QoS 0, 1 and 2, each over MQTT 3.1.1 and 5.0, --rate
    messages a second in all (default 150); payload "<publisher>:<sequence>:" padded with
    dots to --payload bytes (default 64);
  * --clients persistent-session subscribers of soak/<run>/# (default 8; 3.1.1 Clean Session
    0, 5.0 Clean Start 0 + Session Expiry 3600 s), subscription QoS 1, 2, 0 in turn and
    protocol versions alternating. Every 4-15 s each one disconnects cleanly (DISCONNECT),
    drops its socket (no DISCONNECT), or is taken over (a second connection with the same
    client id; the broker drops the first), and resumes its session: after an offline pause
    of 0.5 s up to what keeps the session's queue far below limits.max_queued_messages;
  * 2 clean-session clients that subscribe (random QoS), stay 2-8 s, leave, and come back.

Checks (exit status 1 when one fails; the summary block names it):
  * lost: every QoS 1/2 message a publisher got PUBACK / PUBCOMP for reached every persistent
    subscriber whose subscription is QoS 1/2 (also those offline when it was published);
  * duplicates: none where the delivery is QoS 2 (publish and subscription QoS 2) or QoS 0;
    QoS 1 duplicates are counted and reported (allowed);
  * every resume got Session Present 1, every takeover dropped the old connection (how many
    5.0 ones read DISCONNECT 0x8E first is reported), nobody was disconnected unexpectedly,
    every payload arrived intact on its own topic with QoS min(publish, subscription);
  * resources: broker RSS (VmRSS) and open fds (without the client sockets, which come and
    go with the churn) sampled every 10 s; from minute 2 (half the run when it is shorter
    than 3 minutes) to the end of the load RSS may grow by at most --rss-tolerance (10 %)
    plus --store-allowance (64 MiB), fds by at most --fd-tolerance (5 %).
    The allowance is the store's write buffer: every QoS 1/2 delivery to a persistent session
    is written to fjall (and removed), whose memtables hold those writes in memory until one
    reaches 16 MiB (a partition) or all 64 MiB (max_write_buffer_size; shardmq uses fjall's
    defaults) and is flushed. At the default rate the first flush comes after about 4
    minutes and RSS rises steadily until then (about 2 bytes of RSS per byte of journal),
    then saw-tooths: a bounded cost, not a leak, that a bare +10 % cannot tell from one.
    --store-allowance 0 gives the bare check.
The /metrics endpoint (when --metrics-port is given) is read at the end for the broker's
drop counters, which are reported.

Also the library of scripts/crash-loop.py (Link, Publisher, Receipts, Load, ...).
"""

import argparse
import array
import collections
import functools
import os
import random
import re
import socket
import sys
import threading
import time
import urllib.request

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

HOST = "127.0.0.1"
V311, V5 = mqtt.MQTTv311, mqtt.MQTTv5
WAIT = 10.0  # bound of every single wait (CONNACK, SUBACK, a connection going away)
SUCCESS = mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
T0 = time.monotonic()


def log(msg):
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", flush=True)


def vname(version):
    return "5.0" if version == V5 else "3.1.1"


class LinkError(Exception):
    """A connection could not be made or did not behave."""


class Counters:
    """Thread-safe event counters."""

    def __init__(self):
        self._lock = threading.Lock()
        self._c = collections.Counter()

    def add(self, key, n=1):
        with self._lock:
            self._c[key] += n

    def __getitem__(self, key):
        with self._lock:
            return self._c[key]


# ---------------------------------------------------------------------------------------------
# Payloads


def encode(pub, seq, size):
    head = f"{pub}:{seq}:".encode()
    return head + b"." * max(0, size - len(head))


def decode(topic, payload, prefix, size):
    """(publisher, sequence) of a delivery; ValueError if topic or payload are not intact."""
    parts = payload.split(b":", 2)
    if len(parts) != 3:
        raise ValueError("no publisher:sequence: header")
    pub, seq = int(parts[0]), int(parts[1])
    head = len(parts[0]) + len(parts[1]) + 2
    if topic != f"{prefix}/{pub}" or len(payload) != max(size, head) or parts[2].strip(b".") != b"":
        raise ValueError(f"topic {topic!r} / payload {payload[:40]!r} damaged")
    return pub, seq


# ---------------------------------------------------------------------------------------------
# One MQTT connection


class Link:
    """One paho client object (protocol 3.1.1 or 5.0) and its network thread, which never
    reconnects by itself. `open()` may be called again on the same object (paho then resends
    its unacknowledged outgoing messages, and keeps incoming QoS 2 ones awaiting PUBREL for a
    persistent session).

    in_state: (dict, lock) of another Link's incoming QoS 2 messages awaiting PUBREL (paho's
    _in_messages / _in_message_mutex), shared so that a new connection of the same client
    (takeover, reconnect) finishes what the old one received (paho delivers a QoS 2 message
    when PUBREL arrives; a PUBREL for an id it does not know is acknowledged and the message
    lost to the application)."""

    def __init__(self, port, client_id, version, *, clean, expiry=0, keepalive=30,
                 on_message=None, on_publish=None, in_state=None, counters=None, tag=""):
        self.port, self.id, self.version, self.clean = port, client_id, version, clean
        self.expiry, self.keepalive = expiry, keepalive
        self.tag = tag or client_id
        self.counters = counters
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=version, clean_session=None if version == V5 else clean,
                             reconnect_on_failure=False)
        if in_state is not None:
            self.c._in_messages, self.c._in_message_mutex = in_state
        self.c.max_inflight_messages_set(32)
        self.c.on_log = self._on_log
        self.last_error = None  # paho's last error line (e.g. a reset connection)
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_subscribe = self._on_subscribe
        if on_message is not None:
            self.c.on_message = on_message
        if on_publish is not None:
            self.c.on_publish = on_publish
        self._connack = threading.Event()
        self.gone = threading.Event()
        self.gone.set()
        self.session_present = None
        self.connack_reason = None
        self.disconnect_reason = None
        self.expected_close = False
        self._sub_cv = threading.Condition()
        self._subacks = {}

    def _on_log(self, client, userdata, level, text):
        if level == mqtt.MQTT_LOG_ERR:
            self.last_error = text
        if os.environ.get("SOAK_PAHO_LOG"):  # debugging: paho's packet log on stderr
            print(f"[{time.monotonic() - T0:8.3f}] {self.tag}: {text}", file=sys.stderr)

    def in_state(self):
        return (self.c._in_messages, self.c._in_message_mutex)

    def connected(self):
        return not self.gone.is_set()

    def _on_connect(self, client, userdata, flags, reason, properties):
        self.session_present = bool(flags.session_present)
        self.connack_reason = reason
        self._connack.set()

    def _on_disconnect(self, client, userdata, flags, reason, properties):
        self.disconnect_reason = reason
        if not self.expected_close and self._connack.is_set() and self.counters is not None:
            self.counters.add("unexpected disconnects")
            log(f"unexpected disconnect of {self.tag}: {reason}")
        self.gone.set()

    def _on_subscribe(self, client, userdata, mid, reasons, properties):
        with self._sub_cv:
            self._subacks[mid] = reasons
            self._sub_cv.notify_all()

    def open(self, clean=None, timeout=WAIT):
        """Connect; returns Session Present. Raises LinkError (or OSError when refused)."""
        self._connack.clear()
        self.expected_close = False
        self.session_present = None
        kw = {}
        if self.version == V5:
            p = Properties(PacketTypes.CONNECT)
            if self.expiry:
                p.SessionExpiryInterval = self.expiry
            kw = dict(clean_start=self.clean if clean is None else clean, properties=p)
        self.c.connect(HOST, self.port, keepalive=self.keepalive, **kw)
        self.gone.clear()
        self.c.loop_start()
        deadline = time.monotonic() + timeout
        while not self._connack.wait(0.05):
            if self.gone.is_set():
                self.kill()
                raise LinkError(f"{self.tag}: connection closed before CONNACK")
            if time.monotonic() > deadline:
                self.kill()
                raise LinkError(f"{self.tag}: no CONNACK within {timeout:.0f} s")
        if self.connack_reason.is_failure:
            self.kill()
            raise LinkError(f"{self.tag}: CONNECT refused: {self.connack_reason}")
        if self.counters is not None:
            self.counters.add("connects")
        return self.session_present

    def subscribe(self, topic_filter, qos, timeout=WAIT):
        rc, mid = self.c.subscribe(topic_filter, qos)
        if rc != SUCCESS:
            raise LinkError(f"{self.tag}: SUBSCRIBE not sent: {mqtt.error_string(rc)}")
        deadline = time.monotonic() + timeout
        with self._sub_cv:
            while mid not in self._subacks:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LinkError(f"{self.tag}: no SUBACK within {timeout:.0f} s")
                self._sub_cv.wait(left)
            reasons = self._subacks.pop(mid)
        if reasons[0].is_failure or reasons[0].value != qos:
            raise LinkError(f"{self.tag}: SUBSCRIBE {topic_filter} QoS {qos} granted {reasons[0]}")

    def close(self, mode="clean", timeout=WAIT):
        """mode "clean": DISCONNECT; "drop": shut the socket down without one. Returns whether
        the network thread saw the connection end in time."""
        self.expected_close = True
        if mode == "clean":
            self.c.disconnect()
        else:
            self._shut_socket()
        ok = self.gone.wait(timeout)
        self.c.loop_stop()
        return ok

    def kill(self):
        """Stop the network thread (the connection is already gone or is abandoned)."""
        self.expected_close = True
        self._shut_socket()
        self.c.loop_stop()
        self.gone.set()

    def _shut_socket(self):
        """Shuts the socket down both ways, without DISCONNECT (as a lost network would)."""
        s = self.c.socket()
        if s is not None:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# ---------------------------------------------------------------------------------------------
# Publishers and what they got acknowledged


class Publisher:
    """A publisher's sequence numbers and which of them got PUBACK / PUBCOMP."""

    def __init__(self, idx, client_id, topic, version, qos, size, persistent=False):
        self.idx, self.id, self.topic, self.version, self.qos = idx, client_id, topic, version, qos
        self.size, self.persistent = size, persistent
        self.name = f"pub{idx} (QoS {qos}, {vname(version)}{', persistent' if persistent else ''})"
        self.link = None
        self.next_seq = 0
        self.acked = bytearray()  # by sequence number: 1 = PUBACK / PUBCOMP received
        self.t_pub = array.array("d")  # by sequence number: when published, acknowledged
        self.t_ack = array.array("d")
        self.n_acked = 0
        self.n_sent = 0
        self.n_refused = 0  # 5.0 PUBACK / PUBCOMP with an error reason code
        self.refusals = collections.Counter()
        self._lock = threading.Lock()
        self._pending = {}  # mid -> seq, published and not acknowledged yet
        self._early = {}  # mid -> reason, acknowledged before publish() returned

    def on_publish(self, client, userdata, mid, reason, properties):
        if self.qos == 0:
            return
        with self._lock:
            seq = self._pending.pop(mid, None)
            if seq is None:
                self._early[mid] = reason
            else:
                self._settle(seq, reason)

    def _settle(self, seq, reason):
        if reason is not None and reason.is_failure:
            self.n_refused += 1
            self.refusals[str(reason)] += 1
        else:
            self.acked[seq] = 1
            self.t_ack[seq] = time.monotonic() - T0
            self.n_acked += 1

    def forget_inflight(self):
        """The client object is replaced (clean session): what it had in flight is abandoned."""
        with self._lock:
            self._pending.clear()
            self._early.clear()

    def outstanding(self):
        with self._lock:
            return len(self._pending)

    def publish_one(self):
        seq = self.next_seq
        self.next_seq += 1
        with self._lock:
            self.acked.append(0)
            self.t_pub.append(time.monotonic() - T0)
            self.t_ack.append(0.0)
        info = self.link.c.publish(self.topic, encode(self.idx, seq, self.size), self.qos)
        self.n_sent += 1
        if self.qos == 0:
            return
        with self._lock:
            reason = self._early.pop(info.mid, None)
            if reason is not None:
                self._settle(seq, reason)
            else:
                self._pending[info.mid] = seq

    def acked_snapshot(self):
        with self._lock:
            return bytes(self.acked)


class Load(threading.Thread):
    """Publishes round-robin over the publishers whose link is up, `rate` messages a second
    in all, until `stop` is set."""

    def __init__(self, pubs, rate, stop, max_outstanding=2000):
        super().__init__(daemon=True, name="load")
        self.pubs, self.rate, self.stop, self.max_outstanding = pubs, rate, stop, max_outstanding
        self.skipped = 0  # a publisher down or too far behind on its acknowledgements
        self.started = None
        self.ended = None

    def run(self):
        interval = 1.0 / self.rate
        self.started = time.monotonic()
        nxt = self.started
        i = 0
        while not self.stop.is_set():
            pub = self.pubs[i % len(self.pubs)]
            i += 1
            link = pub.link
            if link is None or not link.connected() or pub.outstanding() > self.max_outstanding:
                self.skipped += 1
            else:
                pub.publish_one()
            nxt += interval
            delay = nxt - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)
            elif delay < -1.0:
                nxt = time.monotonic()  # fell behind: do not burst to catch up
        self.ended = time.monotonic()


# ---------------------------------------------------------------------------------------------
# What a subscriber received


class Receipts:
    """Deliveries one subscriber got, counted by (publisher, sequence)."""

    def __init__(self, name, sub_qos, pub_qos, prefix, size):
        self.name, self.sub_qos, self.pub_qos, self.prefix, self.size = (
            name, sub_qos, pub_qos, prefix, size)
        self._lock = threading.Lock()
        self.counts = [bytearray() for _ in pub_qos]
        self.first = [array.array("d") for _ in pub_qos]  # first arrival: time, connection no.
        self.first_conn = [array.array("i") for _ in pub_qos]
        self.events = []  # (time, what happened to this subscriber's connections)
        self.conn_no = 0
        self.total = 0
        self.malformed = 0
        self.wrong_qos = 0
        self.examples = []

    def handler(self):
        """An on_message callback for this subscriber's next connection (numbered)."""
        self.conn_no += 1
        return functools.partial(self.on_message, conn=self.conn_no)

    def event(self, what):
        with self._lock:
            self.events.append((time.monotonic() - T0, what))

    def on_message(self, client, userdata, msg, conn=0):
        try:
            pub, seq = decode(msg.topic, msg.payload, self.prefix, self.size)
            if not 0 <= pub < len(self.pub_qos):
                raise ValueError(f"unknown publisher {pub}")
        except ValueError as e:
            with self._lock:
                self.malformed += 1
                if len(self.examples) < 5:
                    self.examples.append(str(e))
            return
        want = min(self.sub_qos, self.pub_qos[pub])
        with self._lock:
            c = self.counts[pub]
            if seq >= len(c):
                grow = seq + 1 - len(c) + 4096
                c.extend(bytes(grow))
                self.first[pub].extend(array.array("d", bytes(8 * grow)))
                self.first_conn[pub].extend(array.array("i", bytes(4 * grow)))
            if c[seq] == 0:
                self.first[pub][seq] = time.monotonic() - T0
                self.first_conn[pub][seq] = conn
            if c[seq] < 255:
                c[seq] += 1
            self.total += 1
            if msg.qos != want:
                self.wrong_qos += 1
                if len(self.examples) < 5:
                    self.examples.append(f"pub{pub} seq {seq} came at QoS {msg.qos}, not {want}")

    def snapshot(self, pub):
        with self._lock:
            return bytes(self.counts[pub])

    def explain(self, pub, seq):
        """Where a lost message falls in this subscriber's history: its neighbours' arrivals
        and the connection events around its publication."""
        t = pub.t_pub[seq]
        with self._lock:
            c, first, conn = self.counts[pub.idx], self.first[pub.idx], self.first_conn[pub.idx]
            near = []
            for d in (-2, -1, 1, 2):
                k = seq + d
                if 0 <= k < len(c) and k < len(pub.t_pub):
                    near.append(f"seq {k} " + (f"arrived t={first[k]:.3f} on connection "
                                               f"#{conn[k]}" if c[k] else "never arrived"))
            before = [e for e in self.events if e[0] <= t][-4:]
            after = [e for e in self.events if e[0] > t][:4]
            ev = [f"{et:.3f} {what}" for et, what in before + after]
        return (f"{self.name}: {pub.name} seq {seq} published t={t:.3f}, acknowledged "
                f"t={pub.t_ack[seq]:.3f}; {'; '.join(near)}\n      events: " + "; ".join(ev))


def compare(pubs, receipts, check_loss=True):
    """(lost, duplicates by delivery QoS, examples of lost) of one subscriber against what
    the publishers got acknowledged. Loss only counts for QoS >= 1 deliveries."""
    lost = 0
    dups = [0, 0, 0]
    examples = []
    for pub in pubs:
        eff = min(pub.qos, receipts.sub_qos)
        acked = pub.acked_snapshot() if (check_loss and eff >= 1) else b""
        counts = receipts.snapshot(pub.idx)
        n = len(counts)
        for seq, a in enumerate(acked):
            if a and (seq >= n or counts[seq] == 0):
                lost += 1
                if len(examples) < 5:
                    examples.append((pub, seq))
        dups[eff] += sum(c - 1 for c in counts if c > 1)
    return lost, dups, examples


# ---------------------------------------------------------------------------------------------
# The broker process


def proc_sample(pid, port):
    """The broker's RSS (KiB), open fds, and how many of those are client TCP connections on
    `port`."""
    rss = None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    inodes = set()
    fds = os.listdir(f"/proc/{pid}/fd")
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    conns = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] != "0A":
                        conns.add(cols[9])
        except OSError:
            pass
    return {"rss_kb": rss, "fds": len(fds), "client_sockets": len(inodes & conns)}


def store_state(data_dir):
    """(KiB of fjall journal, count of flushed segment files) in a data directory."""
    journal, segments = 0, 0
    if data_dir:
        for root, _, files in os.walk(data_dir):
            for f in files:
                try:
                    if os.path.basename(root) == "journals":
                        # allocated, not apparent, size: fjall preallocates the file
                        journal += os.stat(os.path.join(root, f)).st_blocks // 2
                    elif os.path.basename(root) == "segments":
                        segments += 1
                except OSError:
                    pass
    return journal, segments


def scrape(metrics_port):
    """Prometheus text from /metrics as {series: value} (series with its labels)."""
    with urllib.request.urlopen(f"http://{HOST}:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


def drops(metrics):
    """Non-zero broker drop and limit counters."""
    return {k: int(v) for k, v in sorted(metrics.items())
            if v and re.match(r"shardmq_(messages_dropped_total|limit_hits_total|"
                              r"store_failed_writes_total)", k)}


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# The soak


class PersistentSub:
    """A subscriber with a persistent session that keeps leaving and resuming it."""

    def __init__(self, soak, idx, version, qos):
        self.soak, self.version, self.qos = soak, version, qos
        self.name = f"psub{idx} (QoS {qos}, {vname(version)})"
        self.id = f"soak-{soak.run}-psub{idx}"
        self.rx = Receipts(self.name, qos, soak.pub_qos, soak.prefix, soak.args.payload)
        self.link = None
        self.sessions_lost = 0
        self.rng = random.Random(soak.rng.random())

    def _new_link(self):
        link = Link(self.soak.args.port, self.id, self.version, clean=False, expiry=3600,
                    on_message=self.rx.handler(), counters=self.soak.counters,
                    in_state=self.link.in_state() if self.link else None, tag=self.name)
        link.no = self.rx.conn_no
        return link

    def start(self):
        link = self._new_link()
        link.open(clean=True)
        link.subscribe(self.soak.topic_filter, self.qos)
        self.rx.event(f"connection #{link.no} up, subscribed")
        self.link = link

    def resume(self, link):
        present = link.open()
        self.rx.event(f"connection #{link.no} up (session present {int(present)})")
        self.soak.counters.add("resumes")
        if not present:
            self.sessions_lost += 1
            self.soak.counters.add("sessions lost")
            log(f"FAIL {self.name}: resumed without its session (Session Present 0)")
            link.subscribe(self.soak.topic_filter, self.qos)

    def reconnect(self, mode):
        if mode != "lost":
            self.rx.event(f"connection #{self.link.no}: {mode} disconnect")
            self.link.close(mode)
            self.rx.event(f"connection #{self.link.no} gone")
            self.soak.counters.add(f"{mode} disconnects")
            time.sleep(self.rng.uniform(0.5, self.soak.max_offline))
        else:
            self.rx.event(f"connection #{self.link.no} lost unexpectedly")
            self.link.kill()
        link = self._new_link()
        self.resume_retrying(link)

    def resume_retrying(self, link):
        for attempt in range(3):
            try:
                self.resume(link)
                self.link = link
                return
            except (LinkError, OSError) as e:
                self.soak.counters.add("failed connects")
                log(f"FAIL {self.name}: connect: {e}")
                link.kill()
                link = self._new_link()
                time.sleep(1)
        raise LinkError(f"{self.name}: could not reconnect")

    def takeover(self):
        old = self.link
        old.expected_close = True
        new = self._new_link()
        self.rx.event(f"takeover of connection #{old.no} by #{new.no}")
        self.resume_retrying(new)
        self.soak.counters.add("takeovers")
        if old.gone.wait(WAIT):
            self.rx.event(f"connection #{old.no} gone ({old.disconnect_reason})")
        if not old.gone.is_set():
            self.soak.counters.add("takeover failures")
            log(f"FAIL {self.name}: old connection still up {WAIT:.0f} s after the takeover")
        elif self.version == V5:
            self.soak.counters.add("5.0 takeovers")
            if old.disconnect_reason is not None and old.disconnect_reason.value == 0x8E:
                self.soak.counters.add("5.0 takeovers with 0x8E")
            else:
                # Not a failure: the broker sends DISCONNECT 0x8E and closes; a client that
                # is still acknowledging deliveries then gets a reset, which can come before
                # it reads the DISCONNECT.
                self.soak.counters.add("5.0 takeovers reset")
                self.rx.event(f"connection #{old.no} ended {old.disconnect_reason} "
                              f"({old.last_error}), not with DISCONNECT 0x8E")
        old.kill()

    def churn(self, stop):
        while not stop.is_set():
            until = time.monotonic() + self.rng.uniform(4, 15)
            while not stop.is_set() and time.monotonic() < until and self.link.connected():
                stop.wait(0.2)
            if not self.link.connected():
                self.reconnect("lost")  # dropped unexpectedly (counted by the link)
                continue
            if stop.is_set():
                break
            r = self.rng.random()
            if r < 0.25:
                self.takeover()
            else:
                self.reconnect("clean" if r < 0.6 else "drop")


class Visitor:
    """A clean-session client that comes, subscribes, stays a little and goes, in a loop."""

    def __init__(self, soak, idx):
        self.soak = soak
        self.name = f"visitor{idx}"
        self.id = f"soak-{soak.run}-visitor{idx}"
        self.version = V5 if idx % 2 else V311
        self.rng = random.Random(soak.rng.random())
        self.received = 0
        self.malformed = 0

    def on_message(self, client, userdata, msg):
        try:
            decode(msg.topic, msg.payload, self.soak.prefix, self.soak.args.payload)
            self.received += 1
        except ValueError:
            self.malformed += 1

    def churn(self, stop):
        while not stop.is_set():
            link = Link(self.soak.args.port, self.id, self.version, clean=True,
                        on_message=self.on_message, counters=self.soak.counters, tag=self.name)
            try:
                link.open()
                link.subscribe(self.soak.topic_filter, self.rng.randint(0, 2))
                self.soak.counters.add("visits")
                stop.wait(self.rng.uniform(2, 8))
                mode = "clean" if self.rng.random() < 0.7 else "drop"
                link.close(mode)
                self.soak.counters.add(f"{mode} disconnects")
            except (LinkError, OSError) as e:
                self.soak.counters.add("failed connects")
                log(f"FAIL {self.name}: {e}")
                link.kill()
            stop.wait(self.rng.uniform(0.5, 2))


class Soak:
    def __init__(self, args):
        self.args = args
        seed = args.seed if args.seed is not None else random.randrange(1 << 30)
        self.seed = seed
        self.rng = random.Random(seed)
        self.run = f"{os.getpid()}{seed % 1000:03d}"
        self.prefix = f"soak/{self.run}"
        self.topic_filter = f"{self.prefix}/#"
        self.counters = Counters()
        specs = [(V311, 0), (V5, 0), (V311, 1), (V5, 1), (V311, 2), (V5, 2)]
        self.pubs = [Publisher(i, f"soak-{self.run}-pub{i}", f"{self.prefix}/{i}", v, q,
                               args.payload) for i, (v, q) in enumerate(specs)]
        self.pub_qos = [p.qos for p in self.pubs]
        qos12_rate = args.rate * sum(1 for p in self.pubs if p.qos) / len(self.pubs)
        # An offline session queues what arrives meanwhile: stay far below
        # limits.max_queued_messages (1000 by default).
        self.max_offline = max(0.5, min(5.0, 300.0 / max(qos12_rate, 1.0)))
        self.subs = [PersistentSub(self, i, V5 if i % 2 else V311, (1, 2, 0)[(i // 2) % 3])
                     for i in range(args.clients)]
        self.visitors = [Visitor(self, i) for i in range(2)]
        self.samples = []

    def sample(self, t):
        try:
            s = proc_sample(self.args.pid, self.args.port)
        except OSError as e:
            raise SystemExit(f"soak.py: broker pid {self.args.pid} gone? ({e})")
        s["t"] = t
        s["journal_kb"], s["segments"] = store_state(self.args.data_dir)
        self.samples.append(s)
        return s

    def main(self):
        a = self.args
        duration = a.minutes * 60
        log(f"seed {self.seed}; {len(self.pubs)} publishers at {a.rate:g} msg/s in all, "
            f"{len(self.subs)} persistent subscribers (offline 0.5-{self.max_offline:.1f} s at "
            f"a time), {len(self.visitors)} clean-session clients, {a.minutes:g} min")
        for p in self.pubs:
            p.link = Link(a.port, p.id, p.version, clean=True, on_publish=p.on_publish,
                          counters=self.counters, tag=p.name)
            p.link.open()
        for s in self.subs:
            s.start()
        churn_stop, load_stop = threading.Event(), threading.Event()
        threads = [threading.Thread(target=self.guard, args=(x, churn_stop), daemon=True,
                                    name=x.name) for x in self.subs + self.visitors]
        load = Load(self.pubs, a.rate, load_stop)
        load.start()
        for t in threads:
            t.start()
        start = time.monotonic()
        baseline_t = 120.0 if duration >= 180 else duration / 2
        next_sample, next_report = start, start + 30
        while True:
            now = time.monotonic()
            if now >= start + duration:
                break
            if now >= next_sample:
                self.sample(now - start)
                next_sample += 10
            if now >= next_report:
                self.progress(now - start)
                next_report += 30
            for p in self.pubs:
                if not p.link.connected():
                    log(f"FAIL {p.name} lost its connection; reconnecting")
                    p.link.kill()
                    p.forget_inflight()
                    p.link = Link(a.port, p.id, p.version, clean=True, on_publish=p.on_publish,
                                  counters=self.counters, tag=p.name)
                    try:
                        p.link.open()
                    except (LinkError, OSError) as e:
                        log(f"FAIL {p.name}: reconnect: {e}")
            time.sleep(min(0.5, max(0.0, min(next_sample, start + duration) - time.monotonic())))
        end_sample = self.sample(time.monotonic() - start)
        load_stop.set()
        load.join()
        load_secs = load.ended - load.started
        log("load stopped; waiting for the publishers' last acknowledgements")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(p.outstanding() for p in self.pubs):
            time.sleep(0.1)
        unsettled = sum(p.outstanding() for p in self.pubs)
        log("stopping the churn (every persistent subscriber resumes)")
        churn_stop.set()
        for t in threads:
            t.join(60)
            if t.is_alive():
                log(f"FAIL {t.name} did not stop within 60 s")
                self.counters.add("stuck clients")
        drain_start = time.monotonic()
        last_missing, last_progress = None, drain_start
        while True:
            missing = sum(compare(self.pubs, s.rx)[0] for s in self.subs if s.qos)
            now = time.monotonic()
            if missing == 0 or now - drain_start > a.drain:
                break
            if missing != last_missing:
                last_missing, last_progress = missing, now
            elif now - last_progress > 20:
                break
            time.sleep(1)
        drain_secs = time.monotonic() - drain_start
        after = self.sample(time.monotonic() - start)
        metrics = {}
        if a.metrics_port:
            try:
                metrics = scrape(a.metrics_port)
            except OSError as e:
                log(f"/metrics not read: {e}")
        for s in self.subs:
            s.link.close("clean")
        for p in self.pubs:
            p.link.close("clean")
        return self.summary(load_secs, drain_secs, baseline_t, end_sample, after, metrics,
                            load.skipped, unsettled)

    def guard(self, client, stop):
        try:
            client.churn(stop)
        except Exception as e:  # noqa: BLE001 - counted and reported, the soak goes on
            self.counters.add("stuck clients")
            log(f"FAIL {client.name} gave up: {e!r}")

    def progress(self, t):
        s = self.samples[-1]
        c = self.counters
        log(f"t={t:.0f}s sent {sum(p.n_sent for p in self.pubs)}, acked "
            f"{sum(p.n_acked for p in self.pubs)}, received "
            f"{sum(s.rx.total for s in self.subs)}; connects {c['connects']}, takeovers "
            f"{c['takeovers']}; broker RSS {s['rss_kb'] / 1024:.1f} MiB, fds {s['fds']} "
            f"({s['client_sockets']} client sockets)")

    def summary(self, load_secs, drain_secs, baseline_t, end, after, metrics, skipped, unsettled):
        a, c = self.args, self.counters
        failures = []
        lost, dups, lost_examples, per_sub = 0, [0, 0, 0], [], []
        for s in self.subs:
            check = s.qos >= 1 and s.sessions_lost == 0
            l, d, ex = compare(self.pubs, s.rx, check_loss=check)
            lost += l
            lost_examples += [s.rx.explain(p, q) for p, q in ex]
            for q in range(3):
                dups[q] += d[q]
            per_sub.append((s, l, d))
        malformed = sum(s.rx.malformed for s in self.subs) + sum(v.malformed for v in self.visitors)
        wrong_qos = sum(s.rx.wrong_qos for s in self.subs)
        rate = {q: sum(p.n_sent for p in self.pubs if p.qos == q) / load_secs for q in range(3)}
        acked = {q: sum(p.n_acked for p in self.pubs if p.qos == q) for q in (1, 2)}
        refused = sum(p.n_refused for p in self.pubs)
        received = sum(s.rx.total for s in self.subs) + sum(v.received for v in self.visitors)
        base = min(self.samples, key=lambda s: abs(s["t"] - baseline_t))

        print("\n==================== soak summary ====================")
        print(f"seed {self.seed}, {a.shards} shards, load {load_secs / 60:.1f} min, drain "
              f"{drain_secs:.1f} s, {len(self.pubs)} publishers, {len(self.subs)} persistent "
              f"subscribers, {len(self.visitors)} clean-session clients")
        print(f"load held: QoS 0 {rate[0]:.1f} msg/s, QoS 1 {rate[1]:.1f} msg/s "
              f"({acked[1]} acknowledged), QoS 2 {rate[2]:.1f} msg/s ({acked[2]} acknowledged); "
              f"{received} deliveries ({received / load_secs:.0f}/s); {skipped} publish slots "
              f"skipped; {unsettled} unacknowledged at the end; {refused} refused")
        print(f"connections: {c['connects']} connects, {c['clean disconnects']} clean "
              f"disconnects, {c['drop disconnects']} socket drops, {c['takeovers']} takeovers, "
              f"{c['visits']} clean-session visits; {c['resumes']} resumes, "
              f"{c['sessions lost']} without their session")
        for s, l, d in per_sub:
            note = "" if s.qos else " (QoS 0: loss not checked)"
            print(f"  {s.name}: {s.rx.total} received, lost {l}, duplicates {sum(d)}{note}")

        def check(ok, text):
            print(f"  [{'ok' if ok else 'FAIL'}] {text}")
            if not ok:
                failures.append(text)

        print("checks:")
        check(lost == 0, f"messages lost (acknowledged QoS 1/2 -> persistent QoS 1/2 "
                         f"subscriptions): {lost}")
        for e in lost_examples[:5]:
            print(f"    lost: {e}")
        check(dups[2] == 0, f"QoS 2 duplicates: {dups[2]}")
        check(dups[0] == 0, f"QoS 0 duplicates: {dups[0]}")
        print(f"  [info] QoS 1 duplicates (allowed): {dups[1]}")
        check(c["sessions lost"] == 0, f"resumes without the session: {c['sessions lost']} of "
                                       f"{c['resumes']}")
        check(c["takeover failures"] == 0, f"takeovers that left the old connection up: "
                                           f"{c['takeover failures']}")
        print(f"  [info] 5.0 takeovers whose old connection read DISCONNECT 0x8E (Session taken "
              f"over): {c['5.0 takeovers with 0x8E']} of {c['5.0 takeovers']} (the others were "
              f"reset while acknowledging, before reading it)")
        check(c["unexpected disconnects"] == 0 and c["failed connects"] == 0
              and c["stuck clients"] == 0,
              f"unexpected disconnects {c['unexpected disconnects']}, failed connects "
              f"{c['failed connects']}, stuck clients {c['stuck clients']}")
        examples = [e for s in self.subs for e in s.rx.examples][:3]
        check(malformed == 0 and wrong_qos == 0,
              f"damaged payloads {malformed}, deliveries at the wrong QoS {wrong_qos}"
              + (f", e.g. {examples}" if examples else ""))
        check(refused == 0, f"publishes refused by the broker: {refused}")
        if metrics:
            print(f"  [info] broker drop / limit counters: {drops(metrics) or 'none'}")

        def growth(key, b, e):
            return 100.0 * (e - b) / b if b else 0.0

        rss_g = growth("rss", base["rss_kb"], end["rss_kb"])
        rss_limit_kb = base["rss_kb"] * (1 + a.rss_tolerance / 100) + a.store_allowance * 1024
        base_fd = base["fds"] - base["client_sockets"]
        end_fd = end["fds"] - end["client_sockets"]
        fd_g = growth("fds", base_fd, end_fd)
        label = "minute 2" if baseline_t == 120 else "half-time"
        check(end["rss_kb"] <= rss_limit_kb,
              f"broker RSS: {label} (t={base['t']:.0f}s) {base['rss_kb'] / 1024:.1f} MiB, end "
              f"(t={end['t']:.0f}s) {end['rss_kb'] / 1024:.1f} MiB: {rss_g:+.1f} % (tolerance "
              f"+{a.rss_tolerance:g} % + {a.store_allowance:g} MiB store write buffer = "
              f"{rss_limit_kb / 1024:.1f} MiB)")
        if rss_g > a.rss_tolerance:
            print(f"  [info] RSS grew more than +{a.rss_tolerance:g} %: store journal "
                  f"{base['journal_kb'] / 1024:.1f} -> {end['journal_kb'] / 1024:.1f} MiB, "
                  f"flushed segments {base['segments']} -> {end['segments']} (no flush yet: "
                  "the memtables are still filling)")
        check(fd_g <= a.fd_tolerance,
              f"broker fds without client sockets: {label} {base_fd} ({base['fds']} with "
              f"{base['client_sockets']} client sockets), end {end_fd} ({end['fds']} with "
              f"{end['client_sockets']}): {fd_g:+.1f} % (tolerance +{a.fd_tolerance:g} %)")
        print(f"  [info] after the drain: RSS {after['rss_kb'] / 1024:.1f} MiB, fds "
              f"{after['fds']} ({after['client_sockets']} client sockets)")
        print("  [info] samples (t s: RSS MiB / fds / client sockets / store journal MiB): "
              + ", ".join(f"{s['t']:.0f}: {s['rss_kb'] / 1024:.1f}/{s['fds']}/"
                          f"{s['client_sockets']}/{s['journal_kb'] / 1024:.1f}"
                          for s in self.samples))
        print(f"result: {'PASS' if not failures else 'FAIL (' + str(len(failures)) + ' checks)'}")
        print("======================================================")
        return 0 if not failures else 1


def main():
    ap = argparse.ArgumentParser(description="Soak test of a running shardmq (see the header).")
    ap.add_argument("--port", type=int, required=True, help="the broker's MQTT port on 127.0.0.1")
    ap.add_argument("--pid", type=int, required=True, help="the broker's process id (RSS, fds)")
    ap.add_argument("--metrics-port", type=int, help="the broker's /metrics port")
    ap.add_argument("--shards", type=int, default=0, help="shard count, for the summary only")
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--clients", type=int, default=8, help="persistent-session subscribers")
    ap.add_argument("--rate", type=float, default=150, help="messages a second, all publishers")
    ap.add_argument("--payload", type=int, default=64, help="payload bytes")
    ap.add_argument("--drain", type=float, default=60, help="longest wait for the last deliveries")
    ap.add_argument("--rss-tolerance", type=float, default=10.0, help="percent")
    ap.add_argument("--store-allowance", type=float, default=64.0,
                    help="MiB of RSS growth allowed for the store's memtables (0: none)")
    ap.add_argument("--data-dir", help="the broker's data directory (store size in the samples)")
    ap.add_argument("--fd-tolerance", type=float, default=5.0, help="percent")
    ap.add_argument("--seed", type=int)
    args = ap.parse_args()
    if args.clients < 1 or args.rate <= 0 or args.minutes <= 0:
        ap.error("--clients, --rate and --minutes must be positive")
    try:
        sys.exit(Soak(args).main())
    except (LinkError, OSError) as e:
        print(f"soak.py: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
