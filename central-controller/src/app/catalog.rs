//! What operators publish: services, artifacts, releases and the trust bundle.

use std::collections::BTreeMap;
use std::path::PathBuf;

use bytes::Bytes;
use futures_util::Stream;
use serde::Deserialize;
use tracing::info;
use verge_shared::messages::validate_config;
use verge_shared::trust::TrustError;
use verge_shared::{AgentId, Envelope, RegionId, ServiceName, Sha256Digest, limits};

use super::composition::App;
use super::error::AppError;
use super::fleet_events::FleetNote;
use super::placement::{self, PlacementRequest};
use super::views::ServiceView;
use crate::store::{ArtifactRecord, ReleaseRecord, ServiceRecord, ServiceSpec};
use verge_shared::fleet::FleetEventKind;

/// `PUT /api/v1/services/{name}` body.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub struct ServiceRequest {
    /// The signed digest of an uploaded release of this service.
    pub release: String,
    /// Required unless `placement.replicas_per_region` is given.
    #[serde(default)]
    pub replicas: Option<i64>,
    #[serde(default)]
    pub regions: Vec<String>,
    /// Allows a release older than the one replicas run (an operator rollback).
    #[serde(default)]
    pub rollback: bool,
    /// Per-agent settings, given to the workload as `VERGE_CONFIG_<KEY>`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Latency target, replicas per target region, spread and priority.
    #[serde(default)]
    pub placement: PlacementRequest,
}

/// What a write expects of a service's current revision: HTTP's `If-Match`
/// and `If-None-Match`, checked under the deployment lock, so that of two
/// writers who read the same revision only the first one's write lands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Expect {
    /// No condition.
    #[default]
    Anything,
    /// `If-Match: *`: the service exists.
    Exists,
    /// `If-None-Match: *`: the service does not exist yet.
    Absent,
    /// `If-Match` with entity tags: the service is at one of these revisions.
    OneOf(Vec<u64>),
}

impl Expect {
    fn check(&self, name: &ServiceName, current: Option<u64>) -> Result<(), AppError> {
        let holds = match (self, current) {
            (Expect::Anything, _) | (Expect::Exists, Some(_)) | (Expect::Absent, None) => true,
            (Expect::OneOf(revisions), Some(now)) => revisions.contains(&now),
            (Expect::Exists | Expect::OneOf(_), None) | (Expect::Absent, Some(_)) => false,
        };
        if holds {
            return Ok(());
        }
        Err(AppError::PreconditionFailed {
            message: match current {
                Some(revision) => format!(
                    "service {name} is at revision {revision} (ETag \"{revision}\"), which this \
                     request does not expect: read it again and apply the change to that"
                ),
                None => format!("service {name} does not exist, and this request expects it to"),
            },
        })
    }
}

