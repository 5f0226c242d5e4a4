#!/usr/bin/env python3
"""Crash loop: kill -9 shardmq over and over under QoS 1/2 traffic to persistent sessions and
check that nothing it acknowledged is lost. scripts/crash-loop.sh builds the broker and runs
this; directly:

    scripts/crash-loop.py --bin PATH --dir DIR [--rounds N (20)] [--shards N (2)]
                          [--rate R (100)] [--subscribers N (8)] [--max-delay SECS (4)]
                          [--seed S]

DIR is a fresh directory of its own: the broker's data directory (DIR/data), its log
(DIR/broker.log, appended to by every start), DIR/broker.pid (the running broker's pid, for
the caller's cleanup) and DIR/shardmq.toml (limits.max_queued_messages / max_queued_bytes
raised so that an offline session's queue never overflows, which would drop by design). The
broker runs with persistence on and --durability sync (QoS 1/2 acknowledged only once
fsynced) on a fixed port and data directory; it counts as up again when its new process logs
"listening on" (after a kill -9 the kernel keeps the old listening sockets a moment, until it
tears down the old io_uring instance, and resets what they accept meanwhile).

Clients (MQTT 3.1.1 and 5.0 alternating), on topics crash/<run>/<publisher>:
  * 4 publishers, QoS 1 and 2 x 3.1.1 and 5.0: two with persistent sessions, kept across the
    crashes (paho resends their unacknowledged PUBLISH / PUBREL when they reconnect), two with
    clean sessions (a new client each round; what they had in flight is abandoned);
  * --subscribers persistent-session subscribers of crash/<run>/# (QoS 1 and 2 subscriptions),
    all subscribed before the first message; each round a random half is offline during the
    traffic (its session queues), the other half online.

Each round: traffic at --rate messages a second; SIGKILL after a random delay (0.3 s to
--max-delay); restart on the same data directory; every subscriber resumes (Session Present
must be 1), the persistent publishers reconnect. In a third of the rounds, a second SIGKILL
0-200 ms later, while the subscribers take their backlog (deliveries in flight, QoS 2
handshakes half done), and another restart. Then collect until every acknowledged message
has arrived (or nothing arrives for 3 s) and print the round. No message is published while
sessions resume (resuming under traffic is the soak's business).

Checks (exit status 1 when one fails): every message a publisher got PUBACK / PUBCOMP for
reached every subscriber (lost must be 0); no duplicate QoS 2 delivery (QoS 1 duplicates are
counted); every resume found its session; payloads intact, at QoS min(publish, subscription);
every restart came up.
"""

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True  # importing soak.py leaves no __pycache__ in scripts/
from soak import (V5, V311, Counters, Link, LinkError, Load, Publisher, Receipts, compare,
                  drops, free_port, log, scrape, vname)  # noqa: E402

RECOVERED = re.compile(r"recovered (\d+) retained messages and (\d+) sessions \((\d+) queued "
                       r"messages\) in (\d+) ms")


class Broker:
    """The shardmq process, started and killed on one port and data directory."""

    def __init__(self, args, port, mport):
        self.args, self.port, self.mport = args, port, mport
        self.proc = None
        self.log_path = os.path.join(args.dir, "broker.log")
        self.pid_path = os.path.join(args.dir, "broker.pid")
        # Queue bounds out of the way: an offline session's queue must not overflow (and drop,
        # by design) whatever --rate and --max-delay are.
        self.config = os.path.join(args.dir, "shardmq.toml")
        with open(self.config, "w") as f:
            f.write("[limits]\nmax_queued_messages = 1000000\nmax_queued_bytes = 1073741824\n")

    def start(self, timeout=60.0):
        """Start and wait until it accepts; returns (seconds, the store's recovery line)."""
        with open(self.log_path, "a") as f:
            f.write(f"\n===== start at {time.strftime('%H:%M:%S')} =====\n")
        offset = os.path.getsize(self.log_path)
        logf = open(self.log_path, "a")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [self.args.bin, "--config", self.config, "--listen", f"127.0.0.1:{self.port}", "--metrics-listen",
             f"127.0.0.1:{self.mport}", "--shards", str(self.args.shards), "--no-pin",
             "--data-dir", os.path.join(self.args.dir, "data"), "--durability", "sync",
             "--log-level", self.args.log_level],
            stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        logf.close()
        with open(self.pid_path, "w") as f:
            f.write(f"{self.proc.pid}\n")
        # Ready when the new process says it listens. Not "the port accepts": after a kill -9
        # the kernel keeps the old process's listening sockets open a moment longer (until it
        # tears down its io_uring instance) and accepts connections there, then resets them.
        ready = f"listening on 127.0.0.1:{self.port} "
        while True:
            with open(self.log_path) as f:
                f.seek(offset)
                text = f.read()
            if ready in text:
                break
            if self.proc.poll() is not None:
                raise LinkError(f"the broker exited with status {self.proc.returncode} at "
                                f"start-up (see {self.log_path})")
            if time.monotonic() - t0 > timeout:
                raise LinkError(f"the broker did not listen within {timeout:.0f} s")
            time.sleep(0.01)
        return time.monotonic() - t0, RECOVERED.search(text)

    def metrics(self):
        try:
            return scrape(self.mport)
        except OSError:
            return {}

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        os.unlink(self.pid_path)

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        try:
            os.unlink(self.pid_path)
        except OSError:
            pass


