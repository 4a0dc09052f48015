//! One vNIC's DHCP state machine (RFC 2131 4.4): INIT-REBOOT with a cached address,
//! else DISCOVER/OFFER/REQUEST/ACK; then RENEW (unicast) at T1, REBIND (broadcast) at
//! T2, back to INIT on NAK or expiry; RELEASE when asked.
//!
//! Over 400 lines: one state machine (INIT-REBOOT, SELECTING, BOUND, RENEWING,
//! REBINDING) read best in one place.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime};

use ipc::{Backoff, MacAddr};
use tokio::sync::mpsc;

use super::lease::{Refused, check_reply, client_id, lease_of};
use super::packet::{self, BROADCAST_MAC, Message, MsgType, Route, opt};
use super::socket::PacketSocket;
use super::{ClientOptions, DhcpEvent, DhcpUpdate, LeaseRecord, LeaseRequest};

/// A lease in force and the link address its server answers from.
struct Held {
    rec: LeaseRecord,
    since: Instant,
    server_mac: [u8; 6],
}

enum Step {
    Init,
    Reboot(LeaseRecord),
    Bound,
}

/// Why an exchange ended without an answer we use.
enum Outcome {
    /// A reply that passed every check, its lease, and the sender's link address.
    Reply(LeaseRecord, [u8; 6]),
    Nak(String),
    Silence,
}

pub(super) struct Client {
    req: LeaseRequest,
    opts: ClientOptions,
    updates: mpsc::Sender<DhcpEvent>,
    sock: Option<PacketSocket>,
    held: Option<Held>,
    /// The address last reported as Bound, so a renewal with it is `Renewed`.
    reported: Option<Ipv4Addr>,
    backoff: Backoff,
    /// NAKs in a row answered by an immediate DISCOVER (reset when bound).
    quick_naks: u32,
}

const QUICK_NAKS: u32 = 3;

impl Client {
    pub(super) fn new(
        req: LeaseRequest,
        opts: ClientOptions,
        updates: mpsc::Sender<DhcpEvent>,
    ) -> Self {
        let backoff = Backoff::new(opts.retry_min, opts.retry_max);
        Client {
            req,
            opts,
            updates,
            sock: None,
            held: None,
            reported: None,
            backoff,
            quick_naks: 0,
        }
    }

    pub(super) async fn run(&mut self) {
        let mut step = match self.req.cached.take() {
            Some(c) if c.mac == self.req.mac => Step::Reboot(c),
            _ => Step::Init,
        };
        loop {
            step = match step {
                Step::Reboot(c) => self.reboot(c).await,
                Step::Init => self.init().await,
                Step::Bound => self.keep().await,
            };
        }
    }

    async fn emit(&self, update: DhcpUpdate) {
        let ev = DhcpEvent {
            key: self.req.key.clone(),
            update,
        };
        // A closed channel means nobody wants our news; the lease is still kept.
        let _ = self.updates.send(ev).await;
    }

    async fn pending(&mut self, reason: String) {
        let delay = self.backoff.next_delay();
        let next_try = SystemTime::now() + delay;
        tracing::info!(key = %self.req.key, %reason, retry_in = ?delay, "DHCP lease pending");
        self.emit(DhcpUpdate::Pending { reason, next_try }).await;
        tokio::time::sleep(delay).await;
    }

    fn base(&self, kind: MsgType, xid: u32) -> Message {
        let mut m = Message::request(kind, xid, self.req.mac);
        m.push(opt::CLIENT_ID, client_id(self.req.mac));
        if matches!(kind, MsgType::Discover | MsgType::Request) {
            m.push(opt::MAX_SIZE, 1500u16.to_be_bytes());
            if let Some(h) = self
                .req
                .hostname
                .as_deref()
                .filter(|h| !h.is_empty() && h.len() < 64)
            {
                m.push(opt::HOSTNAME, h.as_bytes());
            }
            m.push(opt::PARAM_LIST, [1u8, 3, 6, 15, 28, 51, 54, 58, 59]);
        }
        m
    }

