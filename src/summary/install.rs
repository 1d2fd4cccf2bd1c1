//! Installing a fetched summary without a gap between its snapshot and the feed.
//!
//! Invariant: an install is in exactly one of [`Install::Idle`], [`Install::Requested`],
//! [`Install::Filled`] (the staging record, one per Envoy), and a key id reported by any page
//! published after the staging record became `Requested` reaches the summary being installed:
//! - `Requested{id, pending}` is written *before* the request is sent (and only once the feed
//!   has synced): a page published before that was answered by the store before the request
//!   was, so the snapshot (built at a revision at least the store's when it answers) covers it;
//! - while `Requested`, each published page appends its key ids to `pending` (bounded by
//!   [`MAX_PENDING`]: overflow abandons the install, retried later);
//! - the answer's chunks are written into the free slot, tagged with the install id; then one
//!   CAS turns `Requested{id, pending}` into `Filled{id, meta}` and hands `pending` to the
//!   installer, which inserts it (a page that lost that race re-reads and finds `Filled`);
//! - while `Filled`, pages insert directly into its chunks;
//! - activation writes the meta inside a CAS loop that re-reads the staging record (still
//!   `Filled{id}`) after reading the meta; a reset abandons the install (staging first) and
//!   then makes the summary none (meta second), so an activation either sees the reset or is
//!   overwritten by it;
//! - then `Idle`, and the other slot's chunks of older installs are emptied.
//!
//! Pages add to the staging record first and to the active summary second ([`add`]): a page
//! that finds `Idle` after an activation then reads the new meta.
//!
//! One worker per Envoy fetches: `Requested` and `Filled` are a lease until their deadline;
//! after it another worker may start a new install (the old one's CASes then fail).

use keygate_protocol::summary::{self, Header, HEADER_BYTES};
use keygate_protocol::KeyId;

use super::{chunk_value, insert, tag, Active, Meta, CHUNK_BLOCKS};
use crate::host::{CallResponse, Host};
use crate::shared::{self, Names, Reader, Record, Writer};

/// Most key ids a page may add to an install in flight (32 bytes each in the staging record).
pub const MAX_PENDING: usize = 4096;
/// The first retry after a failed fetch; doubled per failure in a row.
pub const RETRY_MIN_MS: u64 = 1000;
/// The longest wait between two fetches that fail.
pub const RETRY_MAX_MS: u64 = 60_000;
/// The installer checks it still owns the install once per this many chunks written.
const CHECK_EVERY_CHUNKS: u32 = 64;

/// The staging record: the install in progress and the fetch schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staging {
    /// The next install's id (ids only grow; the first is the wall clock's ms).
    pub next_id: u64,
    /// No fetch starts before this (backoff after failures).
    pub due_ms: u64,
    /// Fetches failed in a row.
    pub failures: u32,
    /// The slot of the last install requested.
    pub last_slot: u8,
    pub install: Install,
}

/// Where the install stands (see the module's invariant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Install {
    Idle,
    /// Sent; `pending`: key ids published since.
    Requested {
        id: u64,
        slot: u8,
        deadline_ms: u64,
        pending: Vec<KeyId>,
    },
    /// Its chunks written: pages insert into them directly.
    Filled {
        id: u64,
        deadline_ms: u64,
        meta: Meta,
    },
}

impl Staging {
    fn new(now: u64) -> Staging {
        Staging {
            next_id: now.max(1),
            due_ms: 0,
            failures: 0,
            last_slot: 1,
            install: Install::Idle,
        }
    }

    /// The install in progress, if its lease runs.
    fn busy(&self, now: u64) -> bool {
        match &self.install {
            Install::Idle => false,
            Install::Requested { deadline_ms, .. } | Install::Filled { deadline_ms, .. } => {
                now < *deadline_ms
            }
        }
    }

    fn id(&self) -> Option<u64> {
        match &self.install {
            Install::Idle => None,
            Install::Requested { id, .. } | Install::Filled { id, .. } => Some(*id),
        }
    }

    /// Gives the install up; the next fetch after a backoff.
    fn fail(&mut self, now: u64) {
        self.install = Install::Idle;
        self.failures = self.failures.saturating_add(1);
        self.due_ms = now.saturating_add(backoff_ms(self.failures));
    }
}

/// The wait after `failures` failed fetches in a row.
pub fn backoff_ms(failures: u32) -> u64 {
    let doublings = failures.saturating_sub(1).min(16);
    RETRY_MIN_MS
        .saturating_mul(1u64 << doublings)
        .min(RETRY_MAX_MS)
}

