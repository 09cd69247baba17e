//! Phase 0: is this a request this edge serves at all? The edge is a reverse proxy for its configured
//! origins only: it never forwards to a host named by the client.

use http::header::HOST;
use http::request::Parts;
use http::{Method, StatusCode};

/// The request's target, once accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host as the client named it (lower-case, port kept), for the cache key.
    pub host: String,
    pub path: String,
    pub query: Option<String>,
}

impl Target {
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{}", self.path, q),
            None => self.path.clone(),
        }
    }
}

/// Accepts or refuses a request (status and reason).
pub fn accept(parts: &Parts, server_names: &[String]) -> Result<Target, (StatusCode, String)> {
    if parts.method == Method::CONNECT {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not supported: this edge is not a forward proxy".into(),
        ));
    }
    let host_header = parts.headers.get(HOST).and_then(|v| v.to_str().ok()).map(str::to_ascii_lowercase);
    let absolute = parts.uri.authority().map(|a| a.as_str().to_ascii_lowercase());
    let host = match (&absolute, host_header) {
        (Some(authority), _) => {
            // Absolute-form targets are what forward proxies get; accept them only for our own names.
            if !name_listed(authority, server_names) {
                return Err((
                    StatusCode::MISDIRECTED_REQUEST,
                    format!("this edge does not serve {authority} (not a forward proxy)"),
                ));
            }
            authority.clone()
        }
        (None, Some(host)) => {
            if !server_names.is_empty() && !name_listed(&host, server_names) {
                return Err((StatusCode::MISDIRECTED_REQUEST, format!("this edge does not serve host {host}")));
            }
            host
        }
        (None, None) if parts.version == http::Version::HTTP_10 => String::new(),
        (None, None) => return Err((StatusCode::BAD_REQUEST, "missing Host header".into())),
    };
    let path = parts.uri.path();
    if !path.starts_with('/') {
        return Err((StatusCode::BAD_REQUEST, "request target must be an absolute path".into()));
    }
    Ok(Target { host, path: path.to_string(), query: parts.uri.query().map(str::to_string) })
}

fn name_listed(host: &str, names: &[String]) -> bool {
    let bare =
        host.rsplit_once(':').map_or(host, |(h, port)| if port.chars().all(|c| c.is_ascii_digit()) { h } else { host });
    names.iter().any(|n| n.eq_ignore_ascii_case(host) || n.eq_ignore_ascii_case(bare))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, host: Option<&str>) -> Parts {
        let mut builder = http::Request::get(uri);
        if let Some(h) = host {
            builder = builder.header(HOST, h);
        }
        builder.body(()).expect("request").into_parts().0
    }

    #[test]
    fn origin_form_with_any_host_when_no_names_configured() {
        let t = accept(&parts("/a/b.ts?x=1", Some("Edge.Example")), &[]).expect("accepted");
        assert_eq!(t, Target { host: "edge.example".into(), path: "/a/b.ts".into(), query: Some("x=1".into()) });
    }

    #[test]
    fn refuses_foreign_hosts_and_absolute_urls() {
        let names = vec!["cdn.example".to_string()];
        assert!(accept(&parts("/a", Some("cdn.example:8080")), &names).is_ok());
        assert_eq!(accept(&parts("/a", Some("evil.example")), &names).unwrap_err().0, StatusCode::MISDIRECTED_REQUEST);
        assert_eq!(accept(&parts("http://evil.example/a", None), &[]).unwrap_err().0, StatusCode::MISDIRECTED_REQUEST);
        assert!(accept(&parts("http://cdn.example/a", None), &names).is_ok());
        assert_eq!(accept(&parts("/a", None), &[]).unwrap_err().0, StatusCode::BAD_REQUEST);
    }
}
