//! `shardmq bench`: the load generator that ships with the broker.
//!
//! One coordinating thread (the caller's) and `--threads` bench threads, each an io_uring
//! event loop (epoll where io_uring is refused) running its share of the clients as tasks:
//!
//! ```text
//!  coordinator ── phase: setup → warm-up → measure → drain → done ──┐ (Run, atomics)
//!      │  progress once a second, /proc/<broker-pid> samples         │
//!  bench-0: subscribers + publishers (tasks)  ◄──────────────────────┤
//!  bench-1: subscribers + publishers (tasks)  ◄──────────────────────┘
//! ```
//!
//! Every message carries its publisher, sequence number and send time ([`payload`]); every
//! subscriber checks order, loss and duplicates per publisher ([`check`]) and records latency
//! while measuring. The coordinator turns the counters into a [`Report`]: msg/s delivered,
//! latency percentiles, the checks, the broker's CPU per message and memory (with
//! `--broker-pid`) and the bench's own CPU, as a summary and one JSON line.
//!
//! Exit status: 0 when the checks pass, 1 when they fail or the run cannot start, 2 for bad
//! flags.

pub mod args;
mod check;
mod client;
mod link;
mod payload;
mod probe;
mod report;

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use args::Plan;
pub use args::{BenchArgs, Scenario, Transport};
use check::SeqCheck;
use client::{Local, Run, Target, phase};
pub use report::Report;
use report::{BrokerUse, Latency};

use crate::config::IoDriver;
use crate::protocol::Version;
use crate::shard::spawn::run_on_runtime;

/// Longest wait for every client to connect and subscribe before traffic starts.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// The pause between every subscriber's SUBACK and the first publish when subscribers connect
/// to another address than publishers (--sub-host / --sub-port). In a cluster a SUBACK only
/// means the subscriber's own node has the subscription: the route still has to reach the
/// publishers' node (through Redis), which takes a few ms; publishing before it arrives
/// would lose the first messages. Anything later than that falls in the warm-up, which is
/// not measured.
const SUB_SETTLE: Duration = Duration::from_millis(300);
/// Longest wait for messages in flight after the publishers stop.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The drain ends early once nothing has arrived for this long (a loaded machine can stall
/// the broker or this client for over a second; a run that delivered everything ends at
/// once anyway).
const DRAIN_QUIET: Duration = Duration::from_millis(3000);

/// Runs `shardmq bench` and returns the process exit status.
pub fn main(args: &BenchArgs) -> i32 {
    let plan = match args.plan() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("shardmq bench: {e}");
            return 2;
        }
    };
    let addr = match resolve("--host", &args.host, args.port) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("shardmq bench: {e}");
            return 2;
        }
    };
    let sub_host = args.sub_host.as_deref().unwrap_or(&args.host);
    let sub_port = args.sub_port.unwrap_or(args.port);
    let sub_addr = match &args.sub_host {
        None => SocketAddr::new(addr.ip(), sub_port),
        Some(h) => match resolve("--sub-host", h, sub_port) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("shardmq bench: {e}");
                return 2;
            }
        },
    };
    let target = Target {
        addr,
        sub_addr,
        sources: args.source.clone(),
        version: plan.version,
        keep_alive: args.keepalive,
        persistent: args.persistent,
        username: args.username.clone(),
        password: args.password.clone(),
        transport: args.transport,
        ws_path: args.ws_path.clone(),
        http_host: http_host(&args.host, args.port),
        sub_http_host: http_host(sub_host, sub_port),
    };
    let coordinator = Coordinator {
        broker_pid: args.broker_pid,
        quiet: args.quiet,
        warmup: Duration::from_secs_f64(args.warmup),
        duration: Duration::from_secs_f64(args.duration),
    };
    match coordinator.run(plan, target) {
        Ok(report) => {
            print!("{}", report.human());
            println!("{}", report.json());
            if report.ok { 0 } else { 1 }
        }
        Err(e) => {
            eprintln!("shardmq bench: {e}");
            1
        }
    }
}

/// The first address `host` and `port` resolve to; `flag` names the host in the error.
fn resolve(flag: &str, host: &str, port: u16) -> Result<SocketAddr, String> {
    match (host, port).to_socket_addrs() {
        Ok(mut a) => a.next().ok_or_else(|| format!("{flag} {host}: no address")),
        Err(e) => Err(format!("{flag} {host}: {e}")),
    }
}

