//! Who may use the observer: the token (query, cookie or bearer header),
//! loopback peers and hosts when bound to loopback, same-origin POSTs. See
//! the crate doc.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use axum::http::{HeaderMap, Method, Uri, header};

/// The cookie the page keeps the token in.
pub(crate) const COOKIE: &str = "relive_observer";

/// 32 bytes from the OS, as hex.
pub(crate) fn new_token() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .map_err(|e| format!("reading /dev/urandom: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes the token to `path` (0600), atomically: a reader never sees a
/// partial token.
pub(crate) fn write_token(path: &Path, token: &str) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let temp = path.with_extension("token.tmp");
    let _ = std::fs::remove_file(&temp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .and_then(|mut file| {
            file.write_all(token.as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&temp, path));
    written.map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Compares in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// How a request presented the token.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Presented {
    /// In the query (`?token=`): the page sets the cookie.
    Query,
    /// As the cookie or a bearer header.
    Kept,
    /// Not at all.
    Missing,
    /// Some token, not this one.
    Wrong,
}

/// Whether the request carries `token`, and how.
pub(crate) fn presented(token: &str, uri: &Uri, headers: &HeaderMap) -> Presented {
    let mut seen = false;
    if let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        seen = true;
        if let Some(given) = value.strip_prefix("Bearer ")
            && same(given.trim().as_bytes(), token.as_bytes())
        {
            return Presented::Kept;
        }
    }
    for cookies in headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()) {
        for cookie in cookies.split(';') {
            if let Some(given) = cookie.trim().strip_prefix(COOKIE).and_then(|rest| rest.strip_prefix('=')) {
                seen = true;
                if same(given.as_bytes(), token.as_bytes()) {
                    return Presented::Kept;
                }
            }
        }
    }
    if let Some(query) = uri.query() {
        for pair in query.split('&') {
            if let Some(given) = pair.strip_prefix("token=") {
                seen = true;
                if same(given.as_bytes(), token.as_bytes()) {
                    return Presented::Query;
                }
            }
        }
    }
    if seen { Presented::Wrong } else { Presented::Missing }
}

/// Whether `host` (a `Host` header: name or address, maybe a port) names
/// this machine's loopback.
fn loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':')
            .map_or(host, |(name, port)| if port.parse::<u16>().is_ok() { name } else { host })
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Refuses what must not reach the observer whatever its token: a peer
/// from elsewhere or a foreign `Host` when bound to loopback, a POST from
/// another origin. The text says why.
pub(crate) fn refused_origin(
    loopback_only: bool,
    peer: SocketAddr,
    method: &Method,
    headers: &HeaderMap,
) -> Option<String> {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if loopback_only {
        if !peer.ip().is_loopback() {
            return Some(format!(
                "refused: this observer listens on loopback only and {} is not a loopback address; \
                 open it from the node's machine (or start the node with --http ADDR:PORT on another address)",
                peer.ip()
            ));
        }
        if !loopback_host(host) {
            return Some(format!(
                "refused: the Host header {host:?} does not name this machine's loopback; \
                 open the observer as http://127.0.0.1:PORT/ or http://localhost:PORT/"
            ));
        }
    }
    if method == Method::POST
        && let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())
        && origin != format!("http://{host}")
    {
        return Some(format!(
            "refused: a POST from {origin:?}, not from the observer's own page (http://{host})"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn tokens_by_query_cookie_and_bearer() {
        let token = new_token().unwrap();
        assert_eq!(token.len(), 64);
        assert_ne!(token, new_token().unwrap());
        let uri = |q: &str| q.parse::<Uri>().unwrap();
        let none = HeaderMap::new();
        assert_eq!(presented(&token, &uri("/"), &none), Presented::Missing);
        assert_eq!(presented(&token, &uri(&format!("/?a=1&token={token}")), &none), Presented::Query);
        assert_eq!(presented(&token, &uri("/?token=abc"), &none), Presented::Wrong);
        let bearer = headers(&[(header::AUTHORIZATION, &format!("Bearer {token}"))]);
        assert_eq!(presented(&token, &uri("/api/status"), &bearer), Presented::Kept);
        let cookie = headers(&[(header::COOKIE, &format!("other=1; {COOKIE}={token}"))]);
        assert_eq!(presented(&token, &uri("/"), &cookie), Presented::Kept);
        let wrong = headers(&[(header::COOKIE, &format!("{COOKIE}=x{}", &token[1..]))]);
        assert_eq!(presented(&token, &uri("/"), &wrong), Presented::Wrong);
    }

    #[test]
    fn loopback_peers_and_hosts_only_when_bound_to_loopback() {
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let far: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let host = |h: &str| headers(&[(header::HOST, h)]);
        assert!(refused_origin(true, local, &Method::GET, &host("127.0.0.1:8080")).is_none());
        assert!(refused_origin(true, local, &Method::GET, &host("localhost:8080")).is_none());
        assert!(refused_origin(true, local, &Method::GET, &host("[::1]:8080")).is_none());
        let peer = refused_origin(true, far, &Method::GET, &host("127.0.0.1:8080")).unwrap();
        assert!(peer.contains("192.0.2.7") && peer.contains("loopback only"), "{peer}");
        let rebound = refused_origin(true, local, &Method::GET, &host("evil.example:8080")).unwrap();
        assert!(rebound.contains("evil.example"), "{rebound}");
        // Bound elsewhere on purpose: any peer, any host.
        assert!(refused_origin(false, far, &Method::GET, &host("node.example:8080")).is_none());
        let post = headers(&[(header::HOST, "127.0.0.1:8080"), (header::ORIGIN, "http://evil.example")]);
        assert!(refused_origin(true, local, &Method::POST, &post).unwrap().contains("evil.example"));
        let own = headers(&[(header::HOST, "127.0.0.1:8080"), (header::ORIGIN, "http://127.0.0.1:8080")]);
        assert!(refused_origin(true, local, &Method::POST, &own).is_none());
    }
}
