"""LoRA adapters: injection, exactness of the merge policies, training, drift compensation."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from fedrecon.backbones.conv4 import Conv4
from fedrecon.backbones.conv4 import adapter_targets as conv_targets
from fedrecon.backbones.efficientnet import adapter_targets as pointwise_targets
from fedrecon.backbones.minilm import adapter_targets as minilm_targets
from fedrecon.backbones.registry import BACKBONES
from fedrecon.learning.adapter_merges import ADAPTER_INIT, ADAPTER_MERGES, global_updates, make_adapter_merge, refactor
from fedrecon.learning.adapter_task import adapt_step, client_task, reply_factors
from fedrecon.learning.drift import compensate, drift_from_sums, drift_sums
from fedrecon.learning.lora import Adapted, target_layers
from fedrecon.learning.finetune import _FINETUNE as FINETUNE
from fedrecon.learning.stats import _PROJECTION as PROJECTION
from fedrecon.learning.stats import ClassStats, StatsSpec
from fedrecon.learning.training import ADAPTER_BATCHES, embed_adapted, train_adapter
from fedrecon.plan.samples import POISSON, PRESENCE, REVISITS, SAMPLES, SPLIT, TEST
from fedrecon.scenario.sections import ADAPTER_MERGES as ADAPTER_MERGE_NAMES
from fedrecon.scenario.sections import AdaptersConfig
from tests.conftest import scenario_of

SHAPES = {"a": (6, 5), "b": (4, 9)}
CONV4 = BACKBONES["conv4"]


def _client_factors(policy: str, start: dict, rng: np.random.Generator) -> dict:
    """What a client's training could return: its start factors moved at random."""
    out = {}
    for n in SHAPES:
        a = np.asarray(start[f"{n}.A"], np.float64)
        b = np.asarray(start[f"{n}.B"], np.float64)
        if "A" in make_adapter_merge(policy).replies:
            a = a + rng.normal(size=a.shape)
        out[f"{n}.A"], out[f"{n}.B"] = a.astype(np.float32), (b + rng.normal(size=b.shape)).astype(np.float32)
    return out


def _client_weight(policy: str, state: dict, factors: dict, settings: AdaptersConfig, n: str) -> np.ndarray:
    """The full weight update of layer ``n`` a client trained to (stack: the folded
    global update plus its fresh adapter; ffa: its B with the shared, untrained A)."""
    d = state[f"{n}.U"] @ state[f"{n}.V"] if policy == "stack" else 0.0
    return d + settings.scale * np.asarray(factors[f"{n}.B"], np.float64) @ np.asarray(factors[f"{n}.A"], np.float64)


def _round(policy: str, rounds: int = 3, clients: int = 3):
    # Prepare
    settings = AdaptersConfig(schedule="every_task", rank=2, alpha=3.0)
    p = make_adapter_merge(policy)
    rng = np.random.default_rng(0)
    state = p.init(SHAPES, settings, 5)
    for r in range(1, rounds + 1):
        before = global_updates(policy, state, SHAPES, settings, 5)
        starts = [p.client_start(state, SHAPES, settings, 5, c, r) for c in range(clients)]
        factors = [_client_factors(policy, s, rng) for s in starts]
        weights = list(rng.integers(1, 50, size=clients).astype(float))
        # Execute
        merged = p.merge(state, [{k: v for k, v in f.items() if k[-1] in p.replies} for f in factors], weights, settings)
        after = global_updates(policy, merged, SHAPES, settings, 5)
        yield settings, state, factors, weights, before, after
        state = merged


@pytest.mark.parametrize("policy", ["ffa", "stack"])
def test_exact_policies_give_the_average_of_the_clients_weight_updates(policy):
    for settings, state, factors, weights, before, after in _round(policy):
        w = np.asarray(weights) / sum(weights)
        for n in SHAPES:
            clients = [_client_weight(policy, state, f, settings, n) for f in factors]
            average_update = sum(wi * (c - before[n]) for wi, c in zip(w, clients))
            # Assert
            np.testing.assert_allclose(after[n] - before[n], average_update, rtol=1e-5, atol=1e-5)


