//! The capability rule as a property, through the real router (SQLite, or PostgreSQL with
//! `KEYSTORE_TEST_DATABASE_URL`): whatever sequence of admin calls a key K makes (create key,
//! rotate a key with or without grace, rotate a user, create a user, patch a key, import),
//! every key those calls yield has capabilities ⊆ K's, an expiry no later than K's (when K has
//! one), and claims ⊆ K's (only root sets claims; a rotation carries the replaced key's). K is a
//! member or an admin, with or without an expiry, with or without claims, with all or some of
//! the capabilities its role allows. Seeded xorshift PRNG: deterministic, a few seconds.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use common::{now, Ks, ROOT_KEY};
use keygate_protocol::routes::admin;
use keystore::keys::key_id;
use keystore::store::{parse_rfc3339, rfc3339};
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;

const SEEDS: u64 = 32;
const CALLS: usize = 16;
const CAPS: [&str; 3] = ["traffic", "own_keys", "account_admin"];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

/// K and what it has.
struct Holder {
    raw: String,
    user: String,
    caps: BTreeSet<String>,
    expires_at: Option<i64>,
    claims: Map<String, Value>,
}

/// The state of one run: users of acme and the keys K's calls yielded (raw, user).
struct Run {
    k: Holder,
    users: Vec<String>,
    made: Vec<(String, String)>,
}

fn random_caps(rng: &mut Rng) -> Option<Value> {
    if rng.coin() {
        return None;
    }
    let picked: Vec<&str> = CAPS.iter().copied().filter(|_| rng.coin()).collect();
    Some(json!(picked))
}

/// An expires_at to ask for: none, before K's expiry, or after it (or an hour, without one).
fn random_expiry(rng: &mut Rng, k: &Holder) -> Option<String> {
    let base = k.expires_at.unwrap_or(now() + 7200);
    match rng.below(3) {
        0 => None,
        1 => Some(rfc3339(base - 60)),
        _ => Some(rfc3339(base + 3600)),
    }
}

/// One random admin call made with K; returns the new key, if the call made one.
async fn random_call(ks: &Ks, rng: &mut Rng, run: &mut Run, step: usize) -> Option<String> {
    let users = &admin::users("acme");
    let user = run.users[rng.below(run.users.len())].clone();
    let mut body = Map::new();
    if let Some(caps) = random_caps(rng) {
        body.insert("capabilities".into(), caps);
    }
    if let Some(at) = random_expiry(rng, &run.k) {
        body.insert("expires_at".into(), json!(at));
    }
    let (method, uri) = match rng.below(6) {
        0 => {
            body.insert("name".into(), json!(format!("n{step}")));
            ("POST", format!("{users}/{user}/keys"))
        }
        1 | 2 => {
            // A key K's calls made (or K itself), rotated with or without a grace.
            // K itself now and then: a rotation with grace leaves it traffic only, without
            // one it is revoked; the calls after that are refused, as they should be.
            let pick = rng.below(run.made.len() + 1);
            let (raw, owner) = match run.made.get(pick) {
                Some(made) => made.clone(),
                _ if rng.below(8) == 0 => (run.k.raw.clone(), run.k.user.clone()),
                _ => return None,
            };
            if rng.coin() {
                body.insert("grace_s".into(), json!(600));
            }
            let reference = &key_id(&raw)[..16];
            ("POST", format!("{users}/{owner}/keys/{reference}/rotate"))
        }
        3 => {
            if rng.coin() {
                body.insert("grace_s".into(), json!(600));
            }
            ("POST", format!("{users}/{user}/key"))
        }
        4 => {
            let new_user = format!("u{step}");
            let role = ["member", "admin", "reader"][rng.below(3)];
            body.insert("user_id".into(), json!(new_user));
            body.insert("role".into(), json!(role));
            ("POST", users.to_owned())
        }
        _ => {
            if rng.coin() {
                // An import.
                body.insert("name".into(), json!(format!("i{step}")));
                let value = format!("imported-{:016x}{:016x}", rng.next(), rng.next());
                body.insert("user_key".into(), json!(value));
                ("POST", format!("{users}/{user}/keys"))
            } else {
                let (raw, owner) = run.made.first().cloned()?;
                let expiry = random_expiry(rng, &run.k).map_or(Value::Null, Value::from);
                let patch = json!({ "expires_at": expiry });
                let reference = &key_id(&raw)[..16];
                let uri = format!("{users}/{owner}/keys/{reference}");
                ks.call("PATCH", &uri, Some(&run.k.raw), Some(patch)).await;
                return None;
            }
        }
    };
    let r = ks
        .call(
            method,
            &uri,
            Some(&run.k.raw),
            Some(Value::Object(body.clone())),
        )
        .await;
    if !r.status.is_success() {
        return None;
    }
    let v = r.json();
    if let Some(new_user) = body.get("user_id").and_then(Value::as_str) {
        run.users.push(new_user.to_owned());
    }
    let owner = uri
        .strip_prefix(&format!("{users}/"))
        .and_then(|rest| rest.split('/').next())
        .map(str::to_owned)
        .unwrap_or_else(|| v["user_id"].as_str().unwrap().to_owned());
    let raw = v["user_key"].as_str().unwrap().to_owned();
    run.made.push((raw.clone(), owner));
    Some(raw)
}

