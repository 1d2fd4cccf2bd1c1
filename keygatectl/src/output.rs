//! How an answer is shown: the API's JSON as it came (`--json`, one line, for scripts), or a
//! table for people. A new key is shown once, so it stays in the table (and a note on stderr
//! says to keep it).

use crate::client::Error;
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use serde_json::Value;

/// Which table an answer makes.
#[derive(Clone, Copy, Debug)]
pub enum View {
    /// One object: a field/value row each.
    Fields,
    /// An answer holding a new key.
    NewKey,
    /// `users`: one row per user.
    Users,
    /// `keys`: one row per key.
    Keys,
    /// `entries`: one row per audit entry.
    Audit,
}

const USER_COLUMNS: &[&str] = &["user_id", "role", "created_at", "expires_at", "enabled"];
const KEY_COLUMNS: &[&str] = &[
    "key",
    "name",
    "hint",
    "created_at",
    "created_by",
    "expires_at",
    "last_used_at",
    "claims",
    "capabilities",
    "enabled",
];
const AUDIT_COLUMNS: &[&str] = &["id", "at", "actor", "action", "object", "detail"];

/// Prints `answer` as JSON or as `view`'s table.
pub fn print(answer: &Value, view: View, json: bool) -> Result<(), Error> {
    if json {
        println!("{answer}");
        return Ok(());
    }
    let table = match view {
        View::Fields => fields(answer),
        View::NewKey => {
            eprintln!("keygatectl: user_key is shown only this once: store it now");
            fields(answer)
        }
        View::Users => rows(answer, "users", USER_COLUMNS),
        View::Keys => rows(answer, "keys", KEY_COLUMNS),
        View::Audit => rows(answer, "entries", AUDIT_COLUMNS),
    };
    println!("{table}");
    if view_has_more(answer, view) {
        println!("(more entries: ask again with --after = the last id, or --all)");
    }
    Ok(())
}

fn view_has_more(answer: &Value, view: View) -> bool {
    matches!(view, View::Audit) && answer.get("more").and_then(Value::as_bool) == Some(true)
}

fn table() -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t
}

/// A field/value table of an object's members (nested objects shown compactly).
fn fields(answer: &Value) -> Table {
    let mut t = table();
    t.set_header(vec!["field", "value"]);
    if let Some(obj) = answer.as_object() {
        for (k, v) in obj {
            t.add_row(vec![k.clone(), cell(v)]);
        }
    }
    t
}

/// One row per element of `answer[list]`, with `columns`.
fn rows(answer: &Value, list: &str, columns: &[&str]) -> Table {
    let mut t = table();
    t.set_header(columns.to_vec());
    let items = answer.get(list).and_then(Value::as_array);
    for item in items.into_iter().flatten() {
        t.add_row(
            columns
                .iter()
                .map(|c| cell(item.get(*c).unwrap_or(&Value::Null))),
        );
    }
    t
}

/// A cell: strings bare, null as `-`, claims as `a=b, c=d`, actors as `acct/user key=ref`
/// (the acting key's reference, when the entry names it), the rest as compact JSON.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Object(o) if o.contains_key("account_id") && o.contains_key("user_id") => {
            let part = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
            let who = format!("{}/{}", part("account_id"), part("user_id"));
            match o.get("key").and_then(Value::as_str) {
                Some(key) => format!("{who} key={key}"),
                None => who,
            }
        }
        Value::Object(o) if o.values().all(Value::is_string) => {
            let pairs: Vec<String> = o.iter().map(|(k, v)| format!("{k}={}", cell(v))).collect();
            if pairs.is_empty() {
                "-".into()
            } else {
                pairs.join(", ")
            }
        }
        Value::Array(a) if a.iter().all(Value::is_string) => {
            let items: Vec<String> = a.iter().map(cell).collect();
            if items.is_empty() {
                "-".into()
            } else {
                items.join(",")
            }
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::cell;
    use serde_json::json;

    #[test]
    fn an_audit_actor_names_the_acting_key() {
        let actor = json!({"account_id": "acme", "user_id": "alice", "key": "c73407ee6f70e705"});
        assert_eq!(cell(&actor), "acme/alice key=c73407ee6f70e705");
        let created_by = json!({"account_id": "acme", "user_id": "alice"});
        assert_eq!(cell(&created_by), "acme/alice");
    }
}
