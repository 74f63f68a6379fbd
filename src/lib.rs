//! weft: a host-subnet network agent, compatible with flannel's data.

pub mod agent;
pub mod backend;
pub mod backoff;
pub mod build_info;
pub mod cleanup;
pub mod cli;
pub mod cni;
pub mod commands;
pub mod config;
pub mod dataplane;
pub mod fuzzing;
pub mod health;
pub mod heap;
pub mod iface;
pub mod kernel;
pub mod lab;
pub mod lease;
pub mod leasing;
pub mod logging;
pub mod masq;
pub mod netns;
pub mod network;
pub mod status;
pub mod store;
pub mod subnet_env;
pub mod watch;
