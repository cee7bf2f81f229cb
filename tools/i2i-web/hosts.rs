// SPDX-License-Identifier: MPL-2.0
//! The `Host` names a request may carry: the guard against DNS rebinding.
//!
//! A page on another site can point its own name at this machine's address; the browser then
//! sends that name as `Host` and the same name in `Origin`, so comparing the two headers
//! proves nothing. Without a token, i2i-web accepts only names that are this machine's:
//! `localhost` (and `*.localhost`, which browsers resolve to loopback), loopback and this
//! machine's interface addresses, its host name (and `NAME.local`), and the names given with
//! `--allowed-host` (a reverse proxy's public name). An attacker controls none of these.

use std::net::IpAddr;

/// A host name or address as compared: lower case, no trailing dot, an IPv6 address
/// without its brackets and in its canonical form. None when empty.
pub fn normalise(host: &str) -> Option<String> {
    let h = host.trim().trim_end_matches('.').to_ascii_lowercase();
    let bare = h
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(&h);
    if bare.is_empty() {
        return None;
    }
    Some(match bare.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) if bare.contains(':') => return None,
        Err(_) => bare.to_string(),
    })
}

/// The host part of a `Host` header (`name:port`, `[v6]:port`, `name`), normalised.
pub fn host_of(header: &str) -> Option<String> {
    let h = header.trim();
    let host = if h.starts_with('[') {
        &h[..=h.find(']')?]
    } else {
        h.rsplit_once(':').map_or(h, |(name, _port)| name)
    };
    normalise(host)
}

pub struct Hosts {
    allowed: Vec<String>,
    listen: IpAddr,
    hostname: Option<String>,
}

impl Hosts {
    pub fn new(allowed: &[String], listen: IpAddr) -> Hosts {
        let hostname = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .and_then(|h| normalise(&h));
        Hosts {
            allowed: allowed.to_vec(),
            listen,
            hostname,
        }
    }

    /// True when the `Host` header names this machine or an allowed name.
    pub fn accepts(&self, header: &str) -> bool {
        let Some(host) = host_of(header) else {
            return false;
        };
        if host == "localhost" || host.ends_with(".localhost") || self.allowed.contains(&host) {
            return true;
        }
        if let Some(name) = &self.hostname
            && (host == *name || host.strip_suffix(".local") == Some(name.as_str()))
        {
            return true;
        }
        match host.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback() || ip == self.listen || local_addresses().contains(&ip),
            Err(_) => false,
        }
    }
}

/// This machine's interface addresses now (they may change while i2i-web runs: DHCP, Wi-Fi).
fn local_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|a| {
            let addr = a.address?;
            if let Some(v4) = addr.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_headers() {
        assert_eq!(host_of("LocalHost:8765").as_deref(), Some("localhost"));
        assert_eq!(host_of("[::1]:8765").as_deref(), Some("::1"));
        assert_eq!(host_of("[0:0::1]").as_deref(), Some("::1"));
        assert_eq!(host_of("show.example.").as_deref(), Some("show.example"));
        assert_eq!(host_of("10.0.0.5:80").as_deref(), Some("10.0.0.5"));
        assert_eq!(host_of(""), None);
        assert_eq!(host_of("[::1"), None);
    }

    #[test]
    fn only_this_machine_and_allowed_names() {
        let hosts = Hosts::new(&["show.example".into()], "127.0.0.1".parse().unwrap());
        for ok in [
            "localhost:8765",
            "app.localhost",
            "127.0.0.1:8765",
            "127.3.4.5",
            "[::1]:8765",
            "show.example:8443",
        ] {
            assert!(hosts.accepts(ok), "{ok}");
        }
        for refused in [
            "rebind.evil.example:8765",
            "localhost.evil.example",
            "203.0.113.9:8765",
            "",
        ] {
            assert!(!hosts.accepts(refused), "{refused}");
        }
        // The machine's own addresses (whatever they are here) are accepted.
        for ip in local_addresses() {
            let header = match ip {
                IpAddr::V4(v4) => format!("{v4}:8765"),
                IpAddr::V6(v6) => format!("[{v6}]:8765"),
            };
            assert!(hosts.accepts(&header), "{header}");
        }
    }
}
