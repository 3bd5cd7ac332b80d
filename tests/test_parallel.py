"""Collectives over links (textbook byte counts, contention) and tensor/pipeline parallel runs."""

import pytest

from conftest import DATA, load
from sim.config import load_hardware
from sim.engine.machine import LevelUse, Machine
from sim.graph import build_graph
from sim.graph.ops import Collective
from sim.mapping.collectives import plan_collective, rings, route, topology
from sim.pipeline import run
from sim.report import summarize

NODE = DATA / "toy-node.yaml"
MB = 1e6


@pytest.fixture
def node():
    return load_hardware(NODE)


def per_link(plan):
    out = {}
    for t in plan.transfers:
        for lnk in t.links:
            out[lnk] = out.get(lnk, 0.0) + t.bytes
    return out


def test_ring_allreduce_moves_2_p_minus_1_over_p_per_link(node):
    """A large all-reduce over 4 devices on a ring: ring algorithm, 2(p-1)/p x S on each link."""
    plan = plan_collective(Collective("allreduce", 64 * MB), (0, 1, 2, 3), node)
    assert plan.kind == "allreduce/ring"
    assert per_link(plan) == {f"{a}->{(a + 1) % 4}": pytest.approx(2 * 3 / 4 * 64 * MB) for a in range(4)}
    assert plan.latency_s == pytest.approx(2 * 3 * 1e-6)


def test_inside_a_switched_node_the_tree_is_nccls_chain(node):
    """Through a switch NCCL's tree inside a node is a chain over the group: 2 (p - 1) steps, like the
    ring's, each edge carrying the buffer once each way (reduce up the chain, broadcast down it); the
    ring, carrying 2 (p - 1) / p of it per link, is then never slower. Over a ring of point-to-point links
    a binary tree (2 log2 p steps) whose edges are two hops long, so the ring stays there too."""
    from sim.mapping.collectives import _tree_moves

    switch = load_hardware(NODE, [("interconnect.topology", "switch")])
    moves, steps = _tree_moves((0, 1, 2, 3), switch, 8 * MB)
    assert steps == 6
    assert sorted((a, b) for a, b, _ in moves) == [(0, 1), (1, 0), (1, 2), (2, 1), (2, 3), (3, 2)]
    assert all(n == 8 * MB for _, _, n in moves)
    for size in (8, 64 * MB):
        assert plan_collective(Collective("allreduce", size), (0, 1, 2, 3), switch).kind == "allreduce/ring"
    assert _tree_moves((0, 1, 2, 3), node, 8 * MB)[1] == 4
    assert plan_collective(Collective("allreduce", 8), (0, 1, 2, 3), node).kind == "allreduce/ring"


def test_allgather_and_p2p_bytes(node):
    ag = plan_collective(Collective("allgather", 40 * MB), (0, 1, 2, 3), node)
    assert all(v == pytest.approx(3 / 4 * 40 * MB) for v in per_link(ag).values())
    p2p = plan_collective(Collective("p2p", 5 * MB, 0, 1), (0, 2), node)
    assert [t.links for t in p2p.transfers] == [("0->1", "1->2")]  # two hops around the ring
    assert p2p.latency_s == pytest.approx(2e-6)


def test_reducescatter_and_alltoall_bytes():
    """Reduce-scatter of 40 MB over 4 devices: a ring, 3/4 x 40 MB per link in 3 steps. All-to-all of
    40 MB per device through a switch: each device sends 10 MB to each of the 3 others (30 MB up its
    link, 30 MB down to it), in one step (the switch is not a hop of its own)."""
    rs = plan_collective(Collective("reducescatter", 40 * MB), (0, 1, 2, 3), load_hardware(NODE))
    assert per_link(rs) == {f"{a}->{(a + 1) % 4}": pytest.approx(3 / 4 * 40 * MB) for a in range(4)}
    assert rs.latency_s == pytest.approx(3 * 1e-6)
    switch = load_hardware(NODE, [("interconnect.topology", "switch")])
    a2a = plan_collective(Collective("alltoall", 40 * MB), (0, 1, 2, 3), switch)
    assert len(a2a.transfers) == 12 and all(t.bytes == pytest.approx(10 * MB) for t in a2a.transfers)
    links = per_link(a2a)
    assert all(links[f"{d}->switch"] == pytest.approx(30 * MB) for d in range(4))
    assert all(links[f"switch->{d}"] == pytest.approx(30 * MB) for d in range(4))
    assert a2a.latency_s == pytest.approx(1e-6)


