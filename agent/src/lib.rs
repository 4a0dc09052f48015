//! The agent: follows netmon, keeps the vNIC store, and reconciles runtime
//! containers onto the right MACVLAN networks of a Docker engine.

pub mod apply;
pub mod atomic_file;
pub mod cache;
pub mod cli;
pub mod cloud;
pub mod control;
pub mod daemon;
pub mod dhcp;
pub mod engine;
pub mod internal_pool;
pub mod netmon_link;
pub mod netns;
pub mod plan;
pub mod reconcile;
pub mod refusal;
pub mod runtime;
pub mod status;
pub mod vnic_state;
pub mod vnics;
