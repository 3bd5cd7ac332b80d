"""A training step: forward, backward, recomputation and the optimizer update, by hand and against the
published counts (Megatron-LM's FLOPs per step, ZeRO's 16 bytes per parameter)."""

import pytest

from conftest import DATA, ROOT, cli, load
from sim.graph import build_graph
from sim.pipeline import run
from sim.report import summarize

TRAIN = {"scenario__phase": "train", "scenario__new_tokens": 0}


def toy(**overrides):
    """The 1-layer toy GPT (hidden 64, 4 heads, ffn 256 = 4h, vocab 128), 2 sequences of 8 tokens."""
    return load(DATA / "toy-gpt.yaml", **TRAIN, **overrides)


def matmul_flops(graph, phases) -> float:
    """FLOPs of the matmul-like ops (GEMMs and attention's products) of `phases`, bias terms apart."""
    return sum(op.flops - op.epilogue for op in graph.ops
               if op.phase in phases and op.op_class in ("gemm", "gemv", "attention"))


@pytest.mark.parametrize("layers,batch,seq", [(1, 2, 8), (3, 4, 32)])
def test_step_flops_are_megatrons(layers, batch, seq):
    """Narayanan et al. (2021), eq. 3: a GPT step's matmul FLOPs are 72 B s l h² (1 + s/6h + V/12lh)
    without recomputation, and with full recomputation 96 B s l h² (1 + s/6h + V/16lh): the backward
    pass does twice the forward's, and recomputation one more forward of the layers (not the logits)."""
    over = {"model__layers": layers, "scenario__batch": batch, "scenario__prompt_tokens": seq}
    wl, _ = toy(**over)
    h, v, b, s, ll = 64, 128, batch, seq, layers
    plain = build_graph(wl)
    assert matmul_flops(plain, ("forward", "backward")) == pytest.approx(
        72 * b * s * ll * h * h * (1 + s / (6 * h) + v / (12 * ll * h)), rel=1e-12)
    assert matmul_flops(plain, ("backward",)) == pytest.approx(2 * matmul_flops(plain, ("forward",)), rel=1e-12)
    wl, _ = toy(training__recompute="full", **over)
    full = build_graph(wl)
    assert matmul_flops(full, ("forward", "backward", "recompute")) == pytest.approx(
        96 * b * s * ll * h * h * (1 + s / (6 * h) + v / (16 * ll * h)), rel=1e-12)


def test_mixed_precision_adam_holds_16_bytes_per_parameter():
    """Rajbhandari et al. (ZeRO, 2020): with mixed-precision Adam each parameter costs 2 bytes of fp16
    weights, 2 of gradients and 12 of optimizer state (fp32 master copy, momentum, variance): 16.
    SGD without a master copy keeps none; fp32 Adam without one keeps 8."""
    wl, hw = toy(training__optimizer="adam")  # fp16 weights and activations
    fp = run(wl, hw).placement.footprint
    params = fp.weights / 2
    assert fp.gradients == pytest.approx(2 * params) and fp.optimizer == pytest.approx(12 * params)
    wl, hw = toy(training__optimizer="sgd", training__master_weights=False)
    assert run(wl, hw).placement.footprint.optimizer == 0.0
    wl, hw = toy(scenario__precision__weights="fp32", scenario__precision__activations="fp32",
                 training__precision__optimizer_state="fp32", training__optimizer="adam",
                 training__master_weights=False)
    fp = run(wl, hw).placement.footprint
    assert fp.gradients == pytest.approx(fp.weights) and fp.optimizer == pytest.approx(2 * fp.weights)


