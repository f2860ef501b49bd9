from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from taishi.detectors.dga import Dga, DgaParams, dga_score, score_labels, score_lines, score_names
from taishi.detectors.dga_model import (
    MODEL_FILE,
    Dataset,
    DgaModel,
    encode,
    leave_families_out,
    recall_at_fpr,
    roc_auc,
    shape_features,
    shipped_model,
)
from taishi.detectors.domains import split
from taishi.pipeline.attacks import merge
from taishi.pipeline.attacks_dns import cdn_hostnames, dga_host, dga_names
from taishi.pipeline.simulator import benign_names

START = 1_795_000_200_000  # on a 5-minute boundary
MIN = 60_000


# Registered domains ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "registered", "label", "subdomain", "public"),
    [
        ("www.bbc.co.uk", "bbc.co.uk", "bbc", "www", True),
        ("d1x2y3z4.cloudfront.net", "cloudfront.net", "cloudfront", "d1x2y3z4", True),  # the CDN's label
        ("a.b.x7kq9.ddns.net", "x7kq9.ddns.net", "x7kq9", "a.b", True),  # dynamic DNS: one label more
        ("Mail.Google.COM.", "google.com", "google", "mail", True),
        ("host.corp.local", "corp.local", "corp", "host", False),
        ("acahoniz.bazar", "acahoniz.bazar", "acahoniz", "", False),
        ("wpad", "wpad", "wpad", "", False),
    ],
)
def test_split_cuts_names_at_the_registered_domain(name, registered, label, subdomain, public):
    assert tuple(split(name)) == (registered, label, subdomain, public)


@pytest.mark.parametrize("name", ["10.1.2.3", "4.3.2.1.in-addr.arpa", "", "a..b", "fe80::1"])
def test_addresses_and_reverse_lookups_are_not_domains(name):
    assert split(name).registered == ""


def test_the_suffix_list_is_the_bundled_snapshot(monkeypatch):
    import requests

    from taishi.detectors import domains

    def refuse(*args, **kwargs):
        raise AssertionError("the public suffix list must not be fetched")

    monkeypatch.setattr(requests.Session, "request", refuse)
    domains._extractor.cache_clear()
    domains.split.cache_clear()
    assert domains.split("www.bbc.co.uk").registered == "bbc.co.uk"


# The model ---------------------------------------------------------------------------------------------
def test_shape_features_are_explainable():
    f = dict(
        zip(
            ("len", "ent", "dig", "vow", "cons", "drun", "alt", "hyph", "dist"),
            shape_features(encode(["aabb", "x1y2z3", "bcdfg-h"])).T,
            strict=True,
        )
    )
    assert f["ent"][0] == pytest.approx(1.0)  # two characters, equally often
    assert f["dig"][1] == pytest.approx(0.5)
    assert f["alt"][1] == pytest.approx(5 / 6)  # letter/digit changes per character
    assert f["cons"][2] == 5 and f["hyph"][2] == 1


def test_shipped_model_is_small_versioned_and_describes_its_data():
    from importlib import resources

    path = resources.files("taishi.detectors") / "models" / MODEL_FILE
    assert path.is_file() and len(path.read_bytes()) < 2_000_000
    assert (resources.files("taishi.detectors") / "models" / "MODEL.md").is_file()
    m = shipped_model()
    assert m.meta_["version"] == 1 and "Majestic" in m.meta_["data"]["benign"]
    assert len(m.coef_) == len(m.feature_names_)


def test_generated_names_score_high_and_popular_names_low():
    for algorithm in ("letters", "hashed", "mixed"):
        s = score_names(dga_names(algorithm, 300, seed=5))
        assert np.median(s) > 0.95, algorithm
    popular = score_names(list(benign_names()))
    assert np.mean(popular >= 0.9) < 0.01


def test_cdn_host_names_are_judged_by_the_cdn_label():
    names = ["d1q2w3e4r5t6y7.cloudfront.net", "e123456.dscx.akamaiedge.net", "xk3j9q2.b-cdn.net"]
    assert np.all(score_names(names) < 0.5)
    assert score_names(["d1q2w3e4r5t6y7.cloudfront.net"])[0] == score_labels(["cloudfront"])[0]
    assert score_names(["qxkzjvbnwpl.ddns.net"])[0] > 0.9  # under a dynamic-DNS zone the label is scored


def test_punycode_and_empty_labels_score_zero():
    assert list(score_labels(["xn--80ak6aa92e", ""])) == [0.0, 0.0]


def test_score_lines_prints_one_probability_per_name():
    out = io.StringIO()
    assert score_lines(io.StringIO("google.com\n\n# comment\nqxkzjvbnwplrtd.info\n"), out) == 0
    lines = out.getvalue().splitlines()
    assert [ln.split("\t")[1] for ln in lines] == ["google.com", "qxkzjvbnwplrtd.info"]
    low, high = (float(ln.split("\t")[0]) for ln in lines)
    assert low < 0.1 < 0.9 < high


