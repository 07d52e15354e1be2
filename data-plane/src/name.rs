//! Names from config (services, routes, backends, versions, identities)
//! as shared strings: made once per snapshot, then cloned onto every
//! request's metric labels and log lines by a reference count, never by
//! copying bytes into a fresh allocation.

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// A shared, immutable name; the empty name allocates nothing.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Option<Arc<str>>);

impl Name {
    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        self.0.as_deref().unwrap_or("")
    }
}

impl Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Self {
        Name((!s.is_empty()).then(|| Arc::from(s)))
    }
}

impl From<String> for Name {
    fn from(s: String) -> Self {
        Name((!s.is_empty()).then(|| Arc::from(s)))
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl serde::Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        fmt::Write::write_str(encoder, self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_clones_without_copying_and_the_empty_name_holds_nothing() {
        let a = Name::from("echo.default");
        let b = a.clone();
        assert!(std::ptr::eq(a.as_str(), b.as_str()));
        assert_eq!(a, "echo.default");
        assert_eq!(Name::from(""), Name::default());
        assert!(Name::from(String::new()).0.is_none());
        assert_eq!(format!("{a} {a:?}"), "echo.default \"echo.default\"");
    }
}