def test_topologies_are_connected():
    import networkx as nx

    for kind in ("switch", "ring", "tree", "torus2d", "mesh2d", "torus3d"):
        g = topology(kind, 8)
        assert nx.is_strongly_connected(g), kind
    assert route("switch", 8, 3, 5) == ("3->switch", "switch->5")
    assert len(route("torus2d", 16, 0, 5)) == 2  # one step in x, one in y on a 4 x 4 torus


def test_two_transfers_sharing_a_link_take_twice_as_long(node):
    def finish(routes):
        m = Machine(node)
        for r in routes:
            m.env.process(m.send(r, 10 * MB, {}))
        m.env.run()
        return m.env.now

    alone = finish([("0->1",)])
    assert alone == pytest.approx(1e-3)  # 10 MB at 10 GB/s
    assert finish([("0->1",), ("0->1", "1->2")]) == pytest.approx(2 * alone)
    assert finish([("0->1",), ("2->3",)]) == pytest.approx(alone)


def _tp(**overrides):
    wl, _ = load(DATA / "toy-gpt.yaml", parallelism__tensor=2, **overrides)
    return wl


def test_tensor_parallel_shards_weights_and_adds_two_allreduces_per_layer(node):
    wl1, _ = load(DATA / "toy-gpt.yaml")
    g1, g2 = build_graph(wl1), build_graph(_tp())
    w1 = sum(t.elements for t in g1.tensors().values() if t.kind == "weight")
    w2 = sum(t.elements for t in g2.tensors().values() if t.kind == "weight")
    assert w2 < 0.6 * w1  # each rank holds about half (norms and positions are replicated)
    prefill = [o.kind for o in g2.ops if o.phase == "prefill" and o.collective]
    assert prefill == ["embed_allreduce", "attn_allreduce", "ffn_allreduce", "logits_allgather"]
    ar = next(o for o in g2.ops if o.kind == "attn_allreduce")
    assert ar.collective.bytes == 2 * 8 * 64 * 2  # rows x hidden x fp16


def test_tensor_parallel_run_shows_link_time_that_follows_link_speed(node):
    wl = _tp()
    slow = summarize(run(wl, node))
    fast_hw = load_hardware(NODE, [("interconnect.link.bandwidth", "1 TB/s"), ("interconnect.link.latency", 0)])
    fast = summarize(run(wl, fast_hw))
    assert slow["devices"] == 2
    assert slow["classes"]["collective"]["time_share"]["link:ring"] > 0.5
    assert fast["total_s"] < slow["total_s"]
    assert fast["classes"]["collective"]["time_s"] < 0.1 * slow["classes"]["collective"]["time_s"]


def test_trace_of_a_parallel_run_has_collectives_and_link_tracks(node):
    from sim.report import to_trace

    trace = to_trace(run(_tp(), node))
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert {e["pid"] for e in spans} == {0, 1}
    assert any(e["cat"] == "collective" for e in spans)
    assert any(e["cat"] == "link" and e["args"]["bytes"] > 0 for e in spans)
    assert all(e["dur"] >= 0 for e in spans)


def test_pipeline_stages_wait_for_each_other(node):
    wl, _ = load(DATA / "toy-gpt.yaml", model__layers=2, parallelism__pipeline=2)
    result = run(wl, node)
    devices = {r.device for r in result.ops}
    assert devices == {0, 1}
    layer_dev = {(r.layer, r.device) for r in result.ops if r.kind == "qkv"}
    assert layer_dev == {(0, 0), (1, 1)}
    # stage 1 idles (sync) while stage 0 computes: the pipeline bubble
    sync = sum(r.stall_s.get("sync", 0.0) for r in result.ops if r.device == 1)
    assert sync > 0
    sends = [r for r in result.ops if r.kind == "send"]
    assert {r.device for r in sends} == {0, 1}  # both ends of every send record it


def test_data_parallel_replicas_multiply_throughput(node):
    one = summarize(run(load(DATA / "toy-gpt.yaml", scenario__batch=1)[0], node))
    two = summarize(run(load(DATA / "toy-gpt.yaml", scenario__batch=2, parallelism__data=2)[0], node))
    assert two["total_s"] == pytest.approx(one["total_s"])
    assert two["tokens_per_s"] == pytest.approx(2 * one["tokens_per_s"])


def test_not_enough_devices_is_a_config_error():
    from sim.errors import ConfigError

    wl, hw = load(DATA / "toy-gpt.yaml", parallelism__tensor=4)
    with pytest.raises(ConfigError, match="parallelism: tensor x pipeline x data = 4 devices, but the hardware has 1"):
        run(wl, hw, workload_file="w.yaml")


