//! A temporary directory removed on drop (kept when `KEYGATE_KEEP_TMP` is set, for debugging),
//! made by the `tempfile` crate.

use std::path::Path;

use crate::error::Result;

/// A fresh directory under the system temp dir, removed (with its contents) on drop.
#[derive(Debug)]
pub struct TempDir {
    /// `None` once kept.
    dir: Option<tempfile::TempDir>,
}

impl TempDir {
    /// Creates `<tmp>/keygate-<prefix>-<random>`.
    pub fn new(prefix: &str) -> Result<TempDir> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("keygate-{prefix}-"))
            .tempdir()
            .map_err(|e| crate::Error::msg(format!("creating a temp dir for {prefix}: {e}")))?;
        Ok(TempDir { dir: Some(dir) })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir
            .as_ref()
            .map_or(Path::new(""), tempfile::TempDir::path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("KEYGATE_KEEP_TMP").is_some() {
            if let Some(dir) = self.dir.take() {
                let _ = dir.keep();
            }
        }
    }
}
