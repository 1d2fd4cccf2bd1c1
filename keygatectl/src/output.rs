//! How an answer is shown (`-o`): a table for people (borders only on a terminal; plain
//! space-aligned columns in a pipe), the API's JSON as it came (one line), YAML, or `name`:
//! each object as `kind/id` (`account/acme`, `user/alice`, `key/c73407ee6f70e705`), one a
//! line, as `kubectl -o name` prints them. Writing to a closed pipe (`| head -1`) ends the
//! output quietly. A new key is shown once: in the answer, or only in the `--key-out` file
//! (then removed from what is printed); a note on stderr says where it is.

use crate::client::Error;
use comfy_table::{presets, Table};
use serde_json::Value;
use std::io::{IsTerminal as _, Write as _};

/// The output format (`-o`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Columns for people.
    Table,
    /// The API's answer as it came, one line.
    Json,
    /// The API's answer as YAML.
    Yaml,
    /// Each object as `kind/id`, one a line.
    Name,
}

/// What a command acts on: the object `-o name` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Object {
    Account,
    User,
    Key,
}

impl Object {
    /// The kind in `kind/id`.
    fn kind(self) -> &'static str {
        match self {
            Object::Account => "account",
            Object::User => "user",
            Object::Key => "key",
        }
    }

    /// The answer's member holding the object's id.
    fn id_field(self) -> &'static str {
        match self {
            Object::Account => "account_id",
            Object::User => "user_id",
            Object::Key => "key",
        }
    }
}

/// Which table an answer makes.
#[derive(Clone, Copy, Debug)]
pub enum View {
    /// One object: a field/value row each.
    Fields(Object),
    /// An answer holding a new key, made for the object (the account, user or key created or
    /// rotated).
    NewKey(Object),
    /// `accounts`: one row per account.
    Accounts,
    /// `users`: one row per user.
    Users,
    /// `keys`: one row per key.
    Keys,
    /// `entries`: one row per audit entry.
    Audit,
}

const ACCOUNT_COLUMNS: &[&str] = &["account_id", "created_at", "claims", "enabled"];
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

/// Prints `answer` in `format` (for tables, as `view`'s table).
pub fn print(answer: &Value, view: View, format: Format) -> Result<(), Error> {
    if matches!(view, View::NewKey(_)) && answer.get("user_key").is_some() {
        eprintln!("keygatectl: user_key is shown only this once: store it now");
    }
    let text = match format {
        Format::Json => answer.to_string(),
        Format::Yaml => serde_norway::to_string(answer)
            .map_err(|e| Error::Transport(format!("cannot show the answer as YAML: {e}")))?,
        Format::Name => names(answer, view).join("\n"),
        Format::Table => {
            let mut table = match view {
                View::Fields(_) | View::NewKey(_) => fields(answer),
                View::Accounts => rows(answer, "accounts", ACCOUNT_COLUMNS),
                View::Users => rows(answer, "users", USER_COLUMNS),
                View::Keys => rows(answer, "keys", KEY_COLUMNS),
                View::Audit => rows(answer, "entries", AUDIT_COLUMNS),
            };
            let mut text = render(&mut table);
            if view_has_more(answer, view) {
                text.push_str("\n(more entries: ask again with --after = the last id, or --all)");
            }
            text
        }
    };
    say(&text)
}

/// Writes `text` and a newline to stdout; a closed pipe ends the output quietly.
pub fn say(text: &str) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    let written = writeln!(out, "{}", text.trim_end_matches('\n')).and_then(|()| out.flush());
    match written {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::Transport(format!(
            "cannot write to standard output: {e}"
        ))),
        _ => Ok(()),
    }
}

/// The `kind/id` lines of `-o name`: of each listed object, or of the one the command acted on.
fn names(answer: &Value, view: View) -> Vec<String> {
    let (list, id, kind) = match view {
        View::Accounts => ("accounts", "account_id", "account"),
        View::Users => ("users", "user_id", "user"),
        View::Keys => ("keys", "key", "key"),
        View::Audit => ("entries", "id", "audit"),
        View::Fields(object) | View::NewKey(object) => {
            let id = answer.get(object.id_field()).filter(|v| !v.is_null());
            return id
                .map(|id| format!("{}/{}", object.kind(), cell(id)))
                .into_iter()
                .collect();
        }
    };
    let items = answer.get(list).and_then(Value::as_array);
    items
        .into_iter()
        .flatten()
        .filter_map(|item| item.get(id))
        .map(|id| format!("{kind}/{}", cell(id)))
        .collect()
}

fn view_has_more(answer: &Value, view: View) -> bool {
    matches!(view, View::Audit) && answer.get("more").and_then(Value::as_bool) == Some(true)
}

/// The table's text: as comfy-table draws it on a terminal; elsewhere columns from the first
/// character, two spaces apart, no trailing blanks (what `column -t` or `awk` expect).
fn render(table: &mut Table) -> String {
    if std::io::stdout().is_terminal() {
        return table.to_string();
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    let lines: Vec<String> = table.lines().map(|l| l.trim_end().to_owned()).collect();
    lines.join("\n")
}

/// A table with borders on a terminal, plain aligned columns elsewhere.
fn table() -> Table {
    let mut t = Table::new();
    if std::io::stdout().is_terminal() {
        t.load_preset(presets::UTF8_BORDERS_ONLY);
    } else {
        t.load_preset(presets::NOTHING);
    }
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
    use super::{cell, names, Object, View};
    use serde_json::json;

    #[test]
    fn name_output_is_kind_slash_id_of_the_object_the_command_acted_on() {
        // account create answers with the admin user and its key: the account is named.
        let created = json!({"account_id": "acme", "user_id": "alice", "key": "c73407ee6f70e705"});
        let name = |view| names(&created, view);
        assert_eq!(name(View::NewKey(Object::Account)), ["account/acme"]);
        assert_eq!(name(View::NewKey(Object::User)), ["user/alice"]);
        assert_eq!(name(View::Fields(Object::Key)), ["key/c73407ee6f70e705"]);
        let list = json!({"accounts": [{"account_id": "acme"}, {"account_id": "beta"}]});
        assert_eq!(
            names(&list, View::Accounts),
            ["account/acme", "account/beta"]
        );
        assert!(names(&json!({"revoked": 2}), View::Fields(Object::User)).is_empty());
    }

    #[test]
    fn an_audit_actor_names_the_acting_key() {
        let actor = json!({"account_id": "acme", "user_id": "alice", "key": "c73407ee6f70e705"});
        assert_eq!(cell(&actor), "acme/alice key=c73407ee6f70e705");
        let created_by = json!({"account_id": "acme", "user_id": "alice"});
        assert_eq!(cell(&created_by), "acme/alice");
    }
}
