//! Rate limits (GCRA, the `governor` crate) and the client address they are keyed by.
//!
//! Each limit is a rate with an equal burst: `10/min` admits 10 at once, then one every 6 s.
//! Limits are kept in each instance's memory: with N instances behind a balancer that spreads
//! a client's requests, a client gets up to N times the configured rate, so configure
//! `rate ÷ instances` when the total matters. (The failed-login backoff, which protects
//! accounts rather than capacity, is kept in PostgreSQL and holds across instances: see the
//! domain's `logins` module.)
//!
//! The client address is the connection's peer, unless that peer is a configured trusted proxy:
//! then `X-Forwarded-For` is read from the right, skipping trusted proxies, and the first
//! address that is not one is the client's. An address in `X-Forwarded-For` sent by anyone else
//! is ignored, so a client cannot choose its own key. IPv6 clients are keyed by their /64, the
//! block one subscriber usually holds.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;

/// A configured rate: `<n>/<s|min|h>` (a burst of `n`, refilled evenly over the period), or
/// `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateSpec(Option<(NonZeroU32, Duration)>);

impl RateSpec {
    /// `n` per `period`.
    pub const fn per(n: NonZeroU32, period: Duration) -> Self {
        Self(Some((n, period)))
    }

    /// No limit.
    pub const OFF: RateSpec = RateSpec(None);

    /// The even spacing of the rate (`period ÷ n`); `None` when off.
    pub fn interval(self) -> Option<Duration> {
        let (n, period) = self.0?;
        Some(period / n.get())
    }

    fn quota(self) -> Option<Quota> {
        let (n, period) = self.0?;
        // `n` cells per period: one every period / n, with a burst of n.
        Quota::with_period(period / n.get()).map(|q| q.allow_burst(n))
    }
}

impl FromStr for RateSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("off") {
            return Ok(Self::OFF);
        }
        let bad = || format!("{s:?} is not a rate: expected <n>/s, <n>/min, <n>/h or off");
        let (n, unit) = s.split_once('/').ok_or_else(bad)?;
        let n: NonZeroU32 = n.trim().parse().map_err(|_| bad())?;
        let period = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        Ok(Self::per(n, period))
    }
}

impl std::fmt::Display for RateSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            None => f.write_str("off"),
            Some((n, p)) if p == Duration::from_secs(1) => write!(f, "{n}/s"),
            Some((n, p)) if p == Duration::from_secs(60) => write!(f, "{n}/min"),
            Some((n, p)) => write!(f, "{n}/{}s", p.as_secs()),
        }
    }
}

/// One limit, keyed by `K` (a client address or a user id).
pub struct Limit<K: Hash + Eq + Clone> {
    name: &'static str,
    limiter: Option<DefaultKeyedRateLimiter<K>>,
}

impl<K: Hash + Eq + Clone> Limit<K> {
    pub fn new(name: &'static str, spec: RateSpec) -> Self {
        Self {
            name,
            limiter: spec.quota().map(RateLimiter::keyed),
        }
    }

    /// Admits one request for `key`, or says how long until one would be admitted.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.check_key(key).map_err(|not_until| {
            metrics::counter!("http_rate_limited_total", "limit" => self.name).increment(1);
            not_until.wait_time_from(DefaultClock::default().now())
        })
    }

    /// Forgets keys whose allowance is full again, so the table holds only recent clients.
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// The configured rates.
#[derive(Debug, Clone, Copy)]
pub struct LimitSettings {
    pub sign_up_per_ip: RateSpec,
    pub token_per_ip: RateSpec,
    pub callback_per_ip: RateSpec,
    pub orders_per_user: RateSpec,
    pub coupon_issue_per_user: RateSpec,
    pub points_charge_per_user: RateSpec,
    pub likes_per_user: RateSpec,
}

/// Every limit the API applies.
pub struct Limits {
    pub sign_up: Limit<IpAddr>,
    pub token: Limit<IpAddr>,
    pub callback: Limit<IpAddr>,
    pub orders: Limit<i64>,
    pub coupon_issue: Limit<i64>,
    pub points_charge: Limit<i64>,
    pub likes: Limit<i64>,
}

impl Limits {
    pub fn new(s: &LimitSettings) -> Self {
        Self {
            sign_up: Limit::new("sign_up", s.sign_up_per_ip),
            token: Limit::new("token", s.token_per_ip),
            callback: Limit::new("payment_callback", s.callback_per_ip),
            orders: Limit::new("order_create", s.orders_per_user),
            coupon_issue: Limit::new("coupon_issue", s.coupon_issue_per_user),
            points_charge: Limit::new("points_charge", s.points_charge_per_user),
            likes: Limit::new("like", s.likes_per_user),
        }
    }

