//! Lodge: a WebAssembly-sandboxed multi-tenant host.
//!
//! A request travels through one module per stage:
//! [`routing`] (which tenant) → [`limits`] (admission, body cap, memory) →
//! [`instance`] (a fresh store from a pre-instantiated component) →
//! [`capability`] (what the guest may call) → [`storage`] (what survives a
//! restart). [`server`] accepts connections,
//! [`dataplane`] ties the stages together, [`logs`] keeps each tenant's output,
//! [`registry`] holds the tenants, [`control`] and [`api`] are the control
//! plane, [`auth`] its keys, [`plans`] the plans and prices of `lodge.toml`,
//! [`metrics`] the Prometheus exposition, and [`cli`] is the `lodge` binary.

pub mod api;
pub mod auth;
pub mod background;
pub mod bench;
pub mod capability;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod console;
pub mod control;
pub mod convergence;
pub mod counters;
pub mod dataplane;
pub mod egress;
pub mod error;
pub mod instance;
pub mod jobs;
pub mod limits;
pub mod logs;
pub mod metrics;
pub mod plans;
pub mod registry;
pub mod routing;
pub mod server;
pub mod storage;
pub mod sync;
pub mod wallet;

pub use config::{HostConfig, Limits, Tier, TierPolicy};
pub use server::{Lodge, serve};