def test_fedavg_misses_exactly_the_cross_term():
    for settings, state, factors, weights, before, after in _round("fedavg"):
        w = np.asarray(weights) / sum(weights)
        for n in SHAPES:
            a = [np.asarray(f[f"{n}.A"], np.float64) for f in factors]
            b = [np.asarray(f[f"{n}.B"], np.float64) for f in factors]
            average = settings.scale * sum(wi * bi @ ai for wi, ai, bi in zip(w, a, b))
            a_bar, b_bar = sum(wi * ai for wi, ai in zip(w, a)), sum(wi * bi for wi, bi in zip(w, b))
            cross = settings.scale * sum(wi * (bi - b_bar) @ (ai - a_bar) for wi, ai, bi in zip(w, a, b))
            # Assert: not the average, and off by the weighted covariance of the factors
            assert np.abs(after[n] - average).max() > 1e-2
            np.testing.assert_allclose(average - after[n], cross, rtol=1e-4, atol=1e-4)


def test_stack_rank_stays_bounded():
    for settings, state, factors, weights, before, after in _round("stack", rounds=6, clients=4):
        pass
    merged = make_adapter_merge("stack").merge(state, factors, weights, settings)
    for n, (out, fan_in) in SHAPES.items():
        assert merged[f"{n}.U"].shape[1] <= min(out, fan_in)


def test_refactor_keeps_the_product_and_drops_zero_directions():
    rng = np.random.default_rng(1)
    u, v = rng.normal(size=(30, 3)), rng.normal(size=(3, 40))
    u2, v2 = refactor(np.concatenate([u, u], 1), np.concatenate([v, v], 0))  # rank 3 written as 6
    assert u2.shape[1] == 3
    np.testing.assert_allclose(u2 @ v2, 2 * u @ v, atol=1e-10)


def test_unknown_policy_lists_the_registered_ones():
    with pytest.raises(ValueError, match="fedavg, ffa, none, stack"):
        make_adapter_merge("mean")
    # the schema's names and the registry's are the same
    assert set(ADAPTER_MERGES) == set(ADAPTER_MERGE_NAMES) == {"none", "fedavg", "ffa", "stack"}


def test_default_targets_of_each_backbone():
    assert len(target_layers(Conv4(), conv_targets)) == 4

    class Tiny(nn.Module):  # MiniLM's names without its weights
        def __init__(self):
            super().__init__()
            self.encoder = nn.Module()
            self.encoder.layer = nn.ModuleList([nn.Module()])
            self.encoder.layer[0].query = nn.Linear(4, 4)
            self.encoder.layer[0].intermediate = nn.Linear(4, 8)
            self.pooler = nn.Linear(4, 4)

    assert target_layers(Tiny(), minilm_targets) == ["encoder.layer.0.query", "encoder.layer.0.intermediate"]
    pointwise = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1))
    assert target_layers(pointwise, pointwise_targets) == ["1"]
    with pytest.raises(ValueError, match="no layer"):
        target_layers(Conv4(), conv_targets, ["nothing"])
    with pytest.raises(ValueError, match="adapters.targets"):
        target_layers(Conv4(), None)


def test_adapter_changes_the_weight_by_exactly_its_update():
    torch.manual_seed(0)
    model = Conv4().eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        base = model(x)
    adapted = Adapted(model, CONV4, AdaptersConfig(schedule="every_task", rank=2))
    with torch.no_grad():
        assert torch.equal(model(x), base)  # B = 0: the backbone unchanged
    settings = adapted.adapters
    p = make_adapter_merge("stack")
    state = p.init(adapted.shapes(), settings, 0)
    state = p.merge(state, [{k: v + 0.01 for k, v in p.client_start(state, adapted.shapes(), settings, 0, 0, 1).items()}],
                    [1.0], settings)
    start = p.client_start(state, adapted.shapes(), settings, 0, 1, 2)
    adapted.load(start)
    for n, u in adapted.updates().items():
        np.testing.assert_allclose(u, global_updates("stack", state, adapted.shapes(), settings, 0)[n], atol=1e-5)
    assert set(reply_factors(adapted, "ffa")) == {f"{n}.B" for n in adapted.names}