def test_machine_send_records_link_use(node):
    m = Machine(node)
    use: dict[str, LevelUse] = {}
    m.env.process(m.send(("0->1", "1->2"), 1 * MB, use))
    m.env.run()
    assert set(use) == {"0->1", "1->2"} and use["0->1"].bytes == 1 * MB


def _two_nodes(**net):
    """Two toy nodes of 2 devices behind a switch, each device with a 1 GB/s NIC."""
    return load_hardware(NODE, [("devices", 2), ("nodes", 2), ("interconnect.topology", "switch"),
                                ("network", {"link": {"bandwidth": net.get("bandwidth", "1 GB/s"),
                                                      "latency": net.get("latency", "5 us")}})])


def test_routes_stay_inside_a_node_and_cross_nodes_through_the_nics():
    hw = _two_nodes()
    assert route("switch", 2, 0, 1, 2) == ("0->switch0", "switch0->1")
    assert route("switch", 2, 1, 2, 2) == ("1->net", "net->2")
    assert route("ring", 8, 0, 4, 2) == ("0->1", "1->2", "2->3", "3->4")  # never a shortcut via the network
    assert hw.total_devices == 4


def test_routes_across_nodes_are_the_cluster_graphs_shortest_paths():
    """`route` composes a node's routes without building the cluster's graph; it must take the same
    links as a shortest path over that graph (NICs weighted above any path inside a node)."""
    import networkx as nx

    from sim.mapping.collectives import cluster

    for kind in ("switch", "ring", "torus2d"):
        g = cluster(kind, 4, 3)
        for a in range(12):
            for b in range(12):
                if a != b:
                    hops = route(kind, 4, a, b, 3)
                    assert len(hops) == len(nx.shortest_path(g, a, b, weight="weight")) - 1, (kind, a, b)
                    assert all(g.has_edge(*(int(v) if v.isdigit() else v for v in lnk.split("->")))
                               for lnk in hops), (kind, a, b)


def test_allreduce_across_nodes_runs_one_ring_per_nic():
    """A 64 MB ring all-reduce over 2 x 2 devices runs NCCL's two channels: ring 0 1 2 3 and ring 1 0 3 2,
    each with half the buffer, so every NIC carries one ring's 2(p-1)/p x 32 MB = 48 MB each way (one
    ring would load two NICs with 96 MB), in 6 steps at the network's 5 us."""
    from sim.mapping.collectives import _plan, _ring_moves

    assert rings((0, 1, 2, 3), 2) == [(0, 1, 2, 3), (1, 0, 3, 2)]
    assert rings((0, 1, 2, 3), 4) == [(0, 1, 2, 3)]  # one node: one ring
    hw = _two_nodes()
    plan = _plan("allreduce/ring", (0, 1, 2, 3), [(a, b, 1.5 * share * 64 * MB) for a, b, share in
                                                  _ring_moves((0, 1, 2, 3), hw)], 6, hw, None, None, 64 * MB)
    nics = {lnk: b for lnk, b in per_link(plan).items() if "net" in lnk}
    assert nics == {lnk: pytest.approx(48 * MB) for d in range(4) for lnk in (f"{d}->net", f"net->{d}")}
    assert plan.latency_s == pytest.approx(6 * 5e-6)
    m = Machine(hw)
    m.env.process(m.send(("1->net", "net->2"), 10 * MB, {}))
    m.env.run()
    assert m.env.now == pytest.approx(10e-3)  # 10 MB at the NIC's 1 GB/s


def test_allreduce_across_nodes_takes_nccls_hierarchical_tree_where_faster():
    """NCCL's tree across nodes: per channel (one per member of a node) a chain inside each node to the
    node's channel head, whose NIC joins a double binary tree of the nodes, each tree carrying half the
    channel's share, reduced up and broadcast down. Over 2 x 2 devices a 64 MB buffer crosses each NIC
    as 32 MB each way (the least two nodes can exchange: the ring's 48 MB is more), in 2 (1 + 1) steps:
    the tree is taken. Over 8 nodes of one device a small buffer takes it for its 2 log2(8) = 6 latency
    steps against the ring's 14; a large one the ring, whose NICs carry less than the double tree's
    busiest."""
    hw = _two_nodes()
    plan = plan_collective(Collective("allreduce", 64 * MB), (0, 1, 2, 3), hw)
    assert plan.kind == "allreduce/tree"
    nics = {lnk: b for lnk, b in per_link(plan).items() if "net" in lnk}
    assert nics == {lnk: pytest.approx(32 * MB) for d in range(4) for lnk in (f"{d}->net", f"net->{d}")}
    inside = {lnk: b for lnk, b in per_link(plan).items() if "switch" in lnk}
    # the chains: channel 0's runs 1 -> 0 (reduce) and back, channel 1's 0 -> 1 and back, 32 MB each
    assert inside == {lnk: pytest.approx(64 * MB) for d in range(4)
                      for lnk in (f"{d}->switch{d // 2}", f"switch{d // 2}->{d}")}
    assert plan.latency_s == pytest.approx(4 * 5e-6)
    eight = load_hardware(NODE, [("devices", 1), ("nodes", 8), ("interconnect.topology", "switch"),
                                 ("network", {"link": {"bandwidth": "1 GB/s", "latency": "5 us"}})])
    small = plan_collective(Collective("allreduce", 1e3), tuple(range(8)), eight)
    assert small.kind == "allreduce/tree" and small.latency_s == pytest.approx(6 * 5e-6)
    assert plan_collective(Collective("allreduce", 64 * MB), tuple(range(8)), eight).kind == "allreduce/ring"


