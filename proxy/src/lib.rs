//! hutch's egress proxy: the guest's only way out.
//!
//! - [`rule`] and [`cidr`]: one allow/deny rule and IP networks;
//! - [`policy`]: presets (`open`, `balanced`, `locked-down`) and decisions;
//! - [`store`]: the TOML policy file (global and per-sandbox rules);
//! - [`ssrf`] and [`resolve`]: the address guard and the resolver it uses;
//! - [`server`], [`http`], [`relay`], [`splice`], [`stream`]: the HTTP/1.1
//!   forward proxy and CONNECT tunnels;
//! - [`unix`]: serving over a Unix socket from synchronous code;
//! - [`credential`], [`secrets`], [`tls`], [`framing`], [`redact`]:
//!   credential injection behind TLS termination;
//! - [`guest`]: the sandbox's proxy, CA and sentinel variables;
//! - [`log`]: the decision log; [`paths`]: where files live;
//! - [`admin`]: what `hutch policy` and `hutch secret` do.

pub mod admin;
pub mod cidr;
pub mod credential;
pub mod framing;
pub mod guest;
pub mod http;
pub mod log;
pub mod paths;
pub mod policy;
pub mod redact;
pub mod relay;
pub mod resolve;
pub mod rule;
pub mod scope;
pub mod secrets;
pub mod server;
pub mod splice;
pub mod ssrf;
pub mod store;
pub mod stream;
pub mod tls;
pub mod unix;

pub use credential::{Credentials, Service, SENTINEL};
pub use policy::{Policy, Preset};
pub use resolve::{FakeResolver, Resolver, SystemResolver};
pub use scope::Scope;
pub use secrets::Secrets;
pub use server::{Config, Proxy};
pub use store::Store;
pub use unix::{spawn_unix, spawn_unix_with, ProxyHandle};
