"""Community ID v1 against the reference ``communityid`` package and the spec's baseline vectors."""

from __future__ import annotations

import ipaddress

import communityid
import numpy as np
import pytest

from taishi.pipeline.community_id import community_id, community_ids

N_FLOWS = 12_000
SEEDS = (0, 0xBEEF)


def _address_pools(rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """IPv4 and IPv6 texts, small enough pools that pairs repeat and share addresses.

    IPv6 appears both compressed and exploded, and IPv4-mapped, so one address has several spellings.
    """
    v4 = [str(ipaddress.IPv4Address(int(x))) for x in rng.integers(0, 2**32, 200, dtype=np.uint64)]
    v4 += ["0.0.0.0", "255.255.255.255", "10.0.0.1", "10.0.0.2", "127.0.0.1"]
    v6: list[str] = []
    for hi, lo in zip(rng.integers(0, 2**63, 200, dtype=np.uint64), rng.integers(0, 2**16, 200), strict=True):
        addr = ipaddress.IPv6Address((int(hi) << 64) | int(lo))
        v6.append(addr.exploded if rng.random() < 0.3 else addr.compressed)
    v6 += ["::", "::1", "fe80::1", "ff02::1", "::ffff:10.0.0.1", "0:0:0:0:0:0:0:1"]
    return v4, v6


def _random_flows(n: int, seed: int) -> tuple[list[str], list[str], np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    v4, v6 = _address_pools(rng)
    saddr: list[str] = []
    daddr: list[str] = []
    for is6 in rng.random(n) < 0.4:
        pool = v6 if is6 else v4
        src = pool[rng.integers(len(pool))]
        # One flow in ten between an address and itself, so the ports decide the order.
        dst = src if rng.random() < 0.1 else pool[rng.integers(len(pool))]
        saddr.append(src)
        daddr.append(dst)
    proto = rng.choice(np.array([6, 17, 132, 1, 58, 0, 2, 47, 50, 89, 255]), size=n)
    sport = rng.integers(0, 65536, n)
    dport = rng.integers(0, 65536, n)
    # Low ports on both sides often, so equal ports and near ties occur.
    low = rng.random(n) < 0.3
    sport[low] = rng.integers(0, 4, int(low.sum()))
    dport[low] = rng.integers(0, 4, int(low.sum()))
    icmp = (proto == 1) | (proto == 58)
    # ICMP: half the types have a request/reply counterpart, half are any type at all.
    two_way = np.array(
        [0, 8, 9, 10, 13, 14, 15, 16, 17, 18, 128, 129, 130, 131, 133, 134, 135, 136, 139, 140, 144, 145]
    )
    k = int(icmp.sum())
    sport[icmp] = np.where(rng.random(k) < 0.5, rng.choice(two_way, k), rng.integers(0, 256, k))
    dport[icmp] = rng.integers(0, 256, k)
    return saddr, daddr, sport, dport, proto


def _reference(saddr: str, daddr: str, sport: int, dport: int, proto: int, seed: int) -> str:
    if proto == 1:
        tpl = communityid.FlowTuple.make_icmp(saddr, daddr, sport, dport)
    elif proto == 58:
        tpl = communityid.FlowTuple.make_icmp6(saddr, daddr, sport, dport)
    elif proto in (6, 17, 132):
        tpl = communityid.FlowTuple(proto, saddr, daddr, sport, dport)
    else:
        tpl = communityid.FlowTuple(proto, saddr, daddr)
    value = communityid.CommunityID(seed).calc(tpl)
    assert value is not None
    return str(value)


@pytest.fixture(scope="module")
def flows() -> tuple[list[str], list[str], np.ndarray, np.ndarray, np.ndarray]:
    return _random_flows(N_FLOWS, seed=20261125)


@pytest.mark.parametrize("seed", SEEDS)
def test_matches_reference_package(flows, seed: int) -> None:
    saddr, daddr, sport, dport, proto = flows
    rows = list(zip(saddr, daddr, sport.tolist(), dport.tolist(), proto.tolist(), strict=True))
    expected = [_reference(*row, seed) for row in rows]
    scalar = [community_id(*row, seed=seed) for row in rows]
    batch = community_ids(saddr, daddr, sport, dport, proto, seed=seed)
    assert batch.dtype == object
    assert scalar == expected
    assert batch.tolist() == expected


def test_reference_sample_covers_every_case(flows) -> None:
    saddr, daddr, _, _, proto = flows
    six = np.array([":" in a for a in saddr])
    for p in (6, 17, 132, 1, 58, 47):
        assert ((proto == p) & six).any() and ((proto == p) & ~six).any(), p
    assert (np.array(saddr) == np.array(daddr)).sum() > 100
    assert len(saddr) >= 10_000


def test_batch_accepts_numpy_text_and_nan_ports_without_ports() -> None:
    saddr = np.array(["10.0.0.2", "2001:db8::1", "10.0.0.1"])
    daddr = np.array(["10.0.0.1", "2001:db8::2", "10.0.0.9"])
    sport = np.array([np.nan, 5353.0, 8.0])
    dport = np.array([np.nan, 53.0, 0.0])
    proto = np.array([47, 17, 1], dtype=np.uint8)
    expected = [
        community_id("10.0.0.2", "10.0.0.1", 0, 0, 47),
        community_id("2001:db8::1", "2001:db8::2", 5353, 53, 17),
        community_id("10.0.0.1", "10.0.0.9", 8, 0, 1),
    ]
    assert community_ids(saddr, daddr, sport, dport, proto).tolist() == expected


def test_empty_batch() -> None:
    empty = np.array([], dtype=np.int64)
    assert community_ids([], [], empty, empty, empty).shape == (0,)


# The spec repository's baseline (baseline/baseline_deflt.json and baseline_seed1.json): flows from its
# sample pcaps with their IDs. ICMP rows list the type and the already mapped counter-type or code, which
# map to themselves again, so they can be passed as type and code.
BASELINE = [
    # proto, saddr, daddr, sport, dport, ID with seed 0, ID with seed 1
    (58, "fe80::200:86ff:fe05:80da", "fe80::260:97ff:fe07:69ea", 135, 136,
     "1:dGHyGvjMfljg6Bppwm3bg0LO8TY=", "1:kHa1FhMYIT6Ym2Vm2AOtoOARDzY="),
    (58, "fe80::260:97ff:fe07:69ea", "fe80::200:86ff:fe05:80da", 136, 135,
     "1:dGHyGvjMfljg6Bppwm3bg0LO8TY=", "1:kHa1FhMYIT6Ym2Vm2AOtoOARDzY="),
    (58, "fe80::260:97ff:fe07:69ea", "fe80::200:86ff:fe05:80da", 135, 136,
     "1:zavyT/cezQr1fmImYCwYnMXbgck=", "1:2hSqmsDZ2kdcY9kbiUzOEBic0iM="),
    (58, "3ffe:501:1800:2345::2", "3ffe:507:0:1:200:86ff:fe05:80da", 3, 0,
     "1:2ObVBgIn28oZvibYZhZMBgh7WdQ=", "1:lVEtCZpYu84Xqaa++3lXFyuu2n4="),
    (58, "3ffe:501:410:0:2c0:dfff:fe47:33e", "3ffe:507:0:1:200:86ff:fe05:80da", 1, 4,
     "1:hLZd0XGWojozrvxqE0dWB1iM6R0=", "1:W8MHwXpWzpoSTD+cGcaJr4u0ys8="),
    (58, "3ffe:507:0:1:200:86ff:fe05:80da", "3ffe:501:0:1001::2", 128, 129,
     "1:+TW+HtLHvV1xnGhV1lv7XoJrqQg=", "1:GfZxjAkDk2MkegpBYHV6tadtFXQ="),
    (58, "3ffe:501:0:1001::2", "3ffe:507:0:1:200:86ff:fe05:80da", 129, 128,
     "1:+TW+HtLHvV1xnGhV1lv7XoJrqQg=", "1:GfZxjAkDk2MkegpBYHV6tadtFXQ="),
    (58, "fe80::200:86ff:fe05:80da", "ff02::2", 133, 134,
     "1:hO+sN4H+MG5MY/8hIrXPqc4ZQz0=", "1:L7Ka0ZMYu+J3bL4ulW2PrqyXNo8="),
    (58, "fe80::260:97ff:fe07:69ea", "ff02::1", 134, 133,
     "1:pkvHqCL88/tg1k4cPigmZXUtL00=", "1:K/ee5UCqAMAQXDorP5nSa2CGLjc="),
    (1, "192.168.0.89", "192.168.0.1", 8, 0,
     "1:X0snYXpgwiv9TZtqg64sgzUn6Dk=", "1:03g6IloqVBdcZlPyX8r0hgoE7kA="),
    (1, "192.168.0.1", "192.168.0.89", 0, 8,
     "1:X0snYXpgwiv9TZtqg64sgzUn6Dk=", "1:03g6IloqVBdcZlPyX8r0hgoE7kA="),
    (1, "10.0.0.1", "10.0.0.2", 11, 0,
     "1:YHxtAirCG//0OzkcVAukqKQN9xM=", "1:XjUibYHaafLQ3pxQeiMI8g25q20="),
    (6, "2001:470:e5bf:dead:4957:2174:e82c:4887", "2607:f8b0:400c:c03::1a", 63943, 25,
     "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4=", "1:eJYTW6AOzFLlSUoESovMjnu7rMw="),
    (6, "2607:f8b0:400c:c03::1a", "2001:470:e5bf:dead:4957:2174:e82c:4887", 25, 63943,
     "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4=", "1:eJYTW6AOzFLlSUoESovMjnu7rMw="),
    (132, "192.168.170.8", "192.168.170.56", 7, 7,
     "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs=", "1:5w3ZRjeKBzqT3zsaEECDGjUbYeg="),
    (132, "192.168.170.56", "192.168.170.8", 7, 7,
     "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs=", "1:5w3ZRjeKBzqT3zsaEECDGjUbYeg="),
    (6, "128.232.110.120", "66.35.250.204", 34855, 80,
     "1:LQU9qZlK+B5F3KDmev6m5PMibrg=", "1:3V71V58M3Ksw/yuFALMcW0LAHvc="),
    (6, "66.35.250.204", "128.232.110.120", 80, 34855,
     "1:LQU9qZlK+B5F3KDmev6m5PMibrg=", "1:3V71V58M3Ksw/yuFALMcW0LAHvc="),
    (17, "192.168.1.52", "8.8.8.8", 54585, 53,
     "1:d/FP5EW3wiY1vCndhwleRRKHowQ=", "1:Q9We8WO3piVF8yEQBNJF4uiSVrI="),
    (17, "8.8.8.8", "192.168.1.52", 53, 54585,
     "1:d/FP5EW3wiY1vCndhwleRRKHowQ=", "1:Q9We8WO3piVF8yEQBNJF4uiSVrI="),
    (46, "10.1.12.1", "10.1.12.2", 0, 0,
     "1:KHlLkgoJW7ifUTyTSgyVfkFHzKw=", "1:rYir8gphR31noO9iDRQmF/BteEI="),
    (46, "10.1.12.2", "10.1.12.1", 0, 0,
     "1:KHlLkgoJW7ifUTyTSgyVfkFHzKw=", "1:rYir8gphR31noO9iDRQmF/BteEI="),
]  # fmt: skip


@pytest.mark.parametrize(("seed", "column"), [(0, 5), (1, 6)])
def test_spec_baseline(seed: int, column: int) -> None:
    proto, saddr, daddr, sport, dport = ([row[i] for row in BASELINE] for i in range(5))
    expected = [row[column] for row in BASELINE]
    scalar = [community_id(*row[1:5], row[0], seed=seed) for row in BASELINE]
    batch = community_ids(saddr, daddr, np.array(sport), np.array(dport), np.array(proto), seed=seed)
    assert scalar == expected
    assert batch.tolist() == expected


@pytest.mark.parametrize("bad", ["10.0.0.256", "10.0.0", "2001:db8::1::2", "fe80::1%eth0", "", "example.org"])
def test_bad_address_raises_value_error_naming_it(bad: str) -> None:
    with pytest.raises(ValueError, match=repr(bad).replace(".", r"\.")):
        community_id("10.0.0.1", bad, 1, 2, 6)
    port = np.array([1, 2])
    with pytest.raises(ValueError, match=r"daddr\[1\]"):
        community_ids(["10.0.0.1", "10.0.0.2"], ["10.0.0.3", bad], port, port, np.array([6, 6]))


def test_mixed_families_and_out_of_range_values_raise() -> None:
    with pytest.raises(ValueError, match="different address families"):
        community_id("10.0.0.1", "::1", 1, 2, 6)
    with pytest.raises(ValueError, match=r"saddr\[0\].*different address families"):
        community_ids(["10.0.0.1"], ["::1"], np.array([1]), np.array([2]), np.array([6]))
    with pytest.raises(ValueError, match="sport is 65536"):
        community_id("10.0.0.1", "10.0.0.2", 65536, 2, 6)
    with pytest.raises(ValueError, match=r"dport\[1\] is 300, expected 0\.\.255 for protocol 1"):
        community_ids(["10.0.0.1"] * 2, ["10.0.0.2"] * 2, [1, 3], [2, 300], [6, 1])
    with pytest.raises(ValueError, match=r"sport\[1\] is None, expected an integer"):
        community_ids(["10.0.0.1"] * 2, ["10.0.0.2"] * 2, np.array([1, None]), [2, 3], [6, 17])
    with pytest.raises(ValueError, match=r"dport\[0\] is nan, expected an integer"):
        community_ids(["10.0.0.1"], ["10.0.0.2"], [1.0], [np.nan], [6])
    with pytest.raises(ValueError, match="seed is 65536"):
        community_id("10.0.0.1", "10.0.0.2", 1, 2, 6, seed=65536)
