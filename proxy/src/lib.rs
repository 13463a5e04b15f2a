//! hutch's egress proxy: the guest's only way out.
//!
//! - [`rule`] and [`cidr`]: one allow/deny rule and IP networks;
//! - [`policy`]: presets (`open`, `balanced`, `locked-down`) and decisions;
//! - [`store`]: the TOML policy file (global and per-sandbox rules);
//! - [`ssrf`] and [`resolve`]: the address guard and the resolver it uses;
//! - [`server`] and [`http`]: the HTTP/1.1 forward proxy and CONNECT tunnels;
//! - [`log`]: the decision log.

pub mod cidr;
pub mod http;
pub mod log;
pub mod policy;
pub mod resolve;
pub mod rule;
pub mod server;
pub mod ssrf;
pub mod store;

pub use policy::{Policy, Preset};
pub use resolve::{FakeResolver, Resolver, SystemResolver};
pub use server::{Config, Proxy};
