//! QoS 1 / 2 flow state of one session: the outgoing inflight window with packet-identifier
//! allocation, and the incoming QoS 2 identifiers awaiting PUBREL.
//!
//! ```text
//!  outgoing (broker → client)              incoming QoS 2 (client → broker)
//!
//!  QoS 1:  PUBLISH ──► AwaitPubAck         PUBLISH(id) ──► deliver once, remember id,
//!          PUBACK  ◄── free the id                         answer PUBREC
//!  QoS 2:  PUBLISH ──► AwaitPubRec         PUBLISH(id) again (DUP) ──► id remembered:
//!          PUBREC  ◄── AwaitPubComp,                         do NOT deliver again, PUBREC
//!                      send PUBREL         PUBREL(id) ──► forget id, answer PUBCOMP
//!          PUBCOMP ◄── free the id
//! ```
//!
//! The window never holds more than its capacity (the client's Receive Maximum, bounded by
//! `Limits::max_inflight`); messages beyond it wait in the session's queue. On reconnect the
//! window is replayed in its original order: PUBLISH with DUP set for messages not yet
//! acknowledged (or received), PUBREL for those awaiting PUBCOMP ([MQTT-4.4.0-1]).
//!
//! Entries are kept in send order. Acknowledgements almost always arrive in that order, so the
//! common case is O(1) at the front; an out-of-order acknowledgement scans the window (bounded
//! by its capacity) and leaves a tombstone that is dropped once it reaches the front, or in a
//! compaction once tombstones reach the capacity (a message never acknowledged must not let
//! them grow without bound).
//!
//! Pure data; no I/O, no clock. Owned by the session, on the shard that owns the session.

use std::collections::VecDeque;

/// Where an outgoing QoS > 0 message stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutState {
    /// QoS 1 PUBLISH sent, PUBACK not yet received.
    AwaitPubAck,
    /// QoS 2 PUBLISH sent, PUBREC not yet received.
    AwaitPubRec,
    /// QoS 2 PUBREC received and PUBREL sent, PUBCOMP not yet received.
    AwaitPubComp,
}

#[derive(Debug)]
struct Entry<M> {
    id: u16,
    state: OutState,
    /// The message, until it is known to be received (dropped at PUBREC for QoS 2).
    message: Option<M>,
    /// Acknowledged out of order; removed when it reaches the front.
    done: bool,
}

/// What an acknowledgement did to the window.
#[derive(Debug, PartialEq, Eq)]
pub enum AckOutcome<M> {
    /// The message is complete (PUBACK, or PUBCOMP); its identifier is free again.
    Completed(Option<M>),
    /// PUBREC accepted: send PUBREL for this identifier.
    SendPubRel(M),
    /// PUBREC for a message already past PUBREC (a retransmitted PUBREC): send PUBREL again.
    ResendPubRel,
    /// No message with this identifier is in the expected state (a protocol violation the
    /// caller may report, e.g. 5.0 PUBREL/PUBCOMP reason 0x92 Packet Identifier not found).
    Unknown,
}

/// The outgoing inflight window.
#[derive(Debug)]
pub struct OutWindow<M> {
    entries: VecDeque<Entry<M>>,
    /// Live (not tombstoned) entries.
    live: usize,
    capacity: u16,
    next_id: u16,
}

impl<M> OutWindow<M> {
    /// An empty window holding at most `capacity` (≥ 1) unacknowledged messages.
    pub fn new(capacity: u16) -> Self {
        Self {
            entries: VecDeque::new(),
            live: 0,
            capacity: capacity.max(1),
            next_id: 1,
        }
    }

    /// Messages in flight.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Whether another message may be sent now.
    pub fn has_room(&self) -> bool {
        self.live < self.capacity as usize
    }

    /// The window's capacity.
    pub fn capacity(&self) -> u16 {
        self.capacity
    }

    /// Changes the capacity (a reconnecting client may announce a different Receive Maximum).
    /// Messages already in flight stay; no new ones are admitted until below the new capacity.
    pub fn set_capacity(&mut self, capacity: u16) {
        self.capacity = capacity.max(1);
    }

    fn in_use(&self, id: u16) -> bool {
        self.entries.iter().any(|e| e.id == id && !e.done)
    }