def test_recomputation_trades_activation_memory_for_compute():
    """GPT-2's layers (4 of them, a 4,096-token vocabulary so that the logits do not dominate; 512 tokens,
    batch 2) on the A100: keeping everything for backward takes the most memory and the least time;
    selective recomputation (attention's scores and softmax again) less of both; full recomputation (the
    layer again from its input) the least memory and the most time. Recomputing shows in the hardware
    FLOPs utilisation, not in the model's."""
    base = {"model__layers": 4, "model__vocab": 4096, "scenario__batch": 2, "scenario__prompt_tokens": 512}
    runs = {}
    for mode in ("none", "selective", "full"):
        wl, hw = load(ROOT / "workloads/gpt2-train.yaml", training__recompute=mode, **base)
        result = run(wl, hw)
        runs[mode] = (result.placement.footprint.activations, summarize(result))
    (a0, s0), (a1, s1), (a2, s2) = runs["none"], runs["selective"], runs["full"]
    assert a0 > a1 > a2 and a0 / a2 > 2
    assert s0["step_s"] < s1["step_s"] < s2["step_s"]
    # without recomputation the executed FLOPs are the model's (3x forward) but for the backward's gradient
    # additions and the loss's cheaper backward
    assert s0["hfu"] == pytest.approx(s0["mfu"], rel=1e-2) and s2["hfu"] > 1.2 * s2["mfu"]
    assert s2["mfu"] == pytest.approx(s0["mfu"] * s0["step_s"] / s2["step_s"], rel=1e-9)  # same model FLOPs


def test_dropout_keeps_a_byte_mask_per_element_and_backward_reads_it():
    """Dropout 0.1 (BERT's, Megatron's GPT) on the toy layer (2 x 8 tokens, hidden 64, 4 heads; fp16): on
    attention's probabilities (2 x 4 x 8 x 8 = 512 elements) and on each block's output before the
    residual add (2 x 8 x 64 = 1,024): each reads its input and writes its output and a one-byte mask
    (2 FLOPs per element), and its backward reads the mask and dY and writes dX (1 FLOP per element). Kept
    for backward: the masks and the dropped probabilities; full recomputation keeps neither, selective
    recomputation not the probabilities' (sequence-squared) ones. FlashAttention drops in its kernel."""
    wl, _ = toy(training__dropout=0.1)
    ops = {(op.phase, op.kind): op for op in build_graph(wl).ops if op.layer == 0}
    for kind, n in (("probs_dropout", 512), ("attn_dropout", 1024), ("ffn_dropout", 1024)):
        fwd, bwd = ops["forward", kind], ops["backward", f"{kind}_bwd"]
        assert (fwd.flops, bwd.flops) == (2 * n, n)
        assert [a.bytes for a in fwd.reads] == [2 * n] and [a.bytes for a in fwd.writes] == [2 * n, n]
        assert sorted(a.bytes for a in bwd.reads) == [n, 2 * n] and [a.bytes for a in bwd.writes] == [2 * n]
        assert f".{kind}_mask." in bwd.reads[0].tensor.name

    def kept(**over):
        wl, hw = toy(model__layers=2, **over)
        return run(wl, hw).placement.footprint.activations
    extra = {mode: kept(training__dropout=0.1, training__recompute=mode) - kept(training__recompute=mode)
             for mode in ("none", "selective", "full")}
    # full: one layer's again, during its backward; selective: the hidden states' masks, every layer's
    assert extra["none"] > extra["selective"] > 0 and extra["none"] > extra["full"] > 0
    wl, _ = toy(training__dropout=0.1, scenario__attention="fused")
    assert not any(op.kind == "probs_dropout" for op in build_graph(wl).ops)


def test_activations_ramp_through_forward_and_fall_through_backward():
    """The memory timeline peaks where forward ends and backward begins, and what the step holds all
    through (weights, gradients, optimizer state) is there from the start."""
    from sim.report.memory import memory_timeline

    wl, hw = toy(model__layers=3, training__recompute="none")
    result = run(wl, hw)
    (track,) = [t for t in memory_timeline(result) if any("activation" in k for _, k in t["points"])]
    t_peak = max(track["points"], key=lambda p: p[1].get("activation", 0.0))[0]
    last_forward = max(r.start_s for r in result.ops if r.phase == "forward")
    head_backward = max(r.end_s for r in result.ops if r.phase == "backward" and r.layer == 3)
    assert last_forward - 1e-12 <= t_peak <= head_backward + 1e-12  # the loss, between the two passes
    first = track["points"][0][1]
    assert first.get("gradient") and first.get("optimizer_state") and first.get("weight")
    assert track["points"][-1][1].get("activation", 0.0) == pytest.approx(0.0, abs=1e-6)


