//! Operator accounts: users with argon2id passwords, named API tokens with
//! a role and an expiry, sign-in, and who a bearer token belongs to.
//!
//! An API token's text is `verge_<id>.<secret>`: found by id, checked by
//! the SHA-256 of the secret, which is all the store keeps. The admin token
//! made at first start (`<data_dir>/admin-token`, any text) is the
//! bootstrap `admin` account's first token, with the id `admin-token`.
//! A token acts with the lower of its own role and its user's current one,
//! so demoting or deleting a user takes effect on every token at once.

use std::sync::OnceLock;
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use verge_shared::{Sha256Digest, Timestamp};

use super::access::Source;
use super::composition::App;
use super::error::{AppError, random_hex};
use crate::store::{ApiTokenRecord, Role, UserRecord};

/// The id of the admin token's record.
pub const ADMIN_TOKEN_ID: &str = "admin-token";
/// The account the admin token belongs to.
pub const BOOTSTRAP_USER: &str = "admin";
/// What an API token's text starts with (so that secret scanners and
/// people can tell one when they see it).
const TOKEN_PREFIX: &str = "verge_";
/// A sign-in token lives this long unless asked otherwise.
pub const DEFAULT_LOGIN_TTL: Duration = Duration::from_secs(12 * 3600);
/// The longest a sign-in token may live.
const MAX_LOGIN_TTL: Duration = Duration::from_secs(7 * 86_400);
/// The longest a named API token may live (none: no expiry).
const MAX_TOKEN_TTL: Duration = Duration::from_secs(10 * 365 * 86_400);
/// The name of the tokens sign-in makes.
const LOGIN_TOKEN_NAME: &str = "login";
/// The shortest password accepted, in characters.
pub const MIN_PASSWORD: usize = 12;
const MAX_PASSWORD: usize = 1024;

/// Who made a request: the user, the token used, and the role in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Principal {
    pub user: String,
    /// The token's id.
    pub token_id: String,
    /// The token's name.
    pub token: String,
    pub role: Role,
}

impl Principal {
    /// `Ok` when this principal's role is at least `needed`.
    pub fn require(&self, needed: Role, what: &str) -> Result<(), AppError> {
        if self.role >= needed {
            Ok(())
        } else {
            Err(forbidden(needed, what))
        }
    }
}

/// 403 naming the role that `what` needs.
pub fn forbidden(needed: Role, what: &str) -> AppError {
    AppError::denied(
        "forbidden",
        format!("{what} needs the {} role", role_name(needed)),
    )
}

pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Viewer => "viewer",
        Role::Operator => "operator",
        Role::Admin => "admin",
    }
}

/// `POST /api/v1/users` body.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub struct UserRequest {
    pub name: String,
    pub role: Role,
    pub password: String,
}

/// A user as the API shows it: never the password hash.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct UserView {
    pub name: String,
    pub role: Role,
    pub has_password: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl From<&UserRecord> for UserView {
    fn from(r: &UserRecord) -> Self {
        Self {
            name: r.name.clone(),
            role: r.role,
            has_password: r.password.is_some(),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// `POST /api/v1/api-tokens` body.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub struct ApiTokenRequest {
    pub name: String,
    /// At most the caller's and the user's role; both by default.
    #[serde(default)]
    pub role: Option<Role>,
    /// No expiry when absent.
    #[serde(default)]
    pub ttl_secs: Option<i64>,
    /// Another user's token (admin only); the caller's by default.
    #[serde(default)]
    pub user: Option<String>,
}

/// `POST /api/v1/login` body.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub struct LoginRequest {
    pub user: String,
    pub password: String,
    #[serde(default)]
    pub ttl_secs: Option<i64>,
}

/// An API token as the API shows it: its text only once, at creation.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ApiTokenView {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    pub name: String,
    pub user: String,
    pub role: Role,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    /// `active`, `expired` or `revoked`.
    pub state: &'static str,
}

