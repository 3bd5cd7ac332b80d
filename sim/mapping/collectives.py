"""Collectives decomposed into transfers over the interconnect's physical links.

The topology is a directed graph of links (a switch is a node every device has an up- and a down-link
to). A transfer from a to b holds every link on its (deterministic shortest) route for bytes/bandwidth,
so transfers that share a link contend in its queue.

Algorithms (ring over the group in device order, as NCCL does for bandwidth-bound messages):
- all-reduce of S bytes over p devices: each device sends 2(p-1)/p * S to its ring successor, in
  2(p-1) latency-bound steps (or a tree, whichever is faster: NCCL's chain inside a switched node, a
  binary tree over point-to-point links, NCCL's hierarchical tree across nodes, `_tree_moves`);
- all-gather to S bytes, and reduce-scatter from S bytes: (p-1)/p * S per device, p-1 steps;
- all-to-all of S bytes per device: S/p to each other device directly, all at once, one step;
- point-to-point: S bytes, one step;
- all-reduce in the switch (NVLink SHARP, NCCL's NVLS), where the interconnect reduces and the runtime's
  library has such an algorithm: each device sends S up and receives the reduced S, at once, one step.
The ring's steps are merged into one transfer per device carrying all its bytes (bounded events); the
per-step latency is added once per step. The library's protocols (`interconnect.library`, from the
runtime: NCCL's LL, LL128, Simple) each add a fixed latency per call, set a floor under each step's
latency, and carry data on a share of the links' bandwidth (a transfer holds its links for its bytes over
that share); every collective takes the algorithm and protocol of least uncontended time, as NCCL's tuner
does with the same kind of model.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from functools import lru_cache
from math import ceil, isqrt, log2

import networkx as nx

from sim.config.hardware import Hardware, Protocol
from sim.graph.ops import COLLECTIVES, Collective

SWITCH = "switch"
NET = "net"  # the scale-out network between nodes


@dataclass(frozen=True)
class Transfer:
    src: int
    dst: int
    links: tuple[str, ...]
    bytes: float  # the data moved: read on the sender, written on the receiver
    #: the bytes its links are held for, where the protocol costs more than the data (LL's flags, each
    #: chunk's handshake); None: `bytes`
    wire: float | None = None

    @property
    def wire_bytes(self) -> float:
        return self.bytes if self.wire is None else self.wire


@dataclass(frozen=True)
class CollectivePlan:
    kind: str
    group: tuple[int, ...]
    transfers: tuple[Transfer, ...]
    latency_s: float  # steps x link latency
    #: the memory level the participants' buffers live in: each transfer reads its bytes there on the
    #: sender and writes them there on the receiver (None: the links only)
    level: str | None = None

    @functools.cached_property
    def crosses_network(self) -> bool:
        """Whether any transfer leaves its node (its wire time is then charged to `link:net`)."""
        return any(NET in lnk.split("->") for t in self.transfers for lnk in t.links)

    @functools.cached_property
    def memory_bytes(self) -> dict[int, float]:
        """Per device, the bytes it reads (to send) and writes (received) in its buffers' level."""
        out: dict[int, float] = {}
        for t in self.transfers:
            out[t.src] = out.get(t.src, 0.0) + t.bytes
            out[t.dst] = out.get(t.dst, 0.0) + t.bytes
        return out


def link_id(a: int | str, b: int | str) -> str:
    return f"{a}->{b}"


