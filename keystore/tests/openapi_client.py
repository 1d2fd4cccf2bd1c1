"""Drives a real keystore through a client generated from its /openapi.json.

Run by tests/openapi.rs (`make test-openapi`) after `openapi-python-client generate` wrote the
package `keygate_client` onto PYTHONPATH. Arguments: the keystore's base URL and the root key.
Walks a whole lifecycle (create account -> create user -> create key -> list -> get -> rotate
-> revoke -> audit), one error and the key summary, using only the generated functions and
models, and prints one line per step; any surprise is an assertion error (exit 1).
"""

import datetime
import sys

from keygate_client import AuthenticatedClient
from keygate_client.api.admin import (
    audit_of_account,
    create_account,
    create_key,
    create_user,
    get_account,
    get_key,
    list_keys,
    revoke_key,
    rotate_one_key,
)
from keygate_client.models import (
    CreateAccount,
    CreateKey,
    CreateUser,
    Problem,
    RotateOne,
)
from keygate_client.api.protocol import summary as read_summary
from keygate_client.types import UNSET


def client(base_url, key):
    return AuthenticatedClient(base_url=base_url, token=key, raise_on_unexpected_status=True)


def main(base_url, root_key):
    root = client(base_url, root_key)

    made = create_account.sync(client=root, body=CreateAccount(account_id="acme", admin_user_id="alice"))
    assert made.account_id == "acme" and made.user_key, made
    alice = client(base_url, made.user_key)
    print("create account: acme, admin alice")

    bob = create_user.sync(account="acme", client=alice, body=CreateUser(user_id="bob", role="member"))
    assert bob.user_id == "bob" and bob.user_key, bob
    print(f"create user: bob, capabilities {sorted(c.value for c in bob.capabilities)}")

    ci = create_key.sync(account="acme", user="bob", client=alice, body=CreateKey(name="ci"))
    assert ci.name == "ci" and ci.user_key and isinstance(ci.created_at, datetime.datetime), ci
    print(f"create key: ci ({ci.key}), created {ci.created_at.isoformat()}")

    page = list_keys.sync(account="acme", user="bob", client=alice, limit=1)
    assert len(page.keys) == 1 and isinstance(page.next_cursor, str), page
    rest = list_keys.sync(account="acme", user="bob", client=alice, limit=1, cursor=page.next_cursor)
    assert len(rest.keys) == 1 and rest.next_cursor is UNSET, rest
    # Oldest first (keys made in the same second in key reference order).
    names = sorted(k.name for k in page.keys + rest.keys)
    assert names == ["ci", "default"], names
    print(f"list keys: {names} in two pages")

    got = get_key.sync(account="acme", user="bob", key=ci.key, client=alice)
    assert got.key == ci.key and got.name == "ci", got

    rotated = rotate_one_key.sync(
        account="acme", user="bob", key=ci.key, client=alice, body=RotateOne(grace_s=3600)
    )
    assert rotated.name == "ci" and rotated.key != ci.key, rotated
    assert rotated.replaces.key == ci.key and rotated.replaces.grace_s == 3600, rotated
    assert isinstance(rotated.replaces.valid_until, datetime.datetime), rotated.replaces
    print(f"rotate key: ci {ci.key} -> {rotated.key}, old valid until {rotated.replaces.valid_until.isoformat()}")

    gone = revoke_key.sync(account="acme", user="bob", key=rotated.key, client=alice)
    assert gone.revoked == 1, gone
    print(f"revoke key: {rotated.key}")

    audit = audit_of_account.sync(account="acme", client=alice, limit=1000)
    actions = [e.action for e in audit.entries]
    for action in ["account.create", "user.create", "key.create", "key.rotate", "key.revoke"]:
        assert action in actions, (action, actions)
    assert all(isinstance(e.at, datetime.datetime) for e in audit.entries)
    print(f"audit: {actions}")

    # An error is a problem details object, parsed into the generated Problem model.
    missing = get_account.sync(account="nope", client=root)
    assert isinstance(missing, Problem), missing
    assert missing.type_ == "https://keygate.dev/problems/account-not-found", missing
    assert missing.status == 404, missing
    refused = get_account.sync(account="acme", client=client(base_url, bob.user_key))
    assert isinstance(refused, Problem) and refused.status == 403, refused
    assert refused.missing_capability.value == "account_admin", refused
    print(f"errors: {missing.type_}; 403 missing {refused.missing_capability.value}")

    # The key summary: a binary body (keygate_protocol::summary's wire form).
    body = read_summary.sync(client=root).payload.read()
    assert body[:8] == b"KGSUMv1\0" and len(body) >= 40 + 64, body[:40]
    print(f"summary: {len(body)} bytes")
    print("generated client: lifecycle ok")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
