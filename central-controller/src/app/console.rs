//! Console sessions: signing in to the web console with a password or an
//! API token, the session each page and API call presents, signing out.
//!
//! A session is an API token of its own, named `console`: it acts with the
//! role of what signed in (a token's role, a user's role), never more, and
//! like every token with the lower of that and its user's current role. It
//! ends at the latest after [`SESSION_TTL`] (or when the token that signed
//! in expires), after `[console] idle_timeout_secs` without use, at sign
//! out, and when it is revoked like any other token.

use std::time::Duration;

use verge_shared::Timestamp;

use super::access::Source;
use super::accounts::{LoginRequest, Principal};
use super::composition::App;
use super::error::AppError;

/// The name of every console session's token.
pub const CONSOLE_TOKEN_NAME: &str = "console";
/// The longest a console session lives.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// What a person signs in to the console with.
pub enum Credentials {
    Password {
        user: String,
        password: String,
    },
    /// An API token's text.
    Token(String),
}

/// A new console session: the token to keep in the cookie, and who it is.
pub struct Session {
    pub token: String,
    pub principal: Principal,
    pub expires_at: Timestamp,
}

impl App {
    /// Signs in to the console. Failures count against `source`, as for
    /// the API.
    pub async fn console_sign_in(
        &self,
        credentials: Credentials,
        source: Source,
    ) -> Result<Session, AppError> {
        let now = self.clock.now();
        let view = match credentials {
            Credentials::Password { user, password } => {
                let request = LoginRequest {
                    user,
                    password,
                    ttl_secs: None,
                };
                self.login_named(request, source, CONSOLE_TOKEN_NAME)
                    .await?
            }
            Credentials::Token(text) => {
                let by = self.authenticate(text.trim(), source)?;
                let until = self
                    .store
                    .api_token(&by.token_id)?
                    .and_then(|r| r.expires_at)
                    .map_or(SESSION_TTL, |at| {
                        at.saturating_since(now).max(Duration::from_secs(1))
                    })
                    .min(SESSION_TTL);
                self.forget_expired_logins(&by.user, CONSOLE_TOKEN_NAME, now)?;
                self.issue_token(&by.user, CONSOLE_TOKEN_NAME, by.role, Some(until))?
            }
        };
        let token = view.token.clone().ok_or(AppError::Random)?;
        let _ = self.sessions.touch(&view.id, now);
        Ok(Session {
            token,
            expires_at: view.expires_at.unwrap_or(now),
            principal: Principal {
                user: view.user,
                token_id: view.id,
                token: view.name,
                role: view.role,
            },
        })
    }

    /// Who the console session `token` (the cookie's value) belongs to.
    /// A session idle for longer than the timeout ends here, for good.
    pub fn console_session(&self, token: &str, source: Source) -> Result<Principal, AppError> {
        let principal = self.authenticate(token, source)?;
        if principal.token != CONSOLE_TOKEN_NAME {
            return Err(AppError::unauthorized(
                "unauthorized",
                "this cookie does not hold a console session; sign in again",
            ));
        }
        if let Err(since) = self.sessions.touch(&principal.token_id, self.clock.now()) {
            self.revoke_token_id(&principal.token_id)?;
            return Err(AppError::unauthorized(
                "session_idle",
                format!(
                    "the session was idle since {since}, longer than {} s; sign in again",
                    self.sessions.idle_timeout().as_secs()
                ),
            ));
        }
        Ok(principal)
    }

    /// Ends the session `principal` signed in with.
    pub fn console_sign_out(&self, principal: &Principal) -> Result<(), AppError> {
        self.sessions.forget(&principal.token_id);
        if principal.token == CONSOLE_TOKEN_NAME {
            self.revoke_token_id(&principal.token_id)?;
        }
        Ok(())
    }
}
