//! The key lifecycle: several named keys per user, expiry, rotation with a grace period,
//! last use, claims and the audit trail. Jobs written once against [`Db`], like the others.
//!
//! Invariants:
//! - a listing never carries a key or a full key id: a key is named by its *key reference*
//!   (the first [`KEY_REF_LEN`] hex characters of its key id) and shown with its hint;
//! - every admin write appends one audit row in its own transaction, naming the acting key by
//!   its key reference, with the `before` and `after` values of what it changed; audit rows
//!   are never pruned (the change log's retention does not apply to them) except refusal
//!   entries (see `admin.rs`), and never hold a key;
//! - whatever changes a lookup answer (expiry, claims) appends a change-log row, so filters
//!   drop their cached verdict.

use super::blocks::{
    apply_grant, insert_key, log_change, require_account, require_user, user_row, UserRow,
    KIND_CLAIMS, KIND_EXPIRY, KIND_REVOKED, KIND_ROTATED,
};
use super::engine::{first, texts, Arg, Db, Job, Row};
use super::error::StoreError;
use super::sql;
use crate::authority::{self, Caps, Grant};
use crate::keys::{KEY_PREFIX, ROOT_USER, SYSTEM_ACCOUNT};
use serde::{Serialize, Serializer};
use std::collections::BTreeMap;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Length of a key reference: the first characters of the key id (64 bits).
pub const KEY_REF_LEN: usize = 16;
/// The name of the keys made with a user (and of keys migrated from schema version 1).
pub const DEFAULT_KEY_NAME: &str = "default";
/// Most unrevoked, unexpired keys a user may hold when a key is added to it (keys in a
/// rotation's grace are unexpired, so they count).
pub const MAX_KEYS_PER_USER: usize = 100;
/// Most keys a user may get (created, rotated, imported) in [`CREATION_WINDOW_S`] from keys
/// other than root's (root's creations neither count nor are bounded): 20 in 10 minutes is
/// far above any redeploy cycle (a rotation a minute for a whole deploy), yet bounds a leaked
/// key's churn to 2,880 rows a day instead of one per request.
pub const MAX_KEY_CREATIONS: usize = 20;
/// The rolling window of [`MAX_KEY_CREATIONS`], in seconds.
pub const CREATION_WINDOW_S: i64 = 600;
/// Most audit entries in one page.
pub const MAX_AUDIT_PAGE: usize = 1000;

/// Claims: string names to string values.
pub type Claims = BTreeMap<String, String>;

// The OpenAPI schema of `Claims`, under that name (a type alias has no schema of its own).
/// Claims: names to string values (at most 16; the keystore README gives the rules for
/// names and values).
#[derive(utoipa::ToSchema)]
#[schema(as = Claims)]
#[allow(dead_code)] // a documentation type: never built
pub struct ClaimsDoc(BTreeMap<String, String>);

/// Who made an admin call: recorded in the audit trail and as a key's creator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Actor {
    pub account_id: String,
    pub user_id: String,
    /// The acting key's reference (the first 16 hex characters of its key id;
    /// never the key); `null` for the keystore's configuration, or an unknown key.
    #[serde(rename = "key")]
    pub key_ref: Option<String>,
}

/// The actor of what the keystore does at start-up from its configuration (root key).
pub const CONFIGURATION_USER: &str = "(configuration)";

impl Actor {
    /// The keystore's configuration, acting at start-up.
    pub fn configuration() -> Actor {
        Actor {
            account_id: crate::keys::SYSTEM_ACCOUNT.to_owned(),
            user_id: CONFIGURATION_USER.to_owned(),
            key_ref: None,
        }
    }

    /// `account/user`, as stored in `keys.created_by`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.account_id, self.user_id)
    }
}

