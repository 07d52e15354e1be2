//! `--virtual-ips`: the IPv4 range local mode gives each service an
//! address from, as plain data.

/// An IPv4 range virtual IPs come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtualIps {
    base: u32,
    /// Addresses in it, the network and broadcast addresses left out.
    size: u32,
}

impl std::str::FromStr for VirtualIps {
    type Err = String;
    fn from_str(s: &str) -> Result<VirtualIps, String> {
        let (addr, len) = mesh_proto::lists::cidrs(s)?
            .into_iter()
            .next()
            .ok_or("empty")?;
        let std::net::IpAddr::V4(v4) = addr else {
            return Err(format!("{s:?}: virtual IPs are IPv4"));
        };
        if !(8..=30).contains(&len) {
            return Err(format!(
                "{s:?}: a prefix length from 8 to 30 (room for services, not a whole internet)"
            ));
        }
        let mask = u32::MAX << (32 - len);
        if u32::from(v4) & !mask != 0 {
            return Err(format!("{s:?}: the address has bits past the prefix"));
        }
        Ok(VirtualIps {
            base: u32::from(v4),
            size: (1u32 << (32 - len)) - 2,
        })
    }
}

impl VirtualIps {
    /// The range's network address.
    pub fn base(&self) -> u32 {
        self.base
    }

    /// How many addresses it gives (network and broadcast left out).
    pub fn size(&self) -> u32 {
        self.size
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_bad_range_is_named() {
        let good: super::VirtualIps = "10.96.0.0/16".parse().unwrap();
        assert_eq!(good.size(), 65534);
        for bad in [
            "10.96.0.1/16",
            "fd00::/64",
            "10.0.0.0/4",
            "10.0.0.0/31",
            "nope",
        ] {
            assert!(bad.parse::<super::VirtualIps>().is_err(), "{bad}");
        }
    }
}
