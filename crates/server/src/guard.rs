//! What every request passes before a route sees it (docs/serve.md, "Exposing the server"):
//! - the `Host` allow-list (DNS rebinding: a page of `evil.example` whose name now resolves to
//!   this machine reaches us with `Host: evil.example`);
//! - the `Origin` check of the WebSocket (a browser page of another site must not drive Moshi);
//! - API keys, accepted as Kyutai's `moshi-server` accepts them: the `kyutai-api-key` header, or
//!   when there is no such header the `auth_id` query parameter (browsers cannot set headers on
//!   a WebSocket);
//! - the security headers added to every response.

use std::net::IpAddr;
use std::path::Path;

use axum::http::{header, HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The header Kyutai's server reads a key from.
pub const KEY_HEADER: &str = "kyutai-api-key";
/// The query parameter it reads one from when the header is absent.
pub const KEY_QUERY: &str = "auth_id";

/// Which `Host` names are served. Loopback names (`localhost`, `*.localhost`) and IP literals are
/// always: DNS rebinding needs a name, and a request naming an address reached that address.
/// Other names must be listed: exactly, as `*.example.org` (any name under it) or `*` (any).
#[derive(Debug, Clone, Default)]
pub struct HostList {
    names: Vec<String>,
}

impl HostList {
    pub fn new(names: &[String]) -> Self {
        Self { names: names.iter().map(|n| normalise(n)).filter(|n| !n.is_empty()).collect() }
    }

    /// Whether `host` (a `Host` header's name, without its port) is served.
    pub fn allows(&self, host: &str) -> bool {
        let host = normalise(host);
        if host.is_empty() {
            return false;
        }
        if host == "localhost" || host.ends_with(".localhost") || host.parse::<IpAddr>().is_ok() {
            return true;
        }
        self.names.iter().any(|n| match n.strip_prefix("*.") {
            _ if n == "*" => true,
            Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(suffix) && host[..host.len() - suffix.len()].ends_with('.'),
            None => *n == host,
        })
    }
}

/// Lower case, no trailing dot, IPv6 brackets removed.
fn normalise(name: &str) -> String {
    let n = name.trim().trim_end_matches('.').to_ascii_lowercase();
    match n.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        Some(inner) => inner.to_string(),
        None => n,
    }
}

/// The name part of a `Host` header value (`name`, `name:port`, `[v6]`, `[v6]:port`).
pub fn host_name(value: &str) -> &str {
    let v = value.trim();
    if let Some(rest) = v.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match v.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => v,
    }
}

/// The `Host` check of every request: `Err` names the flag that would admit it. A request without
/// `Host` (HTTP/1.0 health checks, raw scripts) passes: browsers always send one, and only
/// browsers can be turned against us by DNS rebinding; its `Origin`, if any, is then refused.
pub fn check_host(hosts: &HostList, headers: &HeaderMap) -> Result<(), String> {
    let Some(value) = headers.get(header::HOST) else { return Ok(()) };
    let Ok(value) = value.to_str() else { return Err("the Host header is not ASCII".into()) };
    let name = host_name(value);
    if hosts.allows(name) {
        Ok(())
    } else {
        Err(format!("host {name:?} is not served here (start the server with --allow-host {name})"))
    }
}

/// Browsers send `Origin` with a WebSocket: it must be the server's own page (`http(s)://` and the
/// request's `Host`, which passed [`check_host`]) or one listed with `--allow-origin`. Clients that
/// send no `Origin` (Kyutai's Python client, scripts) are not browsers and pass.
pub fn check_origin(allowed_origins: &[String], allow_any: bool, headers: &HeaderMap) -> Result<(), String> {
    if allow_any {
        return Ok(());
    }
    let Some(origin) = headers.get(header::ORIGIN).map(|v| v.to_str().unwrap_or("(not ASCII)")) else {
        return Ok(());
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).map(str::trim).filter(|h| !h.is_empty());
    let own = host.is_some_and(|h| ["http://", "https://"].iter().any(|scheme| origin.eq_ignore_ascii_case(&format!("{scheme}{h}"))));
    if own || allowed_origins.iter().any(|o| o.trim_end_matches('/').eq_ignore_ascii_case(origin)) {
        Ok(())
    } else {
        Err(format!("origin {origin} is not allowed (start the server with --allow-origin {origin})"))
    }
}

