//! `verge token` (bootstrap tokens for enrollment), `verge api-token`,
//! `verge user` and `verge audit`.

use reqwest::Method;
use serde_json::{Value, json};

use crate::args::{ApiTokenCommand, AuditArgs, TokenCommand, UserCommand};
use crate::client::{Client, segment, with_query};
use crate::output::{self, Format, field, print_list};
use crate::secret;

/// Prints a created secret: the JSON reply, or a description on stderr and
/// the secret alone on stdout (for `$(verge token create ...)`).
fn print_secret(reply: &Value, description: String, format: Format) {
    match format {
        Format::Json => output::print_json(reply),
        Format::Table => {
            eprintln!("{description} (its text is shown only now):");
            println!("{}", field(reply, "token"));
        }
    }
}

const BOOTSTRAP_COLUMNS: [(&str, &str); 6] = [
    ("ID", "id"),
    ("REGION", "region"),
    ("USES LEFT", "uses_left"),
    ("STATE", "state"),
    ("EXPIRES", "expires_at"),
    ("CREATED", "created_at"),
];

pub async fn token(client: &Client, command: TokenCommand, format: Format) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create { region, uses, ttl } => {
            let body = json!({"region": region, "uses": uses, "ttl_secs": ttl.as_secs()});
            let reply = client
                .call(Method::POST, "/api/v1/tokens", Some(&body))
                .await?;
            let description = format!(
                "Bootstrap token {} for region {}, {} use(s), expires {}",
                field(&reply, "id"),
                field(&reply, "region"),
                field(&reply, "uses_left"),
                field(&reply, "expires_at")
            );
            print_secret(&reply, description, format);
        }
        TokenCommand::Ls => {
            let reply = client.get("/api/v1/tokens").await?;
            print_list(&reply, "tokens", &BOOTSTRAP_COLUMNS, format);
        }
        TokenCommand::Revoke { id } => {
            client
                .call(
                    Method::DELETE,
                    &format!("/api/v1/tokens/{}", segment(&id)),
                    None,
                )
                .await?;
            done(format, &format!("Revoked bootstrap token {id}."));
        }
    }
    Ok(())
}

/// Confirms a change that has no reply body.
fn done(format: Format, message: &str) {
    match format {
        Format::Json => output::print_json(&Value::Null),
        Format::Table => println!("{message}"),
    }
}

pub async fn api_token(
    client: &Client,
    command: ApiTokenCommand,
    format: Format,
) -> anyhow::Result<()> {
    match command {
        ApiTokenCommand::Create {
            name,
            role,
            ttl,
            user,
        } => {
            let mut body = json!({"name": name});
            if let Some(role) = role {
                body["role"] = json!(role.name());
            }
            if let Some(ttl) = ttl {
                body["ttl_secs"] = json!(ttl.as_secs());
            }
            if let Some(user) = user {
                body["user"] = json!(user);
            }
            let reply = client
                .call(Method::POST, "/api/v1/api-tokens", Some(&body))
                .await?;
            let description = format!(
                "API token {} ({:?}) of {}, role {}, expires {}",
                field(&reply, "id"),
                field(&reply, "name"),
                field(&reply, "user"),
                field(&reply, "role"),
                field(&reply, "expires_at")
            );
            print_secret(&reply, description, format);
        }
        ApiTokenCommand::Ls => {
            let reply = client.get("/api/v1/api-tokens").await?;
            print_list(
                &reply,
                "api_tokens",
                &[
                    ("ID", "id"),
                    ("NAME", "name"),
                    ("USER", "user"),
                    ("ROLE", "role"),
                    ("STATE", "state"),
                    ("EXPIRES", "expires_at"),
                    ("CREATED", "created_at"),
                ],
                format,
            );
        }
        ApiTokenCommand::Revoke { id } => {
            client
                .call(
                    Method::DELETE,
                    &format!("/api/v1/api-tokens/{}", segment(&id)),
                    None,
                )
                .await?;
            done(format, &format!("Revoked API token {id}."));
        }
    }
    Ok(())
}

const USER_FIELDS: [&str; 5] = ["name", "role", "has_password", "created_at", "updated_at"];

pub async fn user(client: &Client, command: UserCommand, format: Format) -> anyhow::Result<()> {
    let path = |name: &str| format!("/api/v1/users/{}", segment(name));
    let show = |user: &Value| match format {
        Format::Json => output::print_json(user),
        Format::Table => output::print_fields(user, &USER_FIELDS),
    };
    match command {
        UserCommand::Ls => {
            let reply = client.get("/api/v1/users").await?;
            print_list(
                &reply,
                "users",
                &[
                    ("NAME", "name"),
                    ("ROLE", "role"),
                    ("PASSWORD", "has_password"),
                    ("CREATED", "created_at"),
                    ("UPDATED", "updated_at"),
                ],
                format,
            );
        }
        UserCommand::Show { name } => show(&client.get(&path(&name)).await?),
        UserCommand::Add {
            name,
            role,
            password_file,
        } => {
            let password = secret::from_file_or_prompt(password_file.as_deref(), "password")?;
            let body = json!({"name": name, "role": role.name(), "password": password});
            show(
                &client
                    .call(Method::POST, "/api/v1/users", Some(&body))
                    .await?,
            );
        }
        UserCommand::Rm { name } => {
            client.call(Method::DELETE, &path(&name), None).await?;
            done(format, &format!("Deleted user {name} and their tokens."));
        }
        UserCommand::SetRole { name, role } => {
            let body = json!({"role": role.name()});
            let reply = client
                .call(Method::PUT, &format!("{}/role", path(&name)), Some(&body))
                .await?;
            if reply.is_null() {
                done(format, &format!("{name} is now {}.", role.name()));
            } else {
                show(&reply);
            }
        }
        UserCommand::Passwd {
            name,
            password_file,
        } => {
            let password = secret::from_file_or_prompt(password_file.as_deref(), "new password")?;
            let body = json!({"password": password});
            let reply = client
                .call(
                    Method::PUT,
                    &format!("{}/password", path(&name)),
                    Some(&body),
                )
                .await?;
            if reply.is_null() {
                done(format, &format!("Set {name}'s password."));
            } else {
                show(&reply);
            }
        }
    }
    Ok(())
}

pub async fn audit(client: &Client, args: AuditArgs, format: Format) -> anyhow::Result<()> {
    let path = with_query(
        "/api/v1/audit",
        &[
            ("actor", args.actor),
            ("target", args.target),
            ("since", args.since),
            ("until", args.until),
            ("limit", Some(args.limit.to_string())),
            ("cursor", args.cursor),
        ],
    );
    let reply = client.get(&path).await?;
    print_list(
        &reply,
        "entries",
        &[
            ("SEQ", "seq"),
            ("AT", "at"),
            ("ACTOR", "actor"),
            ("TOKEN", "token"),
            ("ROLE", "role"),
            ("SOURCE", "source"),
            ("METHOD", "method"),
            ("TARGET", "target"),
            ("STATUS", "status"),
            ("ERROR", "error"),
        ],
        format,
    );
    if format == Format::Table
        && let Some(next) = reply.get("next_cursor").and_then(Value::as_str)
    {
        eprintln!("More entries: --cursor {next}");
    }
    Ok(())
}