/// A key to insert.
#[derive(Debug, Clone)]
pub struct KeySpec {
    pub key_id: String,
    pub name: String,
    /// The non-secret hint shown in listings (see [`hint`]).
    pub hint: Option<String>,
    pub expires_at: Option<i64>,
    pub claims: Option<Claims>,
    /// Asked (`None`: all that may be given), then granted; stored `NULL` only for the root key.
    pub capabilities: Option<Caps>,
}

impl KeySpec {
    /// A key with a name and nothing else.
    pub fn named(key_id: String, name: &str) -> KeySpec {
        KeySpec {
            key_id,
            name: name.to_owned(),
            hint: None,
            expires_at: None,
            claims: None,
            capabilities: None,
        }
    }
}

/// What a `PATCH` of a key changes: `None` leaves a field alone; `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct KeyPatch {
    pub name: Option<String>,
    pub expires_at: Option<Option<i64>>,
    pub claims: Option<Option<Claims>>,
    /// `Some(false)` disables the key, `Some(true)` enables it again.
    pub enabled: Option<bool>,
}

/// A key as listed: never the key, never its full key id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct KeyInfo {
    /// The key reference: the first 16 hex characters of the key id.
    #[serde(rename = "key")]
    pub key_ref: String,
    pub name: String,
    pub hint: Option<String>,
    #[serde(serialize_with = "ser_time")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    pub created_by: Option<String>,
    #[serde(serialize_with = "ser_opt_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<i64>,
    #[serde(serialize_with = "ser_opt_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<i64>,
    #[schema(value_type = crate::store::ClaimsDoc)]
    pub claims: Claims,
    /// `false` while the key is disabled (the lookup does not answer it).
    pub enabled: bool,
    /// What the key may do (within its user's role): `traffic`, `own_keys`, `account_admin`.
    #[schema(value_type = Vec<crate::api::CapabilityName>)]
    pub capabilities: Vec<&'static str>,
}

/// One audit-trail entry.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    #[serde(serialize_with = "ser_time")]
    #[schema(value_type = String, format = DateTime)]
    pub at: i64,
    pub actor: Actor,
    pub action: String,
    pub account_id: String,
    pub object: String,
    /// What the action changed (`before`/`after` of each field) or found; `null` when the
    /// action has nothing more to say.
    #[schema(value_type = Option<Object>)]
    pub detail: serde_json::Value,
}

/// A page of the audit trail; `more` when entries after the last one exist.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    pub more: bool,
}

/// The key reference of a key id.
pub fn key_ref(key_id: &str) -> &str {
    key_id.get(..KEY_REF_LEN).unwrap_or(key_id)
}

/// The hint of a raw key: `kg_...` (for minted keys) or `...`, then its last 4 characters.
pub fn hint(raw: &str) -> String {
    let tail = raw.get(raw.len().saturating_sub(4)..).unwrap_or_default();
    let head = if raw.starts_with(KEY_PREFIX) {
        KEY_PREFIX
    } else {
        ""
    };
    format!("{head}...{tail}")
}

/// Unix seconds as RFC 3339 (UTC), or the number itself if out of range.
pub fn rfc3339(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| secs.to_string())
}

/// Parses an RFC 3339 time (`field` names it in the error) into Unix seconds.
pub fn parse_rfc3339(field: &str, text: &str) -> Result<i64, String> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map(OffsetDateTime::unix_timestamp)
        .map_err(|e| format!("{field} must be an RFC 3339 time such as 2030-01-31T12:00:00Z ({e})"))
}

pub(crate) fn ser_time<S: Serializer>(secs: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*secs))
}

pub(crate) fn ser_opt_time<S: Serializer>(secs: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match secs {
        Some(secs) => s.serialize_str(&rfc3339(*secs)),
        None => s.serialize_none(),
    }
}

/// Checks the claims of one account or key with the rule the filter applies to lookup answers
/// ([`keygate_protocol::claims::check`]): at most 16; names of 1 to 64 characters of
/// `[A-Za-z0-9._-]`; values of 1 to 256 bytes of visible ASCII or inner spaces, without a
/// comma (they become header values, where a comma makes a list). The error names the claim.
pub fn validate_claims(claims: &Claims) -> Result<(), String> {
    keygate_protocol::claims::check(claims.iter().map(|(n, v)| (n.as_str(), v.as_str())))
        .map_err(|e| e.to_string())
}