fn token_view(r: &ApiTokenRecord, token: Option<String>, now: Timestamp) -> ApiTokenView {
    let state = if r.revoked_at.is_some() {
        "revoked"
    } else if r.expires_at.is_some_and(|at| now >= at) {
        "expired"
    } else {
        "active"
    };
    ApiTokenView {
        id: r.id.clone(),
        token,
        name: r.name.clone(),
        user: r.user.clone(),
        role: r.role,
        created_at: r.created_at,
        expires_at: r.expires_at,
        revoked_at: r.revoked_at,
        state,
    }
}

/// User names: `[a-z0-9][a-z0-9._-]{0,63}`.
pub fn check_user_name(field: &str, name: &str) -> Result<(), AppError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(AppError::invalid(
            field,
            format!(
                "{name:?} is not a user name: 1 to 64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
            ),
        ))
    }
}

fn check_password(password: &str) -> Result<(), AppError> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD || password.len() > MAX_PASSWORD {
        return Err(AppError::invalid(
            "password",
            format!("must be {MIN_PASSWORD} characters to {MAX_PASSWORD} bytes long"),
        ));
    }
    Ok(())
}

fn ttl(field: &str, secs: Option<i64>, max: Duration) -> Result<Option<Duration>, AppError> {
    match secs {
        None => Ok(None),
        Some(s) if s >= 1 && (s as u64) <= max.as_secs() => Ok(Some(Duration::from_secs(s as u64))),
        Some(s) => Err(AppError::invalid(
            field,
            format!("{s} is out of range; must be 1 to {}", max.as_secs()),
        )),
    }
}

/// Hashes `password` with argon2id (the crate's defaults: 19 MiB, two
/// passes) and a random salt, into a PHC string.
pub fn hash_password(password: &str) -> Result<String, AppError> {
    let salt_hex = random_hex(16)?;
    let salt = SaltString::encode_b64(salt_hex.as_bytes())
        .map_err(|e| AppError::Hashing(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AppError::Hashing(e.to_string()))
}

/// Whether `password` matches the PHC string `hash`; a user without a
/// password is checked against a fixed hash, so that the answer takes as
/// long whether the user exists or not.
fn verify_password(password: &str, hash: Option<&str>) -> bool {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let dummy =
        DUMMY.get_or_init(|| hash_password("no user has this password").unwrap_or_default());
    let (hash, real) = match hash {
        Some(h) => (h, true),
        None => (dummy.as_str(), false),
    };
    let matches = PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    });
    matches && real
}

/// A new user record (also used by `central-controller user add`, before
/// the controller runs).
pub fn new_user(request: &UserRequest, now: Timestamp) -> Result<UserRecord, AppError> {
    check_user_name("name", &request.name)?;
    check_password(&request.password)?;
    Ok(UserRecord {
        name: request.name.clone(),
        role: request.role,
        password: Some(hash_password(&request.password)?),
        created_at: now,
        updated_at: now,
    })
}

/// Splits `verge_<id>.<secret>`; any other text is the admin token.
fn parse_token(text: &str) -> (&str, &str) {
    match text
        .strip_prefix(TOKEN_PREFIX)
        .and_then(|rest| rest.split_once('.'))
    {
        Some((id, secret)) => (id, secret),
        None => (ADMIN_TOKEN_ID, text),
    }
}