    fn broadcast(&self, src_ip: Ipv4Addr) -> Route {
        Route {
            src_mac: self.req.mac,
            dst_mac: BROADCAST_MAC,
            src_ip,
            dst_ip: Ipv4Addr::BROADCAST,
        }
    }

    async fn init(&mut self) -> Step {
        let xid = fastrand::u32(..);
        let discover = self.base(MsgType::Discover, xid);
        let waits = self.opts.discover_waits.clone();
        let route = self.broadcast(Ipv4Addr::UNSPECIFIED);
        let offer = match self
            .exchange(&discover, route, xid, &waits, MsgType::Offer)
            .await
        {
            Ok(Outcome::Reply(offer, _)) => offer,
            Ok(_) => {
                self.pending("no DHCP offer".into()).await;
                return Step::Init;
            }
            Err(reason) => {
                self.pending(reason).await;
                return Step::Init;
            }
        };
        let mut request = self.base(MsgType::Request, xid);
        request.push(opt::REQUESTED_IP, offer.address.octets());
        request.push(opt::SERVER_ID, offer.server_id.octets());
        self.request(request, route, xid, "no DHCP ACK for the offered address")
            .await
    }

    async fn reboot(&mut self, cached: LeaseRecord) -> Step {
        let xid = fastrand::u32(..);
        let mut request = self.base(MsgType::Request, xid);
        request.push(opt::REQUESTED_IP, cached.address.octets());
        tracing::info!(key = %self.req.key, address = %cached.address, "DHCP INIT-REBOOT with the cached address");
        let route = self.broadcast(Ipv4Addr::UNSPECIFIED);
        let waits = self.opts.request_waits.clone();
        match self
            .exchange(&request, route, xid, &waits, MsgType::Ack)
            .await
        {
            Ok(Outcome::Reply(ack, mac)) => self.bind(ack, mac).await,
            Ok(Outcome::Nak(msg)) => {
                tracing::info!(key = %self.req.key, address = %cached.address, %msg, "cached address refused (NAK); starting over");
                Step::Init
            }
            // No server answers (yet): ask for the same address again while the
            // cached lease runs, so a server that comes back later still sees
            // INIT-REBOOT first.
            Ok(Outcome::Silence) | Err(_) if cached.expires_at() > SystemTime::now() => {
                self.pending("no DHCP answer to INIT-REBOOT".into()).await;
                Step::Reboot(cached)
            }
            _ => Step::Init,
        }
    }

    /// Sends a selecting REQUEST; binds on ACK, else back to INIT after a pause.
    async fn request(&mut self, request: Message, route: Route, xid: u32, silent: &str) -> Step {
        let waits = self.opts.request_waits.clone();
        match self
            .exchange(&request, route, xid, &waits, MsgType::Ack)
            .await
        {
            Ok(Outcome::Reply(ack, mac)) => self.bind(ack, mac).await,
            // Two clients offered the same free address: the second REQUEST is
            // NAKed ("address in use"). Start over at once, a few times, before the
            // backoff (a server that NAKs everything must not get a storm).
            Ok(Outcome::Nak(msg)) if self.quick_naks < QUICK_NAKS => {
                self.quick_naks += 1;
                tracing::info!(key = %self.req.key, %msg, "DHCP NAK to our REQUEST; discovering again");
                Step::Init
            }
            Ok(Outcome::Nak(msg)) => {
                self.pending(format!("DHCP NAK: {msg}")).await;
                Step::Init
            }
            Ok(Outcome::Silence) => {
                self.pending(silent.to_string()).await;
                Step::Init
            }
            Err(reason) => {
                self.pending(reason).await;
                Step::Init
            }
        }
    }

    async fn bind(&mut self, rec: LeaseRecord, server_mac: [u8; 6]) -> Step {
        self.backoff.reset();
        self.quick_naks = 0;
        tracing::info!(key = %self.req.key, address = %rec.cidr(), server = %rec.server_id, lease_s = rec.lease_time, "DHCP lease bound");
        let update = if self.reported == Some(rec.address) {
            DhcpUpdate::Renewed(rec.clone())
        } else {
            DhcpUpdate::Bound(rec.clone())
        };
        self.reported = Some(rec.address);
        self.held = Some(Held {
            rec,
            since: Instant::now(),
            server_mac,
        });
        self.emit(update).await;
        Step::Bound
    }

