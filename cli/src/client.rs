//! The API client: which controller and token to use (the context, then
//! `VERGE_ADDR`, `VERGE_TOKEN`, `VERGE_CA_FILE`), HTTPS verified against the
//! controller's CA file, bounded reads, and the API's errors as
//! [`ApiError`]s.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use reqwest::{Method, StatusCode};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde_json::Value;

use crate::config;
use crate::failure::{ApiError, Usage};

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the controller may stay silent in the middle of a reply (the
/// watch stream sends a keep-alive every 15 s).
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an ordinary request may take as a whole.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest reply body read (a node list of a big fleet fits).
const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;

/// Where the API is and how to authenticate to it.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: String,
    pub token: Option<String>,
    pub ca_file: Option<PathBuf>,
    /// The context it came from, if any.
    pub context: Option<String>,
}

/// Installs ring as rustls's process-wide provider (before any client is
/// built; reqwest is built without a provider of its own).
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Target {
    /// The context named (or the current one), with the environment's
    /// overrides applied.
    pub fn resolve(context: Option<&str>) -> anyhow::Result<Target> {
        let path = config::path()?;
        let file = config::load(&path)?;
        let chosen = match context {
            Some(name) => match file.contexts.get(name) {
                Some(c) => Some((name.to_owned(), c.clone())),
                None => bail!(Usage(format!(
                    "no context named {name:?} in {} (see `verge context ls`)",
                    path.display()
                ))),
            },
            None => file
                .current
                .as_ref()
                .and_then(|name| file.contexts.get(name).map(|c| (name.clone(), c.clone()))),
        };
        let addr = env("VERGE_ADDR").or_else(|| chosen.as_ref().map(|(_, c)| c.addr.clone()));
        let Some(addr) = addr else {
            bail!(Usage(
                "no controller to talk to: run `verge login ADDR` or set VERGE_ADDR".to_owned()
            ));
        };
        Ok(Target {
            addr: addr.trim_end_matches('/').to_owned(),
            token: env("VERGE_TOKEN").or_else(|| chosen.as_ref().map(|(_, c)| c.token.clone())),
            ca_file: env("VERGE_CA_FILE")
                .map(PathBuf::from)
                .or_else(|| chosen.as_ref().and_then(|(_, c)| c.ca_file.clone())),
            context: chosen.map(|(name, _)| name),
        })
    }
}

/// A client of one controller.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    target: Target,
}

/// A rustls configuration trusting only the certificates in `ca_file`.
fn tls_config(ca_file: &Path) -> anyhow::Result<rustls::ClientConfig> {
    let pem = std::fs::read(ca_file)
        .with_context(|| format!("reading the CA certificate {}", ca_file.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert =
            cert.with_context(|| format!("{} is not a PEM certificate", ca_file.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("using the CA certificate {}", ca_file.display()))?;
    }
    if roots.is_empty() {
        bail!("{} holds no PEM certificate", ca_file.display());
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS versions")?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

impl Client {
    /// A client for `target`; HTTPS is verified against its CA file when it
    /// has one, else against the system's roots.
    pub fn new(target: Target) -> anyhow::Result<Client> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("verge/", env!("CARGO_PKG_VERSION")));
        if let Some(ca_file) = &target.ca_file {
            builder = builder.tls_backend_preconfigured(tls_config(ca_file)?);
        }
        let http = builder.build().context("building the HTTP client")?;
        Ok(Client { http, target })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.target.addr)
    }

    /// A request with the bearer token (when there is one).
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, self.url(path));
        match &self.target.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// A request that needs a token: a usage error without one.
    pub fn authed(&self, method: Method, path: &str) -> anyhow::Result<reqwest::RequestBuilder> {
        if self.target.token.is_none() {
            bail!(Usage(
                "no API token: run `verge login` or set VERGE_TOKEN".to_owned()
            ));
        }
        Ok(self.request(method, path))
    }

    /// Sends a request and returns the reply's status, headers and body,
    /// or the API's error.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> anyhow::Result<(StatusCode, reqwest::header::HeaderMap, Vec<u8>)> {
        let response = request
            .send()
            .await
            .with_context(|| format!("{what}: cannot reach {}", self.target.addr))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = read_bounded(response, MAX_REPLY_BYTES)
            .await
            .with_context(|| format!("{what}: reading the reply"))?;
        if !status.is_success() {
            return Err(ApiError::from_body(status.as_u16(), &body).into());
        }
        Ok((status, headers, body))
    }

    /// One JSON call with the token: the reply's JSON (`Null` for 204).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let what = format!("{method} {path}");
        let mut request = self.authed(method, path)?.timeout(REQUEST_TIMEOUT);
        if let Some(body) = body {
            request = request.json(body);
        }
        let (_, _, bytes) = self.send(request, &what).await?;
        json_of(&bytes, &what)
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, path, None).await
    }
}

/// A reply body as JSON (`Null` when empty).
pub fn json_of(bytes: &[u8], what: &str) -> anyhow::Result<Value> {
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(bytes).with_context(|| format!("{what}: the reply is not JSON"))
}

/// Reads a reply body of at most `limit` bytes.
async fn read_bounded(mut response: reqwest::Response, limit: usize) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            bail!("the reply is larger than {limit} bytes");
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A path segment, percent-encoded (ids and names are plain, but a typo
/// with a `/` or `?` must not become another route).
pub fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `path?query` from the pairs whose value is set.
pub fn with_query(path: &str, pairs: &[(&str, Option<String>)]) -> String {
    let set: Vec<(&str, &str)> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (*k, v)))
        .collect();
    if set.is_empty() {
        return path.to_owned();
    }
    let query = serde_urlencoded::to_string(&set).unwrap_or_default();
    format!("{path}?{query}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_and_queries_are_encoded() {
        assert_eq!(segment("edge-7"), "edge-7");
        assert_eq!(segment("a/b?c"), "a%2Fb%3Fc");
        assert_eq!(
            with_query(
                "/api/v1/audit",
                &[
                    ("actor", Some("otto".into())),
                    ("target", None),
                    ("since", Some("2026-12-01T00:00:00Z".into()))
                ]
            ),
            "/api/v1/audit?actor=otto&since=2026-12-01T00%3A00%3A00Z"
        );
        assert_eq!(with_query("/x", &[("a", None)]), "/x");
    }
}
