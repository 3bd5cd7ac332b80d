"""When one simulated device may stand for others: a proof, not an assumption.

Devices that run the same program are interchangeable when a relabelling of the machine maps the whole
run onto itself: a permutation of the devices (a shift of tensor-parallel rank or of data-parallel
replica) and a matching bijection of the links (each onto one of equal bandwidth and latency) under which
every device's collectives become those of its image, transfer by transfer and byte for byte. Every
event of the simulation then has an image at the same instant, so the images of a device's ops take the
same time as its own, and one program can run for all of them; the collectives of the devices it stands
for run as one, the union of their transfers (all simulated).

Two conditions make the union run as its parts would. Its parts (the collectives of different groups,
say each rank's pipeline send) must use disjoint links: parts sharing a link would queue on it in an
order that singles one out, and the run would not be symmetric at all. And a relabelling must be
consistent across the whole run (one link map for all collectives), so that what shares a link with
what is preserved.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sim.config.hardware import Hardware
from sim.mapping.collectives import CollectivePlan, link_bandwidth, link_latency


class Relabelling:
    """A device permutation `image` and the link bijection it induces, built while checking plans."""

    def __init__(self, image: Callable[[int], int], hw: Hardware):
        self.image = image
        self.hw = hw
        self.links: dict[str, str] = {}
        self._back: dict[str, str] = {}
        self._checked: set[tuple[int, int]] = set()

    def maps(self, a: CollectivePlan, b: CollectivePlan) -> bool:
        """Whether the relabelling maps plan `a` (of some device) onto plan `b` (of its image)."""
        key = (id(a), id(b))
        if key in self._checked:
            return True
        if (a.kind, a.latency_s, a.level, len(a.transfers)) != (b.kind, b.latency_s, b.level, len(b.transfers)):
            return False
        f = self.image
        if sorted(f(d) for d in a.group) != sorted(b.group):
            return False
        theirs = {(t.src, t.dst): t for t in b.transfers}
        if len(theirs) != len(b.transfers):  # two transfers between one pair: no unique image
            return False
        for t in a.transfers:
            u = theirs.get((f(t.src), f(t.dst)))
            if u is None or (u.bytes, u.wire) != (t.bytes, t.wire) or len(u.links) != len(t.links):
                return False
            for la, lb in zip(t.links, u.links):
                if not self._link(la, lb):
                    return False
        self._checked.add(key)
        return True

    def _link(self, la: str, lb: str) -> bool:
        known = self.links.get(la)
        if known is not None:
            return known == lb
        if self._back.get(lb, la) != la:
            return False
        hw = self.hw
        if link_bandwidth(hw, la) != link_bandwidth(hw, lb) or link_latency(hw, la) != link_latency(hw, lb):
            return False
        self.links[la], self._back[lb] = lb, la
        return True


def invariant(pairs: Iterable[tuple[CollectivePlan, CollectivePlan]], image: Callable[[int], int],
              hw: Hardware) -> Relabelling | None:
    """The relabelling with device permutation `image` that maps every (plan of a device, plan of the
    same collective on its image) pair of the run, the first onto the second; None if there is none."""
    r = Relabelling(image, hw)
    return r if all(r.maps(a, b) for a, b in pairs) else None


def union(parts: Iterable[CollectivePlan]) -> CollectivePlan | None:
    """The collective run for all devices a program stands for: the transfers of its distinct parts
    (groups), or None where two parts share a link (they would not run alike)."""
    seen: dict[tuple[int, ...], CollectivePlan] = {}
    for p in parts:
        seen.setdefault(p.group, p)
    plans = list(seen.values())
    if len(plans) == 1:
        return plans[0]
    used: set[str] = set()
    for p in plans:
        mine = {lnk for t in p.transfers for lnk in t.links}
        if mine & used:
            return None
        used |= mine
    first = plans[0]
    # the parts' members in order (not sorted: a pipeline's sends forward and back are two communicators)
    group = tuple(dict.fromkeys(d for p in plans for d in p.group))
    return CollectivePlan(first.kind, group, tuple(t for p in plans for t in p.transfers), first.latency_s,
                          first.level)