/// Claims as stored: JSON text, or NULL for none.
pub(crate) fn claims_text(claims: Option<&Claims>) -> Result<Option<String>, StoreError> {
    match claims {
        Some(c) if !c.is_empty() => serde_json::to_string(c)
            .map(Some)
            .map_err(|e| StoreError::Internal(format!("cannot encode claims: {e}"))),
        _ => Ok(None),
    }
}

/// Stored claims (JSON text or NULL).
pub(crate) fn parse_claims(text: Option<String>) -> Result<Claims, StoreError> {
    match text {
        Some(t) => serde_json::from_str(&t)
            .map_err(|e| StoreError::Internal(format!("stored claims are not valid: {e}"))),
        None => Ok(Claims::new()),
    }
}

/// An audit row to append.
pub(crate) struct Audit<'a> {
    actor: &'a Actor,
    action: &'static str,
    account: &'a str,
    object: &'a str,
    detail: Option<serde_json::Value>,
}

impl<'a> Audit<'a> {
    pub(crate) fn new(
        actor: &'a Actor,
        action: &'static str,
        account: &'a str,
        object: &'a str,
    ) -> Audit<'a> {
        Audit {
            actor,
            action,
            account,
            object,
            detail: None,
        }
    }

    pub(crate) fn detail(mut self, detail: serde_json::Value) -> Audit<'a> {
        self.detail = Some(detail);
        self
    }

    pub(crate) async fn write<D: Db>(self, db: &mut D, at: i64) -> Result<(), StoreError> {
        let detail = self.detail.map(|d| d.to_string());
        db.exec(
            sql::INSERT_AUDIT,
            &[
                Arg::Int(at),
                Arg::Text(&self.actor.account_id),
                Arg::Text(&self.actor.user_id),
                Arg::Text(self.action),
                Arg::Text(self.account),
                Arg::Text(self.object),
                Arg::OptText(detail.as_deref()),
                Arg::OptText(self.actor.key_ref.as_deref()),
            ],
        )
        .await?;
        Ok(())
    }
}

fn key_info(row: &Row, role: &str) -> Result<KeyInfo, StoreError> {
    Ok(KeyInfo {
        capabilities: authority::effective(row.opt_text(9)?.as_deref(), role).names(),
        key_ref: key_ref(&row.text(0)?).to_owned(),
        name: row.text(1)?,
        hint: row.opt_text(2)?,
        created_at: row.int(3)?,
        created_by: row.opt_text(4)?,
        expires_at: row.opt_int(5)?,
        last_used_at: row.opt_int(6)?,
        claims: parse_claims(row.opt_text(7)?)?,
        enabled: row.opt_int(8)?.is_none(),
    })
}

/// The unrevoked keys of an active user, oldest first.
async fn list_keys<D: Db>(
    db: &mut D,
    account: &str,
    user: &str,
) -> Result<Vec<KeyInfo>, StoreError> {
    let role = require_user(db, account, user).await?;
    let rows = db
        .rows(sql::LIST_KEYS, &[Arg::Text(account), Arg::Text(user)])
        .await?;
    let mut keys = rows
        .iter()
        .map(|r| key_info(r, &role))
        .collect::<Result<Vec<_>, _>>()?;
    keys.sort_by(|a, b| (a.created_at, &a.key_ref).cmp(&(b.created_at, &b.key_ref)));
    Ok(keys)
}

/// One unrevoked key of an active user, found by its key reference.
struct Found {
    key_id: String,
    name: String,
    expires_at: Option<i64>,
    claims: Option<String>,
    disabled_at: Option<i64>,
    capabilities: Caps,
    user: UserRow,
}