/// A WebSocket upgrade's Host header for `host` and `port` (an IPv6 address in brackets).
fn http_host(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// What one bench thread hands back.
#[derive(Default)]
struct ThreadOut {
    hist: Option<Histogram<u64>>,
    /// Per subscriber: the publishers it heard and its checks of them.
    checks: Vec<((u32, u32), Vec<SeqCheck>)>,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

fn thread_main(t: usize, plan: Arc<Plan>, run: Arc<Run>, target: Arc<Target>) -> ThreadOut {
    let fail_run = run.clone();
    let out = run_on_runtime(
        IoDriver::Auto,
        |_, _| {},
        move |_| async move {
            let local = Rc::new(Local {
                run,
                plan,
                target,
                hist: RefCell::new(new_histogram()),
                fds: RefCell::new(Vec::new()),
                held: RefCell::new(Vec::new()),
            });
            let mut checks = Vec::new();
            if local.plan.scenario == Scenario::Conn {
                monoio::spawn(open_idle(local.clone(), t));
            } else {
                for sp in local.plan.subs.iter().filter(|s| s.thread == t) {
                    let c = Rc::new(RefCell::new(vec![
                        SeqCheck::default();
                        (sp.from.1 - sp.from.0) as usize
                    ]));
                    checks.push((sp.from, c.clone()));
                    monoio::spawn(client::subscriber(local.clone(), sp.clone(), c));
                }
                for pp in local.plan.pubs.iter().filter(|p| p.thread == t) {
                    monoio::spawn(client::publisher(local.clone(), pp.clone()));
                }
            }
            while local.run.phase() < phase::DONE {
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
            for &fd in local.fds.borrow().iter() {
                // SAFETY: `fd` belongs to a socket a task of this thread still owns (sockets are
                // only closed when their task ends, after this shutdown wakes it); shutdown does
                // not close or invalidate the descriptor.
                unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            }
            monoio::time::sleep(Duration::from_millis(20)).await;
            local.held.borrow_mut().clear();
            ThreadOut {
                hist: Some(local.hist.replace(new_histogram())),
                checks: checks
                    .into_iter()
                    .map(|(from, c)| (from, c.take()))
                    .collect(),
            }
        },
    );
    out.unwrap_or_else(|e| {
        fail_run.fail(format!("bench thread {t}: cannot start an event loop: {e}"));
        ThreadOut::default()
    })
}

/// conn: opens this thread's share of the connections at the asked rate, with at most this
/// thread's share of the window in handshakes at once.
async fn open_idle(local: Rc<Local>, t: usize) {
    let (plan, run) = (&*local.plan, &*local.run);
    while run.phase() == phase::SETUP {
        monoio::time::sleep(Duration::from_millis(1)).await;
    }
    let limit = (plan.window as usize / plan.threads).max(1);
    let per_sec = plan.rate.map(|r| r / plan.threads as f64);
    let busy = Rc::new(Cell::new(0usize));
    let waiter: Rc<Cell<Option<Waker>>> = Rc::new(Cell::new(None));
    let started = Instant::now();
    for (k, n) in (t..plan.conns).step_by(plan.threads).enumerate() {
        if run.phase() >= phase::DONE {
            return;
        }
        if let Some(r) = per_sec {
            let at = Duration::from_secs_f64(k as f64 / r);
            if let Some(wait) = at.checked_sub(started.elapsed()) {
                monoio::time::sleep(wait).await;
            }
        }
        poll_fn(|cx| {
            if busy.get() < limit {
                Poll::Ready(())
            } else {
                waiter.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await;
        busy.set(busy.get() + 1);
        let (local, busy, waiter) = (local.clone(), busy.clone(), waiter.clone());
        monoio::spawn(async move {
            client::idle(local, n).await;
            busy.set(busy.get() - 1);
            if let Some(w) = waiter.take() {
                w.wake();
            }
        });
    }
}

struct Coordinator {
    broker_pid: Option<u32>,
    quiet: bool,
    warmup: Duration,
    duration: Duration,
}

/// Counters at one moment.
#[derive(Clone, Copy)]
struct Snapshot {
    at: Instant,
    sent: u64,
    received: u64,
    ready: usize,
    broker: Option<probe::Sample>,
    own_cpu: Duration,
}

impl Coordinator {
    fn snapshot(&self, run: &Run) -> Snapshot {
        Snapshot {
            at: Instant::now(),
            sent: run.sent.load(Ordering::Acquire),
            received: run.received.load(Ordering::Acquire),
            ready: run.ready.load(Ordering::Acquire),
            broker: self.broker_pid.and_then(probe::broker),
            own_cpu: probe::own_cpu(),
        }
    }

    /// Sleeps `total`, printing progress once a second; returns the largest broker RSS seen.
    fn watch(&self, run: &Run, label: &str, total: Duration, stop: impl Fn(&Run) -> bool) -> u64 {
        let end = Instant::now() + total;
        let mut last = self.snapshot(run);
        let mut rss_max = last.broker.map_or(0, |b| b.rss);
        let began = last.at;
        while Instant::now() < end && !stop(run) {
            let step = (end - Instant::now()).min(Duration::from_secs(1));
            // Poll the stop condition every 10 ms within the step.
            let step_end = Instant::now() + step;
            while Instant::now() < step_end && !stop(run) {
                std::thread::sleep((step_end - Instant::now()).min(Duration::from_millis(10)));
            }
            let now = self.snapshot(run);
            rss_max = rss_max.max(now.broker.map_or(0, |b| b.rss));
            if !self.quiet {
                let secs = (now.at - last.at).as_secs_f64().max(1e-9);
                let mut line = format!(
                    "  [{label} {:>4.0}s] published {:>9.0}/s  delivered {:>9.0}/s  ready {}",
                    (now.at - began).as_secs_f64(),
                    (now.sent - last.sent) as f64 / secs,
                    (now.received - last.received) as f64 / secs,
                    now.ready,
                );
                if let (Some(a), Some(b)) = (last.broker, now.broker) {
                    line += &format!(
                        "  broker {:.2} cores, {:.1} MiB",
                        (b.cpu - a.cpu).as_secs_f64() / secs,
                        b.rss as f64 / 1048576.0
                    );
                }
                line += &format!(
                    "  client {:.2} cores",
                    (now.own_cpu - last.own_cpu).as_secs_f64() / secs
                );
                eprintln!("{line}");
            }
            last = now;
        }
        rss_max
    }

    fn run(&self, plan: Plan, target: Target) -> Result<Report, String> {
        let clients = plan.pubs.len() + plan.subs.len() + plan.conns;
        let nofile = probe::raise_nofile();
        if clients as u64 + 64 > nofile {
            return Err(format!(
                "{clients} clients need {clients} open files but the limit is {nofile}; raise it (`ulimit -n`) or start fewer clients"
            ));
        }
        if let Some(pid) = self.broker_pid
            && probe::broker(pid).is_none()
        {
            return Err(format!(
                "--broker-pid {pid}: no such process (or /proc/{pid} is unreadable)"
            ));
        }
        let run = Arc::new(Run::new(plan.pubs.len()));
        let plan = Arc::new(plan);
        let target = Arc::new(target);
        if !self.quiet {
            let over = match target.transport {
                Transport::Tcp => String::new(),
                Transport::Ws => format!(" over WebSocket {}", target.ws_path),
            };
            let subs_at = if target.split() && plan.scenario != Scenario::Conn {
                format!(" (subscribers against {})", target.sub_addr)
            } else {
                String::new()
            };
            eprintln!(
                "shardmq bench {:?} against {}{subs_at}{over}: {} clients on {} threads",
                plan.scenario, target.addr, clients, plan.threads
            );
        }
        let threads: Vec<_> = (0..plan.threads)
            .map(|t| {
                let (plan, run, target) = (plan.clone(), run.clone(), target.clone());
                std::thread::Builder::new()
                    .name(format!("bench-{t}"))
                    .spawn(move || thread_main(t, plan, run, target))
                    .map_err(|e| format!("cannot start a bench thread: {e}"))
            })
            .collect::<Result<_, _>>()?;
        let result = if plan.scenario == Scenario::Conn {
            self.conn(&plan, &run)
        } else {
            self.messages(&plan, &run, &target)
        };
        run.set_phase(phase::DONE);
        let outs: Vec<ThreadOut> = threads
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect();
        let mut report = result?;
        let mut hist = new_histogram();
        for o in &outs {
            if let Some(h) = &o.hist {
                hist.add(h).map_err(|e| format!("merging latencies: {e}"))?;
            }
        }
        report.latency = Latency::of(&hist);
        if plan.scenario != Scenario::Conn {
            tally(&plan, &run, &outs, &mut report);
        }
        report.failed_clients = run.failed.load(Ordering::Acquire);
        report.first_error = run.first_error();
        report.foreign = run.foreign.load(Ordering::Acquire);
        report.stalls = run.stalls.load(Ordering::Acquire);
        report.ok = report.failed_clients == 0
            && report.reordered == 0
            && (plan.qos as u8 == 0 || report.lost == 0)
            && (plan.qos as u8 != 2 || report.duplicates == 0)
            && (plan.scenario != Scenario::Conn || report.delivered == plan.conns as u64);
        Ok(report)
    }

    fn base_report(&self, plan: &Plan) -> Report {
        Report {
            scenario: plan.scenario,
            transport: plan.transport,
            sub_addr: None,
            pub_addr: String::new(),
            mqtt: match plan.version {
                Version::V3_1 => "3.1",
                Version::V3_1_1 => "3.1.1",
                Version::V5 => "5",
            }
            .into(),
            qos: plan.qos as u8,
            payload: plan.payload,
            publishers: plan.pubs.len(),
            subscribers: plan.subs.len(),
            connections: plan.conns,
            rate: plan.rate,
            inflight: plan.window,
            threads: plan.threads,
            warmup_s: self.warmup.as_secs_f64(),
            duration_s: self.duration.as_secs_f64(),
            msgs_per_s: 0.0,
            published_per_s: 0.0,
            sent: 0,
            delivered: 0,
            expected: 0,
            lost: 0,
            duplicates: 0,
            reordered: 0,
            foreign: 0,
            stalls: 0,
            failed_clients: 0,
            first_error: None,
            latency: Latency::default(),
            broker: None,
            client_cpu_cores: 0.0,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            ok: false,
        }
    }

    fn setup(&self, plan: &Plan, run: &Run) -> Result<(), String> {
        let want = plan.pubs.len() + plan.subs.len();
        let t0 = Instant::now();
        while run.ready.load(Ordering::Acquire) < want {
            if run.failed.load(Ordering::Acquire) > 0 {
                return Err(run
                    .first_error()
                    .unwrap_or_else(|| "a client failed".into()));
            }
            if t0.elapsed() > SETUP_TIMEOUT {
                return Err(format!(
                    "only {} of {want} clients connected and subscribed within {} s",
                    run.ready.load(Ordering::Acquire),
                    SETUP_TIMEOUT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    fn messages(&self, plan: &Plan, run: &Run, target: &Target) -> Result<Report, String> {
        self.setup(plan, run)?;
        if target.split() {
            // Every subscriber has its SUBACK from its own broker; in a cluster the route
            // still has to reach the publishers' node (through Redis, a few ms). Give it time
            // before the first publish; the warm-up absorbs anything slower.
            std::thread::sleep(SUB_SETTLE);
        }
        run.set_phase(phase::WARMUP);
        if !self.warmup.is_zero() {
            self.watch(run, "warm-up", self.warmup, |_| false);
        }
        let a = self.snapshot(run);
        run.set_phase(phase::MEASURE);
        let rss_max = self.watch(run, "measure", self.duration, |_| false);
        let b = self.snapshot(run);
        run.set_phase(phase::DRAIN);
        // Wait for what is in flight: until every expected delivery arrived, nothing arrived
        // for a while, or the drain timeout.
        let t0 = Instant::now();
        let (mut last, mut quiet_since) = (run.received.load(Ordering::Acquire), Instant::now());
        while t0.elapsed() < DRAIN_TIMEOUT && quiet_since.elapsed() < DRAIN_QUIET {
            // A publisher may be writing a batch counted in `sent` only once written: compare
            // once every publisher has stopped.
            let stopped = run.pubs.iter().all(|p| p.stopped.load(Ordering::Acquire));
            let expected: u64 = run
                .pubs
                .iter()
                .map(|p| p.sent.load(Ordering::Acquire) * plan.fanout)
                .sum();
            let delivered: u64 = run
                .pubs
                .iter()
                .map(|p| p.delivered.load(Ordering::Acquire))
                .sum();
            if stopped && delivered >= expected {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
            let now = run.received.load(Ordering::Acquire);
            if now != last {
                (last, quiet_since) = (now, Instant::now());
            }
        }
        let secs = (b.at - a.at).as_secs_f64();
        let mut r = self.base_report(plan);
        r.sub_addr = target.split().then(|| target.sub_addr.to_string());
        r.pub_addr = target.addr.to_string();
        r.msgs_per_s = (b.received - a.received) as f64 / secs;
        r.published_per_s = (b.sent - a.sent) as f64 / secs;
        r.client_cpu_cores = (b.own_cpu - a.own_cpu).as_secs_f64() / secs;
        r.broker = broker_use(self.broker_pid, &a, &b, b.received - a.received, rss_max);
        Ok(r)
    }

    fn conn(&self, plan: &Plan, run: &Run) -> Result<Report, String> {
        let a = self.snapshot(run);
        run.set_phase(phase::WARMUP);
        let want = plan.conns;
        let done = |run: &Run| {
            run.ready.load(Ordering::Acquire) + run.failed.load(Ordering::Acquire) >= want
        };
        let mut rss_max = self.watch(
            run,
            "connect",
            SETUP_TIMEOUT + Duration::from_secs(want as u64 / 1000),
            done,
        );
        let b = self.snapshot(run);
        let opened = b.ready as u64;
        if !done(run) {
            run.fail(format!(
                "only {opened} of {want} connections opened in time"
            ));
        }
        run.set_phase(phase::MEASURE);
        rss_max = rss_max.max(self.watch(run, "hold", self.duration, |_| false));
        let c = self.snapshot(run);
        let secs = (b.at - a.at).as_secs_f64();
        let mut r = self.base_report(plan);
        r.delivered = opened;
        r.msgs_per_s = opened as f64 / secs;
        r.client_cpu_cores = (b.own_cpu - a.own_cpu).as_secs_f64() / secs;
        r.broker = broker_use(self.broker_pid, &a, &b, opened, rss_max).map(|mut u| {
            if let (Some(before), Some(held)) = (a.broker, c.broker) {
                u.rss_per_conn =
                    Some(held.rss.saturating_sub(before.rss) as f64 / opened.max(1) as f64);
            }
            u
        });
        Ok(r)
    }
}

fn broker_use(
    pid: Option<u32>,
    a: &Snapshot,
    b: &Snapshot,
    units: u64,
    rss_max: u64,
) -> Option<BrokerUse> {
    let (pid, x, y) = (pid?, a.broker?, b.broker?);
    let cpu = (y.cpu - x.cpu).as_secs_f64();
    Some(BrokerUse {
        pid,
        cpu_us_per_msg: cpu * 1e6 / units.max(1) as f64,
        cpu_cores: cpu / (b.at - a.at).as_secs_f64(),
        rss_max: rss_max.max(y.rss),
        rss_peak: y.hwm,
        rss_per_conn: None,
    })
}

/// Adds the subscribers' checks into the report: loss, duplicates, reordering.
fn tally(plan: &Plan, run: &Run, outs: &[ThreadOut], r: &mut Report) {
    let sent: Vec<u64> = run
        .pubs
        .iter()
        .map(|p| p.sent.load(Ordering::Acquire))
        .collect();
    r.sent = sent.iter().sum();
    r.delivered = run.received.load(Ordering::Acquire);
    let mut unique_per_pub = vec![0u64; sent.len()];
    for (from, checks) in outs.iter().flat_map(|o| o.checks.iter()) {
        for (i, c) in checks.iter().enumerate() {
            let p = from.0 as usize + i;
            r.duplicates += c.duplicates;
            if plan.ordered {
                r.lost += c.lost(sent[p]);
                r.reordered += c.reordered;
            } else {
                unique_per_pub[p] += c.unique;
            }
        }
    }
    if plan.ordered {
        r.expected = r.sent * plan.fanout;
    } else {
        r.expected = r.sent;
        r.lost = sent
            .iter()
            .zip(&unique_per_pub)
            .map(|(s, u)| s.saturating_sub(*u))
            .sum();
    }
}
