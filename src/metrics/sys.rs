//! mosquitto's `$SYS/broker/...` topics from the merged shard snapshots, with the moving
//! averages (`load/.../1min`, `5min`, `15min`, per minute) they need. No I/O: shard 0 calls
//! [`SysTopics::update`] every `metrics.sys_interval` seconds and publishes the result as
//! retained messages (not written to the store).

use super::snapshot::ShardSnapshot;

/// The averaging windows of the `load` topics, seconds.
const WINDOWS: [(&str, f64); 3] = [("1min", 60.0), ("5min", 300.0), ("15min", 900.0)];

/// The load series: (topic part, value from a merged snapshot).
const LOADS: [&str; 5] = [
    "messages/received",
    "messages/sent",
    "bytes/received",
    "bytes/sent",
    "connections",
];

fn load_values(m: &ShardSnapshot) -> [u64; 5] {
    [
        m.received.iter().sum(),
        m.delivered.iter().sum(),
        m.bytes_in,
        m.bytes_out,
        m.accepted.iter().sum(),
    ]
}

/// The state behind the `$SYS` topics between updates.
#[derive(Debug, Default)]
pub struct SysTopics {
    /// Uptime and load values of the previous update.
    last: Option<(u64, [u64; 5])>,
    /// Per load series and window: the moving average, per minute.
    averages: [[f64; 3]; 5],
}

impl SysTopics {
    /// The topics and payloads for `shards`' snapshots at `uptime_secs`.
    pub fn update(
        &mut self,
        shards: &[ShardSnapshot],
        uptime_secs: u64,
        version: &str,
    ) -> Vec<(String, String)> {
        let m = ShardSnapshot::merge(shards);
        let values = load_values(&m);
        if let Some((then, before)) = self.last
            && uptime_secs > then
        {
            let dt = (uptime_secs - then) as f64;
            for (k, avg) in self.averages.iter_mut().enumerate() {
                let per_minute = values[k].saturating_sub(before[k]) as f64 * 60.0 / dt;
                for (w, (_, window)) in avg.iter_mut().zip(WINDOWS) {
                    *w += (1.0 - (-dt / window).exp()) * (per_minute - *w);
                }
            }
        }
        self.last = Some((uptime_secs, values));
        let connected = m.connections_total();
        let received: u64 = m.received.iter().sum();
        let sent: u64 = m.delivered.iter().sum();
        let mut t: Vec<(String, String)> = vec![
            ("version".into(), format!("shardmq version {version}")),
            ("uptime".into(), format!("{uptime_secs} seconds")),
            ("clients/connected".into(), connected.to_string()),
            ("clients/active".into(), connected.to_string()),
            ("clients/disconnected".into(), m.sessions_parked.to_string()),
            ("clients/inactive".into(), m.sessions_parked.to_string()),
            (
                "clients/total".into(),
                (m.sessions_live + m.sessions_parked).to_string(),
            ),
            ("messages/received".into(), received.to_string()),
            ("messages/sent".into(), sent.to_string()),
            ("publish/messages/received".into(), received.to_string()),
            ("publish/messages/sent".into(), sent.to_string()),
            (
                "publish/messages/dropped".into(),
                m.dropped
                    .by_reason()
                    .iter()
                    .map(|(_, v)| v)
                    .sum::<u64>()
                    .to_string(),
            ),
            ("bytes/received".into(), m.bytes_in.to_string()),
            ("bytes/sent".into(), m.bytes_out.to_string()),
            ("subscriptions/count".into(), m.subscriptions.to_string()),
            ("retained messages/count".into(), m.retained.to_string()),
            ("messages/inflight".into(), m.inflight.to_string()),
            ("messages/stored".into(), m.queued.to_string()),
        ];
        for (k, series) in LOADS.iter().enumerate() {
            for (w, (name, _)) in WINDOWS.iter().enumerate() {
                t.push((
                    format!("load/{series}/{name}"),
                    format!("{:.2}", self.averages[k][w]),
                ));
            }
        }
        t.into_iter()
            .map(|(k, v)| (format!("$SYS/broker/{k}"), v))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_moving_averages() {
        let mut sys = SysTopics::default();
        let mut s = ShardSnapshot {
            connections: [2, 0, 1, 0],
            ..Default::default()
        };
        let first = sys.update(std::slice::from_ref(&s), 10, "0.1.0");
        let get = |t: &[(String, String)], k: &str| {
            t.iter()
                .find(|(topic, _)| topic == &format!("$SYS/broker/{k}"))
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(get(&first, "version"), "shardmq version 0.1.0");
        assert_eq!(get(&first, "uptime"), "10 seconds");
        assert_eq!(get(&first, "clients/connected"), "3");
        assert_eq!(get(&first, "load/messages/received/1min"), "0.00");
        // 600 messages in 60 s: 600 a minute; the 1 min average moves most of the way.
        s.received = [600, 0, 0];
        let later = sys.update(std::slice::from_ref(&s), 70, "0.1.0");
        let one: f64 = get(&later, "load/messages/received/1min").parse().unwrap();
        let fifteen: f64 = get(&later, "load/messages/received/15min").parse().unwrap();
        assert!(
            (one - 600.0 * (1.0 - (-1.0f64).exp())).abs() < 0.01,
            "{one}"
        );
        assert!(fifteen < one && fifteen > 0.0);
        assert_eq!(get(&later, "messages/received"), "600");
    }
}