def retrying(what, counters, fn, attempts=5):
    """fn() again (after 0.2 s) when the connection is refused or reset, up to `attempts`."""
    for attempt in range(attempts):
        try:
            return fn()
        except (LinkError, OSError) as e:
            if attempt == attempts - 1:
                raise
            counters.add("connect retries")
            log(f"{what}: {e}; retrying")
            time.sleep(0.2)


class Sub:
    """A subscriber with a persistent session that resumes it after every crash."""

    def __init__(self, cl, idx, version, qos):
        self.cl, self.version, self.qos = cl, version, qos
        self.name = f"sub{idx} (QoS {qos}, {vname(version)})"
        self.id = f"crash-{cl.run}-sub{idx}"
        self.rx = Receipts(self.name, qos, cl.pub_qos, cl.prefix, cl.args.payload)
        self.link = None
        self.sessions_lost = 0

    def connect(self):
        return retrying(self.name, self.cl.counters, self._connect)

    def _connect(self):
        link = Link(self.cl.port, self.id, self.version, clean=False, expiry=3600,
                    on_message=self.rx.handler(), counters=self.cl.counters, tag=self.name,
                    in_state=self.link.in_state() if self.link else None)
        link.no = self.rx.conn_no
        first = self.link is None
        present = link.open(clean=first)
        self.rx.event(f"connection #{link.no} up (session present {int(present)})")
        self.link = link
        if first:
            link.subscribe(self.cl.topic_filter, self.qos)
            return True
        self.cl.counters.add("resumes")
        if not present:
            self.sessions_lost += 1
            self.cl.counters.add("sessions lost")
            log(f"FAIL {self.name}: resumed without its session (Session Present 0)")
            link.subscribe(self.cl.topic_filter, self.qos)
        return present