async fn find_key<D: Db>(db: &mut D, target: &Target) -> Result<Found, StoreError> {
    let user = user_row(db, &target.account, &target.user).await?;
    let args = [
        Arg::Text(&target.account),
        Arg::Text(&target.user),
        Arg::Text(&target.key_ref),
    ];
    let rows = db.rows(sql::KEYS_BY_REF, &args).await?;
    match rows.as_slice() {
        // Two keys of one user sharing 64 bits of key id: refused rather than guessed.
        [row] => Ok(Found {
            key_id: row.text(0)?,
            name: row.text(1)?,
            expires_at: row.opt_int(2)?,
            claims: row.opt_text(3)?,
            disabled_at: row.opt_int(4)?,
            capabilities: authority::effective(row.opt_text(5)?.as_deref(), &user.role),
            user,
        }),
        _ => Err(StoreError::KeyNotFound {
            account: target.account.clone(),
            user: target.user.clone(),
            key_ref: target.key_ref.clone(),
        }),
    }
}

/// A key of a user, by key reference.
#[derive(Debug, Clone)]
pub struct Target {
    pub account: String,
    pub user: String,
    pub key_ref: String,
}

impl Target {
    fn object(&self) -> String {
        format!("{}/{}/keys/{}", self.account, self.user, self.key_ref)
    }
}

pub(crate) struct ListKeys {
    pub account: String,
    pub user: String,
}

impl Job for ListKeys {
    type Out = Vec<KeyInfo>;
    const SNAPSHOT: bool = true;
    async fn run<D: Db>(self, db: &mut D, _at: i64) -> Result<Vec<KeyInfo>, StoreError> {
        list_keys(db, &self.account, &self.user).await
    }
}

/// Refuses a new key for a user who already holds [`MAX_KEYS_PER_USER`] live keys.
pub(crate) async fn check_room<D: Db>(
    db: &mut D,
    account: &str,
    user: &str,
    at: i64,
) -> Result<(), StoreError> {
    let args = [Arg::Text(account), Arg::Text(user), Arg::Int(at)];
    let live = match first(db, sql::COUNT_LIVE_KEYS, &args).await? {
        Some(row) => row.int(0)?,
        None => 0,
    };
    if usize::try_from(live).unwrap_or(usize::MAX) >= MAX_KEYS_PER_USER {
        return Err(StoreError::TooManyKeys {
            user: user.to_owned(),
            max: MAX_KEYS_PER_USER,
        });
    }
    Ok(())
}

/// Refuses a new key for a user who got [`MAX_KEY_CREATIONS`] in the last
/// [`CREATION_WINDOW_S`], unless the root key asks.
pub(crate) async fn check_creation_rate<D: Db>(
    db: &mut D,
    account: &str,
    user: &str,
    caller: &Grant,
    at: i64,
) -> Result<(), StoreError> {
    if caller.root {
        return Ok(());
    }
    let since = at.saturating_sub(CREATION_WINDOW_S);
    let root = format!("{SYSTEM_ACCOUNT}/{ROOT_USER}");
    let args = [
        Arg::Text(account),
        Arg::Text(user),
        Arg::Int(since),
        Arg::Text(&root),
    ];
    let Some(row) = first(db, sql::RECENT_KEYS, &args).await? else {
        return Ok(());
    };
    let (count, oldest) = (row.int(0)?, row.opt_int(1)?);
    if usize::try_from(count).unwrap_or(usize::MAX) < MAX_KEY_CREATIONS {
        return Ok(());
    }
    let frees_at = oldest.unwrap_or(at).saturating_add(CREATION_WINDOW_S);
    Err(StoreError::TooManyCreations {
        user: user.to_owned(),
        max: MAX_KEY_CREATIONS,
        window_s: CREATION_WINDOW_S,
        retry_after: frees_at.saturating_sub(at).max(1),
    })
}

