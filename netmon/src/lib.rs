pub mod dump;
pub mod filter;
pub mod model;
pub mod netlink;
