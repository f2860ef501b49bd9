from __future__ import annotations

import pytest

from taishi.pipeline.config import Settings


def test_toml_then_environment_overrides(tmp_path, monkeypatch):
    cfg = tmp_path / "t.toml"
    cfg.write_text(
        'sensor_id = "from-file"\n[kafka]\nbootstrap_servers = "file:9092"\ngroup_id = "g-file"\n'
        '[[institutions]]\nid = "bank-a"\ninternal_cidrs = ["10.0.0.0/8"]\n'
    )
    monkeypatch.setenv("TAISHI_KAFKA__BOOTSTRAP_SERVERS", "env:9092")
    s = Settings.load(cfg)
    assert s.kafka.bootstrap_servers == "env:9092"  # environment wins
    assert s.kafka.group_id == "g-file"  # file beats default
    assert s.sensor_id == "from-file"
    assert s.institution("bank-a").internal_cidrs == ["10.0.0.0/8"]
    assert "172.16.0.0/12" in s.institution("unknown-org").internal_cidrs  # defaults for the unconfigured


def test_secrets_in_the_file_are_refused(tmp_path):
    cfg = tmp_path / "t.toml"
    cfg.write_text('[kafka]\nsasl_password = "hunter2"\n')
    with pytest.raises(ValueError, match="TAISHI_KAFKA__SASL_PASSWORD"):
        Settings.load(cfg)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[institutions]]\nid = "Bank A"\n', "institution id"),
        ('[[institutions]]\nid = "bank-a"\ninternal_cidrs = ["10.0.0.0/33"]\n', "is not a network"),
        ('[[institutions]]\nid = "bank-a"\n[[institutions]]\nid = "bank-a"\n', "duplicate ids"),
        ("[window]\nsize_s = 0\n", "greater than or equal to 1"),
        ("[kafka\n", "t.toml"),
    ],
)
def test_bad_config_names_the_problem(tmp_path, text, message):
    cfg = tmp_path / "t.toml"
    cfg.write_text(text)
    with pytest.raises(ValueError, match=message):
        Settings.load(cfg)


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Settings.load(tmp_path / "nope.toml")


def test_example_config_in_deploy_loads():
    from pathlib import Path

    s = Settings.load(Path(__file__).resolve().parents[3] / "deploy" / "taishi.example.toml")
    assert [i.id for i in s.institutions] == ["bank-a", "insurer-b"]