def test_gradient_accumulation_reads_and_adds_to_the_gradients():
    """Two micro-batches of one sequence each do the FLOPs of one batch of two, and the second one's
    weight-gradient GEMMs read the gradients the first wrote; the update runs once."""
    wl1, hw = toy()
    wl2, _ = toy(parallelism__microbatches=2)
    g1, g2 = build_graph(wl1), build_graph(wl2)
    assert matmul_flops(g1, ("forward", "backward")) == pytest.approx(matmul_flops(g2, ("forward", "backward")))
    dws = [op for op in g2.ops if op.kind == "ffn_up_dw"]
    assert len(dws) == 2 and not any(a.tensor.kind == "gradient" for a in dws[0].reads)
    assert any(a.tensor.kind == "gradient" for a in dws[1].reads)
    assert sum(op.kind == "update" for op in g2.ops) == sum(op.kind == "update" for op in g1.ops)
    s = summarize(run(wl2, hw))
    assert s["step_s"] > 0 and s["samples_per_s"] == pytest.approx(2 / s["step_s"])


def test_a_step_that_does_not_fit_spills_its_optimizer_state_or_fails_in_one_line():
    """Llama-2-7B's AdamW state (12 bytes per parameter, 75 GiB) does not fit an 80 GB A100 beside its
    weights, gradients and activations: it lives in host memory, and the update streams it over PCIe.
    Without host memory the step does not fit: one line naming the parts, exit 2."""
    wl, hw = load(ROOT / "workloads/llama2-7b.yaml", **TRAIN, scenario__prompt_tokens=256, scenario__batch=1)
    result = run(wl, hw)
    assert result.placement.home["optimizer_state"] == "host"
    update = [r for r in result.ops if r.kind == "update"]
    assert update and all(r.bound == "memory:host" for r in update)
    done = cli("run", "workloads/llama2-7b.yaml", "--set", "scenario.phase=train", "--set", "scenario.new_tokens=0",
               "--set", "host.memory.capacity=1 GiB")
    assert done.returncode == 2 and "optimizer state" in done.stderr and "does not fit" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("setting,says", [
    ("training.zero=2", "parallelism.data > 1"),  # nothing to shard over
    ("training.state_multiple=3", "second_order"),  # would do nothing
    ("training.zero=4", "training.zero"),
    ("scenario.precision.weights=fp32", "master"),  # the workload asks for a master copy of fp32 weights
])
def test_training_settings_that_cannot_apply_are_refused_in_one_line(setting, says):
    done = cli("run", "workloads/gpt2-train.yaml", "--set", setting)
    assert done.returncode == 2 and says in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_bert_trains_its_masked_lm_head_over_every_position():
    """BERT (post-norm) with the masked-LM head: dense, GELU, layer norm and the tied word embeddings over
    every position (as BertForMaskedLM scores them), then the loss; its backward does twice the forward's
    matmul FLOPs, and the word embeddings' gradient gathers the decoder's and the lookup's."""
    wl, hw = load(ROOT / "workloads/bert-base.yaml", scenario__phase="train", model__layers=2,
                  scenario__batch=2, scenario__prompt_tokens=128)
    g = build_graph(wl)
    kinds = [op.kind for op in g.ops if op.phase == "forward" and op.layer == 2]
    assert kinds == ["mlm_dense", "mlm_act", "mlm_norm", "mlm_decoder", "loss"]
    assert matmul_flops(g, ("backward",)) == pytest.approx(2 * matmul_flops(g, ("forward",)), rel=1e-12)
    writers = [op for op in g.ops if any(a.tensor.name == "g_wte" for a in op.writes)]
    assert [op.kind for op in writers] == ["mlm_decoder_dw", "embed_bwd"]
    assert any(a.tensor.name == "g_wte" for a in writers[1].reads)  # the second adds to the first's
    s = summarize(run(wl, hw))
    assert s["step_s"] > 0 and 0 < s["mfu"] < 1


