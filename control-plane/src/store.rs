//! Durable state: the rules in force and the registered instances, written
//! atomically (temp file, fsync, rename, fsync dir) so a crash at any point
//! leaves either the old or the new file, never a torn one.

use serde::{Serialize, de::DeserializeOwned};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Errors reading or writing the state directory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Filesystem failure.
    #[error("state file {path}: {source}")]
    Io {
        /// File involved.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A state file that does not parse (hand-edited or from another version).
    #[error("state file {path} is corrupt: {source}")]
    Corrupt {
        /// File involved.
        path: PathBuf,
        /// Cause.
        source: serde_json::Error,
    },
}

/// A state directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// File holding the rules in force.
pub const RULES: &str = "rules.json";
/// File holding registered instances.
pub const REGISTRY: &str = "registry.json";

impl Store {
    /// Opens (creating) a state directory.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.into(),
            source,
        })?;
        Ok(Store { dir: dir.into() })
    }

    /// Reads a JSON file; `None` if it does not exist.
    pub fn load<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, Error> {
        let path = self.dir.join(name);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| Error::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io { path, source }),
        }
    }

    /// Replaces a JSON file atomically.
    pub fn save<T: Serialize>(&self, name: &str, value: &T) -> Result<(), Error> {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(value).expect("state types always serialize");
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        fs::rename(&tmp, &path).map_err(io)?;
        // The rename itself is only durable once the directory entry is.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(())
    }
}

fn keyed<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> (String, String),
) -> std::collections::BTreeMap<(String, String), T> {
    items.into_iter().map(|t| (key(&t), t)).collect()
}

/// The on-disk form of the rules in force.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedRules {
    splits: Vec<crate::rules::Split>,
    #[serde(default)]
    policies: Vec<crate::rules::Policy>,
    #[serde(default)]
    route_groups: Vec<crate::rules::RouteGroup>,
    #[serde(default)]
    http_routes: Vec<crate::rules::HttpRoute>,
    #[serde(default)]
    traffic_policies: Vec<crate::rules::TrafficPolicy>,
    #[serde(default)]
    shields: Vec<crate::rules::Shield>,
}

impl Store {
    /// The rules in force, if any were saved.
    pub fn load_rules(&self) -> Result<Option<crate::rules::RuleSet>, Error> {
        let saved: Option<SavedRules> = self.load(RULES)?;
        Ok(saved.map(|saved| crate::rules::RuleSet {
            splits: saved.splits.into_iter().map(|s| (s.key(), s)).collect(),
            policies: saved.policies.into_iter().map(|p| (p.key(), p)).collect(),
            route_groups: keyed(saved.route_groups, |g| {
                (g.namespace.clone(), g.name.clone())
            }),
            http_routes: keyed(saved.http_routes, |r| (r.namespace.clone(), r.name.clone())),
            traffic_policies: keyed(saved.traffic_policies, |p| {
                (p.namespace.clone(), p.name.clone())
            }),
            shields: keyed(saved.shields, |s| (s.namespace.clone(), s.service.clone())),
        }))
    }

    /// Saves the rules in force.
    pub fn save_rules(&self, rules: &crate::rules::RuleSet) -> Result<(), Error> {
        let saved = SavedRules {
            splits: rules.splits.values().cloned().collect(),
            policies: rules.policies.values().cloned().collect(),
            route_groups: rules.route_groups.values().cloned().collect(),
            http_routes: rules.http_routes.values().cloned().collect(),
            traffic_policies: rules.traffic_policies.values().cloned().collect(),
            shields: rules.shields.values().cloned().collect(),
        };
        self.save(RULES, &saved)
    }

    /// Registered instances saved before a restart.
    pub fn load_registry(&self) -> Result<Option<Vec<crate::registry::Instance>>, Error> {
        self.load(REGISTRY)
    }

    /// Saves the registered instances.
    pub fn save_registry(&self, registry: &crate::registry::local::Registry) -> Result<(), Error> {
        self.save(REGISTRY, &registry.registered())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption_is_named() {
        let dir = std::env::temp_dir().join(format!("mesh-store-{}", std::process::id()));
        let s = Store::open(&dir).unwrap();
        assert_eq!(s.load::<Vec<u32>>("x.json").unwrap(), None);
        s.save("x.json", &vec![1u32, 2]).unwrap();
        assert_eq!(s.load::<Vec<u32>>("x.json").unwrap(), Some(vec![1, 2]));
        fs::write(dir.join("x.json"), b"{nope").unwrap();
        let err = s.load::<Vec<u32>>("x.json").unwrap_err().to_string();
        assert!(err.contains("x.json is corrupt"), "{err}");
        fs::remove_dir_all(dir).unwrap();
    }
}
