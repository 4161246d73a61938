//! A small client for the controller's HTTP API, as an operator's script
//! would use it: bearer token, JSON in and out.

use anyhow::{Context, Result, bail};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// The controller's API at one base URL with one admin token.
#[derive(Clone, Debug)]
pub struct Api {
    pub base: String,
    token: String,
    http: reqwest::Client,
}

/// A response: status code and parsed JSON body (`Value::Null` when empty).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

impl Reply {
    /// The body, if the status is a success; otherwise an error showing both.
    pub fn ok(self) -> Result<Value> {
        if self.status.is_success() {
            Ok(self.body)
        } else {
            bail!("HTTP {}: {}", self.status, self.body)
        }
    }

    /// The `error.code` of an error reply.
    pub fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl Api {
    /// A client for a plain-HTTP API.
    pub fn new(base: String, token: String) -> Self {
        Self::with_ca(base, token, None)
    }

    /// A client trusting `ca_pem` for an HTTPS API (plain HTTP without one).
    pub fn with_ca(base: String, token: String, ca_pem: Option<&str>) -> Self {
        let http = crate::tls::http_client(ca_pem).expect("the TLS client configuration builds");
        Self { base, token, http }
    }

    /// The HTTP client (trusting the controller's CA in TLS mode).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Sends a request with the admin token and an optional body.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<reqwest::Body>,
    ) -> Result<Reply> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .with_context(|| format!("{method} {path}: body is not JSON"))?
        };
        Ok(Reply { status, body })
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.request(Method::GET, path, None).await?.ok()
    }

    pub async fn put_service(&self, name: &str, spec: &Value) -> Result<Reply> {
        let body = serde_json::to_vec(spec)?;
        self.request(
            Method::PUT,
            &format!("/api/v1/services/{name}"),
            Some(body.into()),
        )
        .await
    }

    pub async fn delete_service(&self, name: &str) -> Result<Reply> {
        self.request(Method::DELETE, &format!("/api/v1/services/{name}"), None)
            .await
    }

    pub async fn service(&self, name: &str) -> Result<Value> {
        self.get(&format!("/api/v1/services/{name}")).await
    }

    pub async fn node(&self, id: &str) -> Result<Value> {
        self.get(&format!("/api/v1/nodes/{id}")).await
    }

    /// Uploads an artifact; returns its sha256.
    pub async fn upload_artifact(&self, bytes: Vec<u8>) -> Result<String> {
        let resp = self
            .http
            .post(format!("{}/api/v1/artifacts", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "application/octet-stream")
            .body(bytes)
            .send()
            .await?;
        let status = resp.status();
        let body: Value = resp.json().await?;
        if !status.is_success() {
            bail!("artifact upload: HTTP {status}: {body}");
        }
        body["sha256"]
            .as_str()
            .map(str::to_owned)
            .context("artifact upload reply has no sha256")
    }
}
