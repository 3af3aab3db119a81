"""LAMB and the schedule against float64 transcriptions of the reference formulas; the parameter groups."""

from __future__ import annotations

import io
import math

import pytest
import torch
from conftest import tiny_config

from bert_pretrain.model import BertConfig, BertForPreTraining
from bert_pretrain.optim import (
    NO_DECAY_NAME_PARTS,
    Lamb,
    lr_at,
    parameter_groups,
    warmup_start_for,
    warmup_steps_for,
)

# ---------------------------------------------------------------- LAMB


def reference_lamb(params, grads_per_step, lrs, decays, beta1, beta2, eps, clip_norm):
    """TF lamb_optimizer_v1 + tf.clip_by_global_norm (apex FusedLAMB, use_nvlamb=False), in float64
    Python floats, one element at a time. params: list of flat lists; decays: per-tensor wd."""
    w = [list(p) for p in params]
    m = [[0.0] * len(p) for p in params]
    v = [[0.0] * len(p) for p in params]
    for t, (grads, lr) in enumerate(zip(grads_per_step, lrs), start=1):
        global_norm = math.sqrt(sum(g * g for tensor in grads for g in tensor))
        scale = clip_norm / max(global_norm, clip_norm)
        for i, tensor in enumerate(grads):
            update = []
            for j, g in enumerate(tensor):
                g = g * scale
                m[i][j] = beta1 * m[i][j] + (1 - beta1) * g
                v[i][j] = beta2 * v[i][j] + (1 - beta2) * g * g
                m_hat = m[i][j] / (1 - beta1**t)
                v_hat = v[i][j] / (1 - beta2**t)
                update.append(m_hat / (math.sqrt(v_hat) + eps) + decays[i] * w[i][j])
            ratio = 1.0
            if decays[i] != 0.0:
                w_norm = math.sqrt(sum(x * x for x in w[i]))
                u_norm = math.sqrt(sum(u * u for u in update))
                ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
            w[i] = [x - lr * ratio * u for x, u in zip(w[i], update)]
    return w


