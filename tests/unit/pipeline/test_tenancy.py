"""Tenancy: roles, users and passwords that make Elasticsearch isolate institutions (pure functions)."""

from __future__ import annotations

import itertools
import json
import random
import stat
from pathlib import Path

import pytest

from taishi.pipeline import contract, tenancy
from taishi.pipeline.tenancy import User

ROOT = Path(__file__).resolve().parents[3]

# Ids chosen to break naive patterns: prefixes with and without the separator, ids that embed "-v1-" and
# day-like digits, underscores next to dashes.
AWKWARD_IDS = [
    "bank-a",
    "bank-ab",
    "bank-a-x",
    "bank-a-x-y",
    "bank",
    "bank_a",
    "bank-a-2026",
    "bank-a-20",
    "bank-a--",
    "v1-bank-a",
    "x-v1-bank-a",
    "alerts-v1-bank-a",
    "bank-a-x-v1-bank-a",
    "a",
    "0",
    "2026",
]


def _index_names(org: str) -> list[str]:
    return [contract.index_name(f, org, d) for f in tenancy.FAMILIES for d in ("2026.11.25", "1999.12.31")]


# ------------------------------------------------------------------------------------------- patterns --


def test_org_patterns_name_each_family_and_an_exact_day():
    assert tenancy.org_patterns("bank-a") == (
        "taishi-alerts-v1-bank-a-????.??.??",
        "taishi-entities-v1-bank-a-????.??.??",
        "taishi-flows-v1-bank-a-????.??.??",
    )
    with pytest.raises(ValueError, match="must match"):
        tenancy.org_patterns("Bank A")


def test_families_are_every_installed_template():
    from taishi.pipeline.documents import templates

    assert set(tenancy.FAMILIES) == set(templates()), "a new index family must be granted to institutions"


def test_wildcard_match_follows_elasticsearch_semantics():
    m = tenancy.wildcard_match
    assert m("taishi-*", "taishi-alerts-v1-bank-a-2026.11.25")
    assert m("a?c", "abc") and not m("a?c", "ac") and not m("a?c", "abbc")
    assert m("a.c", "a.c") and not m("a.c", "abc"), "a dot is literal"
    assert m("a\\*", "a*") and not m("a\\*", "ab")
    assert not m("taishi-*", "xtaishi-a"), "anchored at both ends"


def test_naive_patterns_leak_which_is_why_they_are_not_used():
    # trailing *: bank-a reads its subsidiary bank-a-x
    assert tenancy.wildcard_match("taishi-*-v1-bank-a-*", "taishi-alerts-v1-bank-a-x-2026.11.25")
    # family *: bank-a reads x-v1-bank-a even with an exact day
    assert tenancy.wildcard_match("taishi-*-v1-bank-a-????.??.??", "taishi-alerts-v1-x-v1-bank-a-2026.11.25")
    with pytest.raises(ValueError, match="could read"):
        tenancy.verify_isolation(["bank-a", "bank-a-x"], patterns=lambda o: [f"taishi-*-v1-{o}-*"])
    with pytest.raises(ValueError, match="could read"):
        tenancy.verify_isolation(
            ["bank-a", "x-v1-bank-a"], patterns=lambda o: [f"taishi-*-v1-{o}-{tenancy.DAY_PATTERN}"]
        )


def test_awkward_ids_are_isolated_pairwise():
    tenancy.verify_isolation(AWKWARD_IDS)
    for a, b in itertools.product(AWKWARD_IDS, repeat=2):
        for name in _index_names(b):
            hit = any(tenancy.wildcard_match(p, name) for p in tenancy.org_patterns(a))
            assert hit == (a == b), (a, name)


def test_every_short_id_is_isolated_from_every_other():
    # Exhaustive over ids of up to 4 characters from an alphabet rich in separators: 255 ids, 65k pairs.
    alphabet = "a1v-"
    ids = [
        "".join(t)
        for n in range(1, 5)
        for t in itertools.product(alphabet, repeat=n)
        if contract.ORG_ID_RE.match("".join(t))
    ]
    tenancy.verify_isolation(ids, days=("2026.11.25",))


