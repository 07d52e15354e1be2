//! The mesh file: its documents read and parsed (every error at once), and
//! the registry and rules it seeds.

use super::error::Error;
use crate::config::Config;
use crate::manifest::{self, Located};
use crate::registry::local::Registry;
use crate::rules::{self, RuleSet};
use std::path::Path;

/// Reads a mesh file, or every `*.yaml`/`*.yml` in a directory (sorted), and
/// parses all of it, collecting every error.
pub fn load_documents(path: &Path) -> Result<Vec<Located>, Error> {
    let read_err = |source| Error::Read {
        path: path.display().to_string(),
        source,
    };
    let files = if path.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)
            .map_err(read_err)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|source| Error::Read {
            path: f.display().to_string(),
            source,
        })?;
        match manifest::parse(&f.display().to_string(), &text) {
            Ok(mut d) => docs.append(&mut d),
            Err(e) => errors.extend(e.iter().map(|e| e.to_string())),
        }
    }
    if errors.is_empty() {
        Ok(docs)
    } else {
        Err(Error::Config(errors))
    }
}

/// Builds the registry and rules a mesh file describes.
pub fn seed(config: &Config) -> Result<(Registry, RuleSet), Error> {
    let docs = match &config.config {
        Some(p) => load_documents(p)?,
        None => Vec::new(),
    };
    let mut registry = Registry::from_documents(&docs).map_err(Error::Config)?;
    // A cluster's Services have ClusterIPs; the range is local mode's.
    let local = config.registry == crate::config::RegistryKind::Local;
    registry.set_virtual_ips(config.virtual_ips.filter(|_| local));
    let incoming = rules::rules_from(&docs)
        .map_err(|e| Error::Config(e.iter().map(|e| e.to_string()).collect()))?;
    let (rules, _) = RuleSet::default()
        .apply(&incoming, &docs)
        .map_err(|e| Error::Config(e.iter().map(|e| e.to_string()).collect()))?;
    Ok((registry, rules))
}
