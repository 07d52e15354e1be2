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

/// A number exactly as written in YAML, before validation: every problem
/// is reported in the user's own spelling (`1e3`, `0100`, a number too big
/// for any integer), never in the parser's reading of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawNumber {
    /// The scalar's text, without quotes.
    pub text: String,
    /// Written as a quoted (or block) string, not a plain scalar.
    pub quoted: bool,
}

impl RawNumber {
    /// A plain scalar.
    pub fn plain(text: &str) -> RawNumber {
        RawNumber {
            text: text.to_string(),
            quoted: false,
        }
    }
}

impl<'de> Deserialize<'de> for RawNumber {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // serde-saphyr hands a plain scalar to a string as written; its span
        // covers the quotes (or block indicator) of one that was not plain.
        let s = serde_saphyr::Spanned::<Option<String>>::deserialize(d)?;
        let text = s.value.unwrap_or_default();
        let quoted = s.defined.span().len() as usize != text.len();
        Ok(RawNumber { text, quoted })
    }
}

impl RawNumber {
    /// The value as a weight, or the reason it is not one.
    pub fn as_weight(&self) -> Result<u32, String> {
        self.as_count("weights")
    }

    /// The value as a whole number of `what` (plural, for the message), or
    /// the reason it is not one, quoting what was written. Only plain
    /// decimal digits are a count, as in Kubernetes' JSON integers: YAML
    /// 1.1 and 1.2 read `0100` differently (64 or 100), and `1e3`, `0x10`
    /// or `1_000` are not what an integer field is written as.
    pub fn as_count(&self, what: &str) -> Result<u32, String> {
        let t = self.text.as_str();
        if self.quoted {
            return Err(format!(
                "{t:?} is a quoted string; write the number without quotes"
            ));
        }
        if t.is_empty() || t == "~" || t == "null" {
            return Err(format!("is empty; write a whole number of {what}"));
        }
        let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
        if let Some(rest) = t.strip_prefix('-')
            && (digits(rest) || rest.parse::<f64>().is_ok())
        {
            return Err(format!("{t} is negative; {what} must be 0 or more"));
        }
        let unsigned = t.strip_prefix('+').unwrap_or(t);
        if digits(unsigned) {
            if unsigned.len() > 1 && unsigned.starts_with('0') {
                let bare = unsigned.trim_start_matches('0');
                let bare = if bare.is_empty() { "0" } else { bare };
                return Err(format!(
                    "{t} has a leading zero (YAML 1.1 reads it as octal); write {bare}"
                ));
            }
            return unsigned
                .parse::<u32>()
                .map_err(|_| format!("{t} is too large; {what} go up to {}", u32::MAX));
        }
        match t.replace('_', "").parse::<f64>() {
            Ok(f) if f.is_finite() && f.fract() == 0.0 && f <= f64::from(u32::MAX) => {
                Err(format!("{t} is not written in plain digits; write {f:.0}"))
            }
            Ok(f) if f.is_finite() && f.fract() != 0.0 => Err(format!("{t} is not a whole number")),
            Ok(_) => Err(format!("{t} is too large; {what} go up to {}", u32::MAX)),
            Err(_) => Err(format!("{t:?} is not a number")),
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

    fn count(text: &str) -> Result<u32, String> {
        RawNumber::plain(text).as_count("weights")
    }

    #[test]
    fn counts_are_plain_digits_and_every_refusal_quotes_the_text() {
        assert_eq!(count("100"), Ok(100));
        assert_eq!(count("0"), Ok(0));
        assert_eq!(count("+7"), Ok(7));
        assert_eq!(count("4294967295"), Ok(u32::MAX));
        for (text, says) in [
            ("1e3", "1e3 is not written in plain digits; write 1000"),
            (
                "0100",
                "0100 has a leading zero (YAML 1.1 reads it as octal); write 100",
            ),
            (
                "00",
                "00 has a leading zero (YAML 1.1 reads it as octal); write 0",
            ),
            (
                "18446744073709551616",
                "18446744073709551616 is too large; weights go up to 4294967295",
            ),
            ("4294967296", "4294967296 is too large"),
            ("1e30", "1e30 is too large"),
            ("2.5", "2.5 is not a whole number"),
            ("-3", "-3 is negative; weights must be 0 or more"),
            ("-0.5", "-0.5 is negative"),
            ("0x10", "\"0x10\" is not a number"),
            ("1_000", "1_000 is not written in plain digits; write 1000"),
            ("abc", "\"abc\" is not a number"),
            ("~", "is empty"),
            (".inf", "\".inf\" is not a number"),
        ] {
            let got = count(text).unwrap_err();
            assert!(got.starts_with(says), "{text}: {got}");
        }
        let quoted = RawNumber {
            text: "100".into(),
            quoted: true,
        };
        assert_eq!(
            quoted.as_count("weights").unwrap_err(),
            "\"100\" is a quoted string; write the number without quotes"
        );
    }

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