def test_random_long_ids_are_isolated():
    rnd = random.Random(7)
    base = ["bank-a", "v1", "2026", "-", "a", "_"]
    ids = {"bank-a"}
    while len(ids) < 150:
        s = "".join(rnd.choice(base) for _ in range(rnd.randint(1, 8))).strip("-_")[:48]
        if contract.ORG_ID_RE.match(s):
            ids.add(s)
    tenancy.verify_isolation(sorted(ids))


# ---------------------------------------------------------------------------------------- roles file --


def test_roles_pipeline_sector_and_one_per_institution():
    roles = {r.name: r for r in tenancy.roles(["bank-a", "insurer-b"])}
    assert list(roles) == ["taishi_pipeline", "taishi_sector", "taishi_org_bank-a", "taishi_org_insurer-b"]
    pipe = roles["taishi_pipeline"]
    assert set(pipe.cluster) == {"manage_index_templates", "monitor", "read_ilm"}
    assert pipe.indices[0].names == ("taishi-*",)
    assert {"write", "create_index", "manage"} <= set(pipe.indices[0].privileges)
    assert roles["taishi_sector"].indices[0].names == ("taishi-*",)
    assert roles["taishi_sector"].indices[0].privileges == ("read", "view_index_metadata")
    org = roles["taishi_org_bank-a"]
    assert org.cluster == () and org.indices[0].names == tenancy.org_patterns("bank-a")
    assert org.indices[0].privileges == ("read", "view_index_metadata")
    with pytest.raises(ValueError, match="duplicate"):
        tenancy.roles(["bank-a", "bank-a"])


def test_roles_yaml_segments_as_elasticsearch_reads_them():
    text = tenancy.roles_yaml(tenancy.roles(["bank-a"]))
    lines = text.splitlines()
    # Elasticsearch's FileRolesStore starts a role at every unindented line that is not a comment.
    tops = [ln for ln in lines if ln and not ln[0].isspace() and not ln.startswith("#")]
    assert tops == ["taishi_pipeline:", "taishi_sector:", "taishi_org_bank-a:"]
    assert "  cluster: ['manage_index_templates', 'monitor', 'read_ilm']" in lines
    assert (
        "    - names: ['taishi-alerts-v1-bank-a-????.??.??', 'taishi-entities-v1-bank-a-????.??.??', "
        "'taishi-flows-v1-bank-a-????.??.??']"
    ) in lines
    assert "      privileges: ['read', 'view_index_metadata']" in lines
    assert text.endswith("\n") and "\t" not in text


def test_users_and_users_roles():
    users = tenancy.users(["bank-a", "insurer-b"])
    assert users == [
        User("taishi-pipeline", "taishi_pipeline"),
        User("taishi-sector", "taishi_sector"),
        User("taishi-org-bank-a", "taishi_org_bank-a"),
        User("taishi-org-insurer-b", "taishi_org_insurer-b"),
    ]
    assert tenancy.users_roles_file(users).splitlines() == [
        "taishi_pipeline:taishi-pipeline",
        "taishi_sector:taishi-sector",
        "taishi_org_bank-a:taishi-org-bank-a",
        "taishi_org_insurer-b:taishi-org-insurer-b",
    ]


# ----------------------------------------------------------------------------------------- passwords --


def test_password_env_var_names():
    assert tenancy.password_env_var("taishi-org-bank-a") == "TAISHI_ES_PASSWORD_TAISHI_ORG_BANK_A"
    assert tenancy.password_env_var("taishi-pipeline") == "TAISHI_ES_PASSWORD_TAISHI_PIPELINE"