def _toy_dataset() -> Dataset:
    benign = [str(x).split(".")[0] for x in benign_names()]
    fams = {
        a: [n.split(".")[0] for n in dga_names(a, 150, seed=i)]
        for i, a in enumerate(("letters", "hashed", "mixed"))
    }
    labels = benign + [x for v in fams.values() for x in v]
    family = ["majestic"] * len(benign) + [a for a, v in fams.items() for _ in v]
    y = [0] * len(benign) + [1] * (len(labels) - len(benign))
    return Dataset(np.array(labels, dtype=object), np.array(y), np.array(family, dtype=object))


def test_fit_save_load_round_trip(tmp_path):
    ds = _toy_dataset()
    m = DgaModel(orders=(2, 3), folds=3).fit(list(ds.labels), ds.y, ds.family)
    assert m.coef_.shape == (len(m.feature_names_),)
    m.save(tmp_path / "m.npz", data={"note": "toy"})
    again = DgaModel.load(tmp_path / "m.npz")
    probe = ["google", "qxkzjvbnwpl", "a1b2c3d4e5"]
    assert np.allclose(m.predict_proba(probe), again.predict_proba(probe))
    assert again.meta_["data"] == {"note": "toy"}


def test_leave_families_out_reports_every_family():
    res = leave_families_out(_toy_dataset(), per_family=150, benign_folds=3, orders=(2, 3), folds=3)
    assert [r["family"] for r in res["families"]] == ["hashed", "letters", "mixed"]
    assert all(0.9 < r["roc_auc"] <= 1 for r in res["families"])
    assert 0 <= res["pooled_recall_at_1pct_fpr"] <= 1


def test_roc_auc_and_recall_at_fpr():
    assert roc_auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert roc_auc(np.array([1.0]), np.array([1.0])) == 0.5
    neg = np.arange(100.0)
    assert recall_at_fpr(np.array([98.5, 100.0, 50.0]), neg, 0.01) == pytest.approx(1 / 3)


# The score and the detector ----------------------------------------------------------------------------
def test_dga_score_is_monotone_and_explainable():
    assert dga_score(7, 8, 9, 10, 1.0, 1.0) == 0
    assert dga_score(8, 8, 0, 10, 1.0, 0.0) == 60
    assert dga_score(16, 8, 0, 10, 1.0, 0.0) == 70
    assert dga_score(0, 8, 20, 10, 1.0, 1.0) == 80
    assert dga_score(0, 8, 20, 10, 0.0, 1.0) < dga_score(0, 8, 20, 10, 1.0, 1.0)
    assert dga_score(10_000, 8, 10_000, 10, 1.0, 1.0) == 100


def _run(det: Dga, cols: dict[str, np.ndarray], window_ms: int = 5 * MIN) -> list:
    df = pd.DataFrame(cols)
    wstart = df["@timestamp"].to_numpy() // window_ms * window_ms
    det.add(df, wstart)
    out = []
    for w in sorted(set(wstart.tolist())):
        out.extend(det.close(w, w + window_ms))
    return out


def test_infected_host_fires_with_its_names_as_evidence():
    cols, _ = dga_host("bank-a", "10.0.0.9", START, names=60, duration_s=240)
    (f,) = _run(Dga(), cols)
    assert f.entity_ip == "10.0.0.9" and f.technique == "T1568.002"
    assert f.evidence["kind"] == "nxdomain" and f.evidence["nxdomain_dga_domains"] >= 50
    assert len(f.evidence["sample"]) == 10 and f.score >= 80


def test_a_resolver_whose_failures_are_mostly_ordinary_stays_silent():
    dga, _ = dga_host("bank-a", "10.0.0.53", START, names=15, resolved=0, duration_s=240)
    names = [f"host{i}.{b}" for i, b in enumerate(np.resize(benign_names(), 200))]
    ordinary = {k: np.resize(v, 200) for k, v in dga.items()}
    ordinary["dns.question.name"] = np.array(names, dtype=object)
    cols = merge(dga, ordinary)
    assert _run(Dga(), cols) == []
    assert len(_run(Dga(DgaParams(min_nx_share=0.0)), cols)) == 1


def test_cdn_host_names_stay_silent():
    cols, _ = cdn_hostnames("bank-a", "10.0.0.7", START, queries=400, duration_s=240)
    assert _run(Dga(), cols) == []


def test_slow_dga_memory_survives_a_restart():
    cols, _ = dga_host("bank-a", "10.0.0.4", START, algorithm="mixed", names=40, duration_s=4 * 3600, seed=3)
    ts = cols["@timestamp"]
    half = ts < START + 2 * 3600 * 1000
    first = {k: v[half] for k, v in cols.items()}
    second = {k: v[~half] for k, v in cols.items()}
    whole = _run(Dga(), cols)
    assert [f.evidence["kind"] for f in whole] == ["slow"]
    a = Dga()
    assert _run(a, first) == []
    b = Dga()
    b.restore(a.snapshot())
    assert [(f.window_start_ms, f.evidence) for f in _run(b, second)] == [
        (f.window_start_ms, f.evidence) for f in whole
    ]