def test_training_moves_only_the_adapter_and_fits_the_task():
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    model = Conv4().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = rng.random((24, 1, 28, 28)).astype(np.float32)
    labels = np.repeat([3, 7, 9], 8)
    settings = AdaptersConfig(schedule="every_task", rank=2, lr=1e-2, epochs=3, batch_size=8)
    adapted = Adapted(model, CONV4, settings)
    adapted.load(make_adapter_merge("ffa").client_start({}, adapted.shapes(), settings, 0, 0, 1))
    a_before = adapted.factors()
    result = train_adapter(adapted, inputs, labels, settings.lr, torch.device("cpu"), 0, factors="B")
    assert np.isfinite(result["loss"])
    after = adapted.factors()
    for n in adapted.names:
        np.testing.assert_array_equal(after[f"{n}.A"], a_before[f"{n}.A"])  # ffa: A frozen
        assert np.abs(after[f"{n}.B"]).max() > 0
    base = dict(model.named_parameters())
    for k, v in before.items():  # the backbone's own weights never move
        name = k.replace("weight", "parametrizations.weight.original") if k.endswith("weight") and k[:-7] in adapted.names \
            else k
        cur = base[name] if name in base else dict(model.named_buffers())[name]
        assert torch.equal(cur, v)
    assert embed_adapted(model, inputs[:4], torch.device("cpu")).shape == (4, 64)
    # a reply is a copy: the next task's training must not rewrite it
    train_adapter(adapted, inputs, labels, settings.lr, torch.device("cpu"), 0, factors="B")
    assert any(np.abs(after[k] - v).max() > 0 for k, v in adapted.factors().items())


def test_with_adapter_rounds_a_task_message_only_summarises_and_an_adapt_step_trains_by_schedule():
    rng = np.random.default_rng(1)
    torch.manual_seed(0)
    inputs = rng.random((12, 1, 28, 28)).astype(np.float32)
    labels = np.repeat([2, 5], 6)
    scenario = scenario_of(adapters={"schedule": "first_task", "rank": 2, "lr": 1e-2, "batch_size": 6, "steps": 2},
                           merge={"adapters": "ffa"})
    adapted = Adapted(Conv4().eval(), CONV4, scenario.adapters)
    start = make_adapter_merge("ffa").client_start({}, adapted.shapes(), scenario.adapters, scenario.seed, 0, 1)
    cpu = torch.device("cpu")
    # an adapt step trains the client's first task and sends B; a later task sends nothing
    step = adapt_step(adapted, start, inputs, labels, 0, cpu, scenario, round=1, step=0)
    factors = step.factors
    assert set(factors) == {f"{n}.B" for n in adapted.names} and np.isfinite(step.loss)
    assert np.abs(factors[f"{adapted.names[0]}.B"]).max() > 0
    # with the task's class counts and feature sums under the adapter it started from
    assert step.classes.ids.tolist() == [2, 5] and step.classes.counts.tolist() == [6, 6]
    assert step.classes.sums.shape == (2, 64)
    assert adapt_step(adapted, start, inputs, labels, 1, cpu, scenario, round=2, step=0).factors == {}
    # the task message after the adapter steps: statistics under the merged adapter, untrained
    merged = {**start, **factors}
    result = client_task(adapted, merged, inputs, labels, 0, cpu, scenario)
    adapted.load(merged)
    expected = ClassStats.from_features(labels, embed_adapted(adapted.model, inputs, cpu))
    np.testing.assert_allclose(result.stats.sums, expected.sums, rtol=1e-6)
    assert result.factors == {} and np.isnan(result.loss)


