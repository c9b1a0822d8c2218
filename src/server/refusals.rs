//! How many refused calls of unauthenticated callers (bad credentials,
//! unknown methods) are recorded one by one: a token bucket per peer
//! address. A call over its bucket is refused exactly as before but leaves
//! no events of its own; it is counted, and the count is written as one
//! `denied_summary` event per peer when that peer is next recorded, every
//! minute, and at shutdown. So a flood of refused calls costs the trail
//! one summary a minute per peer instead of two events per call.

use crate::audit::{AuditHandle, Event, Kind, now_rfc3339};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often pending counts are written even if their peer stays quiet.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// Who a bucket belongs to: an IPv4 address, an IPv6 /64 network (one
/// host usually has a whole /64), or every peer that found no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Peer {
    Addr(IpAddr),
    Others,
}

impl Peer {
    fn of(ip: Option<IpAddr>) -> Self {
        match ip.map(|ip| ip.to_canonical()) {
            Some(IpAddr::V6(v6)) => {
                let net = u128::from(v6) & !((1u128 << 64) - 1);
                Peer::Addr(IpAddr::V6(net.into()))
            }
            Some(v4) => Peer::Addr(v4),
            None => Peer::Others,
        }
    }

    fn name(&self) -> String {
        match self {
            Peer::Addr(IpAddr::V6(net)) => format!("{net}/64"),
            Peer::Addr(v4) => v4.to_string(),
            Peer::Others => "others".into(),
        }
    }
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
    /// Calls not recorded since the last summary, and when the first was.
    suppressed: u64,
    since: Option<String>,
    /// Last use, as a tick of `State::tick` (the key in `State::order`).
    seen: u64,
}

impl Bucket {
    fn refill(&mut self, now: Instant, burst: f64, per_sec: f64) {
        let dt = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + dt * per_sec).min(burst);
        self.refilled = now;
    }

    fn take_summary(&mut self, peer: Peer) -> Option<Event> {
        if self.suppressed == 0 {
            return None;
        }
        let mut e = Event::new(Kind::DeniedSummary, "-");
        e.peer = Some(peer.name());
        e.detail = Some(
            serde_json::json!({
                "peer": peer.name(),
                "suppressed": self.suppressed,
                "since": self.since.take(),
            })
            .to_string(),
        );
        self.suppressed = 0;
        Some(e)
    }
}

struct State {
    peers: HashMap<Peer, Bucket>,
    /// `seen` tick to peer: the least recently seen peer first.
    order: BTreeMap<u64, Peer>,
    tick: u64,
    /// Records left for all peers together, and when last refilled.
    all_tokens: f64,
    all_refilled: Instant,
}

/// Whether a refused call is recorded one by one.
#[derive(Debug)]
pub struct Admission {
    /// Record the call; when false it is only counted for a summary.
    pub record: bool,
    /// Summaries of calls that were not recorded, to write first.
    pub summaries: Vec<Event>,
}

/// The buckets of all peers; shared by every call.
pub struct RefusalLimiter {
    burst: f64,
    per_sec: f64,
    max_peers: usize,
    /// All peers together: a minute's worth at once, refilled per second.
    all_per_minute: f64,
    state: Mutex<State>,
}

impl RefusalLimiter {
    /// `burst` records at once per peer, refilled at `per_minute`; at most
    /// `max_peers` peers have buckets of their own; at most
    /// `all_per_minute` records a minute for all peers together, so that
    /// many addresses buy no more than that.
    pub fn new(burst: u32, per_minute: u32, max_peers: usize, all_per_minute: u32) -> Self {
        let all = f64::from(all_per_minute.max(1));
        Self {
            burst: f64::from(burst.max(1)),
            per_sec: f64::from(per_minute) / 60.0,
            max_peers: max_peers.max(1),
            all_per_minute: all,
            state: Mutex::new(State {
                peers: HashMap::new(),
                order: BTreeMap::new(),
                tick: 0,
                all_tokens: all,
                all_refilled: Instant::now(),
            }),
        }
    }

    fn fresh(&self, now: Instant) -> Bucket {
        Bucket {
            tokens: self.burst,
            refilled: now,
            suppressed: 0,
            since: None,
            seen: 0,
        }
    }

    /// Takes a record from the bucket of the peer at `ip`.
    pub fn admit(&self, ip: Option<IpAddr>) -> Admission {
        self.admit_at(ip, Instant::now())
    }