def test_passwords_env_first_then_file_then_generated():
    users = tenancy.users(["bank-a", "insurer-b"])
    env = {"TAISHI_ES_PASSWORD_TAISHI_ORG_BANK_A": "from-the-environment"}
    stored = {"taishi-sector": "stored-sector-password", "taishi-org-gone": "dropped-with-its-user"}
    res = tenancy.resolve_passwords(users, env, stored, generate=lambda: "generated-password-x")
    assert res.passwords == {
        "taishi-pipeline": "generated-password-x",
        "taishi-sector": "stored-sector-password",
        "taishi-org-bank-a": "from-the-environment",
        "taishi-org-insurer-b": "generated-password-x",
    }
    assert res.sources["taishi-org-bank-a"] == "TAISHI_ES_PASSWORD_TAISHI_ORG_BANK_A"
    assert res.sources["taishi-sector"] == "file"
    # The file keeps generated and stored passwords, never the environment's, and forgets removed users.
    assert res.stored == {
        "taishi-pipeline": "generated-password-x",
        "taishi-sector": "stored-sector-password",
        "taishi-org-insurer-b": "generated-password-x",
    }


def test_generated_passwords_are_long_and_distinct():
    res = tenancy.resolve_passwords(tenancy.users(["bank-a"]), {}, {})
    pws = list(res.passwords.values())
    assert len(set(pws)) == len(pws) and all(len(p) >= 32 for p in pws)


def test_password_errors():
    users = tenancy.users(["bank-a"])
    with pytest.raises(ValueError, match="shorter"):
        tenancy.resolve_passwords(users, {"TAISHI_ES_PASSWORD_TAISHI_PIPELINE": "short"}, {})
    with pytest.raises(ValueError, match="control"):
        tenancy.resolve_passwords(users, {"TAISHI_ES_PASSWORD_TAISHI_PIPELINE": "long-enough\tpassword"}, {})
    with pytest.raises(ValueError, match="no password"):
        tenancy.resolve_passwords(users, {}, {}, generate=None)
    # bank-a and bank_a share a variable name: refused only when that variable is actually set
    both = tenancy.users(["bank-a", "bank_a"])
    tenancy.resolve_passwords(both, {}, {})
    with pytest.raises(ValueError, match="would set the password of"):
        tenancy.resolve_passwords(both, {"TAISHI_ES_PASSWORD_TAISHI_ORG_BANK_A": "a-long-password"}, {})


def test_credentials_file_is_private_and_rewritten_only_on_change(tmp_path):
    path = tmp_path / "sub" / "credentials.json"
    assert tenancy.load_credentials(path) == {}
    assert tenancy.save_credentials(path, {"taishi-pipeline": "p" * 20})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert tenancy.load_credentials(path) == {"taishi-pipeline": "p" * 20}
    assert not tenancy.save_credentials(path, {"taishi-pipeline": "p" * 20}), "unchanged: not rewritten"
    path.chmod(0o644)
    tenancy.save_credentials(path, {"taishi-pipeline": "p" * 20})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, "loose permissions are tightened"
    path.write_text(json.dumps({"users": ["not", "a", "map"]}))
    with pytest.raises(ValueError, match="expected"):
        tenancy.load_credentials(path)


# -------------------------------------------------------------------------------------------- hashes --

# Made by Elasticsearch 9.2.4's own `bin/elasticsearch-users useradd` with password_hashing pbkdf2_50000.
ES_MADE_HASH = (
    "{PBKDF2}50000$Vrfbj+rd+Hc9javNWj9U0mrQW3ejsL08HpCuxPuSeNM=$tjbsI6Mvk8W5MqZfV+R3QIBCV05ueAc7FNMqou/cAMA="
)


def test_hash_format_matches_elasticsearch():
    assert tenancy.verify_es_password_hash("kat-password-1", ES_MADE_HASH)
    assert not tenancy.verify_es_password_hash("kat-password-2", ES_MADE_HASH)
    salt = __import__("base64").b64decode("Vrfbj+rd+Hc9javNWj9U0mrQW3ejsL08HpCuxPuSeNM=")
    assert tenancy.es_password_hash("kat-password-1", cost=50_000, salt=salt) == ES_MADE_HASH


def test_hash_roundtrip_and_rejections():
    h = tenancy.es_password_hash("a-long-password", cost=1_000)
    assert tenancy.verify_es_password_hash("a-long-password", h)
    assert not tenancy.verify_es_password_hash("a-long-password", "$2a$10$bcrypt-is-not-ours")
    assert not tenancy.verify_es_password_hash("a-long-password", "{PBKDF2}garbage")
    with pytest.raises(ValueError, match="costs"):
        tenancy.es_password_hash("x", cost=12_345)


