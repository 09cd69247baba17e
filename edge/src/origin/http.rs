//! An HTTP(S) origin, reached over one pooled keep-alive client shared by all origins.

use std::time::Duration;

use futures::StreamExt;

use super::{OriginError, OriginRequest, OriginResponse};
use crate::config::OriginConfig;

pub struct HttpOrigin {
    name: String,
    /// The origin URL without a trailing slash; request paths are appended to it.
    base: String,
    client: reqwest::Client,
    first_byte_timeout: Duration,
}

impl HttpOrigin {
    /// The one client, pooled and keep-alive, that every HTTP origin shares.
    pub fn client(config: &OriginConfig) -> Result<reqwest::Client, OriginError> {
        reqwest::Client::builder()
            .connect_timeout(config.connect_timeout.0)
            .pool_max_idle_per_host(config.max_idle_connections)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| OriginError::Invalid { origin: "http client".into(), reason: e.to_string() })
    }

    pub fn new(spec: &str, client: reqwest::Client, config: &OriginConfig) -> Result<Self, OriginError> {
        let url =
            url::Url::parse(spec).map_err(|e| OriginError::Invalid { origin: spec.into(), reason: e.to_string() })?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(OriginError::Invalid {
                origin: spec.into(),
                reason: "an origin URL takes no query or fragment".into(),
            });
        }
        Ok(HttpOrigin {
            name: spec.to_string(),
            base: url.as_str().trim_end_matches('/').to_string(),
            client,
            first_byte_timeout: config.first_byte_timeout.0,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn send(&self, request: &OriginRequest) -> Result<OriginResponse, OriginError> {
        let url = format!("{}{}", self.base, request.path_and_query);
        let mut builder = self.client.request(request.method.clone(), &url).headers(request.headers.clone());
        if !request.body.is_empty() {
            builder = builder.body(request.body.clone());
        }
        let response = match tokio::time::timeout(self.first_byte_timeout, builder.send()).await {
            Err(_) => return Err(OriginError::Timeout { origin: self.name.clone(), after: self.first_byte_timeout }),
            Ok(Err(error)) if error.is_timeout() => {
                return Err(OriginError::Timeout { origin: self.name.clone(), after: self.first_byte_timeout })
            }
            Ok(Err(error)) => {
                return Err(OriginError::Unreachable { origin: self.name.clone(), reason: error_chain(&error) })
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes_stream().map(|chunk| chunk.map_err(|e| OriginError::Body(error_chain(&e)))).boxed();
        Ok(OriginResponse { status, headers, body, origin: self.name.clone() })
    }
}

/// The error and its causes on one line (reqwest's top-level message alone says little).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
