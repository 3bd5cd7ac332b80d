"""One program stands for several devices only where a relabelling of the machine proves their runs
identical (sim/mapping/symmetry.py); tests/test_reuse.py holds such runs equal to simulating every device."""

from conftest import DATA, load
from sim.config import load_hardware
from sim.graph import build_graph
from sim.graph.ops import Collective
from sim.mapping.collectives import plan_collective
from sim.mapping.parallel import map_devices
from sim.mapping.symmetry import invariant, union

NODE = DATA / "toy-node.yaml"
MB = 1e6


def cluster(nodes: int = 4, per_node: int = 2):
    """Toy nodes of `per_node` devices behind a switch, each device with a 2 GB/s NIC."""
    return load_hardware(NODE, [("devices", per_node), ("nodes", nodes), ("interconnect.topology", "switch"),
                                ("network", {"link": {"bandwidth": "2 GB/s", "latency": "5 us"}})])


def training(**over):
    wl, _ = load(DATA / "toy-gpt.yaml", scenario__phase="train", scenario__new_tokens=0, model__layers=4, **over)
    return wl


def programs(wl, hw):
    progs, _ = map_devices(build_graph(wl), wl, hw)
    return progs


def test_megatron_3d_layout_runs_one_program_per_stage():
    """Tensor 2 (a node) x pipeline 2 x data 2 on 4 nodes: every rank of every replica of a stage runs
    alike (sends and gradients each over their own NIC), so one program per stage stands for 4 devices;
    its collectives are the unions of theirs, every transfer kept."""
    wl = training(parallelism__tensor=2, parallelism__pipeline=2, parallelism__data=2, parallelism__microbatches=2,
                  scenario__batch=4)
    progs = programs(wl, cluster())
    assert [p.devices for p in progs] == [(0, 1, 4, 5), (2, 3, 6, 7)]
    for prog in progs:
        kinds = {(c.kind, c.group): plan for c, plan in prog.collectives.items()}
        assert len(kinds[("allreduce", "tensor")].transfers) == 2 * 2  # each replica's ring of 2
        assert len(kinds[("allreduce", "data")].transfers) == 2 * 2  # each rank's ring over 2 replicas
        sends = [plan for c, plan in prog.collectives.items() if c.kind == "p2p"]
        assert sends and all(len(plan.transfers) == 4 for plan in sends)  # rank r to rank r, per replica
        assert all(lnk.split("->")[0] == "net" or lnk.split("->")[1] == "net"
                   for plan in sends for t in plan.transfers for lnk in t.links)


def test_an_asymmetric_ring_keeps_one_program_per_device():
    """Three replicas on a ring of four devices: the gradients' ring has a two-hop edge (2 -> 0) where
    the others have one hop, so no shift of the replicas maps the run onto itself."""
    wl = training(parallelism__data=3, scenario__batch=3)
    assert [p.devices for p in programs(wl, load_hardware(NODE))] == [(0,), (1,), (2,)]


def test_sends_that_would_share_a_link_are_not_merged():
    """Tensor 2 x pipeline 2 on a ring of four: rank 0 sends 0 -> 2 over 0->1->2 and rank 1 sends
    1 -> 3 over 1->2->3; run as one they would queue on link 1->2, so each rank keeps its program."""
    wl, _ = load(DATA / "toy-gpt.yaml", parallelism__tensor=2, parallelism__pipeline=2, model__layers=4)
    hw = load_hardware(NODE)
    sends = [plan_collective(Collective("p2p", MB), pair, hw) for pair in ((0, 2), (1, 3))]
    assert union(sends) is None
    assert [p.devices for p in programs(wl, hw)] == [(0,), (1,), (2,), (3,)]


def test_a_relabelling_keeps_link_speeds_and_stays_consistent():
    """Shifting a node's devices maps a ring all-reduce onto itself; mapping a transfer inside a node onto
    one across nodes (NVLink onto a NIC) is refused, and so is mapping one link onto two."""
    hw = cluster(nodes=2)
    ring = plan_collective(Collective("allreduce", 64 * MB), (0, 1), hw)

    def swap(d):
        return d ^ 1
    assert invariant([(ring, ring)], swap, hw)
    inside = plan_collective(Collective("p2p", MB), (0, 1), hw)
    across = plan_collective(Collective("p2p", MB), (0, 3), hw)
    assert not invariant([(inside, across)], lambda d: {0: 0, 1: 3}.get(d, d), hw)
    to_2 = plan_collective(Collective("p2p", MB), (0, 2), hw)
    to_3 = plan_collective(Collective("p2p", MB), (0, 3), hw)
    # the same device map sending 0 -> 2 onto 0 -> 2 and, in another plan, onto 0 -> 3: link 0->net
    # would have to stay put while net->2 goes to both net->2 and net->3
    assert not invariant([(to_2, to_2), (to_2, to_3)], lambda d: d, hw)
