//! What netmon and the agent share: the event and request types of PROTOCOL.md,
//! the JSON-lines codec with its line-length limit, and a reconnecting client.

pub mod backoff;
pub mod client;
pub mod codec;
pub mod event;
pub mod logging;
pub mod mac;
pub mod request;
pub mod server;
pub mod systemd;

pub use backoff::Backoff;
pub use client::{Client, ClientConfig, ClientError, ClientEvent, Connection};
pub use codec::{CodecError, JsonLines, MAX_LINE_LEN, RawLine};
pub use event::{
    Discovery, Event, EventKind, Interface, Ipv4Address, Ipv6Address, LinkType, PROTOCOL_VERSION,
    Status,
};
pub use mac::{MacAddr, MacError};
pub use request::{Reply, Request, ServerMessage};
pub use server::{PeerCred, Server, ServerConfig, ServerError};

/// RFC 3339 UTC with microseconds, the form the Python sidecar used.
pub fn timestamp_now() -> String {
    humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()
}