/// Leaves a key kept alive by a rotation's grace only what [`authority::in_grace`] allows.
async fn demote_key<D: Db>(db: &mut D, key_id: &str, caps: Caps) -> Result<(), StoreError> {
    let text = authority::in_grace(caps).to_text();
    db.exec(sql::SET_KEY_CAPS, &[Arg::Text(&text), Arg::Text(key_id)])
        .await?;
    Ok(())
}

/// Demotes every unrevoked key of a user (a rotation of the user with a grace).
pub(crate) async fn demote_to_grace<D: Db>(
    db: &mut D,
    account: &str,
    user: &str,
) -> Result<(), StoreError> {
    let role = require_user(db, account, user).await?;
    let rows = db
        .rows(sql::ACTIVE_KEY_CAPS, &[Arg::Text(account), Arg::Text(user)])
        .await?;
    for row in rows {
        let caps = authority::effective(row.opt_text(1)?.as_deref(), &role);
        demote_key(db, &row.text(0)?, caps).await?;
    }
    Ok(())
}

pub(crate) struct CreateKey {
    pub actor: Actor,
    pub grant: Grant,
    pub account: String,
    pub user: String,
    pub key: KeySpec,
}

impl Job for CreateKey {
    type Out = KeyInfo;
    async fn run<D: Db>(mut self, db: &mut D, at: i64) -> Result<KeyInfo, StoreError> {
        let (account, user) = (self.account.as_str(), self.user.as_str());
        let row = user_row(db, account, user).await?;
        apply_grant(&mut self.key, &self.grant, row.target(), None)?;
        check_room(db, account, user, at).await?;
        check_creation_rate(db, account, user, &self.grant, at).await?;
        insert_key(db, &self.key, account, user, Some(&self.actor), at).await?;
        let reference = key_ref(&self.key.key_id).to_owned();
        let object = format!("{account}/{user}/keys/{reference}");
        let detail = serde_json::json!({
            "name": self.key.name, "expires_at": self.key.expires_at.map(rfc3339)
        });
        let entry = Audit::new(&self.actor, "key.create", account, &object);
        entry.detail(detail).write(db, at).await?;
        listed(db, account, user, &reference).await
    }
}

/// The listing entry of one key.
async fn listed<D: Db>(
    db: &mut D,
    account: &str,
    user: &str,
    reference: &str,
) -> Result<KeyInfo, StoreError> {
    list_keys(db, account, user)
        .await?
        .into_iter()
        .find(|k| k.key_ref == reference)
        .ok_or_else(|| StoreError::Internal("a key just written is not listed".into()))
}

pub(crate) struct UpdateKey {
    pub actor: Actor,
    pub grant: Grant,
    pub target: Target,
    pub patch: KeyPatch,
}

/// `{"before": .., "after": ..}`: an audit detail's record of one field of a change.
pub(crate) fn change<T: Serialize>(before: T, after: T) -> serde_json::Value {
    serde_json::json!({ "before": before, "after": after })
}

