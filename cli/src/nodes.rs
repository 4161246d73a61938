//! `verge node ls|show|cordon|drain|uncordon|revoke`.

use reqwest::Method;
use serde_json::{Value, json};

use crate::args::{NodeCommand, NodeFilter};
use crate::client::{Client, segment, with_query};
use crate::output::{self, Format, field, items};

/// Nodes asked for per page while listing every page.
const PAGE: u32 = 500;

/// The node's state in one word: revoked, drained, cordoned, offline,
/// unconfirmed (not heard from since the controller started), unhealthy or ready.
fn state(node: &Value) -> String {
    if node.get("revoked").and_then(Value::as_bool) == Some(true) {
        return "revoked".into();
    }
    if let Some(cordon) = node.get("cordon").and_then(Value::as_str) {
        return cordon.to_owned();
    }
    match (
        node.get("online").and_then(Value::as_bool),
        node.get("healthy").and_then(Value::as_bool),
    ) {
        (Some(false), _) => "offline".into(),
        _ if node.get("unconfirmed").and_then(Value::as_bool) == Some(true) => "unconfirmed".into(),
        (_, Some(false)) => "unhealthy".into(),
        _ => "ready".into(),
    }
}

fn workloads(node: &Value) -> String {
    let list = items(node, "workloads");
    if list.is_empty() {
        return "-".into();
    }
    list.iter()
        .map(|w| format!("{}:{}", field(w, "service"), field(w, "state")))
        .collect::<Vec<_>>()
        .join(",")
}

fn node_table(nodes: &[Value]) {
    let mut table = output::table(&["ID", "REGION", "STATE", "VERSION", "WORKLOADS", "LAST SEEN"]);
    for node in nodes {
        table.add_row(vec![
            field(node, "id"),
            field(node, "region"),
            state(node),
            field(node, "version"),
            workloads(node),
            field(node, "last_seen"),
        ]);
    }
    output::print_table(&table);
}

fn show(node: &Value) {
    println!("{:<18}  {}", "id", field(node, "id"));
    println!("{:<18}  {}", "state", state(node));
    output::print_fields(
        node,
        &[
            "region",
            "online",
            "healthy",
            "unconfirmed",
            "cordon",
            "version",
            "last_seen",
            "labels",
            "capacity",
            "desired_generation",
            "applied_generation",
            "probe_addr",
            "limits",
        ],
    );
    if let Some(rejection) = node.get("last_rejection").filter(|v| !v.is_null()) {
        println!(
            "{:<18}  {} (generation {}): {}",
            "last_rejection",
            field(rejection, "reason"),
            field(rejection, "generation"),
            field(rejection, "detail")
        );
    }
    if let Some(problem) = node.get("storage_problem").filter(|v| !v.is_null()) {
        println!(
            "{:<18}  {} since {}: {}",
            "storage_problem",
            field(problem, "reason"),
            field(problem, "since"),
            field(problem, "detail")
        );
    }
    let list = items(node, "workloads");
    if !list.is_empty() {
        println!();
        let mut table = output::table(&["SERVICE", "STATE", "PID", "PORTS", "RESTARTS", "MESSAGE"]);
        for w in list {
            table.add_row(vec![
                field(w, "service"),
                field(w, "state"),
                field(w, "pid"),
                field(w, "ports"),
                field(w, "restarts"),
                field(w, "message"),
            ]);
        }
        output::print_table(&table);
    }
    if let Some(latency) = node.get("latency").and_then(Value::as_object)
        && !latency.is_empty()
    {
        println!();
        let mut table = output::table(&["TO REGION", "P50 MS", "P90 MS", "P99 MS", "SOURCE"]);
        for (region, figure) in latency {
            table.add_row(vec![
                region.clone(),
                field(figure, "p50_ms"),
                field(figure, "p90_ms"),
                field(figure, "p99_ms"),
                field(figure, "source"),
            ]);
        }
        output::print_table(&table);
    }
}

/// Every page of `GET /api/v1/nodes` with the filter.
async fn list(client: &Client, filter: &NodeFilter) -> anyhow::Result<Vec<Value>> {
    let mut nodes = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = with_query(
            "/api/v1/nodes",
            &[
                ("region", filter.region.clone()),
                ("state", filter.state.clone()),
                ("label", filter.label.clone()),
                ("service", filter.service.clone()),
                ("prefix", filter.prefix.clone()),
                ("limit", Some(PAGE.to_string())),
                ("cursor", cursor.take()),
            ],
        );
        let page = client.get(&path).await?;
        nodes.extend(items(&page, "nodes").iter().cloned());
        match page.get("next_cursor").and_then(Value::as_str) {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok(nodes),
        }
    }
}

pub async fn run(client: &Client, command: NodeCommand, format: Format) -> anyhow::Result<()> {
    let (verb, id) = match command {
        NodeCommand::Ls(filter) => {
            let nodes = list(client, &filter).await?;
            match format {
                Format::Json => output::print_json(&json!({"nodes": nodes})),
                Format::Table => node_table(&nodes),
            }
            return Ok(());
        }
        NodeCommand::Show { id } => {
            let node = client
                .get(&format!("/api/v1/nodes/{}", segment(&id)))
                .await?;
            match format {
                Format::Json => output::print_json(&node),
                Format::Table => show(&node),
            }
            return Ok(());
        }
        NodeCommand::Cordon { id } => ("cordon", id),
        NodeCommand::Drain { id } => ("drain", id),
        NodeCommand::Uncordon { id } => ("uncordon", id),
        NodeCommand::Revoke { id } => ("revoke", id),
    };
    let node = client
        .call(
            Method::POST,
            &format!("/api/v1/nodes/{}/{verb}", segment(&id)),
            None,
        )
        .await?;
    match format {
        Format::Json => output::print_json(&node),
        Format::Table => node_table(std::slice::from_ref(&node)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::cell;

    #[test]
    fn a_node_has_one_state_word() {
        assert_eq!(
            state(&json!({"online": true, "healthy": true, "cordon": null})),
            "ready"
        );
        assert_eq!(
            state(&json!({"online": true, "healthy": true, "cordon": "drained"})),
            "drained"
        );
        assert_eq!(
            state(&json!({"online": false, "healthy": false})),
            "offline"
        );
        assert_eq!(
            state(&json!({"online": true, "healthy": true, "unconfirmed": true})),
            "unconfirmed"
        );
        assert_eq!(
            state(&json!({"online": false, "healthy": false, "unconfirmed": true})),
            "offline"
        );
        assert_eq!(
            state(&json!({"online": true, "revoked": true, "cordon": "cordoned"})),
            "revoked"
        );
        assert_eq!(cell(&json!({"cpu_millis": 2000})), "cpu_millis=2000");
    }
}
