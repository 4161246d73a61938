//! What every handler is given: the app and the token check.

use std::sync::Arc;

use crate::app::{App, TokenCheck};

/// The state axum hands to every handler.
#[derive(Clone)]
pub(super) struct ApiState {
    pub(super) app: Arc<App>,
    pub(super) token: TokenCheck,
}