/// Checks every unrevoked key K's calls made, as root lists them.
async fn check(ks: &Ks, run: &Run, context: &str) {
    for (raw, owner) in &run.made {
        let uri = admin::keys("acme", owner);
        let listed = ks.call("GET", &uri, Some(ROOT_KEY), None).await.json();
        let reference = &key_id(raw)[..16];
        let Some(key) = listed["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["key"] == reference)
        else {
            continue; // revoked by a later rotation
        };
        for cap in key["capabilities"].as_array().unwrap() {
            assert!(
                run.k.caps.contains(cap.as_str().unwrap()),
                "{context}: {key} has {cap}, K has {:?}",
                run.k.caps
            );
        }
        if let Some(limit) = run.k.expires_at {
            let at = key["expires_at"]
                .as_str()
                .unwrap_or_else(|| panic!("{context}: {key} never expires; K does"));
            assert!(
                parse_rfc3339("t", at).unwrap() <= limit,
                "{context}: {key} outlives K ({limit})"
            );
        }
        for (name, value) in key["claims"].as_object().unwrap() {
            assert_eq!(
                run.k.claims.get(name),
                Some(value),
                "{context}: {key} has a claim K has not"
            );
        }
    }
}

/// K: a key root makes for a member (bob) or an admin (ann), maybe expiring, maybe with claims.
async fn holder(ks: &Ks, rng: &mut Rng) -> Holder {
    let user = if rng.coin() { "bob" } else { "ann" };
    let mut body = json!({"name": "k"});
    let expires_at = rng.coin().then(|| now() + 3600);
    if let Some(at) = expires_at {
        body["expires_at"] = json!(rfc3339(at));
    }
    if rng.coin() {
        body["claims"] = json!({"plan": "pro"});
    }
    if rng.coin() {
        // Fewer capabilities than the role allows (always one that calls the admin API).
        // (A member's key may not ask for account_admin.)
        let allowed = if user == "bob" { &CAPS[..2] } else { &CAPS[..] };
        let first = allowed[1 + rng.below(allowed.len() - 1)];
        let mut caps = vec![first];
        caps.extend(
            allowed
                .iter()
                .copied()
                .filter(|c| *c != first && rng.coin()),
        );
        body["capabilities"] = json!(caps);
    }
    let uri = admin::keys("acme", user);
    let v = ks
        .call("POST", &uri, Some(ROOT_KEY), Some(body))
        .await
        .json();
    Holder {
        raw: v["user_key"].as_str().unwrap().to_owned(),
        user: user.to_owned(),
        caps: v["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect(),
        expires_at,
        claims: v["claims"].as_object().cloned().unwrap_or_default(),
    }
}

#[tokio::test]
async fn no_sequence_of_admin_calls_yields_a_key_with_more_than_the_calling_key() {
    let mut made_total = 0;
    for seed in 1..=SEEDS {
        let ks = Ks::new().await;
        let alice = ks.create_account("acme", "alice").await;
        for (user, role) in [("bob", "member"), ("ann", "admin"), ("carol", "member")] {
            ks.create_user(&alice, "acme", user, role).await;
        }
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let k = holder(&ks, &mut rng).await;
        let mut run = Run {
            users: vec![k.user.clone(), "carol".into()],
            k,
            made: Vec::new(),
        };
        for step in 0..CALLS {
            random_call(&ks, &mut rng, &mut run, step).await;
            check(&ks, &run, &format!("seed {seed} step {step}")).await;
        }
        made_total += run.made.len();
    }
    // The calls did make keys (the property is not vacuous).
    eprintln!("{made_total} keys made in {SEEDS} runs");
    assert!(
        made_total > SEEDS as usize * 2,
        "only {made_total} keys made"
    );
}