impl Record for Staging {
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u64(self.next_id);
        w.u64(self.due_ms);
        w.u32(self.failures);
        w.u8(self.last_slot);
        match &self.install {
            Install::Idle => w.u8(0),
            Install::Requested {
                id,
                slot,
                deadline_ms,
                pending,
            } => {
                w.u8(1);
                w.u64(*id);
                w.u8(*slot);
                w.u64(*deadline_ms);
                w.u32(u32::try_from(pending.len()).unwrap_or(0));
                pending.iter().for_each(|k| w.key(k));
            }
            Install::Filled {
                id,
                deadline_ms,
                meta,
            } => {
                w.u8(2);
                w.u64(*id);
                w.u64(*deadline_ms);
                meta.write(&mut w);
            }
        }
        w.finish()
    }

    fn decode(bytes: &[u8]) -> Option<Staging> {
        let mut r = Reader::new(bytes)?;
        let mut s = Staging {
            next_id: r.u64()?,
            due_ms: r.u64()?,
            failures: r.u32()?,
            last_slot: r.u8().filter(|s| *s <= 1)?,
            install: Install::Idle,
        };
        s.install = match r.u8()? {
            0 => Install::Idle,
            1 => read_requested(&mut r)?,
            2 => Install::Filled {
                id: r.u64()?,
                deadline_ms: r.u64()?,
                meta: Meta::read(&mut r)?,
            },
            _ => return None,
        };
        r.end()?;
        Some(s)
    }
}

fn read_requested(r: &mut Reader<'_>) -> Option<Install> {
    let (id, slot, deadline_ms) = (r.u64()?, r.u8().filter(|s| *s <= 1)?, r.u64()?);
    let n = usize::try_from(r.u32()?).ok()?;
    if n > MAX_PENDING {
        return None;
    }
    let pending = (0..n).map(|_| r.key()).collect::<Option<Vec<KeyId>>>()?;
    Some(Install::Requested {
        id,
        slot,
        deadline_ms,
        pending,
    })
}

fn read<H: Host + ?Sized>(host: &H, names: &Names) -> Option<Staging> {
    shared::read::<H, Staging>(host, &names.summary_staging).0
}

/// When a summary is wanted (the caller checks the fetch schedule and the feed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Want {
    /// Refetch when the estimated false-positive rate passes this...
    pub max_false_positive_rate: f64,
    /// ...at most once per this (from the fetch of the active summary).
    pub refetch_min_interval_ms: u64,
}

/// Whether to fetch a summary: none is active, or the active one's estimated false-positive
/// rate drifted past the limit and it is old enough.
pub fn wanted(active: Option<&Meta>, now: u64, want: &Want) -> bool {
    active.is_none_or(|m| {
        m.false_positive_rate() > want.max_false_positive_rate
            && now >= m.fetched_ms.saturating_add(want.refetch_min_interval_ms)
    })
}

/// An install this worker started: its id and the slot its chunks go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub id: u64,
    pub slot: u8,
}

/// Takes the install lease (until `now + lease_ms`) if no install runs and a fetch is due;
/// the staging record is then `Requested`: send the request.
pub fn try_start<H: Host + ?Sized>(
    host: &H,
    names: &Names,
    now: u64,
    lease_ms: u64,
) -> Option<Ticket> {
    let active = super::active(host, names);
    let written = shared::update(host, &names.summary_staging, |s: Option<Staging>| {
        let mut s = s.unwrap_or_else(|| Staging::new(now));
        if now < s.due_ms || s.busy(now) {
            return None;
        }
        let slot = active.map_or(s.last_slot, |m| m.slot) ^ 1;
        let id = s.next_id;
        s.next_id = id.saturating_add(1);
        s.last_slot = slot;
        s.install = Install::Requested {
            id,
            slot,
            deadline_ms: now.saturating_add(lease_ms),
            pending: Vec::new(),
        };
        Some(s)
    });
    match written {
        Ok(Some(Staging {
            install: Install::Requested { id, slot, .. },
            ..
        })) => Some(Ticket { id, slot }),
        _ => None,
    }
}

/// The install `id` failed (fetch error, refused body, lost a race): back to `Idle` with a
/// backoff if it is still the one in progress. The wait before the next try, or `None` when
/// another install (or a reset) had replaced it.
pub fn fail<H: Host + ?Sized>(host: &H, names: &Names, id: u64, now: u64) -> Option<u64> {
    let written = shared::update(host, &names.summary_staging, |s: Option<Staging>| {
        let mut s = s.filter(|s| s.id() == Some(id))?;
        s.fail(now);
        Some(s)
    });
    match written {
        Ok(Some(s)) => Some(s.due_ms.saturating_sub(now)),
        _ => None,
    }
}

