"""The simulator's indexes answer as the scans they replaced: a differential test of the
address overlap check (VPP's ADDRESS_IN_USE rule) against a brute-force one."""

from __future__ import annotations

import ipaddress
import random

import pytest

from datasync.vpp.sim.state import ADDRESS_IN_USE, OK, Dataplane, IPAddress


def _brute_force_in_use(
    have: list[tuple[int, IPAddress, int]], sw: int, addr: IPAddress, length: int
) -> bool:
    # the old simulator's check: every address of the VRF, through ipaddress
    net = ipaddress.ip_network((addr, length), strict=False)
    for o_sw, o_addr, o_len in have:
        if o_addr.version != addr.version:
            continue
        if o_sw == sw and o_len == length and o_addr != addr:
            continue  # a second address from the same subnet on the same interface
        if ipaddress.ip_network((o_addr, o_len), strict=False).overlaps(net):
            return True
    return False


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("seed", range(4))
def test_overlap_check_matches_brute_force(version: int, seed: int) -> None:
    rng = random.Random(seed)
    dp = Dataplane(1, rng=random.Random(seed))
    loops = [dp.create_loopback()[1]["sw_if_index"] for _ in range(4)]
    bits = 32 if version == 4 else 128
    # a small space (the top byte varies little) so that prefixes overlap often
    lengths = [8, 16, 24, 30, bits] if version == 4 else [48, 64, 96, 126, bits]
    have: list[tuple[int, IPAddress, int]] = []
    answers = {OK: 0, ADDRESS_IN_USE: 0}
    for _ in range(600):
        sw = rng.choice(loops)
        if have and rng.random() < 0.3:
            o_sw, o_addr, o_len = rng.choice(have)
            rv, _ = dp.add_del_address(o_sw, False, False, o_addr, o_len)
            assert rv == OK
            have.remove((o_sw, o_addr, o_len))
            continue
        length = rng.choice(lengths)
        value = (rng.randrange(4) << (bits - 8)) | (rng.randrange(4) << (bits - 24))
        value |= rng.randrange(4)
        addr: IPAddress = (
            ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)
        )
        expected = _brute_force_in_use(have, sw, addr, length)
        rv, _ = dp.add_del_address(sw, True, False, addr, length)
        assert rv == (ADDRESS_IN_USE if expected else OK), (sw, addr, length, have)
        answers[rv] += 1
        if rv == OK:
            have.append((sw, addr, length))
    # both answers were exercised, many times
    assert answers[OK] > 50 and answers[ADDRESS_IN_USE] > 50, answers
    # and a delete of everything leaves the index empty
    for sw in loops:
        dp.add_del_address(sw, False, True, ipaddress.IPv4Address(0), 0)
    index = dp._addresses[(0, version == 6)]
    assert not index.nets and not index.lengths and not index.inner
