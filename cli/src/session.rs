//! `verge login`, `verge context ls|use|rm` and `verge whoami`.

use anyhow::{Context as _, bail};
use reqwest::Method;
use serde_json::{Value, json};

use crate::args::{ContextCommand, LoginArgs};
use crate::client::{Client, Target};
use crate::config::{self, Context};
use crate::failure::Usage;
use crate::output::{self, Format};
use crate::secret;

/// Signs in, checks the token with `GET /api/v1/whoami`, stores the context
/// and makes it current.
pub async fn login(args: LoginArgs, format: Format) -> anyhow::Result<()> {
    let addr = match args.addr.or_else(|| std::env::var("VERGE_ADDR").ok()) {
        Some(addr) if !addr.trim().is_empty() => addr.trim().trim_end_matches('/').to_owned(),
        _ => bail!(Usage(
            "give the controller's address: `verge login https://host:7700`".to_owned()
        )),
    };
    if !addr.starts_with("http://") && !addr.starts_with("https://") {
        bail!(Usage(format!(
            "the address {addr:?} must start with https:// (or http:// for a dev controller)"
        )));
    }
    let ca_file = match args.ca_file {
        Some(path) => Some(
            std::path::absolute(&path).with_context(|| format!("resolving {}", path.display()))?,
        ),
        None => None,
    };
    let mut target = Target {
        addr: addr.clone(),
        token: None,
        ca_file: ca_file.clone(),
        context: None,
    };
    let token = match (&args.user, &args.token_file) {
        (Some(user), _) => {
            let password = secret::from_file_or_prompt(args.password_file.as_deref(), "password")?;
            let mut body = json!({"user": user, "password": password});
            if let Some(ttl) = args.ttl {
                body["ttl_secs"] = json!(ttl.as_secs());
            }
            let client = Client::new(target.clone())?;
            let request = client.request(Method::POST, "/api/v1/login").json(&body);
            let (_, _, bytes) = client.send(request, "POST /api/v1/login").await?;
            let reply = crate::client::json_of(&bytes, "POST /api/v1/login")?;
            reply
                .get("token")
                .and_then(Value::as_str)
                .context("the sign-in reply has no token")?
                .to_owned()
        }
        (None, Some(path)) => secret::read(path, "API token")?,
        (None, None) => match std::env::var("VERGE_TOKEN") {
            Ok(token) if !token.trim().is_empty() => token.trim().to_owned(),
            _ => secret::prompt("API token")?,
        },
    };
    target.token = Some(token.clone());
    let who = Client::new(target)?.get("/api/v1/whoami").await?;
    let text = |key: &str| who.get(key).and_then(Value::as_str).map(str::to_owned);
    let path = config::path()?;
    let mut file = config::load(&path)?;
    file.contexts.insert(
        args.name.clone(),
        Context {
            addr: addr.clone(),
            token,
            ca_file,
            user: text("user"),
            role: text("role"),
        },
    );
    file.current = Some(args.name.clone());
    config::save(&path, &file)?;
    match format {
        Format::Json => output::print_json(&who),
        Format::Table => println!(
            "Signed in to {addr} as {} (role {}); context {:?} is current ({}).",
            text("user").unwrap_or_else(|| "-".into()),
            text("role").unwrap_or_else(|| "-".into()),
            args.name,
            path.display()
        ),
    }
    Ok(())
}

/// `verge context ...`.
pub fn context(command: ContextCommand, format: Format) -> anyhow::Result<()> {
    let path = config::path()?;
    let mut file = config::load(&path)?;
    match command {
        ContextCommand::Ls => {
            let current = file.current.clone().unwrap_or_default();
            match format {
                Format::Json => {
                    let list: Vec<Value> = file
                        .contexts
                        .iter()
                        .map(|(name, c)| {
                            json!({"name": name, "current": *name == current, "addr": c.addr,
                                   "ca_file": c.ca_file, "user": c.user, "role": c.role})
                        })
                        .collect();
                    output::print_json(&json!({"contexts": list}));
                }
                Format::Table => {
                    let mut table =
                        output::table(&["CURRENT", "NAME", "ADDRESS", "USER", "ROLE", "CA FILE"]);
                    for (name, c) in &file.contexts {
                        table.add_row(vec![
                            if *name == current { "*" } else { "" }.to_owned(),
                            name.clone(),
                            c.addr.clone(),
                            c.user.clone().unwrap_or_else(|| "-".into()),
                            c.role.clone().unwrap_or_else(|| "-".into()),
                            c.ca_file
                                .as_ref()
                                .map_or_else(|| "-".into(), |p| p.display().to_string()),
                        ]);
                    }
                    output::print_table(&table);
                }
            }
        }
        ContextCommand::Use { name } => {
            if !file.contexts.contains_key(&name) {
                bail!(Usage(format!(
                    "no context named {name:?} in {} (see `verge context ls`)",
                    path.display()
                )));
            }
            file.current = Some(name.clone());
            config::save(&path, &file)?;
            println!("Context {name:?} is current.");
        }
        ContextCommand::Rm { name } => {
            if file.contexts.remove(&name).is_none() {
                bail!(Usage(format!(
                    "no context named {name:?} in {}",
                    path.display()
                )));
            }
            if file.current.as_deref() == Some(name.as_str()) {
                file.current = None;
            }
            config::save(&path, &file)?;
            println!("Forgot context {name:?} (its token stays valid until revoked).");
        }
    }
    Ok(())
}

/// `verge whoami`.
pub async fn whoami(client: &Client, format: Format) -> anyhow::Result<()> {
    let who = client.get("/api/v1/whoami").await?;
    match format {
        Format::Json => output::print_json(&who),
        Format::Table => {
            output::print_fields(&who, &["user", "role", "token", "token_id"]);
            println!("{:<8}  {}", "address", client.target().addr);
            if let Some(context) = &client.target().context {
                println!("{:<8}  {context}", "context");
            }
        }
    }
    Ok(())
}
