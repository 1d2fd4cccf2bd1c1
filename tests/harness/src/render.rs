//! Rendering `envoy/envoy.yaml.tmpl` into a bootstrap file.

use std::path::Path;

use keygate_protocol::routes;
use serde_json::{json, Value};

use crate::error::{Error, Result};

/// What fills the template's placeholders.
#[derive(Debug, Clone)]
pub struct EnvoyConfigParams<'a> {
    /// `@NODE_ID@`.
    pub node_id: &'a str,
    /// `@LISTEN_PORT@`: the API listener.
    pub listen_port: u16,
    /// `@ADMIN_PORT@`.
    pub admin_port: u16,
    /// `@UPSTREAM_PORT@`.
    pub upstream_port: u16,
    /// `@KEYSTORE_PORT@`.
    pub keystore_port: u16,
    /// `@WASM_PATH@`.
    pub wasm_path: &'a Path,
    /// `@KEYGATE_CONFIG@`: the filter configuration text, normally JSON (any text works: it
    /// goes into a YAML block scalar, indented to the placeholder's column).
    pub keygate_config: &'a str,
}

/// The placeholder that takes the filter configuration; it must be alone on its line.
const CONFIG_PLACEHOLDER: &str = "@KEYGATE_CONFIG@";

/// The placeholder that takes more keystore endpoints; alone on its line, which is replaced by
/// one line per endpoint (none: the line goes).
const MORE_ENDPOINTS_PLACEHOLDER: &str = "@KEYSTORE_MORE_ENDPOINTS@";

/// What fills the template beyond [`EnvoyConfigParams`] (a separate struct, so that code that
/// builds `EnvoyConfigParams` field by field keeps compiling).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvoyConfigExtras {
    /// `@KEYSTORE_MORE_ENDPOINTS@`: ports (on 127.0.0.1) of more keystore replicas, after the
    /// one at `@KEYSTORE_PORT@`.
    pub more_keystore_ports: Vec<u16>,
    /// Leave out the template's lines marked [`HARDENING_MARK`] (Envoy's own path
    /// normalisation and underscore-header handling), to test what the filter does alone.
    pub without_envoy_hardening: bool,
}

/// The trailing comment that marks a template line of Envoy's hardening settings.
pub const HARDENING_MARK: &str = "# keygate:hardening";

/// One `lb_endpoints` entry, on one line.
fn endpoint_line(port: u16) -> String {
    format!("- endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}")
}

/// The filter configuration of the contract, with the default values the demo and tests use.
pub fn default_keygate_config() -> Value {
    json!({
        "store": {
            "cluster": "keystore",
            "authority": "keystore",
            "lookup_path": routes::LOOKUP,
            "changes_path": routes::CHANGES,
            "timeout_ms": 1000
        },
        "cache": {"ttl_s": 30, "negative_ttl_s": 5, "max_entries": 100000},
        "sync": {"interval_ms": 1000},
        "identity_headers": {"account": "x-account-id", "user": "x-user-id", "role": "x-role"},
        "invalidate_paths": [routes::admin::PREFIX]
    })
}

/// Reads the template at [`crate::envoy_template_path`].
pub fn load_envoy_template() -> Result<String> {
    let path = crate::envoy_template_path();
    std::fs::read_to_string(&path)
        .map_err(|e| Error::msg(format!("reading {}: {e}", path.display())))
}

/// `envoy/envoy.yaml.tmpl` with each `(from, to)` replaced once, for tests that need the
/// shipped configuration with one thing changed. Fails if a `from` is not in the template, so
/// that a test cannot silently stop testing what it says when the template changes.
pub fn template_variant(edits: &[(&str, &str)]) -> Result<String> {
    let mut t = load_envoy_template()?;
    for (from, to) in edits {
        if !t.contains(from) {
            return Err(Error::msg(format!("envoy template has no {from:?}")));
        }
        t = t.replacen(from, to, 1);
    }
    Ok(t)
}