    /// Waits for T1, renews until T2, rebinds until expiry.
    async fn keep(&mut self) -> Step {
        let Some(held) = self.held.as_ref() else {
            return Step::Init;
        };
        let rec = held.rec.clone();
        let t1 = held.since + Duration::from_secs(rec.t1.into());
        let t2 = held.since + Duration::from_secs(rec.t2.into());
        let end = held.since + Duration::from_secs(rec.lease_time.into());
        let server_mac = held.server_mac;
        tokio::time::sleep_until(t1.into()).await;
        let xid = fastrand::u32(..);
        let mut renew = self.base(MsgType::Request, xid);
        renew.ciaddr = rec.address;
        let unicast = Route {
            src_mac: self.req.mac,
            dst_mac: server_mac,
            src_ip: rec.address,
            dst_ip: rec.server_id,
        };
        let mut outcome = self.until(&renew, unicast, xid, t2).await;
        if matches!(outcome, Ok(Outcome::Silence) | Err(_)) {
            tracing::info!(key = %self.req.key, address = %rec.address, "no answer to RENEW by T2; rebinding");
            let xid = fastrand::u32(..);
            let mut rebind = self.base(MsgType::Request, xid);
            rebind.ciaddr = rec.address;
            let route = self.broadcast(rec.address);
            outcome = self.until(&rebind, route, xid, end).await;
        }
        let reason = match outcome {
            Ok(Outcome::Reply(ack, mac)) => return self.bind(ack, mac).await,
            Ok(Outcome::Nak(msg)) => format!("server refused the renewal (NAK): {msg}"),
            Ok(Outcome::Silence) => "lease expired without renewal".to_string(),
            Err(e) => format!("lease expired: {e}"),
        };
        tracing::warn!(key = %self.req.key, address = %rec.address, %reason, "DHCP lease lost");
        self.held = None;
        self.reported = None;
        self.emit(DhcpUpdate::Lost { reason }).await;
        Step::Init
    }

    /// RENEW or REBIND until `end`; a failing link (down, re-created) is retried
    /// until then rather than ending the phase early.
    async fn until(
        &mut self,
        m: &Message,
        route: Route,
        xid: u32,
        end: Instant,
    ) -> Result<Outcome, String> {
        loop {
            let waits = self.schedule(end);
            match self.exchange(m, route, xid, &waits, MsgType::Ack).await {
                Err(e)
                    if end.saturating_duration_since(Instant::now()) > Duration::from_secs(1) =>
                {
                    tracing::warn!(key = %self.req.key, error = %e, "renewal attempt failed; trying again");
                    let pause = self
                        .opts
                        .min_retransmit
                        .min(end.saturating_duration_since(Instant::now()));
                    tokio::time::sleep(pause).await;
                }
                other => return other,
            }
        }
    }

    /// Retransmission waits until `end`: half the remaining time, at least the minimum.
    fn schedule(&self, end: Instant) -> Vec<Duration> {
        let mut left = end.saturating_duration_since(Instant::now());
        let mut waits = Vec::new();
        while !left.is_zero() {
            let w = (left / 2).max(self.opts.min_retransmit).min(left);
            waits.push(w);
            left -= w;
        }
        waits
    }

    fn socket(&mut self) -> Result<&PacketSocket, String> {
        if self.sock.is_none() {
            let s = PacketSocket::open(&self.req.parent, self.req.mac)
                .map_err(|e| format!("cannot listen on {}: {e}", self.req.parent))?;
            self.sock = Some(s);
        }
        Ok(self.sock.as_ref().expect("just set"))
    }