class CrashLoop:
    def __init__(self, args):
        self.args = args
        self.seed = args.seed if args.seed is not None else random.randrange(1 << 30)
        self.rng = random.Random(self.seed)
        self.run = f"{os.getpid()}{self.seed % 1000:03d}"
        self.prefix = f"crash/{self.run}"
        self.topic_filter = f"{self.prefix}/#"
        self.port, self.mport = free_port(), free_port()
        self.counters = Counters()
        specs = [(V311, 1, True), (V5, 1, False), (V311, 2, False), (V5, 2, True)]
        self.pubs = [Publisher(i, f"crash-{self.run}-pub{i}", f"{self.prefix}/{i}", v, q,
                               args.payload, persistent=p) for i, (v, q, p) in enumerate(specs)]
        self.pub_qos = [p.qos for p in self.pubs]
        self.subs = [Sub(self, i, V5 if i % 2 else V311, 1 if (i // 2) % 2 == 0 else 2)
                     for i in range(args.subscribers)]
        self.broker = Broker(args, self.port, self.mport)
        self.drops = {}
        self.kills = 0
        self.restarts = 0
        self.rounds_done = 0

    def add_drops(self):
        for k, v in drops(self.broker.metrics()).items():
            self.drops[k] = self.drops.get(k, 0) + v

    def connect_pub(self, p):
        retrying(p.name, self.counters, lambda: self._connect_pub(p))

    def _connect_pub(self, p):
        if p.persistent and p.link is not None:
            p.link.open(clean=False)  # the same client: paho resends what is unacknowledged
            self.counters.add("resumes")
            return
        first = p.link is None
        p.forget_inflight()
        p.link = Link(self.port, p.id, p.version, clean=not p.persistent,
                      expiry=3600 if p.persistent else 0, on_publish=p.on_publish,
                      counters=self.counters, tag=p.name)
        p.link.open(clean=True if first else None)

    def missing(self):
        """(lost, dups by QoS, examples) over all subscribers now."""
        lost, dups, ex = 0, [0, 0, 0], []
        for s in self.subs:
            l, d, e = compare(self.pubs, s.rx)
            lost += l
            ex += [s.rx.explain(p, q) for p, q in e]
            for q in range(3):
                dups[q] += d[q]
        return lost, dups, ex

    def collect(self, quiet=3.0, longest=60.0):
        """Wait until nothing acknowledged is missing, or nothing arrives for `quiet` s."""
        t0 = time.monotonic()
        last, last_change = None, t0
        while True:
            lost = self.missing()[0]
            received = sum(s.rx.total for s in self.subs)
            now = time.monotonic()
            outstanding = sum(p.outstanding() for p in self.pubs if p.link and p.link.connected())
            if lost == 0 and outstanding == 0:
                return
            if (lost, received, outstanding) != last:
                last, last_change = (lost, received, outstanding), now
            elif now - last_change > quiet or now - t0 > longest:
                return
            time.sleep(0.2)

    def acked_total(self):
        return sum(p.n_acked for p in self.pubs)

    def round(self, r):
        a = self.args
        n = len(self.subs)
        online = set(self.rng.sample(range(n), max(1, n // 2)))
        for i, s in enumerate(self.subs):
            if i not in online:
                mode = "clean" if self.rng.random() < 0.5 else "drop"
                s.rx.event(f"connection #{s.link.no}: {mode} disconnect (offline this round)")
                s.link.close(mode)
        for p in self.pubs:
            if not p.link.connected():
                self.connect_pub(p)
        acked0, sent0 = self.acked_total(), sum(p.n_sent for p in self.pubs)
        stop = threading.Event()
        load = Load(self.pubs, a.rate, stop)
        delay = self.rng.uniform(0.3, a.max_delay)
        load.start()
        time.sleep(delay)
        self.kill(r, "traffic")
        stop.set()
        load.join()
        sent = sum(p.n_sent for p in self.pubs) - sent0
        secs, rec, present = self.restart()
        second = ""
        if self.rng.random() < 1 / 3:
            # Once more while the subscribers take their backlog (no new traffic): deliveries
            # in flight, QoS 2 handshakes half done.
            backlog = self.rng.uniform(0.0, 0.2)
            time.sleep(backlog)
            self.kill(r, "backlog")
            secs, rec, present = self.restart()
            second = f"; killed again {backlog * 1000:.0f} ms into the backlog"
        recovered = (f"recovered {rec[2]} sessions ({rec[3]} queued messages) in {rec[4]} ms"
                     if rec else "no recovery line in the log")
        self.collect()
        acked = self.acked_total()
        lost, dups, _ = self.missing()
        owed = acked * len(self.subs)
        log(f"round {r}/{a.rounds}: {len(online)} of {n} subscribers online; killed after "
            f"{delay:.2f} s ({sent} published, {acked - acked0} acknowledged){second}; up again in "
            f"{secs:.2f} s, {recovered}; {present}/{n} resumed with their session; so far "
            f"acknowledged {acked}, delivered {owed - lost}/{owed}, missing {lost}, duplicates "
            f"QoS 1 {dups[1]}, QoS 2 {dups[2]}")
        self.rounds_done = r

    def kill(self, r, when):
        self.add_drops()
        for link in [s.link for s in self.subs] + [p.link for p in self.pubs]:
            link.expected_close = True
        self.broker.kill()
        self.kills += 1
        for s in self.subs:
            s.rx.event(f"broker killed (round {r}, {when})")
        for link in [s.link for s in self.subs] + [p.link for p in self.pubs]:
            link.kill()

    def restart(self):
        """Start the broker again; every subscriber resumes, the persistent publishers too."""
        secs, rec = self.broker.start()
        self.restarts += 1
        present = sum(1 for s in self.subs if s.connect())
        for p in self.pubs:
            if p.persistent:
                self.connect_pub(p)
        return secs, rec, present

    def main(self):
        a = self.args
        log(f"seed {self.seed}; broker {a.bin} on 127.0.0.1:{self.port}, {a.shards} shards, "
            f"data {a.dir}/data, durability sync; {len(self.pubs)} publishers at {a.rate:g} "
            f"msg/s, {len(self.subs)} subscribers, {a.rounds} rounds")
        try:
            self.broker.start()
            for s in self.subs:
                s.connect()
            for p in self.pubs:
                self.connect_pub(p)
            for r in range(1, a.rounds + 1):
                self.round(r)
            self.collect(quiet=10.0, longest=120.0)
            self.add_drops()
            return self.summary()
        finally:
            for s in self.subs:
                if s.link:
                    s.link.kill()
            for p in self.pubs:
                if p.link:
                    p.link.kill()
            self.broker.stop()

    def summary(self):
        c = self.counters
        lost, dups, examples = self.missing()
        acked = {q: sum(p.n_acked for p in self.pubs if p.qos == q) for q in (1, 2)}
        owed = sum(acked.values()) * len(self.subs)
        malformed = sum(s.rx.malformed for s in self.subs)
        wrong_qos = sum(s.rx.wrong_qos for s in self.subs)
        refused = sum(p.n_refused for p in self.pubs)
        refusals = {}
        for p in self.pubs:
            refusals.update(p.refusals)
        failures = []

        def check(ok, text):
            print(f"  [{'ok' if ok else 'FAIL'}] {text}")
            if not ok:
                failures.append(text)

        print("\n================= crash-loop summary =================")
        print(f"seed {self.seed}, {self.args.shards} shards, rounds {self.rounds_done}, kills "
              f"{self.kills} (SIGKILL), restarts {self.restarts}")
        print(f"messages acknowledged to publishers: QoS 1 {acked[1]}, QoS 2 {acked[2]} "
              f"(published {sum(p.n_sent for p in self.pubs)})")
        print(f"deliveries owed (acknowledged x {len(self.subs)} subscribers): {owed}, delivered "
              f"{owed - lost}, lost {lost}")
        print(f"received {sum(s.rx.total for s in self.subs)} in all; resumes {c['resumes']}, "
              f"connect retries {c['connect retries']}")
        for s in self.subs:
            l, d, _ = compare(self.pubs, s.rx)
            print(f"  {s.name}: {s.rx.total} received, lost {l}, duplicates {sum(d)}")
        print("checks:")
        check(lost == 0, f"lost: {lost}")
        for e in examples[:5]:
            print(f"    lost: {e}")
        check(dups[2] == 0, f"QoS 2 duplicates: {dups[2]}")
        print(f"  [info] QoS 1 duplicates (allowed): {dups[1]}")
        check(c["sessions lost"] == 0, f"subscriber resumes without the session: "
                                       f"{c['sessions lost']}")
        ex = [e for s in self.subs for e in s.rx.examples][:3]
        check(malformed == 0 and wrong_qos == 0, f"damaged payloads {malformed}, deliveries at "
              f"the wrong QoS {wrong_qos}" + (f", e.g. {ex}" if ex else ""))
        check(c["unexpected disconnects"] == 0, f"unexpected disconnects (not from a kill): "
                                                f"{c['unexpected disconnects']}")
        print(f"  [info] PUBACK / PUBCOMP with an error reason code (not counted as "
              f"acknowledged): {refused}"
              f"{' ' + str(refusals) if refusals else ''}")
        print(f"  [info] broker drop / limit counters (summed over its lives): "
              f"{self.drops or 'none'}")
        print(f"result: {'PASS' if not failures else 'FAIL (' + str(len(failures)) + ' checks)'}")
        print("======================================================")
        return 0 if not failures else 1


def main():
    ap = argparse.ArgumentParser(description="kill -9 loop of shardmq (see the header).")
    ap.add_argument("--bin", required=True, help="the shardmq binary")
    ap.add_argument("--dir", required=True, help="an empty directory for data, log and pid")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--rate", type=float, default=100, help="messages a second, all publishers")
    ap.add_argument("--subscribers", type=int, default=8)
    ap.add_argument("--payload", type=int, default=64, help="payload bytes")
    ap.add_argument("--max-delay", type=float, default=4.0, help="longest traffic before a kill")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--log-level", default="info", help="the broker's --log-level")
    args = ap.parse_args()
    if args.rounds < 1 or args.subscribers < 2 or args.rate <= 0 or args.max_delay < 0.3:
        ap.error("--rounds >= 1, --subscribers >= 2, --rate > 0, --max-delay >= 0.3")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        sys.exit(CrashLoop(args).main())
    except (LinkError, OSError) as e:
        print(f"crash-loop.py: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