impl App {
    fn validate(
        &self,
        name: &str,
        request: ServiceRequest,
    ) -> Result<(ServiceName, ServiceSpec, ReleaseRecord), AppError> {
        let name = ServiceName::new(name).map_err(|e| AppError::invalid("name", e.to_string()))?;
        let digest: Sha256Digest = request
            .release
            .parse()
            .map_err(|e: String| AppError::invalid("release", e))?;
        let release = self.store.release(&digest)?.ok_or_else(|| {
            AppError::invalid(
                "release",
                format!("no release {digest} has been uploaded (POST /api/v1/releases)"),
            )
        })?;
        if release.release.service != name {
            return Err(AppError::invalid(
                "release",
                format!(
                    "release {digest} is of service {}, not {name}",
                    release.release.service
                ),
            ));
        }
        validate_config(&request.config).map_err(|e| match e.split_once(": ") {
            Some((field, message)) => AppError::invalid(field, message),
            None => AppError::invalid("config", e),
        })?;
        let (placement, replicas) = placement::validate(&request.placement, request.replicas)?;
        let regions = request
            .regions
            .iter()
            .enumerate()
            .map(|(i, r)| {
                RegionId::new(r.as_str())
                    .map_err(|e| AppError::invalid(format!("regions[{i}]"), e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let spec = ServiceSpec {
            release: digest,
            replicas,
            regions,
            rollback: request.rollback,
            config: request.config,
            placement,
        };
        Ok((name, spec, release))
    }

    /// Creates or replaces a service: validated, placed, stored, deployed.
    /// Returns the view and whether it was created.
    pub async fn put_service(
        &self,
        name: &str,
        request: ServiceRequest,
    ) -> Result<(ServiceView, bool), AppError> {
        self.put_service_expecting(name, request, &Expect::Anything)
            .await
    }

    /// [`App::put_service`], only if the service's revision is as `expect`
    /// says when the write happens.
    pub async fn put_service_expecting(
        &self,
        name: &str,
        request: ServiceRequest,
        expect: &Expect,
    ) -> Result<(ServiceView, bool), AppError> {
        let (name, spec, release) = self.validate(name, request)?;
        let now = self.now();
        let mut state = self.deployment.state().await;
        let existing = self.store.service(&name)?;
        expect.check(&name, existing.as_ref().map(|s| s.revision))?;
        let created = existing.is_none();
        let existing_revision = existing.as_ref().map(|s| s.revision);
        let record = match existing {
            Some(old) if old.spec == spec => old,
            Some(old) => ServiceRecord {
                name: name.clone(),
                spec,
                release: release.release,
                revision: old.revision + 1,
                created_at: old.created_at,
                updated_at: now,
            },
            None => ServiceRecord {
                name: name.clone(),
                spec,
                release: release.release,
                revision: 1,
                created_at: now,
                updated_at: now,
            },
        };
        let mut services: Vec<ServiceRecord> = self
            .store
            .services()?
            .into_iter()
            .filter(|s| s.name != name)
            .collect();
        services.push(record.clone());
        // Placed before stored: a failure here leaves everything as it was.
        let planned = self.plan_with(&services, now)?;
        self.store.put_service(&record)?;
        info!(service = %name, revision = record.revision, "Stored a service.");
        let changed = existing_revision != Some(record.revision);
        self.apply(&mut state, &services, planned, now)?;
        drop(state);
        let view = self.view_of(&record)?;
        if changed {
            self.service_changed(&view, if created { "created" } else { "updated" });
        }
        Ok((view, created))
    }

    /// Deletes a service; its agents get desired states without it.
    pub async fn delete_service(&self, name: &str) -> Result<(), AppError> {
        self.delete_service_expecting(name, &Expect::Anything).await
    }

    /// [`App::delete_service`], only if the service's revision is as
    /// `expect` says when the delete happens.
    pub async fn delete_service_expecting(
        &self,
        name: &str,
        expect: &Expect,
    ) -> Result<(), AppError> {
        let not_found = || AppError::NotFound {
            what: "service",
            name: name.to_owned(),
        };
        let name = ServiceName::new(name).map_err(|_| not_found())?;
        let now = self.now();
        let mut state = self.deployment.state().await;
        let current = self.store.service(&name)?;
        expect.check(&name, current.as_ref().map(|s| s.revision))?;
        if !self.store.delete_service(&name)? {
            return Err(not_found());
        }
        info!(service = %name, "Deleted a service.");
        if let Some(deleted) = &current {
            self.service_deleted(deleted);
        }
        let services = self.store.services()?;
        let planned = self.plan_with(&services, now)?;
        self.apply(&mut state, &services, planned, now)
    }

    /// Streams an upload into the content-addressed store.
    /// Returns the record and whether it was new.
    pub async fn upload_artifact<S, E>(&self, body: S) -> Result<(ArtifactRecord, bool), AppError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let stored = self
            .files
            .store(body, self.settings.max_artifact_bytes)
            .await?;
        if let Some(existing) = self.store.artifact(&stored.sha256)? {
            return Ok((existing, false));
        }
        let record = ArtifactRecord {
            sha256: stored.sha256,
            size: stored.size,
            created_at: self.now(),
        };
        self.store.put_artifact(&record)?;
        info!(sha256 = %record.sha256, size = record.size, "Stored an artifact.");
        Ok((record, true))
    }

    /// Accepts a publisher-signed release: signed by a publisher of the
    /// trust bundle allowed its service, consistent, and naming an uploaded
    /// artifact of the declared size. Returns the record and whether it was new.
    pub fn upload_release(&self, bytes: &[u8]) -> Result<(ReleaseRecord, bool), AppError> {
        let envelope = Envelope::parse(bytes, limits::MAX_RELEASE_BYTES)
            .map_err(|e| AppError::invalid("release", e.to_string()))?;
        let digest = envelope
            .signed_digest()
            .map_err(|e| AppError::invalid("release", e.to_string()))?;
        if let Some(existing) = self.store.release(&digest)? {
            return Ok((existing, false));
        }
        let bundle = self.trust.bundle();
        let (release, publisher) = bundle.verify_release(&envelope).map_err(|e| match e {
            // "run.health.probe.port: ..." names the field inside the release.
            TrustError::Invalid(message) => match message.split_once(": ") {
                Some((field, detail)) => AppError::invalid(field, detail),
                None => AppError::invalid("release", message),
            },
            other => AppError::invalid("release", other.to_string()),
        })?;
        for (i, artifact) in release.artifacts.iter().enumerate() {
            let field = format!("artifacts[{i}]");
            let stored = self.store.artifact(&artifact.sha256)?.ok_or_else(|| {
                AppError::invalid(
                    &field,
                    format!(
                        "no artifact {} has been uploaded (POST /api/v1/artifacts)",
                        artifact.sha256
                    ),
                )
            })?;
            if stored.size != artifact.size {
                return Err(AppError::invalid(
                    field,
                    format!(
                        "the release declares {} bytes, the uploaded artifact has {}",
                        artifact.size, stored.size
                    ),
                ));
            }
        }
        let record = ReleaseRecord {
            digest,
            publisher: publisher.name.clone(),
            envelope,
            release,
            created_at: self.now(),
        };
        self.store.put_release(&record)?;
        info!(digest = %digest, service = %record.release.service, version = %record.release.version, publisher = %record.publisher, "Stored a release.");
        self.release_uploaded(&record);
        Ok((record, true))
    }

    pub fn releases(&self) -> Result<Vec<ReleaseRecord>, AppError> {
        Ok(self.store.releases()?)
    }

    pub fn release(&self, digest: &str) -> Result<ReleaseRecord, AppError> {
        let not_found = || AppError::NotFound {
            what: "release",
            name: digest.to_owned(),
        };
        let digest: Sha256Digest = digest.parse().map_err(|_| not_found())?;
        self.store.release(&digest)?.ok_or_else(not_found)
    }

    /// The trust bundle agents receive with every desired state.
    pub fn trust_bundle(&self) -> verge_shared::trust::TrustBundle {
        self.trust.bundle()
    }

    /// Installs a newer trust bundle and sends it to every agent.
    pub async fn install_trust(&self, bytes: &[u8]) -> Result<Option<u64>, AppError> {
        let installed = self.trust.install(bytes, self.now())?;
        if let Some(version) = installed {
            info!(
                version,
                "Installed a newer trust bundle; republishing every desired state."
            );
            self.republish_all(self.now()).await?;
            self.fleet_event(FleetNote::new(
                FleetEventKind::TrustBundleInstalled,
                format!("trust bundle version {version} installed"),
            ));
        }
        Ok(installed)
    }

    /// The file holding a known artifact.
    /// Whether the node named `agent` may download `digest`: it is not
    /// revoked and its desired state runs that artifact.
    pub fn node_may_fetch(&self, agent: &str, digest: &Sha256Digest) -> Result<bool, AppError> {
        let Ok(agent) = AgentId::new(agent) else {
            return Ok(false);
        };
        if self.is_revoked(&agent) {
            return Ok(false);
        }
        Ok(self
            .store
            .desired_state(&agent)?
            .is_some_and(|d| d.workloads.iter().any(|w| w.artifact.sha256 == *digest)))
    }

    pub fn artifact_path(&self, digest: &Sha256Digest) -> Result<PathBuf, AppError> {
        match self.store.artifact(digest)? {
            Some(_) => Ok(self.files.path_of(digest)),
            None => Err(AppError::NotFound {
                what: "artifact",
                name: digest.to_string(),
            }),
        }
    }
}
