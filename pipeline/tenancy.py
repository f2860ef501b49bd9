"""Tenant isolation enforced by Elasticsearch: roles, file-realm users and their passwords.

Every institution reads only its own indices because Elasticsearch refuses the rest, not because a query
filters them. Document-level security is not in the free licence and the minimal distribution has no
native users or API keys, so isolation is one index name pattern per institution, granted through roles in
``roles.yml`` to users of the **file realm** (``users`` / ``users_roles``). This module computes all three
files from the institution list; ``python -m taishi.pipeline.tenancy`` writes them (``deploy/local/stack.sh
up es --secure`` installs them into a security-enabled Elasticsearch).

Roles:

- ``taishi_org_<id>``: ``read`` + ``view_index_metadata`` on that institution's indices only;
- ``taishi_sector``: the same on ``taishi-*`` (the sector-wide analyst);
- ``taishi_pipeline``: ``write``, ``create_index``, ``manage`` (retention deletes old indices) and ``read``
  on ``taishi-*``, plus the cluster privileges ``manage_index_templates`` (templates at start), ``monitor``
  (cluster health) and ``read_ilm`` (retention reports whether ILM exists).

Why the institution patterns are exact. Index names are ``taishi-<family>-v1-<org>-<YYYY.MM.DD>``
(``contract.index_name``) and org ids match ``^[a-z0-9][a-z0-9_-]{0,47}$``, so ids may contain ``-`` and
one id may be another's prefix. The obvious pattern ``taishi-*-v1-bank-a-*`` is wrong twice:

1. the trailing ``*`` also matches institution ``bank-a-x`` (``taishi-alerts-v1-bank-a-x-2026.11.25``);
2. the family ``*`` also matches institution ``x-v1-bank-a`` (``taishi-alerts-v1-x-v1-bank-a-2026.11.25``:
   the ``*`` swallows ``alerts-v1-x``).

So each institution gets one pattern per family, with the family written out and the day as exactly ten
single-character wildcards: ``taishi-alerts-v1-bank-a-????.??.??``. Such a pattern has no ``*`` at all; it
matches only names of its exact length, and a name of another institution ``b`` in the same family,
``taishi-alerts-v1-<b>-<day>``, has that length only if ``len(b) == len(a)``, in which case the literal part
forces ``b == a``. The constraint this relies on: every index an institution may read ends in a ten-character
day, which is how ``contract.index_name`` is called everywhere; a name without one is readable only by the
sector and the pipeline (fails closed). A new index family must be added to ``FAMILIES``
(a unit test compares it with the installed templates) or institutions will not see it (fails closed too).
``verify_isolation`` re-checks every pair of institutions whenever the files are generated.

Passwords come from ``TAISHI_ES_PASSWORD_<USER>`` (the user name upper-cased, every other character ``_``,
e.g. ``TAISHI_ES_PASSWORD_TAISHI_ORG_BANK_A``) or are generated once into a JSON credentials file created
with mode 0600. The ``users`` file holds PBKDF2-HMAC-SHA512 hashes in Elasticsearch's own format (the
``elasticsearch-users`` tool would start a JVM per user, about 8 s each on a 2-core machine).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from taishi.pipeline import contract

# Every index family the pipeline writes per institution; compared with documents.templates() in a test.
FAMILIES: Final[tuple[str, ...]] = (contract.ALERTS_INDEX, contract.ENTITIES_INDEX, contract.FLOWS_INDEX)
DAY_PATTERN: Final = "????.??.??"  # exactly the ten characters of YYYY.MM.DD
ALL_INDICES: Final = "taishi-*"

PIPELINE_USER: Final = "taishi-pipeline"
PIPELINE_ROLE: Final = "taishi_pipeline"
SECTOR_USER: Final = "taishi-sector"
SECTOR_ROLE: Final = "taishi_sector"
ORG_USER_PREFIX: Final = "taishi-org-"
ORG_ROLE_PREFIX: Final = "taishi_org_"

READ_PRIVILEGES: Final = ("read", "view_index_metadata")
PIPELINE_INDEX_PRIVILEGES: Final = ("create_index", "manage", "read", "write")
PIPELINE_CLUSTER_PRIVILEGES: Final = ("manage_index_templates", "monitor", "read_ilm")

PASSWORD_ENV_PREFIX: Final = "TAISHI_ES_PASSWORD_"
MIN_PASSWORD_LEN: Final = 12
# Elasticsearch only accepts these PBKDF2 iteration counts in a stored hash (Hasher.resolveFromHash).
ES_PBKDF2_COSTS: Final = (1_000, 10_000, 50_000, 100_000, 500_000, 1_000_000)
HASH_COST: Final = 100_000
_PBKDF2_PREFIX: Final = "{PBKDF2}"


@dataclass(frozen=True, slots=True)
class IndexGrant:
    names: tuple[str, ...]
    privileges: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    indices: tuple[IndexGrant, ...]
    cluster: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str


# ---------------------------------------------------------------------------------------------- roles --


def _check_org(org_id: str) -> str:
    if not contract.ORG_ID_RE.match(org_id):
        raise ValueError(f"institution id {org_id!r} must match {contract.ORG_ID_RE.pattern}")
    return org_id


def org_patterns(org_id: str) -> tuple[str, ...]:
    """The index name patterns one institution may read: one per family, exact day length."""
    _check_org(org_id)
    return tuple(f"{family}-{org_id}-{DAY_PATTERN}" for family in FAMILIES)


def org_role_name(org_id: str) -> str:
    return ORG_ROLE_PREFIX + _check_org(org_id)


def org_user_name(org_id: str) -> str:
    return ORG_USER_PREFIX + _check_org(org_id)


def _unique(org_ids: Iterable[str]) -> list[str]:
    ids = [_check_org(o) for o in org_ids]
    dup = sorted({o for o in ids if ids.count(o) > 1})
    if dup:
        raise ValueError(f"duplicate institution ids {dup}")
    return ids


def roles(org_ids: Iterable[str]) -> list[Role]:
    """The pipeline role, the sector role, then one role per institution (in the given order)."""
    ids = _unique(org_ids)
    out = [
        Role(
            PIPELINE_ROLE,
            (IndexGrant((ALL_INDICES,), PIPELINE_INDEX_PRIVILEGES),),
            PIPELINE_CLUSTER_PRIVILEGES,
        ),
        Role(SECTOR_ROLE, (IndexGrant((ALL_INDICES,), READ_PRIVILEGES),)),
    ]
    out.extend(Role(org_role_name(o), (IndexGrant(org_patterns(o), READ_PRIVILEGES),)) for o in ids)
    return out


def users(org_ids: Iterable[str]) -> list[User]:
    """The file-realm users: the pipeline, the sector analyst, one analyst per institution."""
    ids = _unique(org_ids)
    return [
        User(PIPELINE_USER, PIPELINE_ROLE),
        User(SECTOR_USER, SECTOR_ROLE),
        *(User(org_user_name(o), org_role_name(o)) for o in ids),
    ]


def _yaml_list(items: Sequence[str]) -> str:
    return "[" + ", ".join("'" + s.replace("'", "''") + "'" for s in items) + "]"


def roles_yaml(role_list: Sequence[Role]) -> str:
    """``roles.yml`` text. Elasticsearch splits this file on unindented lines, one role per segment."""
    lines = [
        "# Generated by `python -m taishi.pipeline.tenancy` from the institution list; do not edit.",
        "# Institutions read only taishi-<family>-v1-<id>-????.??.?? (exact length, so no id can reach",
        "# another's indices); see pipeline/tenancy.py for why the obvious taishi-*-v1-<id>-* is not safe.",
    ]
    for r in role_list:
        lines.append(f"{r.name}:")
        if r.cluster:
            lines.append(f"  cluster: {_yaml_list(r.cluster)}")
        lines.append("  indices:")
        for g in r.indices:
            lines.append(f"    - names: {_yaml_list(g.names)}")
            lines.append(f"      privileges: {_yaml_list(g.privileges)}")
    return "\n".join(lines) + "\n"


def users_roles_file(user_list: Sequence[User]) -> str:
    """``users_roles`` text: ``role:user1,user2`` lines."""
    by_role: dict[str, list[str]] = {}
    for u in user_list:
        by_role.setdefault(u.role, []).append(u.name)
    return "".join(f"{role}:{','.join(names)}\n" for role, names in by_role.items())


# ------------------------------------------------------------------------------------------ isolation --


def wildcard_match(pattern: str, name: str) -> bool:
    """Elasticsearch's index-privilege wildcard: ``*`` any run, ``?`` one character, ``\\`` escapes."""
    return _wildcard_regex(pattern).fullmatch(name) is not None


