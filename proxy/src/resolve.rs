//! Name resolution behind a trait, so tests can answer what they like.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// The future a [`Resolver`] returns.
pub type ResolveFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + 'a>>;

/// Resolves a host name to its addresses (the port is added by the caller).
pub trait Resolver: Send + Sync {
    fn resolve<'a>(&'a self, host: &'a str) -> ResolveFuture<'a>;
}

/// The host's resolver (`getaddrinfo` through `tokio::net::lookup_host`).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve<'a>(&'a self, host: &'a str) -> ResolveFuture<'a> {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host, 0)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    }
}

/// A resolver for tests: each name has a queue of answers; each lookup takes
/// the next one and the last answer repeats. Unknown names fail.
#[derive(Debug, Default)]
pub struct FakeResolver {
    answers: Mutex<HashMap<String, VecDeque<Vec<IpAddr>>>>,
    calls: AtomicUsize,
}

impl FakeResolver {
    pub fn new() -> FakeResolver {
        FakeResolver::default()
    }

    /// Adds the next answer for `host` (lookups see answers in the order added).
    pub fn answer(self, host: &str, addrs: &[IpAddr]) -> FakeResolver {
        self.answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(host.to_string())
            .or_default()
            .push_back(addrs.to_vec());
        self
    }

    /// How many lookups were made, for every name together.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Resolver for FakeResolver {
    fn resolve<'a>(&'a self, host: &'a str) -> ResolveFuture<'a> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        let result = match answers.get_mut(host) {
            Some(queue) if queue.len() > 1 => Ok(queue.pop_front().unwrap_or_default()),
            Some(queue) => Ok(queue.front().cloned().unwrap_or_default()),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("fake resolver has no answer for {host}"),
            )),
        };
        Box::pin(async move { result })
    }
}