def test_data_parallel_gradients_are_all_reduced_in_buckets_under_backward():
    """Four replicas on the toy node's ring (10 GB/s links, 1 us; DRAM made fast so that the all-reduces'
    memory traffic does not slow the compute): each layer's gradients (in buckets of at least
    `training.bucket` bytes) are all-reduced over the replicas as soon as backward has them, on the comm
    stream, while backward goes on with the layers below; the update waits for the last one. Every
    device sends 2(p-1)/p of all gradient bytes; the step is the single replica's (a quarter of the
    batch) plus the communication the compute could not hide, to the picosecond."""
    from sim.config import load_hardware

    node = load_hardware(DATA / "toy-node.yaml", [("device.memory.dram.bandwidth", "10 TB/s")])
    wl, _ = toy(model__layers=4, scenario__batch=8, parallelism__data=4, training__bucket="1 B")
    one, _ = toy(model__layers=4, scenario__batch=2)
    result, alone = run(wl, node), run(one, node)
    grads = result.placement.footprint.gradients
    reduces = [r for r in result.ops if r.kind == "grad_allreduce"]
    per_device = {d: sum(sum(r.link_bytes.values()) for r in reduces if r.device == d) for d in range(4)}
    assert all(v == pytest.approx(2 * 3 / 4 * grads) for v in per_device.values())
    assert len({r.layer for r in reduces}) == 4 + 1  # one bucket per layer, the last with the embeddings'
    s, s1 = summarize(result), summarize(alone)
    assert s["comm_hidden_s"] > 0 and s["comm_exposed_s"] > 0
    assert s["step_s"] == pytest.approx(s1["step_s"] + s["comm_exposed_s"] / 4, rel=1e-6)
    update = min(r.start_s for r in result.ops if r.kind == "update" and r.device == 0)
    assert update >= max(r.end_s for r in reduces if r.device == 0) - 1e-15
    wl, _ = toy(model__layers=4, scenario__batch=8, parallelism__data=4)  # 25 MiB: one bucket at the end
    assert sum(r.kind == "grad_allreduce" for r in run(wl, node).ops if r.device == 0) == 1


def test_each_pipeline_stage_all_reduces_its_own_gradients():
    """Pipeline 2 x data 2, every gradient in one bucket: each stage all-reduces the gradients of the
    weights it holds (its own footprint's), over its own replicas, at the end of its backward; none of a
    stage's gradients waits for, or travels with, another stage's."""
    from sim.config import load_hardware

    node = load_hardware(DATA / "toy-node.yaml")
    wl, _ = toy(model__layers=4, scenario__batch=4, parallelism__pipeline=2, parallelism__data=2,
                parallelism__microbatches=2)
    result = run(wl, node)
    for stage, placement in result.placements.items():
        reduces = [r for r in result.ops if r.kind == "grad_allreduce" and r.device == stage]
        assert len(reduces) == 1
        sent = sum(b for lnk, b in reduces[0].link_bytes.items() if lnk.startswith(f"{stage}->"))  # first hop
        assert sent == pytest.approx(2 * 1 / 2 * placement.footprint.gradients)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_shards_state_and_gradients_and_moves_what_ddp_moves(stage):
    """Rajbhandari et al. (2020), with Ψ parameters over d = 4 replicas, mixed-precision Adam (fp16 weights
    and gradients, 12 bytes of state): per device 2Ψ + 2Ψ + 12Ψ (stage 0), 2Ψ + 2Ψ + 12Ψ/d (stage 1),
    2Ψ + (2 + 12)Ψ/d (stage 2), (2 + 2 + 12)Ψ/d (stage 3). Stage 0 all-reduces the gradients, 2(d-1)/d of
    them per device; stages 1 and 2 reduce-scatter them and all-gather the updated weights, (d-1)/d of
    each: the same volume; stage 3 gathers the weights before forward and again before backward: 1.5x."""
    from sim.config import load_hardware

    node = load_hardware(DATA / "toy-node.yaml")
    wl, _ = toy(model__layers=2, scenario__batch=8, parallelism__data=4, training__optimizer="adam",
                training__zero=stage)
    result = run(wl, node)
    fp, d = result.placement.footprint, 4
    psi = fp.weights / 2
    if stage == 3:  # the weights too, and two layers' gathered weights beside them
        psi *= d
        assert result.placement.staged["dram"] > 0
    assert fp.gradients == pytest.approx(2 * psi / (d if stage >= 2 else 1))
    assert fp.optimizer == pytest.approx(12 * psi / (d if stage >= 1 else 1))
    sent = sum(sum(r.link_bytes.values()) for r in result.ops if r.device == 0 and r.op_class == "collective")
    # stage 3 gathers the weights for forward and again for backward: 1.5x the data-parallel volume (the
    # embedding's backward needs no table; the tied one is gathered for the LM head as well: +1.2% here)
    assert sent == pytest.approx((1.5 if stage == 3 else 1) * 2 * (d - 1) / d * 2 * psi, rel=0.015 if stage == 3
                                 else 1e-9)
    if stage == 3:  # each layer's weights exactly twice: for its forward, and again for its backward
        gathers = [r for r in result.ops if r.device == 0 and r.kind == "param_allgather" and r.name.endswith("_L0")]
        assert [r.phase for r in gathers] == ["forward", "backward"]
        assert sum(gathers[0].link_bytes.values()) == sum(gathers[1].link_bytes.values()) > 0
    kinds = {r.kind for r in result.ops if r.op_class == "collective"}
    assert kinds == ({"grad_allreduce"} if stage == 0 else {"grad_reducescatter", "param_allgather"})
    update = [r for r in result.ops if r.kind == "update" and r.device == 0]
    assert sum(r.flops for r in update) == pytest.approx(12 * psi / (d if stage else 1))