def test_users_file_keeps_hashes_that_still_match():
    users = tenancy.users(["bank-a"])
    pws = {u.name: f"password-of-{u.name}" for u in users}
    first = tenancy.users_file(users, pws, {}, cost=1_000)
    existing = tenancy.parse_users_file(first)
    assert list(existing) == [u.name for u in users]
    assert tenancy.users_file(users, pws, existing, cost=1_000) == first, "unchanged input, identical file"
    pws["taishi-sector"] = "a-new-sector-password"
    again = tenancy.parse_users_file(tenancy.users_file(users, pws, existing, cost=1_000))
    assert again["taishi-pipeline"] == existing["taishi-pipeline"]
    assert again["taishi-sector"] != existing["taishi-sector"]
    assert tenancy.verify_es_password_hash("a-new-sector-password", again["taishi-sector"])
    assert tenancy.users_file(users, pws, {}).startswith("taishi-pipeline:{PBKDF2}100000$"), "default cost"


# -------------------------------------------------------------------------------- institutions + CLI --


def test_load_institutions(tmp_path):
    assert tenancy.load_institutions(ROOT / "deploy" / "taishi.example.toml") == ["bank-a", "insurer-b"]
    assert "bank-a-x" in tenancy.load_institutions(ROOT / "deploy" / "local" / "secure" / "institutions.toml")
    bad = tmp_path / "bad.toml"
    for body, msg in (
        ("", "no \\[\\[institutions\\]\\]"),
        ('[[institutions]]\nid = "Bank A"\n', "must match"),
        ('[[institutions]]\nid = "a"\n[[institutions]]\nid = "a"\n', "duplicate"),
        ("[[institutions]\n", "institutions file"),
    ):
        bad.write_text(body)
        with pytest.raises(ValueError, match=msg):
            tenancy.load_institutions(bad)
    with pytest.raises(FileNotFoundError):
        tenancy.load_institutions(tmp_path / "missing.toml")


def test_cli_write_is_idempotent(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TAISHI_ES_PASSWORD_TAISHI_PIPELINE", raising=False)
    inst = tmp_path / "inst.toml"
    inst.write_text('[[institutions]]\nid = "bank-a"\n[[institutions]]\nid = "bank-ab"\n')
    creds, out = tmp_path / "creds.json", tmp_path / "out"
    args = ["write", "--institutions", str(inst), "--credentials", str(creds), "--out", str(out)]
    assert tenancy.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split("\t")[:2] for ln in lines] == [
        ["taishi-pipeline", "taishi_pipeline"],
        ["taishi-sector", "taishi_sector"],
        ["taishi-org-bank-a", "taishi_org_bank-a"],
        ["taishi-org-bank-ab", "taishi_org_bank-ab"],
    ]
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "users").stat().st_mode) == 0o600
    files = {f: (out / f).read_text() for f in ("roles.yml", "users", "users_roles")}

    out2 = tmp_path / "out2"
    again = [*args[:-1], str(out2), "--existing-users", str(out / "users")]
    assert tenancy.main(again) == 0
    assert capsys.readouterr().out.splitlines() == lines, "same passwords from the credentials file"
    assert {f: (out2 / f).read_text() for f in files} == files, "byte-identical: nothing for ES to reload"

    assert tenancy.main(["users", "--institutions", str(inst), "--credentials", str(creds)]) == 0
    assert capsys.readouterr().out.splitlines() == lines
    assert tenancy.main(["roles", "--institutions", str(inst)]) == 0
    assert capsys.readouterr().out == files["roles.yml"]


def test_cli_users_does_not_generate(tmp_path, capsys):
    inst = tmp_path / "inst.toml"
    inst.write_text('[[institutions]]\nid = "bank-a"\n')
    creds = tmp_path / "creds.json"
    assert tenancy.main(["users", "--institutions", str(inst), "--credentials", str(creds)]) == 2
    assert "no password" in capsys.readouterr().err
    assert not creds.exists()
