//! What a command takes from the person at the keyboard beyond the API's fields: durations
//! (`1h`, `30d`, or plain seconds), consent to a destructive command, and the `--key-out` file
//! a new key is written to. Invariants: nothing is revoked without `--yes` or a "y" typed on a
//! terminal; the `--key-out` file is created (mode 0600, never replacing a file) before the
//! key is made, so a key is never made that cannot be kept, and removed again if the call fails.

use crate::client::Error;
use serde_json::Value;
use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Seconds of a duration: plain seconds (`3600`) or humantime's units (`90s`, `15m`, `1h`,
/// `30d`, `1h30m`).
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|e| format!("{e}"));
    }
    humantime::parse_duration(text)
        .map(|d| d.as_secs())
        .map_err(|e| format!("{e} (e.g. 90s, 15m, 1h, 30d, or plain seconds)"))
}

/// RFC 3339 time `seconds` from now.
pub fn from_now(seconds: u64) -> Result<String, Error> {
    let at = SystemTime::now()
        .checked_add(Duration::from_secs(seconds))
        .ok_or_else(|| Error::Usage(format!("--expires-in: {seconds} s from now is too far")))?;
    Ok(humantime::format_rfc3339_seconds(at).to_string())
}

/// Goes on when `yes`, or when the person at the terminal answers "y" to revoking `what`.
pub fn confirm(what: &str, yes: bool) -> Result<(), Error> {
    if yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(Error::Usage(format!(
            "this revokes {what}: add --yes to do it (standard input is not a terminal to ask on)"
        )));
    }
    eprint!("Revoke {what}? This cannot be undone. [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Error::Usage(format!("cannot read the answer: {e}")))?;
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err(Error::Usage("not confirmed: nothing was revoked".into())),
    }
}

/// The `--key-out` file, created empty before the call; removed on drop unless written.
pub struct KeyOut {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl KeyOut {
    /// Creates `path` (mode 0600); an existing file is an error, and is left alone.
    pub fn create(path: &Path) -> Result<KeyOut, Error> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::Usage(format!("--key-out {}: {e}", path.display())))?;
        Ok(KeyOut {
            path: path.to_owned(),
            file: Some(file),
        })
    }

    /// Moves the answer's `user_key` into the file (a line of its own).
    pub fn write(mut self, answer: &mut Value) -> Result<(), Error> {
        let key = answer
            .as_object_mut()
            .and_then(|o| o.remove("user_key"))
            .and_then(|k| k.as_str().map(str::to_owned))
            .ok_or_else(|| Error::Transport("the answer holds no user_key".into()))?;
        let mut file = self
            .file
            .take()
            .ok_or_else(|| Error::Usage("--key-out".into()))?;
        let path = self.path.display().to_string();
        file.write_all(format!("{key}\n").as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| {
                Error::Transport(format!(
                    "--key-out {path}: {e}: the new key is lost; revoke it"
                ))
            })?;
        eprintln!("keygatectl: the new key is in {path} (mode 0600)");
        Ok(())
    }
}

impl Drop for KeyOut {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