    /// Admits `message` for sending at `qos2 ? QoS 2 : QoS 1` and returns its packet
    /// identifier, or gives the message back when the window is full.
    pub fn push(&mut self, message: M, qos2: bool) -> Result<u16, M> {
        if !self.has_room() {
            return Err(message);
        }
        // At most `capacity` (< 65535) identifiers are in use, so this terminates.
        let mut id = self.next_id;
        while self.in_use(id) {
            id = if id == u16::MAX { 1 } else { id + 1 };
        }
        self.next_id = if id == u16::MAX { 1 } else { id + 1 };
        let state = if qos2 {
            OutState::AwaitPubRec
        } else {
            OutState::AwaitPubAck
        };
        self.entries.push_back(Entry {
            id,
            state,
            message: Some(message),
            done: false,
        });
        self.live += 1;
        Ok(id)
    }

    fn position(&self, id: u16) -> Option<usize> {
        match self.entries.front() {
            Some(e) if e.id == id && !e.done => Some(0),
            _ => self.entries.iter().position(|e| e.id == id && !e.done),
        }
    }

    fn complete(&mut self, pos: usize) -> Option<M> {
        let message = self.entries[pos].message.take();
        self.entries[pos].done = true;
        self.live -= 1;
        while self.entries.front().is_some_and(|e| e.done) {
            self.entries.pop_front();
        }
        // A message that is never acknowledged holds the front while later ones complete:
        // compact so tombstones stay bounded by the capacity.
        if self.entries.len() >= 2 * self.capacity as usize {
            self.entries.retain(|e| !e.done);
        }
        message
    }

    /// Handles PUBACK for `id`.
    pub fn puback(&mut self, id: u16) -> AckOutcome<M> {
        match self.position(id) {
            Some(pos) if self.entries[pos].state == OutState::AwaitPubAck => {
                AckOutcome::Completed(self.complete(pos))
            }
            _ => AckOutcome::Unknown,
        }
    }

    /// Handles PUBREC for `id`. The message is handed back (it is no longer needed for
    /// retransmission); the identifier stays in use until PUBCOMP.
    pub fn pubrec(&mut self, id: u16) -> AckOutcome<M> {
        let Some(pos) = self.position(id) else {
            return AckOutcome::Unknown;
        };
        let e = &mut self.entries[pos];
        match e.state {
            OutState::AwaitPubRec => {
                e.state = OutState::AwaitPubComp;
                match e.message.take() {
                    Some(m) => AckOutcome::SendPubRel(m),
                    None => AckOutcome::ResendPubRel,
                }
            }
            OutState::AwaitPubComp => AckOutcome::ResendPubRel,
            OutState::AwaitPubAck => AckOutcome::Unknown,
        }
    }

    /// Handles a 5.0 PUBREC whose reason code is a failure: the exchange ends there
    /// ([MQTT-4.3.3-4]) and the identifier is free again.
    pub fn pubrec_failed(&mut self, id: u16) -> AckOutcome<M> {
        match self.position(id) {
            Some(pos) if self.entries[pos].state == OutState::AwaitPubRec => {
                AckOutcome::Completed(self.complete(pos))
            }
            _ => AckOutcome::Unknown,
        }
    }

    /// Handles PUBCOMP for `id`.
    pub fn pubcomp(&mut self, id: u16) -> AckOutcome<M> {
        match self.position(id) {
            Some(pos) if self.entries[pos].state == OutState::AwaitPubComp => {
                AckOutcome::Completed(self.complete(pos))
            }
            _ => AckOutcome::Unknown,
        }
    }

    /// What to resend after a reconnect, in the original order: `(id, state, message)`;
    /// PUBLISH with DUP for `AwaitPubAck` / `AwaitPubRec` (message present), PUBREL for
    /// `AwaitPubComp` (no message).
    pub fn replay(&self) -> impl Iterator<Item = (u16, OutState, Option<&M>)> {
        self.entries
            .iter()
            .filter(|e| !e.done)
            .map(|e| (e.id, e.state, e.message.as_ref()))
    }