/// Fills `template`'s placeholders. Comment lines (`#` first) are copied unchanged. Fails if
/// `@KEYGATE_CONFIG@` is not alone on its line, or if a placeholder is left over.
pub fn render_envoy_config(template: &str, p: &EnvoyConfigParams<'_>) -> Result<String> {
    render_envoy_config_with(template, p, &EnvoyConfigExtras::default())
}

/// [`render_envoy_config`] with [`EnvoyConfigExtras`]. Fails if `@KEYSTORE_MORE_ENDPOINTS@` is
/// not alone on its line, or if there are more endpoints and no such line to put them.
pub fn render_envoy_config_with(
    template: &str,
    p: &EnvoyConfigParams<'_>,
    extras: &EnvoyConfigExtras,
) -> Result<String> {
    if p.node_id.is_empty() {
        return Err(Error::msg("render_envoy_config: empty node id"));
    }
    let wasm = p
        .wasm_path
        .to_str()
        .ok_or_else(|| Error::msg("render_envoy_config: the wasm path is not UTF-8"))?;
    let replacements = [
        ("@NODE_ID@", yaml_dq_escape(p.node_id)),
        ("@LISTEN_PORT@", p.listen_port.to_string()),
        ("@ADMIN_PORT@", p.admin_port.to_string()),
        ("@UPSTREAM_PORT@", p.upstream_port.to_string()),
        ("@KEYSTORE_PORT@", p.keystore_port.to_string()),
        ("@WASM_PATH@", yaml_dq_escape(wasm)),
    ];
    // Trimmed, so that the first line fixes the block scalar's indentation.
    let config = p.keygate_config.replace("\r\n", "\n");
    let config = config.trim();
    let mut out = String::with_capacity(template.len() + config.len() * 2);
    let mut config_lines = 0;
    let mut endpoint_lines = 0;
    for (n, line) in template.lines().enumerate() {
        let trimmed = line.trim_start();
        if extras.without_envoy_hardening && line.trim_end().ends_with(HARDENING_MARK) {
            continue;
        }
        if trimmed.starts_with('#') {
            out.push_str(line);
        } else if line.contains(MORE_ENDPOINTS_PLACEHOLDER) {
            if trimmed.trim_end() != MORE_ENDPOINTS_PLACEHOLDER {
                return Err(Error::msg(format!(
                    "template line {}: {MORE_ENDPOINTS_PLACEHOLDER} must be alone on its line",
                    n + 1
                )));
            }
            endpoint_lines += 1;
            let indent = line.get(..line.len() - trimmed.len()).unwrap_or_default();
            for port in &extras.more_keystore_ports {
                out.push_str(indent);
                out.push_str(&endpoint_line(*port));
                out.push('\n');
            }
            continue;
        } else if line.contains(CONFIG_PLACEHOLDER) {
            if trimmed.trim_end() != CONFIG_PLACEHOLDER {
                return Err(Error::msg(format!(
                    "template line {}: {CONFIG_PLACEHOLDER} must be alone on its line",
                    n + 1
                )));
            }
            config_lines += 1;
            let indent = line.get(..line.len() - trimmed.len()).unwrap_or_default();
            for (i, cl) in config.split('\n').enumerate() {
                if i > 0 {
                    out.push('\n');
                }
                if !cl.trim().is_empty() {
                    out.push_str(indent);
                    out.push_str(cl);
                }
            }
        } else {
            let mut l = line.to_string();
            for (ph, value) in &replacements {
                l = l.replace(ph, value);
            }
            if let Some(left) = leftover_placeholder(&l) {
                return Err(Error::msg(format!(
                    "template line {}: unknown placeholder {left}",
                    n + 1
                )));
            }
            out.push_str(&l);
        }
        out.push('\n');
    }
    if config_lines != 1 {
        return Err(Error::msg(format!(
            "the template must hold {CONFIG_PLACEHOLDER} exactly once (found {config_lines})"
        )));
    }
    if !extras.more_keystore_ports.is_empty() && endpoint_lines != 1 {
        return Err(Error::msg(format!(
            "{} more keystore endpoints, but the template holds {MORE_ENDPOINTS_PLACEHOLDER} \
             {endpoint_lines} times (must be once)",
            extras.more_keystore_ports.len()
        )));
    }
    Ok(out)
}

