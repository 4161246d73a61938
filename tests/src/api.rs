//! A small client for the controller's HTTP API, as an operator's script
//! would use it: bearer token, JSON in and out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use verge_shared::trust::payload_type::RELEASE;

use crate::trust::{self, Roles};

/// The controller's API at one base URL with one API token (the admin
/// token unless [`Api::as_token`] says otherwise).
#[derive(Clone)]
pub struct Api {
    pub base: String,
    token: String,
    http: reqwest::Client,
    /// Signs releases for service specs written the short way (below).
    roles: Option<Arc<Roles>>,
    /// Sizes of the artifacts this client uploaded, by sha256.
    sizes: Arc<Mutex<HashMap<String, u64>>>,
    /// Releases already made from short specs, so the same spec PUT twice
    /// names the same release.
    releases: Arc<Mutex<HashMap<String, String>>>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// The fields of a short service spec that describe the code and how it
/// runs: they go into a publisher-signed release.
const RELEASE_FIELDS: [&str; 8] = [
    "artifact",
    "args",
    "env",
    "ports",
    "restart",
    "stop_grace_secs",
    "health",
    "entrypoint",
];

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
        Self {
            base,
            token,
            http,
            roles: None,
            sizes: Arc::default(),
            releases: Arc::default(),
        }
    }

    /// The same API as the holder of `token`.
    pub fn as_token(&self, token: &str) -> Api {
        Api {
            token: token.to_owned(),
            ..self.clone()
        }
    }

    /// The same API, connecting from the local address `local` with `ca_pem`.
    pub fn from_address(&self, local: std::net::IpAddr, ca_pem: Option<&str>) -> Api {
        Api {
            http: crate::tls::http_client_from(ca_pem, Some(local))
                .expect("the TLS client configuration builds"),
            ..self.clone()
        }
    }

    /// The HTTP client (trusting the controller's CA in TLS mode).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Lets [`Api::put_service`] turn short specs into signed releases.
    pub fn with_publisher(mut self, roles: Arc<Roles>) -> Self {
        self.roles = Some(roles);
        self
    }

    /// Uploads a signed release envelope (JSON bytes).
    pub async fn post_release(&self, envelope: Vec<u8>) -> Result<Reply> {
        self.request(Method::POST, "/api/v1/releases", Some(envelope.into()))
            .await
    }

    /// Signs and uploads a release of `service` made from the release
    /// fields of a short spec; returns its digest, or the controller's
    /// refusal. The run fields are signed as written (not parsed here), so
    /// the controller's own validation answers for bad ones. Versions follow
    /// the clock, so each new release is newer than the last.
    pub async fn release_from_spec(
        &self,
        service: &str,
        spec: &Value,
    ) -> Result<Result<String, Reply>> {
        let roles = self
            .roles
            .as_ref()
            .context("this client has no publisher key for short specs")?;
        let key = format!("{service} {spec}");
        if let Some(digest) = self.releases.lock().expect("lock").get(&key) {
            return Ok(Ok(digest.clone()));
        }
        let artifact = spec["artifact"].as_str().context("spec has no artifact")?;
        let size = *self
            .sizes
            .lock()
            .expect("lock")
            .get(artifact)
            .context("the artifact was not uploaded through this client")?;
        let mut run = spec.clone();
        if let Some(fields) = run.as_object_mut() {
            fields.retain(|k, _| RELEASE_FIELDS.contains(&k.as_str()) && k != "artifact");
        }
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let media_type = if run.get("entrypoint").is_some() {
            "application/vnd.verge.archive.tar+gzip"
        } else {
            "application/vnd.verge.executable"
        };
        let release = serde_json::json!({
            "schema_version": 1,
            "service": service,
            "version": format!("1.0.{millis}"),
            "issued_at": verge_shared::Timestamp::now(),
            "artifacts": [{"sha256": artifact, "size": size, "media_type": media_type}],
            "run": run,
            "resources": spec.get("resources").cloned().unwrap_or_else(|| serde_json::json!({})),
        });
        let envelope = trust::sign_by(RELEASE, &release, &[&roles.publisher]);
        let reply = self.post_release(serde_json::to_vec(&envelope)?).await?;
        if !reply.status.is_success() {
            return Ok(Err(reply));
        }
        let digest = reply.body["digest"]
            .as_str()
            .context("release reply has no digest")?
            .to_owned();
        self.releases
            .lock()
            .expect("lock")
            .insert(key, digest.clone());
        Ok(Ok(digest))
    }

    /// Sends a request with the admin token and an optional body.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<reqwest::Body>,
    ) -> Result<Reply> {
        Ok(self.request_with(method, path, body, &[]).await?.0)
    }

    /// [`Api::request`] with extra request headers; also returns the
    /// response's headers.
    pub async fn request_with(
        &self,
        method: Method,
        path: &str,
        body: Option<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> Result<(Reply, reqwest::header::HeaderMap)> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let response_headers = resp.headers().clone();
        let bytes = resp.bytes().await?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .with_context(|| format!("{method} {path}: body is not JSON"))?
        };
        Ok((Reply { status, body }, response_headers))
    }

    /// A GET with the admin token and `headers` whose body is left unread,
    /// for streams (`GET /api/v1/watch`).
    pub async fn open(&self, path: &str, headers: &[(&str, &str)]) -> Result<reqwest::Response> {
        let mut req = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.send().await.with_context(|| format!("GET {path}"))
    }

    /// The admin token, for clients that speak HTTP themselves.
    pub fn token(&self) -> &str {
        &self.token
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.request(Method::GET, path, None).await?.ok()
    }

    /// PUTs a service. A short spec (with `artifact` and run fields, as
    /// tests write it) becomes a release signed by the cluster's publisher
    /// plus a spec naming it; a refused release is the reply. A spec with
    /// `release` goes as it is.
    pub async fn put_service(&self, name: &str, spec: &Value) -> Result<Reply> {
        let spec = if spec.get("artifact").is_some() {
            let digest = match self.release_from_spec(name, spec).await? {
                Ok(digest) => digest,
                Err(refused) => return Ok(refused),
            };
            let mut short = spec.clone();
            if let Some(fields) = short.as_object_mut() {
                fields.retain(|k, _| !RELEASE_FIELDS.contains(&k.as_str()) && k != "resources");
                fields.insert("release".into(), Value::from(digest));
            }
            short
        } else {
            spec.clone()
        };
        let body = serde_json::to_vec(&spec)?;
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

    /// Creates a bootstrap token for `region` with `uses` (ten minutes to
    /// live); returns (id, token).
    pub async fn create_token(&self, region: &str, uses: u32) -> Result<(String, String)> {
        let body = serde_json::json!({ "region": region, "uses": uses, "ttl_secs": 600 });
        let reply = self
            .request(
                Method::POST,
                "/api/v1/tokens",
                Some(serde_json::to_vec(&body)?.into()),
            )
            .await?;
        if reply.status != 201 {
            bail!("POST /api/v1/tokens: HTTP {}: {}", reply.status, reply.body);
        }
        let field = |name: &str| {
            reply.body[name]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("no {name} in {}", reply.body))
        };
        Ok((field("id")?, field("token")?))
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
        let sha256 = body["sha256"]
            .as_str()
            .map(str::to_owned)
            .context("artifact upload reply has no sha256")?;
        let size = body["size"]
            .as_u64()
            .context("artifact upload reply has no size")?;
        self.sizes
            .lock()
            .expect("lock")
            .insert(sha256.clone(), size);
        Ok(sha256)
    }
}