def _wildcard_regex(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if c == "*" else "." if c == "?" else re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


SAMPLE_DAYS: Final = ("2026.11.25", "2099.01.01")


def verify_isolation(
    org_ids: Iterable[str],
    patterns: Callable[[str], Sequence[str]] = org_patterns,
    days: Sequence[str] = SAMPLE_DAYS,
) -> None:
    """Raise if some institution's patterns match another's index names, or miss one of its own."""
    ids = _unique(org_ids)
    compiled = {o: [_wildcard_regex(p) for p in patterns(o)] for o in ids}
    names = {o: [contract.index_name(f, o, d) for f in FAMILIES for d in days] for o in ids}
    problems: list[str] = []
    for a in ids:
        for b in ids:
            for name in names[b]:
                hit = any(rx.fullmatch(name) for rx in compiled[a])
                if a == b and not hit:
                    problems.append(f"{a} cannot read its own index {name}")
                elif a != b and hit:
                    problems.append(f"{a} could read {b}'s index {name}")
    if problems:
        raise ValueError("tenant isolation broken: " + "; ".join(problems[:10]))


# ------------------------------------------------------------------------------------------ passwords --


def password_env_var(user: str) -> str:
    """``taishi-org-bank-a`` -> ``TAISHI_ES_PASSWORD_TAISHI_ORG_BANK_A``."""
    return PASSWORD_ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", user.upper())


def _check_password(password: str, where: str) -> str:
    if len(password) < MIN_PASSWORD_LEN:
        raise ValueError(f"{where}: password shorter than {MIN_PASSWORD_LEN} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in password):
        raise ValueError(f"{where}: password contains control characters (tab, newline, ...)")
    return password


def generate_password() -> str:
    return secrets.token_urlsafe(24)  # 32 characters of [A-Za-z0-9_-]


@dataclass(frozen=True, slots=True)
class Passwords:
    passwords: dict[str, str]  # user -> password, for every user
    sources: dict[str, str]  # user -> environment variable name, or "file"
    stored: dict[str, str]  # what the credentials file should hold (generated or kept, never env ones)


def resolve_passwords(
    user_list: Sequence[User],
    environ: Mapping[str, str],
    stored: Mapping[str, str],
    generate: Callable[[], str] | None = generate_password,
) -> Passwords:
    """Environment variable first, then the credentials file, then a new one (unless ``generate`` is None).

    Two users whose names map to the same variable (``bank-a`` and ``bank_a``) are refused only if that
    variable is set; otherwise both simply use the file.
    """
    by_var: dict[str, list[str]] = {}
    for u in user_list:
        by_var.setdefault(password_env_var(u.name), []).append(u.name)
    passwords: dict[str, str] = {}
    sources: dict[str, str] = {}
    keep: dict[str, str] = {}
    for u in user_list:
        var = password_env_var(u.name)
        if environ.get(var):
            if len(by_var[var]) > 1:
                raise ValueError(f"{var} would set the password of {by_var[var]}; use the credentials file")
            passwords[u.name] = _check_password(environ[var], var)
            sources[u.name] = var
            continue
        pw = stored.get(u.name)
        if pw is None:
            if generate is None:
                raise ValueError(f"no password for {u.name}: set {var} or generate the credentials file")
            pw = generate()
        passwords[u.name] = _check_password(pw, f"credentials for {u.name}")
        sources[u.name] = "file"
        keep[u.name] = pw
    return Passwords(passwords, sources, keep)


def load_credentials(path: Path) -> dict[str, str]:
    """User -> password from the credentials file; empty if it does not exist."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    users_ = data.get("users", {}) if isinstance(data, dict) else {}
    if not isinstance(users_, dict) or not all(isinstance(v, str) for v in users_.values()):
        raise ValueError(f"{path}: expected {{'users': {{name: password}}}}")
    return dict(users_)


def write_private(path: Path, text: str) -> bool:
    """Write ``text`` atomically with mode 0600; return False (and write nothing) if it is unchanged."""
    try:
        same = path.read_text() == text
    except FileNotFoundError:
        same = False
    if same:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True


def save_credentials(path: Path, stored: Mapping[str, str]) -> bool:
    body = {
        "_comment": "Generated by taishi.pipeline.tenancy; file-realm passwords. Keep this file 0600.",
        "users": dict(sorted(stored.items())),
    }
    return write_private(path, json.dumps(body, indent=2) + "\n")


# ----------------------------------------------------------------------------------------- the hashes --


def es_password_hash(password: str, cost: int = HASH_COST, salt: bytes | None = None) -> str:
    """A hash the file realm verifies: ``{PBKDF2}<cost>$<b64 salt>$<b64 PBKDF2-HMAC-SHA512, 256 bits>``."""
    if cost not in ES_PBKDF2_COSTS:
        raise ValueError(f"Elasticsearch accepts PBKDF2 costs {ES_PBKDF2_COSTS}, not {cost}")
    salt = salt if salt is not None else secrets.token_bytes(32)
    key = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, cost, 32)
    return f"{_PBKDF2_PREFIX}{cost}${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"


def verify_es_password_hash(password: str, hashed: str) -> bool:
    """Whether ``hashed`` (our PBKDF2 format) is a hash of ``password``; False for other formats."""
    if not hashed.startswith(_PBKDF2_PREFIX):
        return False
    try:
        cost_s, salt_b64, key_b64 = hashed[len(_PBKDF2_PREFIX) :].split("$")
        cost = int(cost_s)
        salt, key = base64.b64decode(salt_b64, validate=True), base64.b64decode(key_b64, validate=True)
    except ValueError:
        return False
    if cost not in ES_PBKDF2_COSTS:
        return False
    got = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, cost, len(key))
    return hmac.compare_digest(got, key)


def parse_users_file(text: str) -> dict[str, str]:
    """``name:hash`` lines of a file-realm ``users`` file."""
    out = {}
    for line in text.splitlines():
        name, sep, hashed = line.strip().partition(":")
        if sep and name and not name.startswith("#"):
            out[name] = hashed
    return out


def users_file(
    user_list: Sequence[User],
    passwords: Mapping[str, str],
    existing: Mapping[str, str],
    cost: int = HASH_COST,
) -> str:
    """``users`` text. A user whose existing hash still verifies keeps it, so unchanged input gives
    byte-identical output and Elasticsearch has nothing to reload."""
    lines = []
    for u in user_list:
        pw = passwords[u.name]
        old = existing.get(u.name)
        keep = old is not None and verify_es_password_hash(pw, old)
        lines.append(f"{u.name}:{old if keep else es_password_hash(pw, cost)}")
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------- institutions --


def load_institutions(path: Path) -> list[str]:
    """Institution ids of a Taishi TOML file (its ``[[institutions]]`` tables), validated."""
    from taishi.pipeline.config import Institution

    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"institutions file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"institutions file {path}: {exc}") from None
    raw = data.get("institutions") or []
    if not raw:
        raise ValueError(f"institutions file {path} has no [[institutions]]")
    ids = _unique(Institution.model_validate(i).id for i in raw)
    return ids


# ------------------------------------------------------------------------------------------------ CLI --


def _plan(args: argparse.Namespace, generate: bool) -> tuple[list[str], list[User], Passwords]:
    ids = load_institutions(args.institutions)
    verify_isolation(ids)
    user_list = users(ids)
    stored = load_credentials(args.credentials)
    pw = resolve_passwords(user_list, os.environ, stored, generate_password if generate else None)
    if generate:
        save_credentials(args.credentials, pw.stored)
    return ids, user_list, pw


def _print_users(user_list: Sequence[User], pw: Passwords) -> None:
    for u in user_list:
        print(f"{u.name}\t{u.role}\t{pw.passwords[u.name]}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m taishi.pipeline.tenancy",
        description="Elasticsearch roles and file-realm users that isolate each institution.",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    roles_p = sub.add_parser("roles", help="print roles.yml")
    roles_p.add_argument("--institutions", type=Path, required=True, help="TOML with [[institutions]]")
    for name, text in (
        ("write", "write roles.yml, users, users_roles into --out; print name<TAB>role<TAB>password"),
        ("users", "print name<TAB>role<TAB>password (no new passwords are generated)"),
    ):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("--institutions", type=Path, required=True, help="TOML with [[institutions]]")
        sp.add_argument("--credentials", type=Path, required=True, help="JSON file of generated passwords")
        if name == "write":
            sp.add_argument(
                "--out", type=Path, required=True, help="folder for roles.yml, users, users_roles"
            )
            sp.add_argument(
                "--existing-users", type=Path, help="current users file; its valid hashes are kept"
            )
    args = p.parse_args(argv)
    try:
        if args.cmd == "roles":
            ids = load_institutions(args.institutions)
            verify_isolation(ids)
            sys.stdout.write(roles_yaml(roles(ids)))
            return 0
        ids, user_list, pw = _plan(args, generate=args.cmd == "write")
        if args.cmd == "write":
            existing = {}
            if args.existing_users and args.existing_users.exists():
                existing = parse_users_file(args.existing_users.read_text())
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "roles.yml").write_text(roles_yaml(roles(ids)))
            (args.out / "users_roles").write_text(users_roles_file(user_list))
            write_private(args.out / "users", users_file(user_list, pw.passwords, existing))
        _print_users(user_list, pw)
    except (OSError, ValueError) as exc:
        print(f"tenancy: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
