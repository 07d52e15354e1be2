//! Gateway API's own limits on an HTTPRoute, as the upstream CRD schema
//! states them (gateway.networking.k8s.io/v1, `apis/v1/httproute_types.go`
//! and `shared_types.go` kubebuilder markers), so a route the API server
//! would refuse is refused here too, each problem naming the limit.

/// `spec.hostnames`: `MaxItems=16`.
pub(crate) const MAX_HOSTNAMES: usize = 16;
/// `spec.rules`: `MinItems=1`, `MaxItems=16`.
pub(crate) const MAX_RULES: usize = 16;
/// `rules[].matches`: `MaxItems=64`.
pub(crate) const MAX_MATCHES: usize = 64;
/// All matches of a route together: "the total number of matches across
/// all rules in a route must be less than 128" (the CEL rule says `<= 128`).
pub(crate) const MAX_TOTAL_MATCHES: usize = 128;
/// `rules[].filters` and `rules[].backendRefs`: `MaxItems=16` each.
pub(crate) const MAX_FILTERS: usize = 16;
/// `rules[].backendRefs`: `MaxItems=16`.
pub(crate) const MAX_BACKENDS: usize = 16;
/// `matches[].headers`: `MaxItems=16`.
pub(crate) const MAX_HEADERS: usize = 16;
/// `backendRefs[].weight`: `Minimum=0`, `Maximum=1000000`.
pub(crate) const MAX_WEIGHT: u32 = 1_000_000;
/// `path.value`: `MaxLength=1024`.
pub(crate) const MAX_PATH: usize = 1024;
/// `headers[].name` (HeaderName): `MaxLength=256`.
pub(crate) const MAX_HEADER_NAME: usize = 256;
/// `headers[].value`: `MinLength=1`, `MaxLength=4096`.
pub(crate) const MAX_HEADER_VALUE: usize = 4096;
/// Hostname and SectionName: `MaxLength=253`.
pub(crate) const MAX_DNS_NAME: usize = 253;
/// `matches[].method`: the HTTPMethod enum.
pub(crate) const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// `len` items of `what` against `max`: the problem, if over.
pub(crate) fn at_most(len: usize, max: usize, what: &str) -> Result<(), String> {
    if len > max {
        return Err(format!(
            "has {len} {what}; Gateway API allows at most {max}"
        ));
    }
    Ok(())
}

/// One RFC 1123 label: lower-case letters, digits and `-`, not at either end.
fn label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

/// A Hostname: RFC 1123 (lower case), optionally with one leading `*.`
/// label, never an IP address (the Hostname type's pattern and doc).
pub(crate) fn hostname(h: &str) -> Result<(), String> {
    if h.is_empty() || h.len() > MAX_DNS_NAME {
        return Err(format!("{h:?} must be 1 to {MAX_DNS_NAME} characters long"));
    }
    if h.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!("{h:?} is an IP address; hostnames may not be IPs"));
    }
    let rest = h.strip_prefix("*.").unwrap_or(h);
    if !rest.split('.').all(label) {
        return Err(format!(
            "{h:?} is not a hostname: lower-case RFC 1123 labels, optionally after one leading `*.`"
        ));
    }
    Ok(())
}

/// A SectionName (a rule's `name`): a lower-case RFC 1123 subdomain.
pub(crate) fn section_name(n: &str) -> Result<(), String> {
    if n.is_empty() || n.len() > MAX_DNS_NAME || !n.split('.').all(label) {
        return Err(format!(
            "{n:?} is not a valid name: lower-case letters, digits, '-' and '.', at most {MAX_DNS_NAME} characters"
        ));
    }
    Ok(())
}

/// An `Exact` or `PathPrefix` value: an absolute path in the characters
/// the schema allows, without `//`, `/./`, `/../`, `%2f`, `%2F` or `#`, not
/// ending in `/.` or `/..` (the HTTPPathMatch validation rules).
pub(crate) fn plain_path(v: &str) -> Result<(), String> {
    if !v.starts_with('/') {
        return Err(format!("{v:?} must start with /"));
    }
    for bad in ["//", "/./", "/../", "%2f", "%2F", "#"] {
        if v.contains(bad) {
            return Err(format!("{v:?} must not contain {bad:?}"));
        }
    }
    for bad in ["/..", "/."] {
        if v.ends_with(bad) {
            return Err(format!("{v:?} must not end with {bad:?}"));
        }
    }
    let ok = |b: u8| b.is_ascii_alphanumeric() || b"-/._~!$&'()*+,;=:@%".contains(&b);
    if let Some(c) = v.bytes().find(|b| !ok(*b)) {
        return Err(format!(
            "{v:?} holds {:?}, which a path may not (percent-encode it)",
            c as char
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_follow_the_hostname_type() {
        for ok in [
            "echo",
            "echo.default.svc.cluster.local",
            "*.example.com",
            "a-1.b",
        ] {
            assert_eq!(hostname(ok), Ok(()), "{ok}");
        }
        for bad in [
            "", "Echo", "10.0.0.1", "::1", "*", "a.*.b", "-a", "a-", "a..b", "*.", "a_b",
        ] {
            assert!(hostname(bad).is_err(), "{bad:?} accepted");
        }
        assert!(hostname(&"a".repeat(254)).unwrap_err().contains("1 to 253"));
    }

    #[test]
    fn plain_paths_follow_the_path_match_rules() {
        for ok in ["/", "/api", "/api/v1/", "/a%20b", "/~user", "/a:b@c"] {
            assert_eq!(plain_path(ok), Ok(()), "{ok}");
        }
        for bad in [
            "api", "//", "/a//b", "/a/./b", "/a/../b", "/a%2fb", "/a#b", "/a/..", "/a/.", "/a b",
            "/a?b",
        ] {
            assert!(plain_path(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn limits_name_themselves() {
        assert_eq!(at_most(16, MAX_RULES, "rules"), Ok(()));
        assert_eq!(
            at_most(17, MAX_RULES, "rules").unwrap_err(),
            "has 17 rules; Gateway API allows at most 16"
        );
        assert!(section_name("canary-1").is_ok() && section_name("Canary").is_err());
    }
}