def test_data_parallel_training_across_nodes_pays_for_the_network():
    """Data-parallel training over 4 devices: gradients all-reduced over 2 nodes take longer than
    inside one node, and less with a faster network; the forward and backward work is the same."""
    wl, _ = load(DATA / "toy-gpt.yaml", parallelism__data=4, scenario__phase="train", scenario__new_tokens=0,
                 scenario__batch=4)
    one = summarize(run(wl, load_hardware(NODE, [("interconnect.topology", "switch")])))
    slow = summarize(run(wl, _two_nodes()))
    fast = summarize(run(wl, _two_nodes(bandwidth="100 GB/s", latency="1 us")))
    comm = [s["classes"]["collective"]["time_s"] for s in (one, slow, fast)]
    assert comm[1] > comm[2] and comm[1] > comm[0]
    assert slow["step_s"] > fast["step_s"]
    shares = slow["classes"]["collective"]["time_share"]
    assert shares.get("link:net", 0) > 0.5 and "link:switch" not in shares  # its wires are the NICs


def test_nodes_need_a_network():
    from sim.errors import ConfigError

    with pytest.raises(ConfigError, match="network"):
        load_hardware(NODE, [("nodes", 2)])


def test_each_data_parallel_replica_runs_its_tensor_parallel_collectives_on_its_own_devices(node):
    """Training with tensor 2 x data 2 on 4 devices: replica 0 is devices 0-1, replica 1 devices 2-3;
    each replica's tensor-parallel all-reduces are among its own ranks (and its HBM serves their
    buffers), the gradients' all-reduce across the replicas' matching ranks."""
    from sim.mapping.parallel import map_devices

    wl, _ = load(DATA / "toy-gpt.yaml", parallelism__tensor=2, parallelism__data=2, scenario__phase="train",
                 scenario__new_tokens=0, scenario__batch=2)
    programs, _ = map_devices(build_graph(wl), wl, node)
    for prog in programs:
        (d,) = prog.devices
        first = d - d % 2
        assert {plan.group for c, plan in prog.collectives.items() if c.group != "data"} == {(first, first + 1)}
        assert {plan.group for c, plan in prog.collectives.items() if c.group == "data"} == {(d % 2, d % 2 + 2)}


#: a library of two protocols on the toy node: one of low latency that carries data on half the link's
#: bandwidth (NCCL's LL), one of full bandwidth and higher latency (Simple)
PROTOCOLS = {"interconnect.library": {"protocols": {"LL": {"launch": "2 us", "step": "0.5 us", "bandwidth": 0.5},
                                                    "Simple": {"launch": "8 us", "step": "3 us"}}}}


