//! The bootstrap tokens of a test mesh: one per namespace and service
//! account, in a file mesh-control follows (it reads a changed file again
//! within a second). A test that brings its own tokens keeps them; the
//! harness adds its own beside them. The file is replaced whole (written
//! aside, then renamed), so the control plane never reads half of it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Service accounts the tests use, there from the start so their sidecars
/// never wait for a reload.
const PRESET: &[&str] = &["echo", "client", "echo-shadow", "echo-readonly", "web"];

pub struct Tokens {
    file: PathBuf,
    /// A test's own tokens file, verbatim.
    own: String,
    harness: Mutex<BTreeMap<(String, String), String>>,
}

impl Tokens {
    /// Writes `file` with `own` (a test's tokens, may be empty) and the preset.
    pub fn new(file: &Path, own: String) -> Tokens {
        let tokens = Tokens {
            file: file.to_path_buf(),
            own,
            harness: Mutex::new(
                PRESET
                    .iter()
                    .map(|sa| {
                        (
                            ("default".to_string(), sa.to_string()),
                            secret("default", sa),
                        )
                    })
                    .collect(),
            ),
        };
        tokens.write(&tokens.harness.lock().unwrap());
        tokens
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The token for `namespace/account`, added to the file if new.
    pub fn token(&self, namespace: &str, account: &str) -> String {
        let mut harness = self.harness.lock().unwrap();
        let key = (namespace.to_string(), account.to_string());
        if let Some(t) = harness.get(&key) {
            return t.clone();
        }
        let t = secret(namespace, account);
        harness.insert(key, t.clone());
        self.write(&harness);
        t
    }

    fn write(&self, harness: &BTreeMap<(String, String), String>) {
        let mut text = self.own.clone();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        for ((ns, sa), token) in harness {
            text.push_str(&format!(
                "- {{token: {token}, namespace: {ns}, serviceAccount: {sa}}}\n"
            ));
        }
        let aside = self.file.with_extension("next");
        std::fs::write(&aside, text).expect("writing the tokens file");
        std::fs::rename(&aside, &self.file).expect("replacing the tokens file");
    }
}

fn secret(namespace: &str, account: &str) -> String {
    format!("harness-{namespace}-{account}-0123456789abcdef")
}
