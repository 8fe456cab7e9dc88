"""A site node's ledger (clients.ledger): a sample is learned once, whatever is retried, restarted or resumed."""

import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from clients.ledger import Ledger
from fedrecon.data.dataset import DataError
from fedrecon.data.sites import SiteData
from tests.conftest import DATA_ROOT

RUN = "3fa9c0"


@pytest.fixture
def site(tmp_path):
    """A site of two Omniglot characters, four drawings each; its node folder is ``.fedrecon``."""
    with np.load(DATA_ROOT / "omniglot" / "images_evaluation.npz") as npz:
        drawings = npz["images"][[2, 7], :4]
    for k, chars in enumerate(drawings):
        (tmp_path / "train" / f"c{k}").mkdir(parents=True)
        for n, drawing in enumerate(chars):
            Image.fromarray(drawing).save(tmp_path / "train" / f"c{k}" / f"{n}.png")
    return tmp_path


def samples_of(site):
    return SiteData(site, "ink").samples()


def on_disk(ledger):
    return json.loads(ledger.path.read_text())


def test_an_accepted_offer_is_learned_and_not_new_again(site):
    # Prepare
    ledger = Ledger(site / ".fedrecon", RUN)
    samples = samples_of(site)
    keys = [s.key for s in ledger.new(samples)]
    # Execute
    task = ledger.offer(keys)
    saved = on_disk(ledger)
    ledger.settle([task, "0123456789abcdef"])
    # Assert: the offer was on disk before offer() returned; the id is the sorted keys' hash
    assert task == hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:16]
    assert saved == {"run": RUN, "learned": [], "offered": {task: sorted(keys)}}
    assert ledger.learned == set(keys) and ledger.offered == {}
    assert on_disk(ledger) == {"run": RUN, "learned": sorted(keys), "offered": {}}
    assert ledger.new(samples) == []
    assert ledger.path == site / ".fedrecon" / f"ledger-{RUN}.json"


def test_a_refused_offer_is_dropped_and_its_samples_are_new_again(site):
    # Prepare: the first class learned, then the second offered
    ledger = Ledger(site / ".fedrecon", RUN)
    samples = samples_of(site)
    first = ledger.offer([s.key for s in samples[:4]])
    ledger.settle([first])
    second = ledger.offer([s.key for s in ledger.new(samples)])
    # Execute: the next message lists only the first task as accepted
    ledger.settle([first])
    # Assert
    assert ledger.offered == {} and ledger.learned == {s.key for s in samples[:4]}
    assert ledger.new(samples) == samples[4:]
    assert ledger.offer([s.key for s in samples[4:]]) == second  # offered again under the same id


def test_the_ledger_reopened_from_disk_keeps_its_state_and_another_run_starts_empty(site):
    # Prepare
    ledger = Ledger(site / ".fedrecon", RUN)
    samples = samples_of(site)
    ledger.settle([ledger.offer([s.key for s in samples[:3]])])
    pending = ledger.offer([s.key for s in samples[5:]])
    # Execute
    reopened = Ledger(site / ".fedrecon", RUN)
    other = Ledger(site / ".fedrecon", "77")
    # Assert
    assert reopened.learned == {s.key for s in samples[:3]}
    assert reopened.offered == {pending: sorted(s.key for s in samples[5:])}
    assert other.learned == set() and other.offered == {} and other.new(samples) == samples
    assert not other.path.exists() and ledger.path.exists()
    assert sorted(p.name for p in (site / ".fedrecon").iterdir()) == [f"ledger-{RUN}.json"]  # no temp file left


def test_a_node_that_died_after_offering_has_the_next_message_settle_it(site):
    # Prepare: an offer saved, then the node gone (before or after its reply left: it cannot know)
    samples = samples_of(site)
    before = Ledger(site / ".fedrecon", RUN)
    task = before.offer([s.key for s in before.new(samples)])
    del before
    # Execute: restarted twice; the reply had reached the server in the first world, not in the second
    replied, lost = Ledger(site / ".fedrecon", RUN), Ledger(site / ".fedrecon", RUN)
    assert replied.offered == lost.offered == {task: sorted(s.key for s in samples)}
    replied.settle([task])
    assert Ledger(site / ".fedrecon", RUN).new(samples) == []
    lost.settle([])
    # Assert: learned once in the first, offered again (same samples, same id) in the second
    assert Ledger(site / ".fedrecon", RUN).new(samples) == samples
    assert lost.offer([s.key for s in lost.new(samples)]) == task


def test_offers_are_saved_sorted_an_empty_one_records_nothing_and_a_learned_key_is_refused(site):
    ledger = Ledger(site / ".fedrecon", RUN)
    assert ledger.offer([]) == "" and not ledger.path.exists()
    task = ledger.offer(["b", "c", "a"])
    assert task == ledger.offer(["a", "b", "c"]) and ledger.offered == {task: ["a", "b", "c"]}
    assert ledger.path.read_text() == json.dumps({"run": RUN, "learned": [], "offered": {task: ["a", "b", "c"]}}, indent=1) + "\n"
    ledger.settle([task])
    with pytest.raises(ValueError, match="offered again after being learned"):
        ledger.offer(["d", "a"])
    assert on_disk(ledger)["learned"] == ["a", "b", "c"] and ledger.offered == {}


def test_saving_fsyncs_and_a_crash_while_saving_leaves_the_last_state_whole(site, monkeypatch):
    # Prepare: two offers on disk, each fsynced (the file, then the folder)
    ledger = Ledger(site / ".fedrecon", RUN)
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    first, second = ledger.offer(["a"]), ledger.offer(["b"])
    before = ledger.path.read_text()
    assert len(synced) == 4

    def crash(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    # Execute
    with pytest.raises(OSError, match="disk gone"):
        ledger.settle([first])
    # Assert: the old state whole, no temp file left; reopened, the settle is still to do
    assert ledger.path.read_text() == before
    assert sorted(p.name for p in (site / ".fedrecon").iterdir()) == [f"ledger-{RUN}.json"]
    assert Ledger(site / ".fedrecon", RUN).offered == {first: ["a"], second: ["b"]}


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'{"run": "3fa9c0", "learned": "abc", "offered": {}}',
                                     b'{"run": "3fa9c0", "learned": [], "offered": {"t": "k"}}',
                                     b'{"run": "ffff", "learned": [], "offered": {}}', b"\xff\xfe", b""])
def test_a_corrupt_ledger_is_refused_naming_it(site, content):
    (site / ".fedrecon").mkdir()
    path = site / ".fedrecon" / f"ledger-{RUN}.json"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        Ledger(site / ".fedrecon", RUN)
    assert str(err.value).startswith(f"{path}: not a") and "\n" not in str(err.value)


@pytest.mark.parametrize("run", ["", "../x", "ABC", "12 34", "a" * 65])
def test_a_run_token_that_is_no_short_hex_string_is_refused(tmp_path, run):
    with pytest.raises(DataError, match="is not a short hex string"):
        Ledger(tmp_path, run)
    assert list(tmp_path.iterdir()) == []
