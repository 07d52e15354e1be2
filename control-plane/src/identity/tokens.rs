//! Local-mode proof of identity: bootstrap tokens, each bound to one
//! namespace and service account. `meshctl up` generates one per workload;
//! operators can write the file by hand. Kubernetes mode will check
//! ServiceAccount tokens through TokenReview instead.

use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

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
}
