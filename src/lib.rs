//! weft: a host-subnet network agent, compatible with flannel's data.

pub mod agent;
pub mod backend;
pub mod cli;
pub mod commands;
pub mod config;
pub mod health;
pub mod iface;
pub mod kernel;
pub mod lease;
pub mod leasing;
pub mod netns;
pub mod network;
pub mod store;
pub mod subnet_env;
pub mod watch;