    /// Puts back an entry of a restored session (in the original order), keeping its packet
    /// identifier and state. Entries beyond the capacity are kept too: the replay after the
    /// next CONNACK paces them by the client's Receive Maximum.
    pub fn restore(&mut self, id: u16, state: OutState, message: Option<M>) {
        if id == 0 || self.in_use(id) {
            return;
        }
        self.entries.push_back(Entry {
            id,
            state,
            message,
            done: false,
        });
        self.live += 1;
        self.next_id = if id == u16::MAX { 1 } else { id + 1 };
    }

    /// Empties the window, handing back the messages not yet received by the client (for a
    /// session that moves, or is discarded with its messages requeued elsewhere).
    pub fn drain(&mut self) -> impl Iterator<Item = (u16, OutState, Option<M>)> + '_ {
        self.live = 0;
        self.entries
            .drain(..)
            .filter(|e| !e.done)
            .map(|e| (e.id, e.state, e.message))
    }
}

/// What to do with an incoming QoS 2 PUBLISH.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncomingQos2 {
    /// First time this identifier is seen: deliver the message, answer PUBREC.
    Deliver,
    /// Already received and not yet released: answer PUBREC, do not deliver again.
    Duplicate,
    /// Too many unreleased messages: the client exceeded the broker's Receive Maximum
    /// (5.0: DISCONNECT 0x93).
    Exceeded,
}

/// Incoming QoS 2 identifiers received but not yet released by PUBREL.
#[derive(Debug, Default)]
pub struct InWindow {
    ids: Vec<u16>,
    limit: u16,
}

impl InWindow {
    /// At most `limit` unreleased identifiers (the broker's Receive Maximum).
    pub fn new(limit: u16) -> Self {
        Self {
            ids: Vec::new(),
            limit: limit.max(1),
        }
    }

    /// Registers a QoS 2 PUBLISH with identifier `id`.
    pub fn publish(&mut self, id: u16) -> IncomingQos2 {
        if self.ids.contains(&id) {
            return IncomingQos2::Duplicate;
        }
        if self.ids.len() >= self.limit as usize {
            return IncomingQos2::Exceeded;
        }
        self.ids.push(id);
        IncomingQos2::Deliver
    }

    /// Handles PUBREL: `true` if the identifier was awaiting release (answer PUBCOMP either
    /// way; 5.0 adds reason 0x92 when it was not).
    pub fn pubrel(&mut self, id: u16) -> bool {
        match self.ids.iter().position(|&x| x == id) {
            Some(i) => {
                self.ids.swap_remove(i);
                true
            }
            None => false,
        }
    }

    /// Puts back an identifier of a restored session.
    pub fn restore(&mut self, id: u16) {
        if !self.ids.contains(&id) {
            self.ids.push(id);
        }
    }

    /// Identifiers awaiting release (persisted with the session).
    pub fn ids(&self) -> &[u16] {
        &self.ids
    }