impl App {
    /// Makes `text` (the contents of `<data_dir>/admin-token`) the
    /// bootstrap admin account's token at first start; later starts follow
    /// a replaced file, but never bring back a revoked admin token.
    pub fn install_admin_token(&self, text: &str) -> Result<(), AppError> {
        let now = self.clock.now();
        let sha256 = Sha256Digest::of(text.as_bytes());
        match self.store.api_token(ADMIN_TOKEN_ID)? {
            None => {
                if self.store.user(BOOTSTRAP_USER)?.is_none() {
                    self.store.put_user(&UserRecord {
                        name: BOOTSTRAP_USER.to_owned(),
                        role: Role::Admin,
                        password: None,
                        created_at: now,
                        updated_at: now,
                    })?;
                }
                self.store.put_api_token(&ApiTokenRecord {
                    id: ADMIN_TOKEN_ID.to_owned(),
                    user: BOOTSTRAP_USER.to_owned(),
                    name: ADMIN_TOKEN_ID.to_owned(),
                    role: Role::Admin,
                    sha256,
                    created_at: now,
                    expires_at: None,
                    revoked_at: None,
                })?;
            }
            Some(record) if record.revoked_at.is_some() => {
                warn!(
                    "The admin token was revoked through the API; <data_dir>/admin-token signs in nobody."
                );
            }
            Some(record) if record.sha256 != sha256 => {
                info!("The admin token file changed; the new token replaces the old one.");
                self.store
                    .put_api_token(&ApiTokenRecord { sha256, ..record })?;
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Who `bearer` belongs to. Failures count against `source`, which
    /// must wait once it failed too often.
    pub fn authenticate(&self, bearer: &str, source: Source) -> Result<Principal, AppError> {
        let now = self.clock.now();
        self.access
            .check(source, now)
            .map_err(|retry_after| AppError::Throttled { retry_after })?;
        self.principal_of(bearer, now).inspect_err(|e| {
            if matches!(e, AppError::Denied { .. }) {
                self.access.failed(source, now);
            }
        })
    }

    fn principal_of(&self, bearer: &str, now: Timestamp) -> Result<Principal, AppError> {
        let refused = |why: &str| AppError::unauthorized("unauthorized", why);
        let (id, secret) = parse_token(bearer);
        let record = self
            .store
            .api_token(id)?
            .filter(|r| r.sha256 == Sha256Digest::of(secret.as_bytes()))
            .ok_or_else(|| refused("the bearer token is not known to this controller"))?;
        if let Some(at) = record.revoked_at {
            return Err(refused(&format!(
                "the token {:?} was revoked at {at}",
                record.name
            )));
        }
        if let Some(at) = record.expires_at.filter(|at| now >= *at) {
            return Err(refused(&format!(
                "the token {:?} expired at {at}",
                record.name
            )));
        }
        let user = self.store.user(&record.user)?.ok_or_else(|| {
            refused(&format!(
                "the token's user {:?} no longer exists",
                record.user
            ))
        })?;
        Ok(Principal {
            user: user.name,
            token_id: record.id,
            token: record.name,
            role: record.role.min(user.role),
        })
    }

    /// Signs in with a user name and password: a new API token named
    /// `login`, with the user's role, valid for `ttl_secs` (12 h by
    /// default, at most 7 days). Failures count against `source`.
    pub async fn login(
        &self,
        request: LoginRequest,
        source: Source,
    ) -> Result<ApiTokenView, AppError> {
        self.login_named(request, source, LOGIN_TOKEN_NAME).await
    }

    /// Signs in with a password: a new API token called `name`.
    pub(super) async fn login_named(
        &self,
        request: LoginRequest,
        source: Source,
        name: &str,
    ) -> Result<ApiTokenView, AppError> {
        let now = self.clock.now();
        self.access
            .check(source, now)
            .map_err(|retry_after| AppError::Throttled { retry_after })?;
        let ttl = ttl("ttl_secs", request.ttl_secs, MAX_LOGIN_TTL)?.unwrap_or(DEFAULT_LOGIN_TTL);
        let user = match check_user_name("user", &request.user) {
            Ok(()) => self.store.user(&request.user)?,
            Err(_) => None,
        };
        let hash = user.as_ref().and_then(|u| u.password.clone());
        let valid = self
            .hashed(move || verify_password(&request.password, hash.as_deref()))
            .await?;
        let Some(user) = user.filter(|_| valid) else {
            self.access.failed(source, self.clock.now());
            return Err(AppError::unauthorized(
                "unauthorized",
                "wrong user name or password",
            ));
        };
        self.forget_expired_logins(&user.name, name, now)?;
        self.issue_token(&user.name, name, user.role, Some(ttl))
    }

    /// Runs an argon2 computation off the runtime, at most two at once.
    async fn hashed<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AppError> {
        let _permit = self
            .access
            .hashing
            .acquire()
            .await
            .map_err(|e| AppError::Hashing(e.to_string()))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| AppError::Hashing(e.to_string()))
    }

    /// Deletes `user`'s tokens called `name` that no longer sign anyone in.
    pub(super) fn forget_expired_logins(
        &self,
        user: &str,
        name: &str,
        now: Timestamp,
    ) -> Result<(), AppError> {
        for record in self.store.api_tokens()? {
            let stale = record.user == user
                && record.name == name
                && (record.revoked_at.is_some() || record.expires_at.is_some_and(|at| now >= at));
            if stale {
                self.store.delete_api_token(&record.id)?;
            }
        }
        Ok(())
    }

    pub(super) fn issue_token(
        &self,
        user: &str,
        name: &str,
        role: Role,
        ttl: Option<Duration>,
    ) -> Result<ApiTokenView, AppError> {
        let now = self.clock.now();
        let id = random_hex(6)?;
        let secret = random_hex(32)?;
        let record = ApiTokenRecord {
            id: id.clone(),
            user: user.to_owned(),
            name: name.to_owned(),
            role,
            sha256: Sha256Digest::of(secret.as_bytes()),
            created_at: now,
            expires_at: ttl.map(|t| now.saturating_add(t)),
            revoked_at: None,
        };
        self.store.put_api_token(&record)?;
        self.api_token_changed(&token_view(&record, None, now), "created");
        Ok(token_view(
            &record,
            Some(format!("{TOKEN_PREFIX}{id}.{secret}")),
            now,
        ))
    }

    /// A new named token for the caller (or, for an admin, any user).
    pub fn create_api_token(
        &self,
        by: &Principal,
        request: ApiTokenRequest,
    ) -> Result<ApiTokenView, AppError> {
        let name = request.name.trim();
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._- ".contains(&b))
        {
            return Err(AppError::invalid(
                "name",
                "1 to 64 of letters, digits, ' ', '.', '_', '-'",
            ));
        }
        let user_name = request.user.unwrap_or_else(|| by.user.clone());
        if user_name != by.user {
            by.require(Role::Admin, "a token for another user")?;
        }
        let user = self
            .store
            .user(&user_name)?
            .ok_or_else(|| AppError::invalid("user", format!("no user {user_name:?}")))?;
        let ceiling = by.role.min(user.role);
        let role = request.role.unwrap_or(ceiling);
        if role > ceiling {
            return Err(AppError::denied(
                "forbidden",
                format!(
                    "a token's role is at most {} (the caller's and the user's)",
                    role_name(ceiling)
                ),
            ));
        }
        let ttl = ttl("ttl_secs", request.ttl_secs, MAX_TOKEN_TTL)?;
        self.issue_token(&user.name, name, role, ttl)
    }

    /// The caller's tokens, or every token for an admin.
    pub fn api_tokens(&self, by: &Principal) -> Result<Vec<ApiTokenView>, AppError> {
        let now = self.clock.now();
        Ok(self
            .store
            .api_tokens()?
            .iter()
            .filter(|r| by.role == Role::Admin || r.user == by.user)
            .map(|r| token_view(r, None, now))
            .collect())
    }

    /// Revokes one of the caller's tokens (an admin: anyone's).
    pub fn revoke_api_token(&self, by: &Principal, id: &str) -> Result<ApiTokenView, AppError> {
        let not_found = || AppError::NotFound {
            what: "API token",
            name: id.to_owned(),
        };
        let record = self.store.api_token(id)?.ok_or_else(not_found)?;
        if record.user != by.user && by.role < Role::Admin {
            return Err(not_found());
        }
        self.revoke_token_record(record)
    }

    /// Revokes the token `id`, if it exists.
    pub(super) fn revoke_token_id(&self, id: &str) -> Result<(), AppError> {
        if let Some(record) = self.store.api_token(id)? {
            self.revoke_token_record(record)?;
        }
        Ok(())
    }

    fn revoke_token_record(&self, record: ApiTokenRecord) -> Result<ApiTokenView, AppError> {
        let now = self.clock.now();
        let record = ApiTokenRecord {
            revoked_at: record.revoked_at.or(Some(now)),
            ..record
        };
        self.store.put_api_token(&record)?;
        let view = token_view(&record, None, now);
        self.api_token_changed(&view, "revoked");
        Ok(view)
    }

    pub fn users(&self) -> Result<Vec<UserView>, AppError> {
        Ok(self.store.users()?.iter().map(UserView::from).collect())
    }

    pub fn user(&self, name: &str) -> Result<UserView, AppError> {
        Ok(UserView::from(&self.existing_user(name)?))
    }

    fn existing_user(&self, name: &str) -> Result<UserRecord, AppError> {
        self.store.user(name)?.ok_or_else(|| AppError::NotFound {
            what: "user",
            name: name.to_owned(),
        })
    }

    pub async fn create_user(&self, request: UserRequest) -> Result<UserView, AppError> {
        check_user_name("name", &request.name)?;
        check_password(&request.password)?;
        if self.store.user(&request.name)?.is_some() {
            return Err(AppError::Conflict {
                code: "user_exists",
                message: format!("a user {:?} exists already", request.name),
            });
        }
        let now = self.clock.now();
        let record = self.hashed(move || new_user(&request, now)).await??;
        self.store.put_user(&record)?;
        let view = UserView::from(&record);
        self.user_changed(&view, "created");
        Ok(view)
    }

    /// Sets a user's password: one's own, or (an admin) anyone's.
    pub async fn set_password(
        &self,
        by: &Principal,
        name: &str,
        password: String,
    ) -> Result<UserView, AppError> {
        if by.user != name {
            by.require(Role::Admin, "setting another user's password")?;
        }
        check_password(&password)?;
        let user = self.existing_user(name)?;
        let hash = self.hashed(move || hash_password(&password)).await??;
        let record = UserRecord {
            password: Some(hash),
            updated_at: self.clock.now(),
            ..user
        };
        self.store.put_user(&record)?;
        let view = UserView::from(&record);
        self.user_changed(&view, "password_set");
        Ok(view)
    }

    /// Changes a user's role; the last admin stays an admin.
    pub fn set_role(&self, name: &str, role: Role) -> Result<UserView, AppError> {
        let user = self.existing_user(name)?;
        if user.role == Role::Admin && role != Role::Admin {
            self.keep_an_admin(name)?;
        }
        let record = UserRecord {
            role,
            updated_at: self.clock.now(),
            ..user
        };
        self.store.put_user(&record)?;
        let view = UserView::from(&record);
        self.user_changed(&view, "role_changed");
        Ok(view)
    }

    /// Deletes a user and every token of theirs; the last admin stays.
    pub fn delete_user(&self, name: &str) -> Result<(), AppError> {
        let user = self.existing_user(name)?;
        if user.role == Role::Admin {
            self.keep_an_admin(name)?;
        }
        for token in self.store.api_tokens()? {
            if token.user == name {
                self.store.delete_api_token(&token.id)?;
            }
        }
        self.store.delete_user(name)?;
        self.user_changed(&UserView::from(&user), "deleted");
        Ok(())
    }

    fn keep_an_admin(&self, leaving: &str) -> Result<(), AppError> {
        let others = self
            .store
            .users()?
            .iter()
            .any(|u| u.role == Role::Admin && u.name != leaving);
        if others {
            Ok(())
        } else {
            Err(AppError::Conflict {
                code: "last_admin",
                message: format!("{leaving:?} is the last admin; make another admin first"),
            })
        }
    }
}