impl Job for UpdateKey {
    type Out = KeyInfo;
    async fn run<D: Db>(self, db: &mut D, at: i64) -> Result<KeyInfo, StoreError> {
        let found = find_key(db, &self.target).await?;
        let id = found.key_id.as_str();
        let mut detail = serde_json::Map::new();
        if let Some(name) = &self.patch.name {
            db.exec(sql::SET_KEY_NAME, &[Arg::Text(name), Arg::Text(id)])
                .await?;
            detail.insert("name".into(), change(&found.name, name));
        }
        if let Some(asked) = self.patch.expires_at {
            let expires_at = authority::cap_expiry(&self.grant, None, Some(asked))
                .map_err(StoreError::Refused)?;
            if expires_at != found.expires_at {
                let args = [Arg::OptInt(expires_at), Arg::Text(id)];
                db.exec(sql::SET_KEY_EXPIRY, &args).await?;
                log_change(db, id, KIND_EXPIRY, at).await?;
            }
            let times = (found.expires_at.map(rfc3339), expires_at.map(rfc3339));
            detail.insert("expires_at".into(), change(times.0, times.1));
        }
        if let Some(claims) = &self.patch.claims {
            let text = claims_text(claims.as_ref())?;
            if text != found.claims {
                let args = [Arg::OptText(text.as_deref()), Arg::Text(id)];
                db.exec(sql::SET_KEY_CLAIMS, &args).await?;
                log_change(db, id, KIND_CLAIMS, at).await?;
            }
            let before = parse_claims(found.claims.clone())?;
            detail.insert(
                "claims".into(),
                change(before, claims.clone().unwrap_or_default()),
            );
        }
        if let Some(enabled) = self.patch.enabled {
            let was = found.disabled_at.is_none();
            if enabled != was {
                let disabled_at = (!enabled).then_some(at);
                db.exec(
                    sql::SET_KEY_DISABLED,
                    &[Arg::OptInt(disabled_at), Arg::Text(id)],
                )
                .await?;
                log_change(db, id, super::admin::enabled_kind(enabled), at).await?;
            }
            detail.insert("enabled".into(), change(was, enabled));
        }
        let (t, object) = (&self.target, self.target.object());
        let entry = Audit::new(&self.actor, "key.update", &t.account, &object);
        entry.detail(detail.into()).write(db, at).await?;
        listed(db, &t.account, &t.user, &t.key_ref).await
    }
}

pub(crate) struct RevokeKey {
    pub actor: Actor,
    pub target: Target,
}

impl Job for RevokeKey {
    type Out = String;
    async fn run<D: Db>(self, db: &mut D, at: i64) -> Result<String, StoreError> {
        let found = find_key(db, &self.target).await?;
        let id = found.key_id.as_str();
        db.exec(sql::REVOKE_KEY, &[Arg::Int(at), Arg::Text(id)])
            .await?;
        log_change(db, id, KIND_REVOKED, at).await?;
        let object = self.target.object();
        let entry = Audit::new(&self.actor, "key.revoke", &self.target.account, &object);
        entry.write(db, at).await?;
        Ok(found.key_id)
    }
}

/// Rotates one key: the new key takes the old one's name and claims; the old one is revoked
/// (grace 0) or expires after the grace (or earlier, if it already expires earlier).
pub(crate) struct RotateOne {
    pub actor: Actor,
    pub grant: Grant,
    pub target: Target,
    pub key: KeySpec,
    pub grace_s: i64,
}

impl Job for RotateOne {
    /// The new key, and when the old one stops being valid.
    type Out = (KeyInfo, i64);
    async fn run<D: Db>(mut self, db: &mut D, at: i64) -> Result<(KeyInfo, i64), StoreError> {
        let found = find_key(db, &self.target).await?;
        let replaced = authority::Replaced {
            caps: found.capabilities,
            claims: Some(parse_claims(found.claims.clone())?).filter(|c| !c.is_empty()),
        };
        apply_grant(
            &mut self.key,
            &self.grant,
            found.user.target(),
            Some(&replaced),
        )?;
        let t = &self.target;
        check_creation_rate(db, &t.account, &t.user, &self.grant, at).await?;
        let old = found.key_id.as_str();
        let until = at.saturating_add(self.grace_s);
        let valid_until = if self.grace_s == 0 {
            db.exec(sql::REVOKE_KEY, &[Arg::Int(at), Arg::Text(old)])
                .await?;
            log_change(db, old, KIND_ROTATED, at).await?;
            at
        } else if found.expires_at.is_none_or(|t| t > until) {
            db.exec(sql::SET_KEY_EXPIRY, &[Arg::Int(until), Arg::Text(old)])
                .await?;
            log_change(db, old, KIND_EXPIRY, at).await?;
            until
        } else {
            found.expires_at.unwrap_or(until)
        };
        if self.grace_s > 0 {
            demote_key(db, old, found.capabilities).await?;
        }
        check_room(db, &t.account, &t.user, at).await?;
        self.key.name = found.name;
        insert_key(db, &self.key, &t.account, &t.user, Some(&self.actor), at).await?;
        let reference = key_ref(&self.key.key_id).to_owned();
        let detail = serde_json::json!({
            "new_key": reference,
            "grace_s": self.grace_s,
            "expires_at": change(found.expires_at.map(rfc3339), Some(rfc3339(valid_until))),
        });
        let object = t.object();
        let entry = Audit::new(&self.actor, "key.rotate", &t.account, &object);
        entry.detail(detail).write(db, at).await?;
        Ok((
            listed(db, &t.account, &t.user, &reference).await?,
            valid_until,
        ))
    }
}