def _grid(n: int, dims: int) -> tuple[int, ...]:
    """Near-cubic factorisation of n devices into a grid."""
    if dims == 2:
        x = max(d for d in range(1, isqrt(n) + 1) if n % d == 0)
        return (x, n // x)
    x = max(d for d in range(1, round(n ** (1 / 3)) + 2) if n % d == 0 and d * d <= n)
    return (x, *_grid(n // x, 2))


@lru_cache(maxsize=32)
def topology(kind: str, n: int) -> nx.DiGraph:
    g = nx.DiGraph()
    g.add_nodes_from(range(n))

    def both(a, b):
        g.add_edge(a, b, id=link_id(a, b))
        g.add_edge(b, a, id=link_id(b, a))

    if n == 1:
        return g
    if kind == "switch":
        for d in range(n):
            both(d, SWITCH)
    elif kind == "ring":
        for d in range(n):
            both(d, (d + 1) % n)
    elif kind == "tree":
        for d in range(1, n):
            both((d - 1) // 2, d)
    else:  # torus2d, mesh2d, torus3d: neighbours along each grid dimension
        shape = _grid(n, 3 if kind == "torus3d" else 2)
        wrap = kind != "mesh2d"
        strides = [1]
        for s in shape[:-1]:
            strides.append(strides[-1] * s)
        for d in range(n):
            for size, stride in zip(shape, strides):
                coord = (d // stride) % size
                if coord + 1 < size or (wrap and size > 2):
                    both(d, d + (((coord + 1) % size) - coord) * stride)
    return g


@lru_cache(maxsize=32)
def cluster(kind: str, per_node: int, nodes: int = 1) -> nx.DiGraph:
    """`nodes` nodes of `per_node` devices, each node's linked by `kind` (device d of node k is
    k x per_node + d; a node's switch is `switch<k>`), and every device's NIC into one scale-out fabric
    (`net`). A route prefers its node's own links: a NIC weighs more than any path inside a node."""
    if nodes == 1:
        return topology(kind, per_node)
    g = nx.DiGraph()
    g.add_nodes_from(range(per_node * nodes))
    inner = topology(kind, per_node)
    for k in range(nodes):
        def name(v, k=k):
            return v + k * per_node if isinstance(v, int) else f"{v}{k}"
        for u, v in inner.edges():
            g.add_edge(name(u), name(v), id=link_id(name(u), name(v)))
    for d in range(per_node * nodes):
        g.add_edge(d, NET, id=link_id(d, NET), weight=per_node)
        g.add_edge(NET, d, id=link_id(NET, d), weight=per_node)
    return g


def link_bandwidth(hw: Hardware, link: str) -> float:
    """A link's achievable bandwidth: the network's for a NIC, the interconnect's otherwise."""
    return (hw.network if NET in link.split("->") else hw.interconnect).link.effective_bandwidth


def link_latency(hw: Hardware, link: str) -> float:
    """The latency of a hop over `link`: the network's for a NIC, the interconnect's otherwise."""
    return (hw.network if NET in link.split("->") else hw.interconnect).link.latency


@lru_cache(maxsize=4096)
def route(kind: str, n: int, a: int, b: int, nodes: int = 1) -> tuple[str, ...]:
    """The links from device a to device b (n devices per node): inside a node, the shortest path of its
    topology; across nodes, a's NIC up and b's down (as `cluster`'s weights choose, without building
    a cluster's graph)."""
    if nodes > 1:
        node = a // n
        if b // n != node:
            return link_id(a, NET), link_id(NET, b)

        def name(v: str) -> str:
            return str(int(v) + node * n) if v.isdigit() else f"{v}{node}"
        return tuple(link_id(*map(name, lnk.split("->"))) for lnk in route(kind, n, a % n, b % n))
    g = topology(kind, n)
    path = nx.shortest_path(g, a, b)
    return tuple(g.edges[u, v]["id"] for u, v in zip(path, path[1:]))


def plan_collective(coll: Collective, group: tuple[int, ...], hw: Hardware, level: str | None = None) -> CollectivePlan:
    """The collective's transfers over `group`, its buffers in memory level `level` (see CollectivePlan):
    of its algorithms and the library's protocols, the fastest uncontended."""
    assert hw.interconnect is not None, "a collective needs an interconnect"
    p, size = len(group), coll.bytes
    if coll.kind == "p2p":
        src, dst = group
        return _fastest(coll.kind, group, [(src, dst, size)], 1, hw, level, size)
    ring = _ring_moves(group, hw)
    if coll.kind in ("allgather", "reducescatter"):
        return _fastest(coll.kind, group, [(a, b, (p - 1) / p * share * size) for a, b, share in ring], p - 1, hw,
                        level, size)
    if coll.kind == "alltoall":  # every device sends each other one its 1/p share, all at once
        return _fastest(coll.kind, group, [(a, b, size / p) for a in group for b in group if a != b], 1, hw, level,
                        size)
    if coll.kind != "allreduce":
        raise ValueError(f"unknown collective {coll.kind!r} (known: {', '.join(COLLECTIVES)})")
    tree, steps = _tree_moves(group, hw, size)
    plans = [_fastest("allreduce/ring", group, [(a, b, 2 * (p - 1) / p * share * size) for a, b, share in ring],
                      2 * (p - 1), hw, level, size),
             _fastest("allreduce/tree", group, tree, steps, hw, level, size)]
    ic = hw.interconnect
    if ic.in_switch_reduction and ic.library.in_switch is not None and ic.topology == "switch" \
            and len({d // hw.devices for d in group}) == 1:
        plans.append(_in_switch(group, size, hw, level))
    return min(plans, key=lambda c: _estimate(c, hw))  # like NCCL, whichever is faster


def _in_switch(group: tuple[int, ...], size: float, hw: Hardware, level: str | None) -> CollectivePlan:
    """An all-reduce the switch computes: each device's buffer up its link and the result down it, at
    once (one transfer holding both directions of the device's link), in one step of the library's
    in-switch protocol."""
    proto, node = hw.interconnect.library.in_switch, group[0] // hw.devices
    switch = SWITCH if hw.nodes == 1 else f"{SWITCH}{node}"
    transfers = tuple(Transfer(d, d, (link_id(d, switch), link_id(switch, d)), size,
                               _wire(size, size, proto, hw, (link_id(d, switch),))) for d in group)
    hop = hw.interconnect.link.latency
    latency = proto.launch + max(hop, proto.step) + hw.interconnect.collective_overhead
    return CollectivePlan("allreduce/switch", group, transfers, latency, level)


def _tree_moves(group: tuple[int, ...], hw: Hardware, size: float) -> tuple[list[tuple[int, int, float]], int]:
    """A tree all-reduce's (sender, receiver, bytes) and latency steps: reduce towards the root, then
    broadcast back, each edge carrying the buffer once each way.

    Inside one node, through a switch, NCCL's tree: a chain over the group in 2 (p - 1) steps (over
    point-to-point links, a binary tree in 2 log2(p) steps). Across nodes, NCCL's hierarchical
    tree: as many channels as the group has members per node, channel j carrying 1/m of the buffer through
    a chain inside each node that ends at the node's j-th member, whose NIC joins the nodes in a double
    binary tree (two trees, each carrying half the channel's data: one over the nodes in order, one in
    reverse, so that a node that is a leaf of one is mostly interior in the other), in
    2 (m - 1 + log2 nodes) steps."""
    by_node: dict[int, list[int]] = {}
    for d in group:
        by_node.setdefault(d // hw.devices, []).append(d)
    nodes = list(by_node.values())
    m = len(nodes[0])
    moves: dict[tuple[int, int], float] = {}

    def both(a: int, b: int, nbytes: float) -> None:
        moves[a, b] = moves.get((a, b), 0.0) + nbytes
        moves[b, a] = moves.get((b, a), 0.0) + nbytes

    if len(nodes) == 1 or any(len(members) != m for members in nodes):
        if hw.interconnect.topology == "switch":  # NCCL's tree inside an NVSwitch node: a chain
            for a, b in zip(group[1:], group[:-1]):
                both(a, b, size)
            return [(a, b, n) for (a, b), n in moves.items()], 2 * (len(group) - 1)
        for i in range(1, len(group)):  # over point-to-point links: a binary tree
            both(group[i], group[(i - 1) // 2], size)
        return [(a, b, n) for (a, b), n in moves.items()], 2 * ceil(log2(len(group)))
    for j in range(m):
        share = size / m
        for members in nodes:
            chain = members[j:] + members[:j]  # ends (its root) at member j
            for a, b in zip(chain[1:], chain[:-1]):
                both(a, b, share)
        heads = [members[j] for members in nodes]
        for order in (heads, heads[::-1]):
            for i in range(1, len(order)):
                both(order[i], order[(i - 1) // 2], share / 2)
    return [(a, b, n) for (a, b), n in moves.items()], 2 * (m - 1 + ceil(log2(len(nodes))))


def rings(group: tuple[int, ...], per_node: int) -> list[tuple[int, ...]]:
    """The rings a ring collective runs over `group`, each carrying an equal share of the buffer. Inside
    one node, one ring in group order. Across nodes, NCCL's channels: as many rings as the group has
    members per node, ring j entering each node at its j-th member and leaving from the one before, so
    that every member's NIC carries one ring (one ring would load two NICs per node and leave the rest
    idle)."""
    by_node: dict[int, list[int]] = {}
    for d in group:
        by_node.setdefault(d // per_node, []).append(d)
    nodes = list(by_node.values())
    m = len(nodes[0])
    if len(nodes) == 1 or m == 1 or any(len(members) != m for members in nodes):
        return [group]
    return [tuple(d for members in nodes for d in members[j:] + members[:j]) for j in range(m)]


def _ring_moves(group: tuple[int, ...], hw: Hardware) -> list[tuple[int, int, float]]:
    """(sender, receiver, fraction of the buffer) of the rings' neighbours, the rings' shares of the same
    pair merged into one transfer."""
    out: dict[tuple[int, int], float] = {}
    rs = rings(group, hw.devices)
    for r in rs:
        for a, b in zip(r, r[1:] + r[:1]):
            out[a, b] = out.get((a, b), 0.0) + 1 / len(rs)
    return [(a, b, share) for (a, b), share in out.items()]


def _fastest(kind: str, group: tuple[int, ...], moves: list[tuple[int, int, float]], steps: int,
             hw: Hardware, level: str | None, size: float) -> CollectivePlan:
    """The algorithm's plan under each of the library's protocols, the fastest uncontended (named
    `kind/protocol` where the library has several)."""
    library = hw.interconnect.library.protocols
    plans = [_plan(kind if len(library) == 1 else f"{kind}/{name}", group, moves, steps, hw, level, proto, size)
             for name, proto in library.items()]
    return min(plans, key=lambda c: _estimate(c, hw))


def _wire(nbytes: float, size: float, proto: Protocol, hw: Hardware, links: tuple[str, ...]) -> float | None:
    """The bytes a transfer of `nbytes` (in a call of `size`) holds its links for, at its first link's
    rate: its data over the protocol's share, and each chunk's handshake (None: just its data). Only
    NVLS's chunks are costed today: one link rate per route, and `size` the call's buffer (NCCL's nBytes
    for an all-reduce)."""
    chunk = proto.chunk(size) if links and proto.chunk_overhead else None
    extra = nbytes / chunk * proto.chunk_overhead * link_bandwidth(hw, links[0]) if chunk else 0.0
    return None if proto.bandwidth == 1 and not extra else nbytes / proto.bandwidth + extra


def _plan(kind: str, group: tuple[int, ...], moves: list[tuple[int, int, float]], steps: int,
          hw: Hardware, level: str | None, proto: Protocol | None, size: float) -> CollectivePlan:
    topo, n = hw.interconnect.topology, hw.devices
    proto = proto or Protocol()
    routes = [route(topo, n, a, b, hw.nodes) for a, b, _ in moves]
    transfers = tuple(Transfer(a, b, links, nbytes, _wire(nbytes, size, proto, hw, links))
                      for (a, b, nbytes), links in zip(moves, routes))
    # a step's latency is the longest route's: its hops into a device, each at its link's latency (a
    # switch, or the network, is one hop), or the protocol's per step where longer
    hop = max((sum(link_latency(hw, lnk) for lnk in t.links if lnk.split("->")[1].isdigit())
               for t in transfers), default=hw.interconnect.link.latency)
    net = any(NET in lnk.split("->") for t in transfers for lnk in t.links)
    floor = proto.net_step if net and proto.net_step is not None else proto.step
    ic = hw.interconnect
    return CollectivePlan(kind, group, transfers, proto.launch + steps * max(hop, floor) + ic.collective_overhead,
                          level)


def _estimate(c: CollectivePlan, hw: Hardware) -> float:
    """Uncontended time: latency steps plus the most bytes any one link carries."""
    per_link: dict[str, float] = {}
    for t in c.transfers:
        for lnk in t.links:
            per_link[lnk] = per_link.get(lnk, 0.0) + t.wire_bytes
    return c.latency_s + max((b / link_bandwidth(hw, lnk) for lnk, b in per_link.items()), default=0.0)
