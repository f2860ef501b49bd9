"""One typed configuration for every Taishi process.

Built once at start (``Settings.load``) and passed down; nothing reads the environment later.
Sources, lowest priority first: defaults, a TOML file (``--config`` or ``TAISHI_CONFIG``), then
``TAISHI_SECTION__KEY`` environment variables (e.g. ``TAISHI_KAFKA__BOOTSTRAP_SERVERS``).
Secrets (passwords) come only from the environment or files, never from the TOML file.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from taishi.pipeline import contract

DEFAULT_INTERNAL_CIDRS = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]


class KafkaSettings(BaseModel):
    """Where and how the pipeline and shippers talk to Kafka."""

    bootstrap_servers: str = "127.0.0.1:39092"
    flows_topic: str = contract.FLOWS_TOPIC
    dlq_topic: str = contract.DLQ_TOPIC
    state_topic: str = contract.STATE_TOPIC
    group_id: str = "taishi-pipeline"
    client_id: str = "taishi"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    compression: Literal["lz4", "gzip", "none"] = "lz4"
    max_poll_records: int = Field(200, ge=1, description="Kafka messages (each a batch of records) per poll")
    batch_records: int = Field(20_000, ge=1, description="records per Kafka message written by shippers")
    partitions: int = Field(4, ge=1, description="partitions when the pipeline creates the flows topic")

    def client_options(self) -> dict[str, Any]:
        """Options shared by kafka-python producers, consumers and admin clients."""
        opts: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            opts["sasl_mechanism"] = self.sasl_mechanism
            opts["sasl_plain_username"] = self.sasl_username
            opts["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        if self.ssl_cafile:
            opts["ssl_cafile"] = str(self.ssl_cafile)
        return opts


class ElasticsearchSettings(BaseModel):
    """The Elasticsearch cluster that stores entity windows, alerts and opt-in raw flows."""

    url: str = "http://127.0.0.1:39200"
    username: str | None = None
    password: SecretStr | None = None
    ca_certs: Path | None = None
    bulk_docs: int = Field(5_000, ge=1, description="documents per bulk request")
    max_retries: int = Field(8, ge=0, description="retries of 429/5xx items before the batch fails")
    retry_backoff_s: float = Field(0.5, gt=0, description="first backoff; doubles per retry")
    retention_days: int = Field(90, ge=1, description="indices older than this are deleted")
    refresh_interval: str = "1s"


class WindowSettings(BaseModel):
    """Tumbling event-time windows of the per-entity behaviour documents."""

    size_s: int = Field(300, ge=1, description="window length in seconds (event time)")
    allowed_lateness_s: int = Field(60, ge=0, description="records this late still update their window")
    idle_close_s: float = Field(
        15.0, gt=0, description="a partition quiet this long (wall clock) closes its open windows"
    )


class Institution(BaseModel):
    """One member institution of the sector."""

    id: str
    name: str = ""
    internal_cidrs: list[str] = Field(default_factory=lambda: list(DEFAULT_INTERNAL_CIDRS))
    index_flows: bool = Field(False, description="also index raw flows (off by default: volume)")

    @field_validator("id")
    @classmethod
    def _valid_id(cls, v: str) -> str:
        if not contract.ORG_ID_RE.match(v):
            raise ValueError(f"institution id {v!r} must match {contract.ORG_ID_RE.pattern}")
        return v

    @field_validator("internal_cidrs")
    @classmethod
    def _valid_cidrs(cls, v: list[str]) -> list[str]:
        for cidr in v:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"internal_cidrs: {cidr!r} is not a network: {exc}") from None
        return v


class EnrichSettings(BaseModel):
    """Offline enrichment sources; each is optional and leaves its fields empty when absent."""

    asset_inventory: Path | None = Field(None, description="CSV: organization.id,ip,owner,criticality")
    geoip_country_db: Path | None = Field(None, description="MaxMind-format country or city database")
    geoip_asn_db: Path | None = Field(None, description="MaxMind-format ASN database")
    intel_files: list[Path] = Field(default_factory=list, description="indicator files (CSV or one per line)")


class AllowEntry(BaseModel):
    """An allowlist entry: findings of ``rule`` about ``entity`` in ``org`` are dropped until ``expires``."""

    rule: str = Field("*", description="detector id, or * for every detector")
    org: str = Field("*", description="institution id, or * for every institution")
    entity: str | None = Field(None, description="address or network of the entity; None for any")
    expires: datetime | None = Field(None, description="UTC; None never expires (use sparingly)")
    reason: str = ""

    @field_validator("entity")
    @classmethod
    def _valid_entity(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                ipaddress.ip_network(v, strict=False)
            except ValueError:
                raise ValueError(f"allowlist entity {v!r} is not an address or network") from None
        return v


class DetectionSettings(BaseModel):
    """Which detectors run, their parameters, suppression and allowlists."""

    enabled: list[str] | None = Field(None, description="detector ids; None runs every registered one")
    params: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per detector id")
    suppress_s: int = Field(
        3600, ge=60, description="findings of one rule+entity within this many seconds are one incident"
    )
    allowlist: list[AllowEntry] = Field(default_factory=list)


class StoreSettings(BaseModel):
    """The embedded local store used when no Elasticsearch is configured."""

    path: Path = Path("taishi-local.sqlite")


class Settings(BaseSettings):
    """Everything a Taishi process needs, in one object."""

    model_config = SettingsConfigDict(env_prefix="TAISHI_", env_nested_delimiter="__", extra="forbid")

    sensor_id: str = "sensor-1"
    institutions: list[Institution] = Field(default_factory=list)
    default_internal_cidrs: list[str] = Field(default_factory=lambda: list(DEFAULT_INTERNAL_CIDRS))
    community_id_seed: int = Field(0, ge=0, le=65535)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    elasticsearch: ElasticsearchSettings = Field(default_factory=ElasticsearchSettings)
    window: WindowSettings = Field(default_factory=WindowSettings)
    enrich: EnrichSettings = Field(default_factory=EnrichSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    detection: DetectionSettings = Field(default_factory=DetectionSettings)

    @model_validator(mode="after")
    def _unique_institutions(self) -> Settings:
        ids = [i.id for i in self.institutions]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"institutions: duplicate ids {sorted(dup)}")
        return self

    def institution(self, org_id: str) -> Institution:
        """The configured institution, or one with the default internal ranges."""
        for inst in self.institutions:
            if inst.id == org_id:
                return inst
        return Institution(id=org_id, internal_cidrs=self.default_internal_cidrs)

    @classmethod
    def load(cls, path: Path | str | None = None, **overrides: Any) -> Settings:
        """Defaults < TOML file < TAISHI_* environment < explicit keyword overrides."""
        path = path or os.environ.get("TAISHI_CONFIG")
        data: dict[str, Any] = {}
        if path:
            p = Path(path)
            try:
                data = tomllib.loads(p.read_text())
            except FileNotFoundError:
                raise FileNotFoundError(f"config file {p} does not exist") from None
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"config file {p}: {exc}") from None
            for section in ("kafka", "elasticsearch"):
                for secret in ("sasl_password", "password"):
                    if secret in data.get(section, {}):
                        raise ValueError(
                            f"config file {p}: {section}.{secret} must come from the environment "
                            f"(TAISHI_{section.upper()}__{secret.upper()}), not the file"
                        )
        # Environment wins over the file: let pydantic-settings read env, then lay file values under it.
        env_only = cls(**overrides)
        merged = _deep_merge(data, env_only.model_dump(exclude_unset=True, exclude_defaults=False))
        return cls.model_validate({**merged, **overrides}) if merged or overrides else env_only


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