pub(crate) struct SetAccountClaims {
    pub actor: Actor,
    pub account: String,
    pub claims: Option<Claims>,
}

impl Job for SetAccountClaims {
    type Out = ();
    async fn run<D: Db>(self, db: &mut D, at: i64) -> Result<(), StoreError> {
        let account = self.account.as_str();
        require_account(db, account).await?;
        let before = match first(db, sql::ACCOUNT_CLAIMS, &[Arg::Text(account)]).await? {
            Some(row) => row.opt_text(0)?,
            None => None,
        };
        let text = claims_text(self.claims.as_ref())?;
        if text != before {
            let args = [Arg::OptText(text.as_deref()), Arg::Text(account)];
            db.exec(sql::SET_ACCOUNT_CLAIMS, &args).await?;
            for key_id in texts(db, sql::ACCOUNT_ACTIVE_KEYS, &[Arg::Text(account)]).await? {
                log_change(db, &key_id, KIND_CLAIMS, at).await?;
            }
        }
        let before = parse_claims(before)?;
        let detail = serde_json::json!({ "claims": change(before, self.claims.clone().unwrap_or_default()) });
        let entry = Audit::new(&self.actor, "account.set_claims", account, account);
        entry.detail(detail).write(db, at).await
    }
}

pub(crate) struct ReadAudit {
    /// `None`: every account (root).
    pub account: Option<String>,
    pub after: i64,
    pub limit: usize,
}

impl Job for ReadAudit {
    type Out = AuditPage;
    async fn run<D: Db>(self, db: &mut D, _at: i64) -> Result<AuditPage, StoreError> {
        let limit = self.limit.clamp(1, MAX_AUDIT_PAGE);
        let fetch = i64::try_from(limit).unwrap_or(1).saturating_add(1);
        let rows = match &self.account {
            Some(account) => {
                let args = [Arg::Int(self.after), Arg::Int(fetch), Arg::Text(account)];
                db.rows(sql::AUDIT_OF_ACCOUNT_AFTER, &args).await?
            }
            None => {
                let args = [Arg::Int(self.after), Arg::Int(fetch)];
                db.rows(sql::AUDIT_AFTER, &args).await?
            }
        };
        let more = rows.len() > limit;
        let entries = rows
            .iter()
            .take(limit)
            .map(audit_entry)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AuditPage { entries, more })
    }
}

fn audit_entry(row: &Row) -> Result<AuditEntry, StoreError> {
    let mut detail = match row.opt_text(7)? {
        Some(t) => serde_json::from_str(&t)
            .map_err(|e| StoreError::Internal(format!("stored audit detail is not JSON: {e}")))?,
        None => serde_json::Value::Null,
    };
    times_as_rfc3339(&mut detail);
    Ok(AuditEntry {
        id: row.int(0)?,
        at: row.int(1)?,
        actor: Actor {
            account_id: row.text(2)?,
            user_id: row.text(3)?,
            key_ref: row.opt_text(8)?,
        },
        action: row.text(4)?,
        account_id: row.text(5)?,
        object: row.text(6)?,
        detail,
    })
}