def lamb_case():
    """Tensors in both groups, including a zero weight (||w|| = 0) and a zero weight with a zero
    gradient (||w|| = ||update|| = 0). Step 2 has a large gradient, so it is clipped."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(4, 3), (5,), (3,), (2, 2), (6,)]
    decays = [0.01, 0.01, 0.0, 0.01, 0.0]
    params = [torch.randn(s, generator=gen) for s in shapes]
    params[3].zero_()
    grads_per_step = []
    for step in range(5):
        grads = [torch.randn(s, generator=gen) * (3.0 if step == 2 else 0.05) for s in shapes]
        grads[3] = torch.zeros(2, 2) if step < 2 else grads[3]
        grads_per_step.append(grads)
    return params, grads_per_step, decays


# The multi-tensor eager update and the compiled one (lamb_compiled.py) must both match the reference.
both_paths = pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])


def run_lamb(params, grads_per_step, decays, lrs, **kwargs):
    tensors = [p.clone().requires_grad_() for p in params]
    groups = [
        {"params": [t for t, d in zip(tensors, decays) if d != 0.0], "weight_decay": 0.01},
        {"params": [t for t, d in zip(tensors, decays) if d == 0.0], "weight_decay": 0.0},
    ]
    opt = Lamb(groups, **kwargs)
    norms = []
    for grads, lr in zip(grads_per_step, lrs):
        for tensor, grad in zip(tensors, grads):
            tensor.grad = grad.clone()
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        norms.append(float(opt.last_grad_norm))
    return tensors, norms


@both_paths
def test_lamb_matches_the_float64_reference_over_several_steps(compiled):
    params, grads_per_step, decays = lamb_case()
    lrs = [0.02, 0.05, 0.01, 0.03, 0.004]
    got, norms = run_lamb(params, grads_per_step, decays, lrs, betas=(0.85, 0.99), eps=1e-6, max_grad_norm=1.0,
                          compiled=compiled)
    expected = reference_lamb(
        [p.flatten().tolist() for p in params], [[g.flatten().tolist() for g in gs] for gs in grads_per_step],
        lrs, decays, 0.85, 0.99, 1e-6, 1.0,
    )
    assert norms[2] > 1.0 > max(norms[:2] + norms[3:])  # one clipped step, the others not
    for tensor, ref in zip(got, expected):
        torch.testing.assert_close(tensor.detach().flatten(), torch.tensor(ref, dtype=torch.float32),
                                   rtol=2e-5, atol=2e-7)
    assert torch.isfinite(torch.cat([t.detach().flatten() for t in got])).all()


def test_lamb_moves_weights_by_lr_times_trust_ratio_on_the_first_step():
    # First update: m_hat = g, v_hat = g^2, so update = sign(g) (eps aside) + wd*w; with the trust
    # ratio the step length is exactly lr * ||w|| for a decayed tensor.
    w = torch.full((10,), 2.0, requires_grad=True)
    w.grad = torch.linspace(-1, 1, 10).add(0.05)
    Lamb([{"params": [w], "weight_decay": 0.01}], lr=0.1, eps=0.0, max_grad_norm=None).step()
    moved = (w.detach() - 2.0).norm()
    torch.testing.assert_close(moved, 0.1 * torch.tensor(2.0 * math.sqrt(10)), rtol=1e-6, atol=0)


def test_no_decay_group_gets_no_trust_ratio():
    w = torch.full((4,), 5.0, requires_grad=True)
    w.grad = torch.tensor([1.0, -1.0, 2.0, -2.0])
    Lamb([{"params": [w], "weight_decay": 0.0}], lr=0.1, eps=0.0).step()
    # The clip scales g but the first Adam step is sign(g) whatever the scale: an Adam step of lr.
    torch.testing.assert_close(w.detach(), torch.tensor([4.9, 5.1, 4.9, 5.1]))


@both_paths
def test_clipping_is_global_over_both_groups(compiled):
    a = torch.zeros(1, requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    a.grad, b.grad = torch.tensor([3.0]), torch.tensor([4.0])
    opt = Lamb([{"params": [a], "weight_decay": 0.01}, {"params": [b], "weight_decay": 0.0}], max_grad_norm=1.0,
               compiled=compiled)
    opt.step()
    assert float(opt.last_grad_norm) == pytest.approx(5.0)
    torch.testing.assert_close(torch.cat([a.grad, b.grad]), torch.tensor([0.6, 0.8]))


@both_paths
def test_steps_with_missing_gradients_skip_those_parameters(compiled):
    a = torch.ones(3, requires_grad=True)
    b = torch.ones(3, requires_grad=True)
    a.grad = torch.ones(3)
    opt = Lamb([a, b], lr=0.1, compiled=compiled)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(3)) and b not in opt.state
    assert not torch.equal(a.detach(), torch.ones(3))


def test_lamb_rejects_bad_settings():
    w = torch.zeros(2, requires_grad=True)
    for kwargs in ({"lr": -1.0}, {"betas": (1.0, 0.9)}, {"eps": -1e-6}, {"weight_decay": -0.1}, {"max_grad_norm": 0.0}):
        with pytest.raises(ValueError):
            Lamb([w], **kwargs)
    with pytest.raises(ValueError, match="fp32"):
        Lamb([torch.zeros(2, dtype=torch.float16, requires_grad=True)])


def tiny_training(model, opt, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 6, generator=gen)
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def tiny_model(seed=1):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    return model


def test_state_dict_round_trip_resumes_bitwise():
    model = tiny_model()
    opt = Lamb(parameter_groups(model, 0.01), lr=0.01)
    tiny_training(model, opt, 3, seed=5)
    saved_model = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, saved_model)
    tiny_training(model, opt, 4, seed=6)

    saved_model.seek(0)
    saved = torch.load(saved_model, weights_only=True)
    resumed = tiny_model(seed=99)
    resumed.load_state_dict(saved["model"])
    resumed_opt = Lamb(parameter_groups(resumed, 0.01), lr=0.5)  # lr comes back from the state dict
    resumed_opt.load_state_dict(saved["optimizer"])
    assert [g["step"] for g in resumed_opt.param_groups] == [3, 3]
    tiny_training(resumed, resumed_opt, 4, seed=6)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


@both_paths
def test_grad_scaler_skips_an_inf_step_and_leaves_everything_unchanged(compiled):
    model = tiny_model()
    opt = Lamb(parameter_groups(model, 0.01), lr=0.01, compiled=compiled)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)

    def scaled_step(poison: bool):
        loss = model(torch.ones(4, 6)).pow(2).mean()
        scaler.scale(loss).backward()
        if poison:
            model[0].weight.grad[0, 0] = float("inf")
        scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    scaled_step(poison=False)
    params_before = [p.detach().clone() for p in model.parameters()]
    state_before = {k: v.clone() for p in model.parameters() for k, v in opt.state[p].items()}
    steps_before = [g["step"] for g in opt.param_groups]
    scaled_step(poison=True)
    assert scaler.get_scale() == 512.0
    assert all(torch.equal(a, b) for a, b in zip(params_before, model.parameters()))
    state_after = {k: v for p in model.parameters() for k, v in opt.state[p].items()}
    assert all(torch.equal(state_before[k], state_after[k]) for k in state_before)
    assert [g["step"] for g in opt.param_groups] == steps_before == [1, 1]
    scaled_step(poison=False)
    assert [g["step"] for g in opt.param_groups] == [2, 2]
    assert not torch.equal(params_before[0], model[0].weight)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_compiled_update_equals_the_eager_one_on_bert_with_one_compilation_for_all_layers(device):
    from torch._dynamo.utils import counters

    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch._dynamo.reset()  # the graphs other tests compiled count toward dynamo's recompile limit
    torch.manual_seed(0)
    config = tiny_config()
    eager_model, compiled_model = BertForPreTraining(config).to(device), BertForPreTraining(config).to(device)
    compiled_model.load_state_dict(eager_model.state_dict())
    eager = Lamb(parameter_groups(eager_model, 0.01), lr=0.01)
    compiled = Lamb(parameter_groups(compiled_model, 0.01), lr=0.01, compiled=True)
    gen = torch.Generator().manual_seed(3)
    graphs_before = counters["stats"]["unique_graphs"]
    norms = []
    for step in range(4):
        grads = [torch.randn(p.shape, generator=gen) * (1.0 if step == 1 else 0.001) for p in eager_model.parameters()]
        for model, opt in ((eager_model, eager), (compiled_model, compiled)):
            for param, grad in zip(model.parameters(), grads):
                param.grad = grad.to(device, copy=True)
            for group in opt.param_groups:
                group["lr"] = 0.01 * (step + 1)  # a new rate every step: no recompilation
            opt.step()
        assert float(compiled.last_grad_norm) == pytest.approx(float(eager.last_grad_norm), rel=1e-6)
        norms.append(float(eager.last_grad_norm))
        for a, b in zip(eager_model.parameters(), compiled_model.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # fp32 rounding of other kernels only
    assert norms[1] > 1.0 > max(norms[:1] + norms[2:])  # step 1 was clipped, the others not
    # every encoder layer's unit shares one graph; the embeddings and heads make the second
    assert counters["stats"]["unique_graphs"] - graphs_before == 2
    assert config.num_hidden_layers > 1


@pytest.mark.gpu
@both_paths
def test_step_does_not_synchronise_with_the_host(compiled):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = tiny_model().cuda()
    opt = Lamb(parameter_groups(model, 0.01), lr=0.01, compiled=compiled)
    model(torch.ones(4, 6, device="cuda")).sum().backward()
    opt.step()  # the first step allocates the moments
    model(torch.ones(4, 6, device="cuda")).sum().backward()
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ---------------------------------------------------------------- parameter groups


def test_parameter_groups_split_by_name_on_the_real_model():
    model = BertForPreTraining(tiny_config())
    decay, no_decay = parameter_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all("LayerNorm" in n or n.endswith("bias") for n in no_decay["param_names"])
    assert not any(part in n for n in decay["param_names"] for part in NO_DECAY_NAME_PARTS)
    assert "bert.embeddings.word_embeddings.weight" in decay["param_names"]
    assert "cls.predictions.bias" in no_decay["param_names"]
    assert "bert.encoder.layer.0.attention.output.LayerNorm.weight" in no_decay["param_names"]
    all_params = decay["params"] + no_decay["params"]
    assert len({id(p) for p in all_params}) == len(all_params) == len(list(model.parameters()))
    # The tied decoder weight is the word-embedding matrix, listed once.
    assert not any("decoder" in n for n in decay["param_names"] + no_decay["param_names"])


def test_parameter_group_sizes_for_bert_large(shared_data):
    config = BertConfig.from_json_file(shared_data / "configs" / "bert_config_large_uncased.json")
    with torch.device("meta"):
        model = BertForPreTraining(config)
    decay, no_decay = parameter_groups(model, 0.01)
    H, I, L, V, P = 1024, 4096, 24, 30528, 512  # V: 30522 padded to a multiple of 8
    # embeddings (word, position, type) + per layer qkv, attention output, intermediate, output
    # + pooler + MLM transform + NSP classifier.
    decay_numel = V * H + P * H + 2 * H + L * (3 * H * H + H * H + 2 * H * I) + H * H + H * H + 2 * H
    # LayerNorms (2 per layer, embeddings, MLM transform) + all biases (the MLM output bias is V long).
    no_decay_numel = 2 * H + L * (3 * H + H + 2 * H + I + H + 2 * H) + H + V + H + 2 * H + 2
    assert (decay_numel, no_decay_numel) == (335_876_096, 356_162)
    assert sum(p.numel() for p in decay["params"]) == decay_numel
    assert sum(p.numel() for p in no_decay["params"]) == no_decay_numel
    assert (len(decay["params"]), len(no_decay["params"])) == (3 + 4 * L + 3, 2 + 8 * L + 6)


# ---------------------------------------------------------------- schedule


def nvidia_lr(optimizer_steps, base_lr, warmup, total, start_warmup, degree=1.0, dtype=torch.float64):
    """LinearWarmupPolyDecayScheduler.get_lr transcribed in tensors (NVIDIA computes in float32);
    `last_epoch = optimizer._step + 1` is set right before each update."""
    last_epoch = torch.tensor(optimizer_steps + 1, dtype=dtype)
    offset = torch.tensor(int(start_warmup == 0))
    mod_step = last_epoch - offset - start_warmup
    cond = (mod_step < warmup).to(dtype)
    progress = cond * (mod_step / (warmup + 1e-6)) + (1 - cond) * torch.clamp((last_epoch - offset) / total, max=1.0)
    lr = cond * (base_lr * progress) + (1 - cond) * (base_lr * (1 - progress) ** degree)
    return float(lr)


# mlperf-logging's v1.0 RCP table (rcps_bert.json) and NVIDIA's configs: (lr, max_steps, warmup, start_warmup_step).
SCHEDULES = {
    "bs256": (3.5e-4, 13700, 0, 0),
    "bs448_nvidia": (3.5e-4, 7100, 0, 0),
    "bs3072": (0.002, 1141, 100, 0),
    "bs3072_nvidia": (1.5e-3, 1271, 100, -25),
    "bs6144": (0.0029293, 700, 0, -700),
    "bs8192": (0.00288293, 600, 287, -76),
    "bs12288": (0.0033, 500, 300, -76),
}


@pytest.mark.parametrize("name", SCHEDULES)
def test_lr_matches_nvidia_scheduler(name):
    base_lr, total, warmup, start = SCHEDULES[name]
    for step in range(0, total + 3):
        lr = lr_at(step, base_lr, warmup, total, start)
        assert lr == pytest.approx(nvidia_lr(step, base_lr, warmup, total, start), rel=1e-12, abs=1e-18), step
        # NVIDIA's own float32 arithmetic agrees to float32 rounding of the peak rate.
        assert lr == pytest.approx(nvidia_lr(step, base_lr, warmup, total, start, dtype=torch.float32),
                                   rel=0, abs=base_lr * 1e-6), step


def test_lr_worked_examples():
    # No warmup, start 0: the TF reference's polynomial decay at global_step = updates taken.
    assert lr_at(0, 4e-4, 0, 8103) == 4e-4
    assert lr_at(8102, 4e-4, 0, 8103) == pytest.approx(4e-4 / 8103)
    assert lr_at(8103, 4e-4, 0, 8103) == 0.0
    # BS 3072: warmup 100 from 0: the first update gets lr 0, update k gets k/100 of the peak.
    assert lr_at(0, 0.002, 100, 1141) == 0.0
    assert lr_at(50, 0.002, 100, 1141) == pytest.approx(0.001, rel=1e-7)
    assert lr_at(100, 0.002, 100, 1141) == pytest.approx(0.002 * (1 - 100 / 1141))
    # BS 8192: warmup 287 from -76: the first update is already 77 steps into the warmup.
    assert lr_at(0, 0.00288293, 287, 600, -76) == pytest.approx(0.00288293 * 77 / 287, rel=1e-7)
    assert lr_at(209, 0.00288293, 287, 600, -76) == pytest.approx(0.00288293 * 286 / 287, rel=1e-7)
    assert lr_at(210, 0.00288293, 287, 600, -76) == pytest.approx(0.00288293 * (1 - 211 / 600))
    # BS 6144: start -700 with no warmup: pure decay, counted from last = updates + 1.
    assert lr_at(0, 0.0029293, 0, 700, -700) == pytest.approx(0.0029293 * (1 - 1 / 700))


def test_lr_degree_and_bad_total():
    assert lr_at(50, 1.0, 0, 100, degree=2.0) == pytest.approx(0.25)
    assert lr_at(5, 1.0, 10, 100, start_warmup_step=20) == 0.0  # before a positive start: 0, not < 0
    with pytest.raises(ValueError):
        lr_at(0, 1.0, 0, 0)


def test_warmup_from_flags():
    assert warmup_steps_for(7100, 0.0, 0) == 0
    assert warmup_steps_for(1536, 0.01, 0) == 15  # the reference defaults: int(1536 * 0.01)
    assert warmup_steps_for(1141, 0.5, 100) == 100  # explicit steps win
    assert warmup_start_for(100, -25) == -25
    assert warmup_start_for(0, -25) == 0  # from the proportion, the warmup starts at 0
    with pytest.raises(ValueError):
        warmup_steps_for(100, -0.1, 0)


@both_paths
def test_a_fused_qkv_weight_gets_one_trust_ratio_per_block_as_the_reference_q_k_v(compiled):
    """The reference trains query, key and value as three tensors, each with its own LAMB trust ratio."""
    gen = torch.Generator().manual_seed(1)
    blocks = [torch.randn(4, 3, generator=gen) * scale for scale in (1.0, 3.0, 0.2)]  # different norms
    grads_per_step = [[torch.randn(4, 3, generator=gen) * 0.1 for _ in range(3)] for _ in range(3)]
    lrs = [0.05, 0.02, 0.01]
    expected = reference_lamb([b.flatten().tolist() for b in blocks],
                              [[g.flatten().tolist() for g in gs] for gs in grads_per_step],
                              lrs, [0.01] * 3, 0.9, 0.999, 1e-6, 1.0)
    fused = torch.cat(blocks).requires_grad_()
    opt = Lamb([{"params": [fused], "weight_decay": 0.01, "segments": [3]}], eps=1e-6, compiled=compiled)
    for grads, lr in zip(grads_per_step, lrs):
        fused.grad = torch.cat(grads)
        opt.param_groups[0]["lr"] = lr
        opt.step()
    for block, ref in zip(fused.detach().chunk(3), expected):
        torch.testing.assert_close(block.flatten(), torch.tensor(ref, dtype=torch.float32), rtol=2e-5, atol=2e-7)
    # parameter_groups marks the model's fused QKV weights, and only those
    model = BertForPreTraining(tiny_config())
    for group in parameter_groups(model, 0.01):
        for name, k in zip(group["param_names"], group["segments"]):
            assert k == (3 if name.endswith("attention.self.qkv.weight") else 1), name


def test_the_schedule_built_from_the_reference_flags_is_its_rate_at_every_step():
    """--warmup_steps 0 takes the warmup from --warmup_proportion and starts it at 0 whatever
    --start_warmup_step says (the reference's rule); otherwise both flags hold."""
    from bert_pretrain.optim import LrSchedule

    by_proportion = LrSchedule.from_flags(4e-4, 1000, 0.1, 0, start_warmup_step=-76)
    assert (by_proportion.warmup_steps, by_proportion.start_warmup_step) == (100, 0)
    by_steps = LrSchedule.from_flags(4e-4, 1000, 0.1, 30, start_warmup_step=-76)
    assert (by_steps.warmup_steps, by_steps.start_warmup_step) == (30, -76)
    for step in (0, 1, 29, 99, 100, 500, 999, 1200):
        assert by_proportion.at(step) == lr_at(step, 4e-4, 100, 1000, 0)
        assert by_steps.at(step) == lr_at(step, 4e-4, 30, 1000, -76)
    assert by_proportion.at(1200) == 0.0 and by_proportion.degree == 1.0
