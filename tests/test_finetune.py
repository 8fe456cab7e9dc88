"""The fedavg_finetune baseline: FedAvg of backbone and growing head, its payload checks
and strategy (offline), and the centralized plan."""

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict

from fedrecon import protocol as P
from fedrecon.backbones.embed import load_backbone
from fedrecon.learning.finetune import BIAS, IDS, WEIGHT, fedavg, grow_head, initial_model, predict, train_task
from fedrecon.plan import make_plan
from fedrecon.scenario import ScenarioError, parse_scenario
from fedrecon.scenario.sections import FinetuneConfig
from fedrecon.learning.prototype_merges import replay
from strategies.wire import from_record
from strategies.validation import PayloadError, check_model_update
from tests.conftest import CHECKPOINT, small_scenario
from tests.test_strategy import identity, make_strategy  # noqa: F401 (fixture)

DIM = 3


def tiny_model(classes=()) -> dict:
    """A stand-in model: one float weight, batch norm's integer step counter, a head."""
    model = {"backbone.w": np.arange(4, dtype=np.float32), "backbone.bn.num_batches_tracked": np.array(7),
             IDS: np.zeros(0, np.int64), WEIGHT: np.zeros((0, DIM), np.float32), BIAS: np.zeros(0, np.float32)}
    return grow_head(model, classes)


def test_grow_head_appends_zero_rows_sorted_and_keeps_old_ones():
    model = tiny_model([5, 2])
    model[WEIGHT][:] = [[1, 1, 1], [2, 2, 2]]
    grown = grow_head(model, [9, 2, 3])
    assert grown[IDS].tolist() == [2, 3, 5, 9]
    np.testing.assert_array_equal(grown[WEIGHT], [[1, 1, 1], [0, 0, 0], [2, 2, 2], [0, 0, 0]])
    assert grown[WEIGHT].dtype == np.float32 and grown[BIAS].shape == (4,)


def test_fedavg_weights_backbone_by_samples_and_head_rows_by_holders():
    current = tiny_model([0])
    current[WEIGHT][:] = 9.0
    a, b = tiny_model([0, 1]), tiny_model([0, 2])
    a["backbone.w"], b["backbone.w"] = np.full(4, 1.0, np.float32), np.full(4, 4.0, np.float32)
    a["backbone.bn.num_batches_tracked"], b["backbone.bn.num_batches_tracked"] = np.array(10), np.array(20)
    a[WEIGHT][:], b[WEIGHT][:] = 1.0, 4.0
    merged = fedavg(current, [a, b], [1.0, 2.0])
    np.testing.assert_allclose(merged["backbone.w"], 3.0)  # (1*1 + 2*4) / 3
    assert merged["backbone.bn.num_batches_tracked"].shape == () and int(merged["backbone.bn.num_batches_tracked"]) == 17
    assert merged[IDS].tolist() == [0, 1, 2]
    # class 0: both clients; class 1: client a only; class 2: client b only
    np.testing.assert_allclose(merged[WEIGHT][:, 0], [3.0, 1.0, 4.0])
    # a class no reply holds keeps its row
    kept = fedavg(grow_head(current, [7]), [a], [1.0])
    assert kept[IDS].tolist() == [0, 1, 7] and kept[WEIGHT][0, 0] == 1.0 and kept[WEIGHT][2, 0] == 0.0


def test_train_task_learns_the_task_and_forgets_without_replay(evaluation_set):
    """Fine-tuning on a second task's classes only: the first task's accuracy falls."""
    module = load_backbone("conv4", CHECKPOINT)
    model = initial_model(module, 64)
    settings = FinetuneConfig(lr=1e-3, head_lr=1e-2, epochs=5, batch_size=16)
    ds = evaluation_set
    first, second = np.arange(5), np.arange(5, 10)

    def samples(classes, part):
        index = np.concatenate([ds.class_indices()[c][part] for c in classes])
        return ds.inputs[index], ds.labels[index]

    x1, y1 = samples(first, slice(0, 10))
    t1, u1 = samples(first, slice(10, 20))
    after_first, info = train_task(module, model, x1, y1, settings, 0, "cpu", task_seed=1)
    again, _ = train_task(module, model, x1, y1, settings, 0, "cpu", task_seed=1)
    assert all(np.array_equal(after_first[k], again[k]) for k in after_first)  # seeded: reproducible
    assert after_first[IDS].tolist() == first.tolist()
    assert np.isfinite(info["loss"])
    first_acc = (predict(module, after_first, t1, "cpu") == u1).mean()
    assert first_acc > 0.8

    x2, y2 = samples(second, slice(0, 10))
    after_second, _ = train_task(module, after_first, x2, y2, settings, 0, "cpu", task_seed=2)
    assert after_second[IDS].tolist() == list(range(10))
    assert (predict(module, after_second, t1, "cpu") == u1).mean() < first_acc - 0.3


