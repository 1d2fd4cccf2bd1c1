//! The key summary in shared data (helper `fl`'s module; this is the stub the design allows
//! until it lands: no summary, so every miss is as without one).

/// What the key summary says about a key id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// No summary is installed: behave as without one.
    NoSummary,
    /// Not in the summary: the store did not have the key at the summary's revision, nor did
    /// any feed page since report it.
    Absent,
    /// In the summary (or a false positive): the store may have the key.
    MayExist,
}
