//! `verge alarm` (active alarms, their history and the catalogue;
//! acknowledge, suppress) and `verge events` (the fleet's events).

use reqwest::Method;
use serde_json::Value;

use crate::args::{AlarmCommand, AlarmListArgs, EventsArgs};
use crate::client::{Client, segment, with_query};
use crate::output::{self, Format, field, print_list};

const ALARM_COLUMNS: &[(&str, &str)] = &[
    ("INSTANCE", "instance"),
    ("SEVERITY", "severity"),
    ("ALARM", "id"),
    ("CODE", "code"),
    ("ENTITY", "entity_instance"),
    ("REGION", "region"),
    ("STATE", "state"),
    ("RAISED", "raised_at"),
    ("ACK", "acknowledged"),
    ("REASON", "reason"),
];

pub async fn run(client: &Client, command: AlarmCommand, format: Format) -> anyhow::Result<()> {
    match command {
        AlarmCommand::Ls(args) => list(client, args, format).await,
        AlarmCommand::Catalogue => {
            let reply = client.get("/api/v1/alarms/catalogue").await?;
            print_list(
                &reply,
                "alarms",
                &[
                    ("CODE", "code"),
                    ("ALARM", "id"),
                    ("SEVERITY", "severity"),
                    ("ENTITY", "entity_type"),
                    ("OBSERVER", "observer"),
                    ("TITLE", "title"),
                    ("SUPPRESSED", "suppressed"),
                ],
                format,
            );
            Ok(())
        }
        AlarmCommand::Ack { instance } => {
            let reply = client
                .call(
                    Method::POST,
                    &format!("/api/v1/alarms/{instance}/acknowledge"),
                    None,
                )
                .await?;
            show(&reply, format, "Acknowledged");
            Ok(())
        }
        AlarmCommand::Suppress { alarm } => suppression(client, &alarm, "suppress", format).await,
        AlarmCommand::Unsuppress { alarm } => {
            suppression(client, &alarm, "unsuppress", format).await
        }
    }
}

async fn list(client: &Client, args: AlarmListArgs, format: Format) -> anyhow::Result<()> {
    let state = if args.all {
        "all"
    } else if args.cleared {
        "cleared"
    } else {
        "active"
    };
    let path = with_query(
        "/api/v1/alarms",
        &[
            ("state", Some(state.to_owned())),
            ("severity", args.severity),
            ("alarm", args.alarm),
            ("node", args.node),
            ("region", args.region),
            ("service", args.service),
            ("after", args.after.map(|a| a.to_string())),
            ("limit", Some(args.limit.to_string())),
        ],
    );
    let reply = client.get(&path).await?;
    print_list(&reply, "alarms", ALARM_COLUMNS, format);
    more_hint(&reply, format, "alarms");
    Ok(())
}

async fn suppression(
    client: &Client,
    alarm: &str,
    action: &str,
    format: Format,
) -> anyhow::Result<()> {
    let path = format!("/api/v1/alarms/catalogue/{}/{action}", segment(alarm));
    let reply = client.call(Method::POST, &path, None).await?;
    match format {
        Format::Json => output::print_json(&reply),
        Format::Table => {
            let verb = if action == "suppress" {
                "Suppressed"
            } else {
                "Unsuppressed"
            };
            println!("{verb} {alarm} ({}).", field(&reply, "title"));
        }
    }
    Ok(())
}

fn show(alarm: &Value, format: Format, verb: &str) {
    match format {
        Format::Json => output::print_json(alarm),
        Format::Table => println!(
            "{verb} alarm {} ({} on {}).",
            field(alarm, "instance"),
            field(alarm, "id"),
            field(alarm, "entity_instance")
        ),
    }
}

/// Says how to fetch the next page, on stderr, when there is one.
fn more_hint(reply: &Value, format: Format, what: &str) {
    if format == Format::Table
        && let Some(next) = reply.get("next_after").and_then(Value::as_u64)
    {
        eprintln!("More {what}: --after {next}");
    }
}

pub async fn events(client: &Client, args: EventsArgs, format: Format) -> anyhow::Result<()> {
    let path = with_query(
        "/api/v1/events",
        &[
            ("after", args.after.map(|a| a.to_string())),
            ("node", args.node),
            ("region", args.region),
            ("service", args.service),
            ("source", args.source),
            ("kind", args.kind),
            ("limit", Some(args.limit.to_string())),
        ],
    );
    let reply = client.get(&path).await?;
    print_list(
        &reply,
        "events",
        &[
            ("ID", "id"),
            ("AT", "at"),
            ("SOURCE", "source"),
            ("KIND", "kind"),
            ("REGION", "region"),
            ("NODE", "node"),
            ("SERVICE", "service"),
            ("DETAIL", "detail"),
        ],
        format,
    );
    more_hint(&reply, format, "events");
    Ok(())
}