    fn admit_at(&self, ip: Option<IpAddr>, now: Instant) -> Admission {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let st = &mut *guard;
        let mut peer = Peer::of(ip);
        let mut evicted = None;
        if !st.peers.contains_key(&peer) && st.peers.len() >= self.max_peers {
            // Room is made only by a peer that has been quiet long enough
            // for its bucket to be full again: forgetting it loses nothing
            // but its count, which is summarized now. Otherwise the
            // newcomer shares the one bucket of peers without a place, so
            // many addresses buy no more records than the map can hold.
            let oldest = st.order.values().copied().find(|p| *p != Peer::Others);
            let quiet = oldest.filter(|p| {
                st.peers.get_mut(p).is_some_and(|b| {
                    b.refill(now, self.burst, self.per_sec);
                    b.tokens >= self.burst
                })
            });
            match quiet {
                Some(old) => {
                    if let Some(mut b) = st.peers.remove(&old) {
                        st.order.remove(&b.seen);
                        evicted = b.take_summary(old);
                    }
                }
                None => peer = Peer::Others,
            }
        }
        st.tick += 1;
        let tick = st.tick;
        let b = st.peers.entry(peer).or_insert_with(|| self.fresh(now));
        st.order.remove(&b.seen);
        b.seen = tick;
        st.order.insert(tick, peer);
        b.refill(now, self.burst, self.per_sec);
        let dt = now.saturating_duration_since(st.all_refilled).as_secs_f64();
        st.all_tokens = (st.all_tokens + dt * self.all_per_minute / 60.0).min(self.all_per_minute);
        st.all_refilled = now;
        let record = b.tokens >= 1.0 && st.all_tokens >= 1.0;
        let mut summaries: Vec<Event> = evicted.into_iter().collect();
        if record {
            b.tokens -= 1.0;
            st.all_tokens -= 1.0;
            summaries.extend(b.take_summary(peer));
        } else {
            b.suppressed += 1;
            b.since.get_or_insert_with(now_rfc3339);
        }
        Admission { record, summaries }
    }

    /// Summaries of every peer with calls not yet on record; peers whose
    /// buckets are full again and have nothing pending are forgotten.
    pub fn drain_summaries(&self) -> Vec<Event> {
        self.drain_at(Instant::now())
    }

    fn drain_at(&self, now: Instant) -> Vec<Event> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let st = &mut *guard;
        let mut out = Vec::new();
        let mut idle = Vec::new();
        for (peer, b) in st.peers.iter_mut() {
            out.extend(b.take_summary(*peer));
            b.refill(now, self.burst, self.per_sec);
            if b.tokens >= self.burst {
                idle.push((*peer, b.seen));
            }
        }
        for (peer, seen) in idle {
            st.peers.remove(&peer);
            st.order.remove(&seen);
        }
        out
    }

    /// Peers with a bucket of their own now (for tests).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .peers
            .len()
    }
}