def test_a_collective_takes_the_protocol_of_least_time_by_message_size(node):
    """Ring all-reduce over 4 devices on 10 GB/s links (1 us hops), 6 steps: with LL a call costs 2 us +
    6 x max(1, 0.5) us and moves twice the bytes on the wire; with Simple 8 us + 6 x 3 us at full rate.
    8 KB: LL (8 + 1.2 us) beats Simple (26 + 1.2 us); 64 MB: Simple (26 us + 9.6 ms) beats LL (19.2 ms).
    The data read and written stay the buffer's bytes whatever the wire carries."""
    hw = load_hardware(NODE, list(PROTOCOLS.items()))
    small = plan_collective(Collective("allreduce", 8e3), (0, 1, 2, 3), hw)
    assert small.kind == "allreduce/ring/LL" and small.latency_s == pytest.approx(2e-6 + 6 * 1e-6)
    assert all(t.wire_bytes == pytest.approx(2 * t.bytes) for t in small.transfers)
    large = plan_collective(Collective("allreduce", 64 * MB), (0, 1, 2, 3), hw)
    assert large.kind == "allreduce/ring/Simple" and large.latency_s == pytest.approx(8e-6 + 6 * 3e-6)
    assert all(t.wire is None for t in large.transfers)
    assert large.memory_bytes == plan_collective(Collective("allreduce", 64 * MB), (0, 1, 2, 3), node).memory_bytes
    # the engine takes what the plan says: the wire bytes over the links, then the latency
    from sim.validate.published import predict_allreduce

    assert predict_allreduce(hw, 64 * MB, 4) == pytest.approx(26e-6 + 2 * 3 / 4 * 64 * MB / 10e9, rel=1e-6)
    assert predict_allreduce(hw, 8e3, 4) == pytest.approx(8e-6 + 2 * 2 * 3 / 4 * 8e3 / 10e9, rel=1e-6)


def test_an_all_reduce_in_the_switch_sends_each_buffer_up_once(node):
    """Where the switch reduces (NVLink SHARP) and the library can use it, a large all-reduce sends each
    device's buffer up its link and the result down at once: S / (bandwidth x share) against the ring's
    2 (p-1)/p S / bandwidth; small messages keep the ring (the in-switch call's latency is higher). A switch
    that cannot reduce, or a library without the algorithm, never takes it."""
    sets = [("interconnect.topology", "switch"), ("interconnect.in_switch_reduction", True),
            ("interconnect.library", {"protocols": {"Simple": {}},
                                      "in_switch": {"launch": "0 us", "step": "25 us", "bandwidth": 0.8}})]
    hw = load_hardware(NODE, sets)
    big = plan_collective(Collective("allreduce", 64 * MB), (0, 1, 2, 3), hw)
    assert big.kind == "allreduce/switch" and big.latency_s == pytest.approx(25e-6)
    assert [t.links for t in big.transfers] == [(f"{d}->switch", f"switch->{d}") for d in range(4)]
    assert all(t.wire_bytes == pytest.approx(64 * MB / 0.8) for t in big.transfers)
    assert big.memory_bytes == {d: pytest.approx(2 * 64 * MB) for d in range(4)}  # its buffer read, the sum written
    assert plan_collective(Collective("allreduce", 8e3), (0, 1, 2, 3), hw).kind != "allreduce/switch"
    for off in ([("interconnect.in_switch_reduction", False)], [("interconnect.library.in_switch", None)]):
        assert plan_collective(Collective("allreduce", 64 * MB), (0, 1, 2, 3),
                               load_hardware(NODE, sets + off)).kind != "allreduce/switch"


def test_each_chunk_of_a_call_costs_its_handshake_and_larger_calls_take_larger_chunks(node):
    """NCCL pipelines a call in chunks that grow with its size; each chunk's handshake holds the links
    `chunk_overhead` beyond the bytes. 64 MB in 1 MB chunks with 1 us each: 64 handshakes, 64 us more
    than the bytes alone (the toy's 10 GB/s links: 64 MB / 0.8 takes 8 ms); 16 MB calls take 256 kB chunks
    (62.5 handshakes' worth). Below the smallest key, its chunk."""
    from sim.validate.published import predict_allreduce

    library = {"protocols": {"Simple": {}}, "in_switch": {
        "launch": "0 us", "step": "25 us", "bandwidth": 0.8, "chunk_overhead": "1 us",
        "chunks": {"1 MB": "256 kB", "32 MB": "1 MB"}}}
    hw = load_hardware(NODE, [("interconnect.topology", "switch"), ("interconnect.in_switch_reduction", True),
                              ("interconnect.library", library)])
    assert hw.interconnect.library.in_switch.chunk(4 * MB) == 256e3
    assert hw.interconnect.library.in_switch.chunk(100) == 256e3
    big = plan_collective(Collective("allreduce", 64 * MB), (0, 1, 2, 3), hw)
    assert all(t.wire_bytes == pytest.approx(64 * MB / 0.8 + 64 * 1e-6 * 10e9) for t in big.transfers)
    assert all(t.bytes == 64 * MB for t in big.transfers)  # the data moved is unchanged
    assert predict_allreduce(hw, 64 * MB, 4) == pytest.approx(25e-6 + 64 * MB / 0.8 / 10e9 + 64e-6, rel=1e-6)
    assert predict_allreduce(hw, 16 * MB, 4) == pytest.approx(25e-6 + 16 * MB / 0.8 / 10e9 + 62.5e-6, rel=1e-6)
