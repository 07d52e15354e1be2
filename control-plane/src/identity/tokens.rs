//! Local-mode proof of identity: bootstrap tokens, each bound to one
//! namespace and service account. `meshctl up` generates one per workload;
//! operators can write the file by hand, and mesh-control follows it: a
//! changed file is read again within a second, and one that does not parse
//! is refused (named in the log) while the tokens before it stay in force.
//! Kubernetes mode will check ServiceAccount tokens through TokenReview
//! instead.

use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// One token's binding.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Binding {
    /// The secret the sidecar presents.
    pub token: String,
    /// Namespace it proves.
    pub namespace: String,
    /// Service account it proves.
    pub service_account: String,
}

/// Tokens by value.
#[derive(Debug, Clone, Default)]
pub struct Tokens(HashMap<String, Binding>);

/// Why a tokens file was refused.
#[derive(Debug, thiserror::Error)]
#[error("bootstrap tokens file {file}: {problems}")]
pub struct Error {
    /// File.
    pub file: String,
    /// Every problem, `; `-separated.
    pub problems: String,
}

impl Tokens {
    /// Parses a YAML list of bindings, reporting every problem.
    pub fn parse(file: &str, yaml: &str) -> Result<Tokens, Error> {
        let err = |problems: String| Error {
            file: file.into(),
            problems,
        };
        let list: Vec<Binding> = serde_saphyr::from_str(yaml).map_err(|e| err(e.to_string()))?;
        let mut out = HashMap::new();
        let mut problems = Vec::new();
        for (i, b) in list.into_iter().enumerate() {
            for (field, v) in [
                ("token", &b.token),
                ("namespace", &b.namespace),
                ("serviceAccount", &b.service_account),
            ] {
                if v.trim().is_empty() {
                    problems.push(format!("[{i}].{field} must not be empty"));
                }
            }
            if b.token.len() < 16 {
                problems.push(format!(
                    "[{i}].token is too short to be a secret (at least 16 characters)"
                ));
            }
            if out.insert(b.token.clone(), b).is_some() {
                problems.push(format!("[{i}].token is used twice"));
            }
        }
        if problems.is_empty() {
            Ok(Tokens(out))
        } else {
            Err(err(problems.join("; ")))
        }
    }

    /// Reads and parses a tokens file.
    pub fn load(path: &Path) -> Result<Tokens, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error {
            file: path.display().to_string(),
            problems: e.to_string(),
        })?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// The binding a token proves, if any.
    pub fn get(&self, token: &str) -> Option<&Binding> {
        self.0.get(token)
    }
}

/// The tokens in force, shared by the Identity service and the reloader.
#[derive(Debug, Clone, Default)]
pub struct Shared(Arc<RwLock<Arc<Tokens>>>);

impl Shared {
    /// These tokens in force.
    pub fn new(tokens: Tokens) -> Shared {
        Shared(Arc::new(RwLock::new(Arc::new(tokens))))
    }

    /// The tokens in force now.
    pub fn current(&self) -> Arc<Tokens> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn replace(&self, tokens: Tokens) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tokens);
    }
}

/// What tells one version of the file from the next.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// What one look at the tokens file came to.
#[derive(Debug)]
pub enum Look {
    /// The same file as last time.
    Unchanged,
    /// A changed file, now in force; how many tokens it holds.
    Reloaded(usize),
    /// A changed file that does not parse; the previous tokens stay.
    Refused(Error),
}

/// Looks at `path` once: if it changed since `seen`, reads it again.
pub fn look(path: &Path, shared: &Shared, seen: &mut Option<(SystemTime, u64)>) -> Look {
    let now = stamp(path);
    if now == *seen {
        return Look::Unchanged;
    }
    *seen = now;
    match Tokens::load(path) {
        Ok(tokens) => {
            let n = tokens.0.len();
            shared.replace(tokens);
            Look::Reloaded(n)
        }
        Err(e) => Look::Refused(e),
    }
}

/// Reads `path` again whenever it changes (looked at every `every`), forever.
pub async fn follow(path: PathBuf, shared: Shared, every: Duration) {
    let mut seen = stamp(&path);
    loop {
        tokio::time::sleep(every).await;
        match look(&path, &shared, &mut seen) {
            Look::Unchanged => {}
            Look::Reloaded(tokens) => {
                tracing::info!(file = %path.display(), tokens, "bootstrap tokens reloaded")
            }
            Look::Refused(e) => tracing::error!(
                error = %e,
                "bootstrap tokens file refused; the previous tokens stay in force"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_every_problem() {
        let ok = Tokens::parse(
            "t.yaml",
            "- {token: 0123456789abcdef, namespace: default, serviceAccount: echo}\n",
        )
        .unwrap();
        assert_eq!(ok.get("0123456789abcdef").unwrap().service_account, "echo");
        assert!(ok.get("nope").is_none());
        let err = Tokens::parse(
            "t.yaml",
            "- {token: short, namespace: default, serviceAccount: ''}\n- {token: short, namespace: d, serviceAccount: s}\n",
        )
        .unwrap_err()
        .to_string();
        for want in [
            "t.yaml",
            "[0].serviceAccount",
            "too short",
            "[1].token is used twice",
        ] {
            assert!(err.contains(want), "{want} missing: {err}");
        }
    }

    #[test]
    fn a_changed_file_is_read_again_and_a_broken_one_refused() {
        let dir = std::env::temp_dir().join(format!("mesh-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tokens.yaml");
        let one = "- {token: 0123456789abcdef, namespace: default, serviceAccount: echo}\n";
        std::fs::write(&file, one).unwrap();
        let shared = Shared::new(Tokens::load(&file).unwrap());
        let mut seen = stamp(&file);
        assert!(matches!(look(&file, &shared, &mut seen), Look::Unchanged));
        let two = format!(
            "{one}- {{token: fedcba9876543210, namespace: default, serviceAccount: web}}\n"
        );
        std::fs::write(&file, two).unwrap();
        assert!(matches!(look(&file, &shared, &mut seen), Look::Reloaded(2)));
        assert!(shared.current().get("fedcba9876543210").is_some());
        std::fs::write(&file, "- {token: short}\n").unwrap();
        match look(&file, &shared, &mut seen) {
            Look::Refused(e) => assert!(e.to_string().contains("tokens.yaml"), "{e}"),
            other => panic!("a broken file was not refused: {other:?}"),
        }
        assert!(
            shared.current().get("fedcba9876543210").is_some(),
            "a broken file changes nothing"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