/// Writes pending summaries every `SUMMARY_EVERY`, so a peer that stops
/// after a flood still has its count on record within a minute. The
/// server writes the last ones itself at shutdown.
pub async fn write_summaries(limiter: std::sync::Arc<RefusalLimiter>, audit: AuditHandle) {
    let mut tick = tokio::time::interval(SUMMARY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        for e in limiter.drain_summaries() {
            audit.record(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("ip"))
    }

    fn suppressed(e: &Event) -> (String, u64) {
        let d: serde_json::Value =
            serde_json::from_str(e.detail.as_deref().expect("detail")).expect("json");
        assert_eq!(e.kind, Kind::DeniedSummary);
        assert!(d["since"].is_string(), "{d}");
        (
            d["peer"].as_str().expect("peer").to_string(),
            d["suppressed"].as_u64().expect("count"),
        )
    }

    #[test]
    fn a_peer_gets_its_burst_then_a_summary_of_what_was_not_recorded() {
        let l = RefusalLimiter::new(3, 60, 16, 1000);
        let t0 = Instant::now();
        let a = ip("10.0.0.1");
        for _ in 0..3 {
            let ad = l.admit_at(a, t0);
            assert!(ad.record && ad.summaries.is_empty(), "{ad:?}");
        }
        for _ in 0..5 {
            assert!(!l.admit_at(a, t0).record);
        }
        // Another peer has its own bucket.
        assert!(l.admit_at(ip("10.0.0.2"), t0).record);
        // One record a second comes back; the next recorded call brings
        // the count of those that were not.
        let ad = l.admit_at(a, t0 + Duration::from_millis(1000));
        assert!(ad.record);
        assert_eq!(ad.summaries.len(), 1);
        assert_eq!(suppressed(&ad.summaries[0]), ("10.0.0.1".into(), 5));
        assert!(!l.admit_at(a, t0 + Duration::from_millis(1000)).record);
        // The periodic drain writes what is pending, once.
        let s = l.drain_at(t0 + Duration::from_millis(1500));
        assert_eq!(s.len(), 1);
        assert_eq!(suppressed(&s[0]), ("10.0.0.1".into(), 1));
        assert!(l.drain_at(t0 + Duration::from_millis(1500)).is_empty());
    }

    #[test]
    fn all_peers_together_get_at_most_the_total() {
        let l = RefusalLimiter::new(5, 60, 10_000, 30);
        let t0 = Instant::now();
        // 1000 addresses, each within its own burst: 30 recorded in all.
        let recorded = (0..1000u32)
            .filter(|i| {
                let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000u32 + i));
                l.admit_at(Some(a), t0).record
            })
            .count();
        assert_eq!(recorded, 30);
        // Two seconds later, one more a second.
        let later = t0 + Duration::from_secs(2);
        let a = ip("10.9.0.1");
        let recorded = (0..10).filter(|_| l.admit_at(a, later).record).count();
        assert_eq!(recorded, 1);
        // Every call not recorded is in a summary.
        let counted: u64 = l.drain_at(later).iter().map(|e| suppressed(e).1).sum();
        assert_eq!(counted, 970 + 9);
    }

    #[test]
    fn ipv6_peers_share_a_bucket_per_64_and_mapped_ipv4_is_ipv4() {
        let l = RefusalLimiter::new(1, 1, 16, 1000);
        let t0 = Instant::now();
        assert!(l.admit_at(ip("2001:db8:1:2::1"), t0).record);
        assert!(!l.admit_at(ip("2001:db8:1:2:ffff::9"), t0).record);
        assert!(l.admit_at(ip("2001:db8:1:3::1"), t0).record);
        assert!(l.admit_at(ip("::ffff:10.0.0.1"), t0).record);
        assert!(!l.admit_at(ip("10.0.0.1"), t0).record);
        let mut peers: Vec<(String, u64)> = l.drain_at(t0).iter().map(suppressed).collect();
        peers.sort();
        assert_eq!(
            peers,
            [("10.0.0.1".into(), 1), ("2001:db8:1:2::/64".into(), 1)]
        );
    }

    #[test]
    fn the_peer_map_is_bounded_and_busy_newcomers_share_one_bucket() {
        let l = RefusalLimiter::new(2, 60, 2, 1000);
        let t0 = Instant::now();
        for p in ["10.0.0.1", "10.0.0.2"] {
            for _ in 0..3 {
                l.admit_at(ip(p), t0);
            }
        }
        // Both tracked peers are busy: a thousand newcomers get the
        // shared bucket, so together they get its burst of two records.
        let recorded = (0..1000u32)
            .filter(|i| {
                let a = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000u32 + i));
                l.admit_at(Some(a), t0).record
            })
            .count();
        assert_eq!(recorded, 2);
        assert_eq!(l.tracked(), 3);
        // Once the oldest is quiet (its bucket full again), a newcomer
        // takes its place, and the old peer's count is written then.
        let later = t0 + Duration::from_secs(10);
        let ad = l.admit_at(ip("10.9.9.9"), later);
        assert!(ad.record);
        assert_eq!(ad.summaries.len(), 1, "{ad:?}");
        assert_eq!(suppressed(&ad.summaries[0]), ("10.0.0.1".into(), 1));
        assert_eq!(l.tracked(), 3);
        let mut rest: Vec<(String, u64)> = l.drain_at(later).iter().map(suppressed).collect();
        rest.sort();
        assert_eq!(rest, [("10.0.0.2".into(), 1), ("others".into(), 998)]);
        // Quiet peers are forgotten by the drain.
        assert!(l.drain_at(later + Duration::from_secs(10)).is_empty());
        assert_eq!(l.tracked(), 0);
    }
}