/// The times of an audit detail as RFC 3339: entries written before every detail used it
/// (`user.create` in earlier versions) hold Unix seconds in `expires_at`, plain or as a
/// before/after change.
fn times_as_rfc3339(detail: &mut serde_json::Value) {
    let Some(fields) = detail.as_object_mut() else {
        return;
    };
    for name in ["expires_at", "valid_until"] {
        let Some(value) = fields.get_mut(name) else {
            continue;
        };
        let mut slots: Vec<&mut serde_json::Value> = match value {
            serde_json::Value::Object(change) => change.values_mut().collect(),
            other => vec![other],
        };
        for slot in slots.iter_mut() {
            if let Some(secs) = slot.as_i64() {
                **slot = rfc3339(secs).into();
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn old_audit_details_in_unix_seconds_read_as_rfc3339() {
        let mut detail = serde_json::json!({
            "role": "member", "expires_at": 1_800_000_000,
            "other": 5,
        });
        times_as_rfc3339(&mut detail);
        assert_eq!(detail["expires_at"], "2027-01-15T08:00:00Z");
        assert_eq!(detail["other"], 5);
        let mut change = serde_json::json!({
            "expires_at": {"before": null, "after": 1_800_000_000}
        });
        times_as_rfc3339(&mut change);
        assert_eq!(
            change,
            serde_json::json!({"expires_at": {"before": null, "after": "2027-01-15T08:00:00Z"}})
        );
    }

    #[test]
    fn hints_show_the_prefix_and_the_last_four_characters_only() {
        let minted = "kg_9DAa0TR1HUmrhnQIT9TT5Ol2uUbKljy3pUYcBzFSbpQ";
        assert_eq!(hint(minted), "kg_...SbpQ");
        assert_eq!(hint("legacy-5f0c1e9a4b7d42a8b3c6e1f09d2a7b4c"), "...7b4c");
        assert_eq!(hint("abc"), "...abc");
        assert_eq!(key_ref(&"ab".repeat(32)), "abababababababab");
    }

    #[test]
    fn times_round_trip_through_rfc_3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            parse_rfc3339("t", "2027-06-30T00:00:00Z"),
            Ok(1_814_313_600)
        );
        assert_eq!(
            parse_rfc3339("t", "2027-06-30T02:00:00+02:00"),
            Ok(1_814_313_600)
        );
        assert_eq!(rfc3339(1_814_313_600), "2027-06-30T00:00:00Z");
        // RFC 3339 (5.6, note) allows a space for the T.
        assert_eq!(
            parse_rfc3339("t", "2027-06-30 00:00:00Z"),
            Ok(1_814_313_600)
        );
        for bad in ["", "2027-06-30", "1814313600", "2027-02-30T00:00:00Z"] {
            assert!(parse_rfc3339("expires_at", bad)
                .unwrap_err()
                .starts_with("expires_at"));
        }
    }

    #[test]
    fn claim_rules() {
        let ok: Claims = [
            ("plan".into(), "pro".into()),
            ("a.B_c-9".into(), "x y".into()),
        ]
        .into();
        assert_eq!(validate_claims(&ok), Ok(()));
        let max: Claims = (0..16).map(|i| (format!("c{i}"), "v".into())).collect();
        assert_eq!(validate_claims(&max), Ok(()));
        let long: Claims = [("n".repeat(64), "v".repeat(256))].into();
        assert_eq!(validate_claims(&long), Ok(()));
        let too_many: Claims = (0..17).map(|i| (format!("c{i}"), "v".into())).collect();
        assert!(validate_claims(&too_many).is_err());
        for (name, value) in [
            ("", "v"),
            ("n".repeat(65).as_str(), "v"),
            ("a:b", "v"),
            ("plan", ""),
            ("plan", " pro"),
            ("plan", "pro "),
            ("plan", "p\u{7f}"),
            ("plan", "\u{e9}"),
            ("plan", "pro,free"),
            ("plan", "v".repeat(257).as_str()),
        ] {
            let c: Claims = [(name.to_owned(), value.to_owned())].into();
            assert!(
                validate_claims(&c).unwrap_err().starts_with("claims:"),
                "{name:?}={value:?}"
            );
        }
    }
}
