from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from taishi.detectors.dns_tunnel import DnsTunnel, DnsTunnelParams, shannon_entropy, tunnel_score
from taishi.pipeline.attacks_dns import _dns, av_reputation_lookups, busy_resolver, cdn_hostnames, dns_tunnel

START = 1_795_000_200_000  # on a 5-minute boundary
WINDOW = 300_000


def _run(det: DnsTunnel, cols: dict[str, np.ndarray]) -> list:
    df = pd.DataFrame(cols)
    wstart = df["@timestamp"].to_numpy() // WINDOW * WINDOW
    det.add(df, wstart)
    out = []
    for w in sorted(set(wstart.tolist())):
        out.extend(det.close(w, w + WINDOW))
    return out


def _queries(
    subdomains: list[str], domain: str = "example-sync.net", qtype: str = "A"
) -> dict[str, np.ndarray]:
    ts = START + np.arange(len(subdomains), dtype=np.int64) * 1000
    return _dns(ts, "bank-a", "10.0.0.5", [f"{s}.{domain}" for s in subdomains], qtype=qtype)


def test_shannon_entropy_ignores_dots():
    assert list(shannon_entropy(np.array(["aaaa", "abcd", "a.b", ""], dtype=object))) == [0.0, 2.0, 1.0, 0.0]


def test_tunnel_score_is_monotone_and_bounded():
    assert tunnel_score(15, 0.0, 0.0) == 60
    assert tunnel_score(100, 0.0, 0.0) == 68
    assert tunnel_score(1000, 0.0, 0.0) == 92
    assert tunnel_score(20, 1.0, 0.0) > tunnel_score(20, 0.5, 0.0)
    assert tunnel_score(5000, 1.0, 1.0) == 100


def test_elastic_thresholds_long_names_and_query_count():
    rng = np.random.default_rng(0)
    long_ = [rng.bytes(30).hex() for _ in range(25)]  # 60 characters each
    (f,) = _run(DnsTunnel(), _queries(long_))
    assert f.evidence["kind"] == "long_subdomains" and f.technique == "T1572"
    assert f.evidence["encoded_names"] == 25 and f.evidence["registered_domain"] == "example-sync.net"
    assert _run(DnsTunnel(), _queries(long_[:24])) == []  # 24 queries: under the rule
    short = [rng.bytes(8).hex() for _ in range(40)]  # 16 characters: not encoded, too few for a band
    assert _run(DnsTunnel(), _queries(short)) == []


def test_many_random_subdomains_reach_a_band_but_ordinary_hosts_do_not():
    rng = np.random.default_rng(1)
    (f,) = _run(DnsTunnel(), _queries([rng.bytes(6).hex() for _ in range(150)]))
    assert f.evidence["kind"] == "many_subdomains" and f.evidence["subdomain_band"] == 100
    assert f.technique == "T1071.004"
    words = ["www", "mail", "api", "static", "login", "img", "cdn", "assets", "shop", "news"]
    ordinary = [f"{w}{i}" for i in range(15) for w in words]  # 150 distinct ordinary host names
    assert _run(DnsTunnel(), _queries(ordinary)) == []


def test_txt_volume():
    rng = np.random.default_rng(2)
    names = [f"c{rng.bytes(5).hex()}" for _ in range(30)]
    (f,) = _run(DnsTunnel(), _queries(names, qtype="TXT"))
    assert f.evidence["kind"] == "txt_volume" and f.evidence["txt_null_queries"] == 30


def test_iodine_like_tunnel_fires_with_evidence():
    cols, label = dns_tunnel("bank-a", "10.0.2.17", START, queries=300, duration_s=250)
    (f,) = _run(DnsTunnel(), cols)
    assert (f.entity_ip, f.destination_ip) == ("10.0.2.17", "10.0.0.53")
    assert f.evidence["max_subdomain_length"] >= 100 and f.evidence["txt_null_queries"] == 300
    assert f.score >= 90 and label.rule == "dns_tunnel"


def test_the_allowlist_is_what_silences_the_anti_virus_look_ups():
    cols, _ = av_reputation_lookups("bank-a", "10.0.1.77", START, lookups=200, duration_s=250)
    assert _run(DnsTunnel(), cols) == []
    (f,) = _run(DnsTunnel(DnsTunnelParams(allow_domains=())), cols)
    assert f.evidence["registered_domain"] == "sophosxl.net"


@pytest.mark.parametrize("injector", [cdn_hostnames, busy_resolver])
def test_cdn_and_resolver_traffic_is_silent_even_without_the_allowlist(injector):
    cols, _ = injector("bank-a", "10.0.0.53", START, duration_s=250)
    assert _run(DnsTunnel(DnsTunnelParams(allow_domains=())), cols) == []


def test_internal_zones_are_skipped_unless_asked():
    rng = np.random.default_rng(3)
    cols = _queries([rng.bytes(30).hex() for _ in range(30)], domain="corp.internal")
    assert _run(DnsTunnel(), cols) == []
    assert len(_run(DnsTunnel(DnsTunnelParams(public_only=False)), cols)) == 1