def test_fit_finds_the_largest_batch_per_strategy():
    """On the toy machine (1 GiB DRAM, no host memory): the answer fits and one more sequence does not;
    recomputing more fits more; the table prints."""
    from sim.config import load_hardware, load_workload
    from sim.sweep.fit import fit, placement_of

    path = DATA / "toy-train.yaml"
    fits = {f.strategy: f for f in fit(path, None, [])}
    assert set(fits) == {"none", "selective recompute", "full recompute"}  # ZeRO needs data parallelism
    hw = load_hardware(DATA / "toy-hw.yaml")
    for f in fits.values():
        assert f.value > 0 and f.step_s > 0
        bigger = load_workload(path, [("scenario.batch", f.value + 1),
                                      ("training.recompute", f.workload.train.recompute)])[0]
        assert placement_of(f.workload, hw, "toy") is not None and placement_of(bigger, hw, "toy") is None
    assert fits["none"].value < fits["selective recompute"].value < fits["full recompute"].value
    done = cli("fit", str(path))
    assert done.returncode == 0 and "full recompute" in done.stdout
    done = cli("fit", "workloads/gpt2.yaml")
    assert done.returncode == 2 and "scenario.phase" in done.stderr


def test_gradients_meeting_at_a_fork_are_added_into_the_tensor_the_block_below_reads():
    """A pre-norm layer's input feeds its attention norm and its residual: both gradients are added into
    the gradient of the input itself (the previous layer's output, dl = -1), which the layer below reads;
    Llama's gated FFN reads the norm's output twice (gate and up): their two gradients are added too."""
    wl, _ = load(ROOT / "workloads/llama2-7b.yaml", **TRAIN, model__layers=2, model__hidden=256, model__heads=4,
                 model__kv_heads=4, model__ffn=512, model__vocab=512, scenario__prompt_tokens=16, scenario__batch=1)
    g = build_graph(wl)
    bwd = [op for op in g.ops if op.phase == "backward" and op.layer == 1]
    (into,) = [op for op in bwd if op.kind == "hidden_grad_add"]
    assert into.writes[0].tensor.name.endswith("d_hidden.L0")  # the gradient of layer 0's output
    below = [op for op in g.ops if op.phase == "backward" and op.layer == 0]
    reads_below = {a.tensor.name for op in below for a in op.reads}
    assert into.writes[0].tensor.name in reads_below
    (ffn,) = [op for op in bwd if op.kind.startswith("ffn_norm") and op.kind.endswith("_grad_add")]
    assert len({a.tensor.name for a in ffn.reads}) == 2  # two different parts, not one tensor twice


def test_zero_3_gathers_a_recomputed_layer_once_and_zero_2_reduces_every_micro_batch():
    """FSDP gathers a checkpointed layer's weights once for its recomputation and its backward together;
    ZeRO-2 keeps only its shard of the gradients, so it reduce-scatters after each micro-batch (DDP and
    ZeRO-1 only after the last)."""
    from sim.config import load_hardware

    node = load_hardware(DATA / "toy-node.yaml")
    wl, _ = toy(model__layers=2, scenario__batch=8, parallelism__data=4, training__zero=3,
                training__recompute="full")
    gathers = [r for r in run(wl, node).ops if r.device == 0 and r.kind == "param_allgather" and r.name.endswith("L0")]
    assert len(gathers) == 2  # for its forward, and (issued in the backward block above it) for both others
    for stage, per_micro in ((1, 1), (2, 2)):
        wl, _ = toy(model__layers=2, scenario__batch=8, parallelism__data=4, parallelism__microbatches=2,
                    training__zero=stage, training__bucket="1 B")
        reduced = {r.micro for r in run(wl, node).ops if r.device == 0 and r.kind == "grad_reducescatter"}
        assert len(reduced) == per_micro


