//! Where configuration values come from (`Env`), and the parser that reads
//! them, turning each bad value into a problem that names its key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

/// Where configuration values come from.
pub trait Env {
    /// The value of `key`, if set.
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Env for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

/// Reads values and collects every problem found.
pub(super) struct Parser<'a> {
    pub(super) env: &'a dyn Env,
    pub(super) errors: Vec<String>,
}

impl Parser<'_> {
    pub(super) fn string(&self, key: &str) -> Option<String> {
        self.env.get(key).filter(|v| !v.trim().is_empty())
    }

    pub(super) fn parse<T: std::str::FromStr>(&mut self, key: &str, default: T, what: &str) -> T
    where
        T::Err: std::fmt::Display,
    {
        match self.string(key) {
            None => default,
            Some(v) => v.trim().parse().unwrap_or_else(|e| {
                self.errors.push(format!("{key}={v:?}: not {what}: {e}"));
                default
            }),
        }
    }

    pub(super) fn addr(&mut self, key: &str, default: &str) -> SocketAddr {
        let fallback = default.parse().expect("defaults are valid");
        self.parse(key, fallback, "an ip:port address")
    }

    pub(super) fn optional_addr(&mut self, key: &str) -> Option<SocketAddr> {
        let v = self.string(key)?;
        match v.trim().parse() {
            Ok(a) => Some(a),
            Err(e) => {
                self.errors
                    .push(format!("{key}={v:?}: not an ip:port address: {e}"));
                None
            }
        }
    }

    pub(super) fn millis(&mut self, key: &str, default: u64) -> Duration {
        let ms = self.parse(key, default, "a number of milliseconds");
        if ms == 0 {
            self.errors.push(format!("{key}: must be greater than 0"));
        }
        Duration::from_millis(ms)
    }

    pub(super) fn positive(&mut self, key: &str, default: u32) -> u32 {
        let n = self.parse(key, default, "a whole number");
        if n == 0 {
            self.errors.push(format!("{key}: must be at least 1"));
        }
        n
    }
}
