//! Collects every problem of one document as it is validated, each as a
//! "file:line: object: field: problem" error, with the checks the rule
//! kinds share (durations, counts, percentages, regexes).

use crate::manifest::meta::{RawNumber, duration_ms};
use crate::manifest::{self, Located};

/// Collects problems for one document.
pub(crate) struct Problems<'a> {
    at: &'a Located,
    object: String,
    errors: Vec<manifest::Error>,
}

impl<'a> Problems<'a> {
    /// Problems of the document `at`, which describes `object` ("Kind ns/name").
    pub(crate) fn new(at: &'a Located, object: String) -> Self {
        Problems {
            at,
            object,
            errors: Vec::new(),
        }
    }

    /// Everything found.
    pub(crate) fn into_errors(self) -> Vec<manifest::Error> {
        self.errors
    }
    pub(crate) fn add(&mut self, field: impl Into<String>, problem: impl Into<String>) {
        self.errors.push(manifest::Error::at(
            self.at,
            &self.object,
            field.into(),
            problem.into(),
        ));
    }

    pub(crate) fn duration(&mut self, field: &str, v: &Option<String>) -> Option<u64> {
        match duration_ms(v.as_deref()?) {
            Ok(ms) => Some(ms),
            Err(e) => {
                self.add(field, e);
                None
            }
        }
    }

    pub(crate) fn count(&mut self, field: &str, v: &Option<RawNumber>) -> Option<u32> {
        match v.as_ref()?.as_count("values") {
            Ok(n) => Some(n),
            Err(e) => {
                self.add(field, e);
                None
            }
        }
    }

    /// Retry attempts: a whole number of at least 1; `zero` says what to
    /// write instead of 0 in this syntax.
    pub(crate) fn attempts(
        &mut self,
        field: &str,
        v: &Option<RawNumber>,
        zero: &str,
    ) -> Option<u32> {
        match v.as_ref()?.as_count("attempts") {
            Ok(0) => {
                self.add(field, format!("is 0; give at least 1, {zero}"));
                None
            }
            Ok(n) => Some(n),
            Err(e) => {
                self.add(field, e);
                None
            }
        }
    }

    pub(crate) fn percent(&mut self, field: &str, v: f64) -> f64 {
        if !(0.0..=100.0).contains(&v) {
            self.add(field, format!("{v} is outside 0-100"));
        }
        v
    }

    pub(crate) fn regex(&mut self, field: &str, re: &str) {
        if let Err(e) = regex::Regex::new(re) {
            let first = e.to_string().lines().last().unwrap_or_default().to_string();
            self.add(field, format!("regex {re:?} does not compile: {first}"));
        }
    }
}