    /// Sends `m` and waits for a reply of type `want` (or a NAK), retransmitting
    /// after each wait. Replies that fail the checks are logged and ignored.
    async fn exchange(
        &mut self,
        m: &Message,
        route: Route,
        xid: u32,
        waits: &[Duration],
        want: MsgType,
    ) -> Result<Outcome, String> {
        let frame = packet::frame(&route, &m.encode());
        // While renewing from an address the host does not hold, the server's reply
        // needs someone to answer its ARP for that address: we do, with the vNIC's MAC.
        let arp_for = (!route.src_ip.is_unspecified()).then_some(route.src_ip);
        let mac = self.req.mac;
        let key = self.req.key.clone();
        let parent = self.req.parent.clone();
        let result = async {
            let sock = self.socket()?;
            for wait in waits {
                sock.send(&frame)
                    .await
                    .map_err(|e| format!("cannot send on {parent}: {e}"))?;
                let deadline = tokio::time::Instant::now() + *wait;
                while let Ok(r) =
                    tokio::time::timeout_at(deadline, recv_one(sock, xid, mac, arp_for)).await
                {
                    match r.map_err(|e| format!("cannot receive on {parent}: {e}"))? {
                        Ok((reply, kind, from)) if kind == want => {
                            match lease_of(&reply, mac, &parent, SystemTime::now()) {
                                Ok(rec) => return Ok(Outcome::Reply(rec, from)),
                                Err(e) => {
                                    tracing::warn!(%key, ?kind, reason = %e, "DHCP reply refused")
                                }
                            }
                        }
                        Ok((reply, MsgType::Nak, _)) => {
                            let msg = reply
                                .option(opt::MESSAGE)
                                .map(|v| String::from_utf8_lossy(&v).into_owned());
                            return Ok(Outcome::Nak(msg.unwrap_or_else(|| "no message".into())));
                        }
                        Ok((_, kind, _)) => {
                            tracing::debug!(%key, ?kind, "DHCP reply of another kind ignored")
                        }
                        Err(Refused::Xid { .. } | Refused::OtherClient(_)) => {}
                        Err(e) => tracing::warn!(%key, reason = %e, "DHCP reply ignored"),
                    }
                }
            }
            Ok(Outcome::Silence)
        }
        .await;
        if result.is_err() {
            // The link may be gone or re-created: open a fresh socket next time.
            self.sock = None;
        }
        result
    }

    /// Best effort: tells the server the address is free again.
    pub(super) async fn release(&mut self) {
        let Some(held) = self.held.take() else { return };
        let mut m = self.base(MsgType::Release, fastrand::u32(..));
        m.ciaddr = held.rec.address;
        m.push(opt::SERVER_ID, held.rec.server_id.octets());
        let route = Route {
            src_mac: self.req.mac,
            dst_mac: held.server_mac,
            src_ip: held.rec.address,
            dst_ip: held.rec.server_id,
        };
        let frame = packet::frame(&route, &m.encode());
        let sent = match self.socket() {
            Ok(s) => s.send(&frame).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match sent {
            Ok(()) => {
                tracing::info!(key = %self.req.key, address = %held.rec.address, "DHCP lease released")
            }
            Err(e) => {
                tracing::warn!(key = %self.req.key, address = %held.rec.address, error = %e, "DHCPRELEASE not sent; the lease will expire on the server")
            }
        }
    }
}

/// The next frame that decodes as a reply, checked against our transaction; answers
/// ARP for `arp_for` on the way.
async fn recv_one(
    sock: &PacketSocket,
    xid: u32,
    mac: MacAddr,
    arp_for: Option<Ipv4Addr>,
) -> std::io::Result<Result<(Message, MsgType, [u8; 6]), Refused>> {
    let mut buf = vec![0u8; 2048];
    loop {
        let n = sock.recv(&mut buf).await?;
        let f = &buf[..n];
        if let Some(reply) = arp_for.and_then(|ip| packet::arp_reply(f, ip, mac)) {
            sock.send(&reply).await?;
            continue;
        }
        let Ok((from, payload)) = packet::unframe(f) else {
            continue;
        };
        let checked = Message::decode(payload)
            .map_err(Refused::from)
            .and_then(|m| check_reply(&m, xid, mac).map(|k| (m, k, from)));
        return Ok(checked);
    }
}
