//! What every handler is given: the app.

use std::sync::Arc;

use crate::app::App;

/// The state axum hands to every handler.
#[derive(Clone)]
pub(super) struct ApiState {
    pub(super) app: Arc<App>,
}
