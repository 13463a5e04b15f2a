//! Integration tests: a real proxy on 127.0.0.1, real upstreams on
//! 127.0.0.1, real client sockets. Every wait is bounded.

mod common;
mod credentials;
mod forward;
mod limits;
mod refusals;
mod tls_support;
mod tunnel;
mod unix;
