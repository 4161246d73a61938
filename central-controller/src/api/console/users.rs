//! The users (admins only): each with their role and whether they have a
//! password; changing a role, deleting a user, creating one.
//!
//! The forms call the users API; it refuses what it always refuses (a
//! name taken, a short password, removing the last admin) and the form
//! says so.

use std::collections::BTreeMap;

use axum::Extension;
use axum::extract::{Query, State};
use axum::response::Response;
use maud::{Markup, html};
use verge_shared::Timestamp;

use super::layout::{Nav, Viewer, ago, count, empty, page};
use super::problem::PageError;
use crate::api::state::ApiState;
use crate::app::{MIN_PASSWORD, Role, UserView, role_name};

const ROLES: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

pub(super) async fn list(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Response, PageError> {
    let users = state.app.users().map_err(|e| PageError::new(&viewer, e))?;
    let now = state.app.now();
    // Set by the new-user form once the API made the user.
    let created = query
        .get("created")
        .filter(|name| users.iter().any(|u| &u.name == *name));
    let body = html! {
        @if let Some(name) = created {
            div.notice.ok role="status" #user-created { "User " strong { (name) } " created." }
        }
        section #user-table data-live aria-label="Users" {
            p.dim #user-count { (count(users.len(), "user", "users")) }
            @if users.is_empty() {
                (empty("No users."))
            } @else {
                div.scroll {
                    table #users {
                        thead { tr {
                            th scope="col" { "user" } th scope="col" { "role" } th scope="col" { "password" }
                            th scope="col" { "created" } th scope="col" { "updated" }
                            th scope="col" { "change role" } th scope="col" { "delete" }
                        } }
                        tbody {
                            @for user in &users { (row(user, &viewer, now)) }
                        }
                    }
                }
            }
        }
        section aria-labelledby="new-user-title" {
            h2 #new-user-title { "New user" }
            (new_user_form())
        }
    };
    Ok(page(&viewer, "Users", Nav::Users, "user", body))
}

fn row(user: &UserView, viewer: &Viewer, now: Timestamp) -> Markup {
    let name = &user.name;
    let api = format!("/api/v1/users/{name}");
    let select_id = format!("role-{name}");
    html! {
        tr data-user=(name) {
            th scope="row" {
                (name)
                @if *name == viewer.principal.user { " " span.dim { "(you)" } }
            }
            td { (role_name(user.role)) }
            td {
                @if user.has_password { "set" }
                @else { span.dim { "none: signs in with API tokens only" } }
            }
            td { (ago(user.created_at, now)) }
            td { (ago(user.updated_at, now)) }
            td {
                form.inline data-api={ (api) "/role" } data-method="PUT" data-done="reload" {
                    div.controls {
                        label.visually-hidden for=(select_id) { "Role of " (name) }
                        select #(select_id) name="role" {
                            @for role in ROLES {
                                option value=(role_name(role)) selected[role == user.role] { (role_name(role)) }
                            }
                        }
                        button type="submit" { "Change role" }
                    }
                    span.form-error role="alert" {}
                }
            }
            td {
                form.inline data-api=(api) data-method="DELETE" data-done="reload"
                    data-confirm={ "Delete the user " (name) "? The user and all their API tokens are removed, "
                        "and anyone signed in as " (name) " is signed out. This cannot be undone." } {
                    button.danger type="submit" #{ "delete-" (name) } { "Delete " span.visually-hidden { (name) } }
                    span.form-error role="alert" {}
                }
            }
        }
    }
}

fn new_user_form() -> Markup {
    html! {
        form.edit #new-user data-api="/api/v1/users" data-method="POST" data-done="goto:/users?created={name}" {
            div.row {
                label for="new-name" { "User name" }
                input #new-name name="name" required autocomplete="off" maxlength="64" aria-describedby="new-name-hint";
                span.hint #new-name-hint { "1 to 64 of a–z, 0–9, '.', '_', '-', starting with a letter or digit." }
                span.form-error data-error-for="name" {}
            }
            div.row {
                label for="new-role" { "Role" }
                select #new-role name="role" {
                    @for role in ROLES {
                        option value=(role_name(role)) selected[role == Role::Viewer] { (role_name(role)) }
                    }
                }
                span.form-error data-error-for="role" {}
            }
            div.row {
                label for="new-password" { "Password" }
                input #new-password name="password" type="password" required autocomplete="new-password"
                    minlength=(MIN_PASSWORD) aria-describedby="new-password-hint";
                span.hint #new-password-hint { "At least " (MIN_PASSWORD) " characters. Tell it to the person over a safe channel." }
                span.form-error data-error-for="password" {}
            }
            div {
                button type="submit" #create-user { "Create user" }
                " "
                span.form-error role="alert" {}
            }
        }
    }
}
