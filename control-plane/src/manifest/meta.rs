//! The value shapes every document shares: Kubernetes-style object
//! metadata, numbers kept as written so validation can say exactly what is
//! wrong with them, and Gateway API durations.

use serde::Deserialize;

/// API version of mesh's own kinds.
pub const MESH_API_VERSION: &str = "mesh.dev/v1alpha1";
/// Namespace used when `metadata.namespace` is absent, as in Kubernetes.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Kubernetes-style object metadata; only the fields mesh reads or tolerates.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ObjectMeta {
    /// Object name, unique per kind and namespace.
    pub name: String,
    /// Namespace; `default` when absent.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Ignored by mesh, accepted so `kubectl` manifests parse.
    #[serde(default)]
    pub labels: Option<serde_json::Value>,
    /// Ignored by mesh, accepted so `kubectl` manifests parse.
    #[serde(default)]
    pub annotations: Option<serde_json::Value>,
}

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_string()
}

/// A number as written in YAML, before validation.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum RawNumber {
    /// A non-negative integer.
    Unsigned(u64),
    /// A negative integer.
    Signed(i64),
    /// Anything with a fraction or exponent.
    Float(f64),
    /// A string (always an error for weights).
    Text(String),
}

impl RawNumber {
    /// The value as a weight, or the reason it is not one.
    pub fn as_weight(&self) -> Result<u32, String> {
        self.as_count("weights")
    }

    /// The value as a whole number of `what` (plural, for the message), or
    /// the reason it is not one.
    pub fn as_count(&self, what: &str) -> Result<u32, String> {
        match self {
            RawNumber::Unsigned(n) => u32::try_from(*n).map_err(|_| format!("{n} is too large")),
            RawNumber::Signed(n) => Err(format!("{n} is negative; {what} must be 0 or more")),
            RawNumber::Float(f) if *f < 0.0 => {
                Err(format!("{f} is negative; {what} must be 0 or more"))
            }
            RawNumber::Float(f) => Err(format!("{f} is not a whole number")),
            RawNumber::Text(s) => Err(format!("{s:?} is not a number")),
        }
    }
}

/// Parses a Gateway API duration ("1s", "250ms", "1m30s") into ms.
pub fn duration_ms(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!("{s:?} is negative; durations must be 0 or more"));
    }
    if t.is_empty() {
        return Err("is empty; write a duration like 1s or 250ms".into());
    }
    let bad = || format!("{s:?} is not a duration; write e.g. 1s, 250ms or 1m30s");
    let mut total: u64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else {
            return Err(bad());
        };
        total = total.saturating_add(n.saturating_mul(unit_ms));
        rest = &rest[len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration_ms("1s"), Ok(1000));
        assert_eq!(duration_ms("250ms"), Ok(250));
        assert_eq!(duration_ms("1m30s"), Ok(90_000));
        assert_eq!(duration_ms("1h"), Ok(3_600_000));
        assert!(duration_ms("-1s").unwrap_err().contains("negative"));
        assert!(duration_ms("abc").unwrap_err().contains("not a duration"));
        assert!(duration_ms("10").unwrap_err().contains("not a duration"));
        assert!(duration_ms("").is_err());
    }
}