/// Escapes a value for a YAML double-quoted scalar.
fn yaml_dq_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// An `@UPPER_CASE@` token left in `line`, if any.
fn leftover_placeholder(line: &str) -> Option<&str> {
    let mut rest = line;
    while let Some(start) = rest.find('@') {
        let after = rest.get(start + 1..)?;
        let end = after.find(|c: char| !(c.is_ascii_uppercase() || c == '_'))?;
        if end > 0 && after.get(end..)?.starts_with('@') {
            return rest.get(start..start + end + 2);
        }
        rest = after;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn params<'a>(wasm: &'a Path, config: &'a str) -> EnvoyConfigParams<'a> {
        EnvoyConfigParams {
            node_id: "keygate-a",
            listen_port: 10000,
            admin_port: 9901,
            upstream_port: 8080,
            keystore_port: 8081,
            wasm_path: wasm,
            keygate_config: config,
        }
    }

    #[test]
    fn renders_the_real_template() {
        let template = load_envoy_template().unwrap();
        let wasm = PathBuf::from("/x/keygate.wasm");
        let config = serde_json::to_string_pretty(&default_keygate_config()).unwrap();
        let out = render_envoy_config(&template, &params(&wasm, &config)).unwrap();
        assert!(out.contains("id: \"keygate-a\""));
        assert!(out.contains("port_value: 10000"));
        assert!(out.contains("port_value: 9901"));
        assert!(out.contains("port_value: 8080"));
        assert!(out.contains("port_value: 8081"));
        assert!(out.contains("filename: \"/x/keygate.wasm\""));
        assert!(out.contains("envoy.wasm.runtime.v8"));
        assert!(out.contains("vm_id: keygate"));
        assert!(out.contains("root_id: keygate"));
        // No placeholder outside comments.
        for line in out.lines().filter(|l| !l.trim_start().starts_with('#')) {
            assert_eq!(leftover_placeholder(line), None, "{line}");
        }
        // The JSON sits in the block scalar, every line indented to the placeholder's column.
        let template_line = template
            .lines()
            .find(|l| l.trim() == CONFIG_PLACEHOLDER)
            .unwrap();
        let indent = template_line.len() - template_line.trim_start().len();
        let start = out.find("value: |\n").unwrap() + "value: |\n".len();
        let block: Vec<&str> = out[start..]
            .lines()
            .take_while(|l| l.len() - l.trim_start().len() >= indent)
            .collect();
        let json_text: String = block
            .iter()
            .map(|l| &l[indent..])
            .collect::<Vec<_>>()
            .join("\n");
        let back: Value = serde_json::from_str(&json_text).unwrap();
        assert_eq!(back, default_keygate_config());
    }

    #[test]
    fn more_keystore_endpoints_are_rendered_as_lb_endpoints() {
        let template = load_envoy_template().unwrap();
        let wasm = PathBuf::from("/x/keygate.wasm");
        let config = serde_json::to_string_pretty(&default_keygate_config()).unwrap();
        // None: the placeholder line disappears, the one endpoint stays.
        let one = render_envoy_config(&template, &params(&wasm, &config)).unwrap();
        assert!(one
            .lines()
            .all(|l| l.trim_start().starts_with('#') || !l.contains(MORE_ENDPOINTS_PLACEHOLDER)));
        let extras = EnvoyConfigExtras {
            more_keystore_ports: vec![8082, 8083],
            ..EnvoyConfigExtras::default()
        };
        let three = render_envoy_config_with(&template, &params(&wasm, &config), &extras).unwrap();
        let placeholder = template
            .lines()
            .find(|l| l.trim() == MORE_ENDPOINTS_PLACEHOLDER)
            .unwrap();
        let indent = &placeholder[..placeholder.len() - placeholder.trim_start().len()];
        for port in [8082, 8083] {
            let line = format!("{indent}{}", endpoint_line(port));
            assert!(three.lines().any(|l| l == line), "{line}\n{three}");
        }
        assert_eq!(three.lines().count(), one.lines().count() + 2);
        // Alone on its line; and somewhere to go when there are endpoints.
        let p = params(&wasm, "{}");
        assert!(
            render_envoy_config("x: @KEYSTORE_MORE_ENDPOINTS@\n  @KEYGATE_CONFIG@\n", &p).is_err()
        );
        assert!(render_envoy_config_with("  @KEYGATE_CONFIG@\n", &p, &extras).is_err());
        assert_eq!(
            render_envoy_config("  @KEYGATE_CONFIG@\n", &p).unwrap(),
            "  {}\n"
        );
    }

    #[test]
    fn envoy_hardening_is_rendered_unless_left_out() {
        let template = load_envoy_template().unwrap();
        let wasm = PathBuf::from("/x/keygate.wasm");
        let config = serde_json::to_string_pretty(&default_keygate_config()).unwrap();
        let settings = [
            "normalize_path: true",
            "merge_slashes: true",
            "path_with_escaped_slashes_action: REJECT_REQUEST",
            "common_http_protocol_options:",
            "headers_with_underscores_action: DROP_HEADER",
        ];
        let hardened = render_envoy_config(&template, &params(&wasm, &config)).unwrap();
        let extras = EnvoyConfigExtras {
            without_envoy_hardening: true,
            ..EnvoyConfigExtras::default()
        };
        let bare = render_envoy_config_with(&template, &params(&wasm, &config), &extras).unwrap();
        for setting in settings {
            let has = |text: &str| {
                text.lines()
                    .any(|l| l.trim_start().starts_with(setting) && l.contains(HARDENING_MARK))
            };
            assert!(has(&hardened), "{setting} missing from the template");
            assert!(!has(&bare), "{setting} rendered anyway");
        }
        assert_eq!(
            bare.lines().count() + settings.len(),
            hardened.lines().count()
        );
    }

    #[test]
    fn config_text_is_indented_and_trimmed() {
        let t = "a:\n  value: |\n    @KEYGATE_CONFIG@\nb: @LISTEN_PORT@\n";
        let wasm = PathBuf::from("/w");
        let out = render_envoy_config(t, &params(&wasm, "\n   {\"k\":\n\n\"v\"}  \n")).unwrap();
        assert_eq!(out, "a:\n  value: |\n    {\"k\":\n\n    \"v\"}\nb: 10000\n");
    }

    #[test]
    fn escapes_quoted_values() {
        let t = "id: \"@NODE_ID@\"\nf: \"@WASM_PATH@\"\nc: |\n  @KEYGATE_CONFIG@\n";
        let wasm = PathBuf::from("/a \"b\"\\c.wasm");
        let mut p = params(&wasm, "{}");
        p.node_id = "n\"1";
        let out = render_envoy_config(t, &p).unwrap();
        assert!(out.contains(r#"id: "n\"1""#));
        assert!(out.contains(r#"f: "/a \"b\"\\c.wasm""#));
    }

    #[test]
    fn rejects_bad_templates() {
        let wasm = PathBuf::from("/w");
        let p = params(&wasm, "{}");
        // The config placeholder sharing its line.
        assert!(render_envoy_config("v: @KEYGATE_CONFIG@\n", &p).is_err());
        // Missing or doubled.
        assert!(render_envoy_config("v: 1\n", &p).is_err());
        assert!(render_envoy_config("  @KEYGATE_CONFIG@\n  @KEYGATE_CONFIG@\n", &p).is_err());
        // Unknown placeholder.
        assert!(render_envoy_config("x: @NOPE@\n  @KEYGATE_CONFIG@\n", &p).is_err());
        // Comments are left alone.
        let out =
            render_envoy_config("# @NOPE@ @KEYGATE_CONFIG@\n  @KEYGATE_CONFIG@\n", &p).unwrap();
        assert_eq!(out, "# @NOPE@ @KEYGATE_CONFIG@\n  {}\n");
        // An e-mail-like token is not a placeholder.
        assert!(render_envoy_config("x: a@b.c @ 1\n  @KEYGATE_CONFIG@\n", &p).is_ok());
        assert!(render_envoy_config("x: 1\n", &EnvoyConfigParams { node_id: "", ..p }).is_err());
    }
}
