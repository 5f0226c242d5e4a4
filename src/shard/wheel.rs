//! The keep alive wheel: one per shard, instead of one timer per connection.
//!
//! A hashed wheel of one-second slots. A connection is filed under the second its keep alive
//! grace (1.5 × Keep Alive, [MQTT-3.1.2-24]) would run out if it stayed silent. Reading from
//! the connection does not touch the wheel: it only stores the shard's current second in the
//! connection ("last heard"). When the wheel reaches a slot, each entry is checked against its
//! connection's last-heard time: expired ones are returned to be closed, live ones are filed
//! again under their new deadline. So a busy connection costs one wheel operation per grace
//! period, not one per packet, and the shard reads the clock once per second, not per read.
//!
//! Pure data; the shard's ticker task drives it with the current second. Runs on its shard.

/// Slots in the wheel (seconds); deadlines further out wrap and are re-checked on the way.
const SLOTS: usize = 64;

/// A connection's view as the wheel sees it.
pub trait Watched {
    /// The shard second the connection was last heard from, or `None` once it is closed
    /// (dropped from the wheel).
    fn last_heard(&self) -> Option<u32>;
    /// Seconds of silence allowed (1.5 × keep alive, or the CONNECT timeout before CONNECT).
    fn grace(&self) -> u32;
}

/// The per-shard keep alive wheel over connection handles `C`.
#[derive(Debug)]
pub struct Wheel<C> {
    slots: Vec<Vec<C>>,
    /// The last second processed.
    now: u32,
    len: usize,
}

impl<C: Watched> Wheel<C> {
    /// An empty wheel at second `now`.
    pub fn new(now: u32) -> Self {
        Self {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            now,
            len: 0,
        }
    }

    /// Connections filed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no connection is filed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn file(&mut self, c: C, deadline: u32) {
        // At least the next slot: the current one has been processed already.
        let due = deadline.max(self.now + 1);
        let due = due.min(self.now + SLOTS as u32 - 1);
        self.slots[due as usize % SLOTS].push(c);
        self.len += 1;
    }

    /// Files a connection (after it was heard from, or at accept).
    pub fn insert(&mut self, c: C) {
        if let Some(heard) = c.last_heard() {
            let deadline = heard.saturating_add(c.grace());
            self.file(c, deadline);
        }
    }

    /// Advances to second `now`, calling `expired` for every connection silent past its
    /// grace. Closed connections are dropped, live ones re-filed.
    pub fn advance(&mut self, now: u32, mut expired: impl FnMut(C)) {
        while self.now < now {
            self.now += 1;
            let slot = core::mem::take(&mut self.slots[self.now as usize % SLOTS]);
            self.len -= slot.len();
            for c in slot {
                let Some(heard) = c.last_heard() else {
                    continue;
                };
                let deadline = heard.saturating_add(c.grace());
                if deadline <= self.now {
                    expired(c);
                } else {
                    self.file(c, deadline);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[derive(Debug)]
    struct Conn {
        id: u32,
        heard: Cell<Option<u32>>,
        grace: u32,
    }

    impl Watched for Rc<Conn> {
        fn last_heard(&self) -> Option<u32> {
            self.heard.get()
        }
        fn grace(&self) -> u32 {
            self.grace
        }
    }

    fn conn(id: u32, heard: u32, grace: u32) -> Rc<Conn> {
        Rc::new(Conn {
            id,
            heard: Cell::new(Some(heard)),
            grace,
        })
    }

    fn run(w: &mut Wheel<Rc<Conn>>, to: u32) -> Vec<u32> {
        let mut out = Vec::new();
        w.advance(to, |c| out.push(c.id));
        out
    }

    #[test]
    fn silent_connections_expire_at_their_grace() {
        let mut w = Wheel::new(0);
        w.insert(conn(1, 0, 3));
        w.insert(conn(2, 0, 5));
        assert_eq!(run(&mut w, 2), Vec::<u32>::new());
        assert_eq!(run(&mut w, 3), vec![1]);
        assert_eq!(run(&mut w, 10), vec![2]);
        assert!(w.is_empty());
    }

    #[test]
    fn heard_connections_are_refiled_not_expired() {
        let mut w = Wheel::new(0);
        let c = conn(1, 0, 3);
        w.insert(c.clone());
        for now in 1..200 {
            c.heard.set(Some(now));
            assert!(run(&mut w, now).is_empty(), "at {now}");
        }
        assert_eq!(w.len(), 1);
        assert_eq!(run(&mut w, 203), vec![1]);
    }

    #[test]
    fn long_grace_wraps_the_wheel() {
        let mut w = Wheel::new(0);
        w.insert(conn(1, 0, 1000));
        assert!(run(&mut w, 999).is_empty());
        assert_eq!(run(&mut w, 1000), vec![1]);
    }

    #[test]
    fn closed_connections_are_dropped() {
        let mut w = Wheel::new(0);
        let c = conn(1, 0, 2);
        w.insert(c.clone());
        c.heard.set(None);
        assert!(run(&mut w, 5).is_empty());
        assert!(w.is_empty());
    }
}