/// Why a fetched summary is not installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// No response (timeout, reset, no host).
    NoResponse,
    /// Not 200 (404: the store serves no summary).
    Status(u16),
    /// Larger than `summary.max_bytes` (+ the header).
    TooLarge,
    /// Not a summary.
    Malformed(summary::SummaryError),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::NoResponse => write!(f, "no response"),
            Refused::Status(404) => write!(f, "the key store serves no summary (404)"),
            Refused::Status(s) => write!(f, "status {s}"),
            Refused::TooLarge => write!(f, "larger than summary.max_bytes"),
            Refused::Malformed(e) => write!(f, "{e}"),
        }
    }
}

/// The response's body limit for a summary of at most `max_bytes` bytes of blocks.
pub fn body_limit(max_bytes: usize) -> usize {
    max_bytes.saturating_add(HEADER_BYTES)
}

/// Reads a fetch's answer: the summary's header and blocks, or why it is refused.
pub fn parse(response: &CallResponse, max_bytes: usize) -> Result<(Header, &[u8]), Refused> {
    match response.status {
        None => return Err(Refused::NoResponse),
        Some(200) => {}
        Some(s) => return Err(Refused::Status(s)),
    }
    let body = response.body.as_deref().ok_or(Refused::TooLarge)?;
    if body.len() > body_limit(max_bytes) {
        return Err(Refused::TooLarge);
    }
    summary::decode(body).map_err(Refused::Malformed)
}

/// The install was given up (a reset, a takeover or an overflow replaced it, or shared data
/// could not be written): nothing of it is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abandoned;

/// Installs a fetched summary (see the module's invariant) and empties the other slot; its
/// meta as activated.
pub fn install<H: Host + ?Sized>(
    host: &H,
    names: &Names,
    ticket: Ticket,
    header: &Header,
    blocks: &[u8],
    lease_ms: u64,
) -> Result<Meta, Abandoned> {
    let now = host.now_ms();
    let meta = Meta::of(header, ticket.id, ticket.slot, now);
    write_chunks(host, names, &meta, blocks)?;
    let pending = fill(host, names, &meta, now.saturating_add(lease_ms))?;
    add_to_filled(host, names, &meta, &pending)?;
    let active = activate(host, names, ticket.id)?;
    let _ = shared::update(host, &names.summary_staging, |s: Option<Staging>| {
        let mut s = s.filter(|s| s.id() == Some(ticket.id))?;
        s.install = Install::Idle;
        s.failures = 0;
        s.due_ms = 0;
        Some(s)
    });
    empty_slot(host, names, ticket.slot ^ 1, ticket.id);
    Ok(active)
}

/// Writes the blocks into the ticket's slot, tagged with its id; gives up when the install
/// is no longer this one.
fn write_chunks<H: Host + ?Sized>(
    host: &H,
    names: &Names,
    meta: &Meta,
    blocks: &[u8],
) -> Result<(), Abandoned> {
    let chunk_bytes = usize::try_from(CHUNK_BLOCKS)
        .unwrap_or(1)
        .saturating_mul(summary::BLOCK_BYTES);
    for (index, chunk) in (0u32..).zip(blocks.chunks(chunk_bytes)) {
        if index % CHECK_EVERY_CHUNKS == 0
            && read(host, names).and_then(|s| s.id()) != Some(meta.id)
        {
            return Err(Abandoned);
        }
        let name = names.summary_chunk(meta.slot, index);
        host.set_shared(&name, &chunk_value(meta.id, chunk), None)
            .map_err(|_| Abandoned)?;
    }
    Ok(())
}

/// `Requested{id, pending}` → `Filled{id, meta}`; the pending key ids.
fn fill<H: Host + ?Sized>(
    host: &H,
    names: &Names,
    meta: &Meta,
    deadline_ms: u64,
) -> Result<Vec<KeyId>, Abandoned> {
    let mut taken = Vec::new();
    let written = shared::update(host, &names.summary_staging, |s: Option<Staging>| {
        let mut s = s?;
        let Install::Requested { id, pending, .. } = &s.install else {
            return None;
        };
        if *id != meta.id {
            return None;
        }
        taken.clone_from(pending);
        s.install = Install::Filled {
            id: meta.id,
            deadline_ms,
            meta: *meta,
        };
        Some(s)
    });
    match written {
        Ok(Some(_)) => Ok(taken),
        _ => Err(Abandoned),
    }
}