def test_model_update_checks(tiny_arrival):
    current = tiny_model([0])
    good = grow_head(current, tiny_arrival.classes)
    assert check_model_update(good, current, tiny_arrival) is good
    bad = {
        "missing key": {k: v for k, v in good.items() if k != "backbone.w"},
        "extra key": {**good, "backbone.x": np.zeros(1, np.float32)},
        "wrong shape": {**good, "backbone.w": np.zeros(5, np.float32)},
        "wrong dtype": {**good, "backbone.w": np.zeros(4, np.float64)},
        "NaN": {**good, WEIGHT: np.full_like(good[WEIGHT], np.nan)},
        "rows of another task": grow_head(current, [99]),
        "rows unsorted": {**good, IDS: good[IDS][::-1].copy()},
    }
    for name, arrays in bad.items():
        try:
            check_model_update(arrays, current, tiny_arrival)
        except PayloadError:
            continue
        pytest.fail(f"a model update with {name} was accepted")


@pytest.fixture
def tiny_arrival():
    from fedrecon.plan.records import Arrival

    return Arrival(round=1, client=0, task=0, classes=(3, 4), samples=((1, 2), (5,)))


def make_finetune_strategy():
    return make_strategy(model=tiny_model(), merge={"method": "fedavg_finetune"})


def finetune_reply(msg: Message, shift: float, spoil: bool = False) -> Message:
    model = from_record(msg.content[P.MODEL])
    classes = np.unique(from_record(msg.content[P.TASK_ARRAYS])["sample_labels"])
    trained = grow_head(model, classes)
    trained["backbone.w"] = trained["backbone.w"] + np.float32(shift)
    if spoil:
        trained[WEIGHT] = np.full_like(trained[WEIGHT], np.nan)
    content = RecordDict({P.MODEL_UPDATE: ArrayRecord({k: Array(np.asarray(v)) for k, v in trained.items()}),
                          P.METRICS: MetricRecord({"samples": 1})})
    return Message(content, reply_to=msg)


def test_strategy_sends_the_model_every_round_and_averages_replies():
    s = make_finetune_strategy()
    messages = s.tasks(1)
    assert {m.metadata.message_type for m in messages} == {f"{MessageType.TRAIN}.{P.FINETUNE}"}
    assert all(P.MODEL in m.content and not len(m.content[P.BACKBONE]) for m in messages)  # the model carries the backbone
    s.replies(1, [finetune_reply(m, shift=m.metadata.dst_node_id - 100) for m in messages])
    # equal sample counts: the mean of shifts 0, 1, 2
    np.testing.assert_allclose(s.state.model["backbone.w"], np.arange(4) + 1.0)
    assert s.state.classes_learned() == len(s.state.plan.classes_seen(1))
    # the whole model goes down again, with every client's task
    again = s.tasks(2)
    assert all(P.MODEL in m.content for m in again)
    assert len(from_record(again[0].content[P.MODEL])[IDS]) == s.state.classes_learned()


def test_strategy_rejects_a_bad_model_and_keeps_the_global_one():
    s = make_finetune_strategy()
    messages = s.tasks(1)
    s.replies(1, [finetune_reply(m, 1.0, spoil=True) for m in messages])
    assert len(s.state.failures) == 3
    assert all(np.array_equal(v, tiny_model()[k]) for k, v in s.state.model.items())
    assert s.state.classes_learned() == 0
    json.dumps(s.state.state())  # the checkpoint state stays JSON-able


def test_centralized_plan_is_one_site_with_the_same_samples_per_round():
    scenario = parse_scenario(json.dumps(small_scenario(
        tasks={**small_scenario()["tasks"], "arrival": {"kind": "staggered", "offset": 1},
               "revisits": {"fraction": 0.5, "shots": 2}})))
    plan = make_plan(scenario, [np.arange(20 * c, 20 * c + 20) for c in range(30)])
    one = plan.at_one_site()
    assert one.clients == 1 and {a.client for a in one.arrivals} == {0}
    for r in range(1, plan.rounds + 1):
        assert len(one.arrivals_at(r)) <= 1
        spread = sorted(i for a in plan.arrivals_at(r) for i in a.sample_index.tolist())
        assert sorted(i for a in one.arrivals_at(r) for i in a.sample_index.tolist()) == spread
        np.testing.assert_array_equal(one.classes_seen(r), plan.classes_seen(r))
    # with exact addition, one site's statistics are the federation's
    features = np.random.default_rng(0).normal(size=(600, 5))
    fed, central = replay(plan, features, "exact"), replay(one, features, "centralized")
    np.testing.assert_array_equal(fed.ids, central.ids)
    np.testing.assert_allclose(fed.sums, central.sums, rtol=1e-12)


def test_scenario_refuses_keys_fedavg_finetune_would_ignore():
    base = "name: t\nclients: {count: 3}\ntasks: {num_classes: 12, classes_per_task: 2, train_shots: 4, test_shots: 2}\n"
    with pytest.raises(ScenarioError, match="merge.head.*not used by merge.method fedavg_finetune"):
        parse_scenario(base + "merge: {method: fedavg_finetune, head: ridge}\n")
    with pytest.raises(ScenarioError, match="finetune.*used only by merge.method fedavg_finetune"):
        parse_scenario(base + "finetune: {lr: 0.01}\n")
    ok = parse_scenario(base + "merge: {method: fedavg_finetune, prototypes: exact}\nfinetune: {epochs: 2}\n")
    assert ok.finetune.epochs == 2
