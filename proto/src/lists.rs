//! The lists the injector writes into a pod (annotations, the redirect
//! step's flags) and `mesh-proxy init` and the sidecar read back: ports
//! and port ranges, and CIDRs. One grammar for both planes, so a value the
//! webhook accepted is never refused inside the pod.

use std::net::IpAddr;

/// A comma-separated list of ports and inclusive ranges (`25,8000-8010`),
/// each 1–65535: the ranges, or why not.
pub fn ports(list: &str) -> Result<Vec<(u16, u16)>, String> {
    let port = |p: &str| -> Result<u16, String> {
        match p.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("{:?} is not a port (1-65535)", p.trim())),
            Ok(n) => Ok(n),
        }
    };
    let mut out = Vec::new();
    for item in list.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err("an empty item in the list".into());
        }
        let (lo, hi) = match item.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(item)?, port(item)?),
        };
        if lo > hi {
            return Err(format!("{item:?}: the range ends before it starts"));
        }
        out.push((lo, hi));
    }
    Ok(out)
}

/// A comma-separated list of CIDRs (`10.0.0.0/8,fd00::/8`): each address
/// and prefix length, or why not.
pub fn cidrs(list: &str) -> Result<Vec<(IpAddr, u8)>, String> {
    let mut out = Vec::new();
    for item in list.split(',') {
        let item = item.trim();
        let Some((addr, len)) = item.split_once('/') else {
            return Err(format!("{item:?} is not a CIDR (address/prefix length)"));
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{item:?}: {addr:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = len
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("{item:?}: the prefix length is not 0-{max}"))?;
        out.push((addr, len));
    }
    Ok(out)
}