def test_tensor_parallel_training_all_reduces_four_times_per_layer():
    """Megatron (Shoeybi et al., 2019): with the attention and MLP split over t ranks, a layer all-reduces its
    b·s·h activations twice in forward (after the row-parallel projections) and twice in backward (the
    input gradients of the column-parallel ones: QKV and the MLP's first GEMM, Llama's gate and up sharing
    one); each rank computes 1/t of the GEMMs' FLOPs."""
    from sim.config import load_hardware

    node = load_hardware(DATA / "toy-node.yaml")
    layers, b, s, h = 3, 2, 8, 64
    wl, _ = toy(model__layers=layers, parallelism__tensor=2)
    one, _ = toy(model__layers=layers)
    result = run(wl, node)
    inner = [r for r in result.ops if r.device == 0 and 0 <= r.layer < layers and r.op_class == "collective"]
    assert sorted(r.kind for r in inner if r.layer == 1) == sorted(
        ["attn_allreduce", "ffn_allreduce", "attn_norm_grad_allreduce", "ffn_norm_grad_allreduce"])
    assert all(sum(r.link_bytes.values()) == pytest.approx(2 * 1 / 2 * b * s * h * 2) for r in inner)
    split, whole = build_graph(wl), build_graph(one)
    assert matmul_flops(split, ("forward", "backward")) == pytest.approx(
        matmul_flops(whole, ("forward", "backward")) / 2, rel=1e-12)
    s2 = summarize(result)
    assert s2["comm_exposed_s"] > 0 and s2["devices"] == 2
    # full recomputation runs the layer's forward again, all-reduces included (Korthikanti et al., 2022:
    # 6 per layer instead of 4), each over the links
    wl, _ = toy(model__layers=layers, parallelism__tensor=2, training__recompute="full")
    again = [r for r in run(wl, node).ops if r.device == 0 and r.layer == 1 and r.op_class == "collective"]
    assert sorted(r.phase for r in again) == ["backward", "backward", "forward", "forward", "recompute", "recompute"]
    assert all(sum(r.link_bytes.values()) == pytest.approx(2 * 1 / 2 * b * s * h * 2) for r in again)


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_pipeline_parallel_training_runs_its_schedule_and_fills_with_micro_batches(schedule):
    """Four stages of two toy layers each (a small vocabulary, so that the embedding and head barely weigh)
    over free links: each stage runs its micro-batches' forward and backward passes in its schedule's
    order, activations go forward and their gradients back between stages, and the bubble falls with
    the micro-batches towards (p - 1) / (m + p - 1)."""
    from sim.config import load_hardware
    from sim.graph.schedule import stage_order

    hw = load_hardware(DATA / "toy-node.yaml", [("interconnect.link.bandwidth", "1 PB/s"),
                                                ("interconnect.link.latency", "0 us")])
    bubbles = []
    for m in (1, 4, 8):
        wl, _ = toy(model__layers=8, model__vocab=16, scenario__batch=8, parallelism__pipeline=4,
                    parallelism__microbatches=m, parallelism__schedule=schedule)
        result = run(wl, hw)
        s = summarize(result)
        bubbles.append(s["bubble_fraction"])
        assert s["bubble_fraction"] == pytest.approx(3 / (m + 3), rel=0.25)
        for stage in range(4):  # rank 0 of each stage is device `stage`
            passes = []
            for r in sorted((r for r in result.ops if r.device == stage and r.phase in ("forward", "backward")
                             and r.op_class != "collective"), key=lambda r: r.start_s):
                step = (r.micro, "F" if r.phase == "forward" else "B")
                if not passes or passes[-1] != step:
                    passes.append(step)
            assert passes == stage_order(stage, 4, m, schedule)
        sends = {r.kind for r in result.ops if r.op_class == "collective"}
        assert {"send", "send_grad"} <= sends
    assert bubbles[0] > bubbles[1] > bubbles[2]