/// The server's API keys (`--api-key-file`), kept as SHA-256 digests: a presented key is hashed
/// and compared with every digest in constant time, so neither its bytes nor its length show in
/// the time an answer takes. `Debug` does not print them.
#[derive(Clone)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.digests.len())
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl ApiKeys {
    /// Keys as given (surrounding white space removed; empty ones refused).
    pub fn new<S: AsRef<str>>(keys: &[S]) -> Result<Self, String> {
        let mut digests = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let k = k.as_ref().trim();
            if k.is_empty() {
                return Err(format!("API key {} is empty", i + 1));
            }
            digests.push(digest(k));
        }
        if digests.is_empty() {
            return Err("no API key given".into());
        }
        Ok(Self { digests })
    }

    /// One key per line; blank lines and lines starting with `#` are skipped.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("--api-key-file {}: {e}", path.display()))?;
        let keys: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
        if keys.is_empty() {
            return Err(format!("--api-key-file {}: no key in the file (one key per line)", path.display()));
        }
        Self::new(&keys)
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `presented` is one of the keys (every key is compared, whatever matches).
    pub fn accepts(&self, presented: &str) -> bool {
        let p = digest(presented);
        let mut ok = subtle::Choice::from(0);
        for d in &self.digests {
            ok |= d.ct_eq(&p);
        }
        ok.into()
    }

    /// Kyutai's rule: the `kyutai-api-key` header when present (even if it is wrong: the query is
    /// then not looked at), else the `auth_id` query parameter.
    pub fn check(&self, headers: &HeaderMap, query: Option<&str>) -> Result<(), String> {
        let presented = match headers.get(KEY_HEADER) {
            Some(v) => Some(v.to_str().unwrap_or("").to_string()),
            None => query_value(query.unwrap_or(""), KEY_QUERY),
        };
        match presented {
            None => Err(format!("this server needs an API key: send it in the {KEY_HEADER} header or the {KEY_QUERY} query parameter")),
            Some(k) if self.accepts(&k) => Ok(()),
            Some(_) => Err("the API key is not valid".into()),
        }
    }
}

/// The first value of `key` in a query string (percent-decoded).
fn query_value(query: &str, key: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
}

/// The Content-Security-Policy of every response: our page's own scripts, styles, images and
/// WebSocket only; no inline code, no plugins, never framed.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
media-src 'self' blob:; worker-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Add the security headers to a response's headers (`tls`: HSTS as well). `Cache-Control` is
/// kept when the route set one (the page's assets revalidate; everything else is `no-store`).
pub fn add_security_headers(h: &mut HeaderMap, tls: bool) {
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if tls {
        h.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn hosts() {
        let l = HostList::new(&["moshi.example.org".into(), "*.corp.example".into()]);
        for ok in ["localhost", "LOCALHOST.", "a.localhost", "127.0.0.1", "10.1.2.3", "::1", "[::1]", "moshi.example.org", "x.corp.example", "a.b.corp.example"] {
            assert!(l.allows(ok), "{ok}");
        }
        for bad in ["", "evil.example", "localhost.evil.example", "corp.example", "xcorp.example", "example.org", "moshi.example.org.evil"] {
            assert!(!l.allows(bad), "{bad}");
        }
        assert!(HostList::new(&["*".into()]).allows("anything.example"));
        assert_eq!(host_name("evil.example:8998"), "evil.example");
        assert_eq!(host_name("[::1]:8998"), "::1");
        assert_eq!(host_name("localhost"), "localhost");
    }

    #[test]
    fn rebinding_and_origins() {
        let l = HostList::default();
        // Issue 15, F1: Host evil.example with its own Origin passed.
        let h = headers(&[("host", "evil.example:8998"), ("origin", "http://evil.example:8998")]);
        assert!(check_host(&l, &h).unwrap_err().contains("--allow-host evil.example"));
        // No Host and an Origin of "http://" passed too.
        let h = headers(&[("origin", "http://")]);
        assert!(check_host(&l, &h).is_ok());
        assert!(check_origin(&[], false, &h).unwrap_err().contains("http://"));
        let h = headers(&[("host", "127.0.0.1:8998"), ("origin", "http://127.0.0.1:8998")]);
        assert!(check_host(&l, &h).is_ok() && check_origin(&[], false, &h).is_ok());
        let h = headers(&[("host", "127.0.0.1:8998"), ("origin", "http://localhost:3000")]);
        assert!(check_origin(&[], false, &h).is_err(), "another local site");
        assert!(check_origin(&["http://localhost:3000/".into()], false, &h).is_ok());
        assert!(check_origin(&[], false, &headers(&[("host", "127.0.0.1:1")])).is_ok(), "not a browser");
    }

    #[test]
    fn keys_as_kyutai_accepts_them() {
        let k = ApiKeys::new(&["s3cret", "other"]).unwrap();
        assert!(k.check(&headers(&[("kyutai-api-key", "s3cret")]), None).is_ok());
        assert!(k.check(&HeaderMap::new(), Some("text_topk=3&auth_id=other")).is_ok());
        assert!(k.check(&HeaderMap::new(), Some("auth_id=s3cre")).unwrap_err().contains("not valid"));
        assert!(k.check(&HeaderMap::new(), None).unwrap_err().contains("kyutai-api-key"));
        // The header wins when both are there, as in Kyutai's server.
        assert!(k.check(&headers(&[("kyutai-api-key", "wrong")]), Some("auth_id=s3cret")).is_err());
        assert!(ApiKeys::new::<&str>(&[]).is_err() && ApiKeys::new(&[" "]).is_err());
        assert_eq!(format!("{k:?}"), "ApiKeys(2 keys)");
    }

    #[test]
    fn key_files() {
        let dir = std::env::temp_dir().join(format!("moshi-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("keys");
        std::fs::write(&f, "# ops\n\n  alpha  \nbeta\n").unwrap();
        let k = ApiKeys::from_file(&f).unwrap();
        assert!(k.accepts("alpha") && k.accepts("beta") && !k.accepts("# ops") && k.len() == 2);
        std::fs::write(&f, "# nothing\n").unwrap();
        assert!(ApiKeys::from_file(&f).unwrap_err().contains("no key"));
        assert!(ApiKeys::from_file(&dir.join("none")).unwrap_err().contains("--api-key-file"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