/// Inserts key ids into the chunks of the install `meta` describes, then counts them in the
/// staging record's meta (if it is still `Filled` with it).
fn add_to_filled<H: Host + ?Sized>(
    host: &H,
    names: &Names,
    meta: &Meta,
    keys: &[KeyId],
) -> Result<(), Abandoned> {
    if keys.is_empty() {
        return Ok(());
    }
    let new_bits = insert(host, names, meta, keys).map_err(|_| Abandoned)?;
    let added = u64::try_from(keys.len()).unwrap_or(u64::MAX);
    let _ = shared::update(host, &names.summary_staging, |s: Option<Staging>| {
        let mut s = s?;
        let Install::Filled { id, meta: m, .. } = &mut s.install else {
            return None;
        };
        if *id != meta.id {
            return None;
        }
        m.keys = m.keys.saturating_add(added);
        m.bits_set = m.bits_set.saturating_add(new_bits);
        Some(s)
    });
    Ok(())
}

/// Makes the install `id` active if the staging record is still `Filled` with it (read after
/// the meta, inside the meta's CAS loop).
fn activate<H: Host + ?Sized>(host: &H, names: &Names, id: u64) -> Result<Meta, Abandoned> {
    let written = shared::update(host, &names.summary, |_: Option<Active>| {
        match read(host, names)?.install {
            Install::Filled { id: i, meta, .. } if i == id => Some(Active(Some(meta))),
            _ => None,
        }
    });
    match written {
        Ok(Some(Active(Some(meta)))) => Ok(meta),
        _ => Err(Abandoned),
    }
}

/// Empties the chunks of `slot` written by installs older than `id` (a newer install's are
/// left alone: the CAS from the read keeps one written meanwhile), up to the first missing
/// or empty one.
fn empty_slot<H: Host + ?Sized>(host: &H, names: &Names, slot: u8, id: u64) {
    for index in 0u32.. {
        let name = names.summary_chunk(slot, index);
        let (value, cas) = host.get_shared(&name);
        let Some(old) = value.as_deref().and_then(tag) else {
            return;
        };
        if old < id && host.set_shared(&name, &[], cas).is_err() {
            return;
        }
    }
}

/// A page published `keys`: they reach the install in progress (pending, or its chunks),
/// then the active summary. An install that could not take them is abandoned; a summary
/// that could not take them is dropped.
pub fn add<H: Host + ?Sized>(host: &H, names: &Names, keys: &[KeyId]) {
    if keys.is_empty() {
        return;
    }
    let now = host.now_ms();
    let mut filled = None;
    let mut overflow = false;
    let written = shared::update(host, &names.summary_staging, |s: Option<Staging>| {
        (filled, overflow) = (None, false);
        let mut s = s?;
        match &mut s.install {
            Install::Idle => return None,
            Install::Filled { meta, .. } => {
                filled = Some(*meta);
                return None;
            }
            Install::Requested { pending, .. } => {
                if pending.len().saturating_add(keys.len()) > MAX_PENDING {
                    overflow = true;
                    s.fail(now);
                } else {
                    pending.extend_from_slice(keys);
                }
            }
        }
        Some(s)
    });
    if overflow {
        log::warn!("key summary install abandoned: over {MAX_PENDING} key ids arrived meanwhile");
    }
    if written.is_err() {
        abandon_any(host, names, now);
    }
    if let Some(meta) = filled {
        if add_to_filled(host, names, &meta, keys).is_err() {
            let _ = fail(host, names, meta.id, now);
        }
    }
    super::add_to_active(host, names, keys);
}

/// The staging record could not be updated: whatever install runs may miss a page.
fn abandon_any<H: Host + ?Sized>(host: &H, names: &Names, now: u64) {
    let mut s = read(host, names).unwrap_or_else(|| Staging::new(now));
    s.fail(now);
    let _ = host.set_shared(&names.summary_staging, &s.encode(), None);
}

/// A feed reset: the active summary and any install in progress may miss keys created in the
/// gap. The install is abandoned first, then the summary made none; a fetch is due at once.
pub fn reset<H: Host + ?Sized>(host: &H, names: &Names) {
    let now = host.now_ms();
    let written = shared::update(host, &names.summary_staging, |s: Option<Staging>| {
        let mut s = s.unwrap_or_else(|| Staging::new(now));
        s.install = Install::Idle;
        s.due_ms = 0;
        Some(s)
    });
    if written.is_err() {
        abandon_any(host, names, now);
    }
    if super::drop_active(host, names).is_err() {
        log::warn!("could not drop the key summary after a feed reset");
    }
}
