//! netmon: rtnetlink in, JSON-lines events out over a Unix socket.

pub mod cli;
pub mod connection;
pub mod daemon;
pub mod debounce;
pub mod dump;
pub mod filter;
pub mod health;
pub mod hub;
pub mod model;
pub mod netlink;
pub mod state;
pub mod watch;

pub use daemon::{Config, run};