def test_features_both_put_the_frozen_backbones_features_beside_the_adapted_ones_and_train_on_the_adapted():
    from fedrecon.backbones.embed import embed
    from fedrecon.learning.adapter_task import trained_columns

    rng = np.random.default_rng(2)
    torch.manual_seed(0)
    frozen = Conv4().eval()
    inputs = rng.random((12, 1, 28, 28)).astype(np.float32)
    labels = np.repeat([2, 5], 6)
    scenario = scenario_of(adapters={"schedule": "first_task", "rank": 2, "lr": 1e-2, "batch_size": 6, "steps": 2,
                                     "features": "both"}, merge={"adapters": "ffa"})
    adapted = Adapted(copy.deepcopy(frozen), CONV4, scenario.adapters)
    start = make_adapter_merge("ffa").client_start({}, adapted.shapes(), scenario.adapters, scenario.seed, 0, 1)
    cpu = torch.device("cpu")
    step = adapt_step(adapted, start, inputs, labels, 0, cpu, scenario, round=1, step=0)
    # the loss and the federation's class sums are taken on the adapted features alone
    assert step.classes.sums.shape == (2, 64) and np.isfinite(step.loss)
    merged = {**start, **step.factors}
    result = client_task(adapted, merged, inputs, labels, 0, cpu, scenario)
    assert result.stats.dim == 128
    # first half: the frozen backbone, as if no adapter were there; second: the adapted backbone
    np.testing.assert_allclose(result.stats.sums[:, :64], ClassStats.from_features(labels, embed(frozen, inputs)).sums,
                               rtol=1e-6)
    with adapted.adapted_only():
        alone = embed_adapted(adapted.model, inputs, cpu)
    assert np.abs(alone - embed(frozen, inputs)).max() > 1e-3  # the adapter moved the features
    np.testing.assert_allclose(result.stats.sums[:, 64:], ClassStats.from_features(labels, alone).sums, rtol=1e-6)
    # what the federation classifier separates: the adapted half of the merged sums
    np.testing.assert_array_equal(trained_columns(result.stats, scenario.adapters).sums, result.stats.sums[:, 64:])
    assert scenario.adapters.trained_dim(128) == 64


def test_every_use_of_the_seed_draws_from_its_own_stream():
    # np.random.default_rng([seed, stream, ...]): two uses with one stream can draw the same
    # numbers (a task of n samples once shuffled with layer n's initial A)
    streams = {"samples": SAMPLES, "split": SPLIT, "poisson": POISSON, "presence": PRESENCE, "revisits": REVISITS,
               "test": TEST, "projection": PROJECTION, "adapter init": ADAPTER_INIT,
               "adapter batches": ADAPTER_BATCHES, "finetune batches": FINETUNE}
    assert len(set(streams.values())) == len(streams), streams


def test_the_adapters_section_says_the_schedule():
    s = AdaptersConfig(schedule="first_task", rank=8, alpha=16.0, lr=3e-4, mixed_precision=False)
    assert s.active and s.scale == 2.0 and [s.lr_for(i) for i in range(2)] == [3e-4, 0.0]
    assert [AdaptersConfig(schedule="every_task").lr_for(i) for i in range(2)] == [1e-3, 1e-4]
    assert AdaptersConfig().active is False and AdaptersConfig().lr_for(0) == 0.0
    # until_round: a first task after that round does not train (the adapter froze for everyone)
    limited = AdaptersConfig(schedule="first_task", steps=1, until_round=1)
    assert [limited.lr_for(0, r) for r in (1, 2)] == [1e-3, 0.0]


def test_a_round_limit_without_adapter_steps_is_refused():
    from fedrecon.scenario import ScenarioError

    with pytest.raises(ScenarioError, match="adapters.until_round"):
        scenario_of(adapters={"schedule": "first_task", "until_round": 1}, merge={"adapters": "ffa"})


def test_drift_compensation_moves_sums_and_second_moment_exactly():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 5)), np.repeat([0, 1, 2, 3], 10)
    drift = rng.normal(size=(4, 5))
    stats = ClassStats.from_features(y, x, StatsSpec(second_moment=True))
    moved = ClassStats.from_features(y, x + drift[y], StatsSpec(second_moment=True))
    out = compensate(stats, drift)
    np.testing.assert_allclose(out.sums, moved.sums, atol=1e-12)
    np.testing.assert_allclose(out.shared["second_moment"], moved.shared["second_moment"], atol=1e-10)
    with pytest.raises(ValueError, match="random-feature"):
        compensate(ClassStats.from_features(y, x, StatsSpec(random_features=8)), drift)


def test_drift_sums_add_across_clients_and_recover_a_translation():
    rng = np.random.default_rng(0)
    old = rng.normal(size=(60, 3))
    protos = rng.normal(size=(2, 3))
    shift = np.array([0.5, -1.0, 2.0])
    s1, w1 = drift_sums(old[:30], old[:30] + shift, protos, 1.0)
    s2, w2 = drift_sums(old[30:], old[30:] + shift, protos, 1.0)
    s, w = drift_sums(old, old + shift, protos, 1.0)
    np.testing.assert_allclose(s1 + s2, s)
    np.testing.assert_allclose(drift_from_sums(s, w), np.tile(shift, (2, 1)))
    assert not drift_from_sums(np.zeros((1, 3)), np.zeros(1)).any()