    /// Number of identifiers awaiting release.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether none is awaiting release.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qos1_in_order_and_out_of_order() {
        let mut w = OutWindow::new(3);
        assert_eq!(w.push("a", false), Ok(1));
        assert_eq!(w.push("b", false), Ok(2));
        assert_eq!(w.push("c", false), Ok(3));
        assert_eq!(w.push("d", false), Err("d"));
        assert_eq!(w.puback(2), AckOutcome::Completed(Some("b")));
        assert_eq!(
            w.puback(2),
            AckOutcome::Unknown,
            "a second PUBACK is unknown"
        );
        assert_eq!(w.len(), 2);
        assert_eq!(w.push("d", false), Ok(4));
        assert_eq!(w.puback(1), AckOutcome::Completed(Some("a")));
        let order: Vec<_> = w.replay().map(|(id, _, m)| (id, *m.unwrap())).collect();
        assert_eq!(order, vec![(3, "c"), (4, "d")]);
        assert_eq!(w.puback(9), AckOutcome::Unknown);
    }

    #[test]
    fn qos2_flow_and_retransmitted_pubrec() {
        let mut w = OutWindow::new(2);
        let id = w.push("m", true).unwrap();
        assert_eq!(
            w.puback(id),
            AckOutcome::Unknown,
            "PUBACK does not end a QoS 2 flow"
        );
        assert_eq!(w.pubcomp(id), AckOutcome::Unknown, "PUBCOMP before PUBREC");
        assert_eq!(w.pubrec(id), AckOutcome::SendPubRel("m"));
        assert_eq!(w.pubrec(id), AckOutcome::ResendPubRel);
        let replay: Vec<_> = w.replay().map(|(id, s, m)| (id, s, m.is_some())).collect();
        assert_eq!(replay, vec![(id, OutState::AwaitPubComp, false)]);
        assert_eq!(w.pubcomp(id), AckOutcome::Completed(None));
        assert!(w.is_empty());
    }

    #[test]
    fn failed_pubrec_frees_the_id() {
        let mut w = OutWindow::new(1);
        let id = w.push(1, true).unwrap();
        assert_eq!(w.pubrec_failed(id), AckOutcome::Completed(Some(1)));
        assert!(w.has_room());
    }

    #[test]
    fn ids_skip_those_in_use_and_wrap() {
        let mut w = OutWindow::new(2);
        w.next_id = u16::MAX;
        assert_eq!(w.push(0, false), Ok(u16::MAX));
        assert_eq!(w.push(1, false), Ok(1), "0 is never used");
        assert_eq!(w.puback(1), AckOutcome::Completed(Some(1)));
        w.next_id = u16::MAX; // still in use: must be skipped
        assert_eq!(w.push(2, false), Ok(1));
    }

    #[test]
    fn ids_are_unique_under_churn() {
        let mut w = OutWindow::new(50);
        let mut live = std::collections::HashSet::new();
        for round in 0..200_000u32 {
            if w.has_room() {
                let id = w.push(round, round % 2 == 0).unwrap();
                assert_ne!(id, 0);
                assert!(live.insert(id), "id {id} handed out twice");
            }
            // Acknowledge a pseudo-random live id.
            if round % 3 == 0 {
                if let Some(&id) = live.iter().nth((round as usize * 7) % live.len().max(1)) {
                    let done = match w.puback(id) {
                        AckOutcome::Completed(_) => true,
                        _ => {
                            assert!(matches!(w.pubrec(id), AckOutcome::SendPubRel(_)));
                            matches!(w.pubcomp(id), AckOutcome::Completed(None))
                        }
                    };
                    assert!(done);
                    live.remove(&id);
                }
            }
            assert_eq!(w.len(), live.len());
            assert!(
                w.entries.len() <= 50 + 50,
                "tombstones are bounded by the window"
            );
        }
    }

    #[test]
    fn an_unacknowledged_front_does_not_grow_tombstones() {
        let mut w = OutWindow::new(4);
        let stuck = w.push(u32::MAX, false).unwrap();
        for m in 0..10_000 {
            let id = w.push(m, false).unwrap();
            assert_eq!(w.puback(id), AckOutcome::Completed(Some(m)));
            assert!(w.entries.len() <= 8);
        }
        assert_eq!(
            w.replay().map(|(id, _, _)| id).collect::<Vec<_>>(),
            vec![stuck]
        );
    }

    #[test]
    fn shrinking_capacity_keeps_inflight() {
        let mut w = OutWindow::new(3);
        for m in 0..3 {
            w.push(m, false).unwrap();
        }
        w.set_capacity(1);
        assert!(!w.has_room());
        assert_eq!(w.puback(1), AckOutcome::Completed(Some(0)));
        assert!(!w.has_room());
        let drained: Vec<_> = w.drain().map(|(id, _, m)| (id, m)).collect();
        assert_eq!(drained, vec![(2, Some(1)), (3, Some(2))]);
        assert!(w.is_empty() && w.has_room());
    }

    #[test]
    fn incoming_qos2_exactly_once() {
        let mut w = InWindow::new(2);
        assert_eq!(w.publish(7), IncomingQos2::Deliver);
        assert_eq!(w.publish(7), IncomingQos2::Duplicate);
        assert_eq!(w.publish(8), IncomingQos2::Deliver);
        assert_eq!(w.publish(9), IncomingQos2::Exceeded);
        assert!(w.pubrel(7));
        assert!(!w.pubrel(7));
        assert_eq!(
            w.publish(7),
            IncomingQos2::Deliver,
            "a released id is new again"
        );
        assert_eq!(w.ids().len(), 2);
    }
}