    /// Forgets idle keys of every limit.
    pub fn forget_idle(&self) {
        self.sign_up.forget_idle();
        self.token.forget_idle();
        self.callback.forget_idle();
        self.orders.forget_idle();
        self.coupon_issue.forget_idle();
        self.points_charge.forget_idle();
        self.likes.forget_idle();
    }
}

/// A list of trusted proxy addresses and networks: `10.0.0.0/8, 192.168.1.7`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl FromStr for TrustedProxies {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse::<IpNet>()
                    .or_else(|_| p.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{p:?} is neither an IP address nor a network"))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl std::fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&list.join(","))
    }
}

impl TrustedProxies {
    /// Whether no proxy is trusted (`X-Forwarded-For` is then never read).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client address of a connection from `peer` carrying these `X-Forwarded-For` values.
    pub fn client(&self, peer: IpAddr, forwarded_for: &[&str]) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        // Right to left: each hop appended the address it received from.
        let mut client = peer;
        for hop in forwarded_for.iter().rev().flat_map(|v| v.rsplit(',')) {
            match hop.trim().parse::<IpAddr>().map(canonical) {
                Ok(ip) if self.trusts(ip) => client = ip,
                Ok(ip) => return ip,
                // Unreadable: nothing left of it can be trusted.
                Err(_) => return client,
            }
        }
        client
    }
}

/// IPv4-mapped IPv6 addresses as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The key a client address is limited by: IPv4 addresses as they are, IPv6 by their /64.
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            IpAddr::V6(segments.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn rates_parse_and_print() {
        assert_eq!(
            "10/min".parse::<RateSpec>().unwrap(),
            RateSpec::per(NonZeroU32::new(10).unwrap(), Duration::from_secs(60))
        );
        assert_eq!("OFF".parse::<RateSpec>().unwrap(), RateSpec::OFF);
        assert_eq!("5/s".parse::<RateSpec>().unwrap().to_string(), "5/s");
        for bad in ["", "10", "0/min", "ten/min", "10/week", "-1/s"] {
            assert!(bad.parse::<RateSpec>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn a_limit_admits_its_burst_then_says_when_to_retry() {
        let limit = Limit::new("t", "3/min".parse().unwrap());
        for _ in 0..3 {
            assert!(limit.check(&1_i64).is_ok());
        }
        let wait = limit.check(&1_i64).unwrap_err();
        assert!(
            wait > Duration::from_secs(15) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(
            limit.check(&2_i64).is_ok(),
            "another key has its own allowance"
        );
        let off = Limit::new("t", RateSpec::OFF);
        assert!((0..1000).all(|_| off.check(&1_i64).is_ok()));
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let none = TrustedProxies::default();
        assert_eq!(
            none.client(ip("203.0.113.9"), &["198.51.100.1"]),
            ip("203.0.113.9")
        );

        let proxies: TrustedProxies = "10.0.0.0/8, 192.168.1.7".parse().unwrap();
        // An untrusted peer's header is ignored.
        assert_eq!(
            proxies.client(ip("203.0.113.9"), &["10.1.1.1"]),
            ip("203.0.113.9")
        );
        // Behind the trusted proxy: the rightmost untrusted hop, whatever the client prepended.
        assert_eq!(
            proxies.client(ip("192.168.1.7"), &["1.2.3.4, 198.51.100.1, 10.0.0.5"]),
            ip("198.51.100.1")
        );
        assert_eq!(
            proxies.client(ip("10.0.0.1"), &["1.2.3.4", "198.51.100.2"]),
            ip("198.51.100.2"),
            "several header lines are one list"
        );
        assert_eq!(proxies.client(ip("10.0.0.1"), &[]), ip("10.0.0.1"));
        assert_eq!(
            proxies.client(ip("10.0.0.1"), &["junk, 10.0.0.2"]),
            ip("10.0.0.2")
        );
        assert_eq!(
            proxies.client(ip("::ffff:10.0.0.1"), &["198.51.100.3"]),
            ip("198.51.100.3"),
            "IPv4-mapped peers are matched as IPv4"
        );
        assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        assert_eq!(limit_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(limit_key(ip("203.0.113.9")), ip("203.0.113.9"));
    }
}
