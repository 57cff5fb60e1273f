"""The loader: determinism, process slices, one pass per epoch, O(1) seek, mixtures, prefetch."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.data.conftest import write_stream_store
from theseus.data.chat import example
from theseus.data.loader import DatasetMix, Loader, mixture_table, open_mixture
from theseus.data.shuffle import permute, round_keys
from theseus.data.store import Manifest, StoreWriter, TokenStore, token_dtype
from theseus.errors import UserError

SEQ = 16
N_WINDOWS = 96


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[TokenStore, TokenStore]:
    """Two stores whose token i is i (+10**6 for the second): a window's first token names it."""
    root = tmp_path_factory.mktemp("stores")
    a = write_stream_store(
        root / "a",
        {"train": np.arange(N_WINDOWS * SEQ + 1), "val": np.arange(4 * SEQ + 1)},
        2_000_000,
        1_999_999,
        700,
    )
    b = write_stream_store(
        root / "b", {"train": 10**6 + np.arange(40 * SEQ + 1)}, 2_000_000, 1_999_999, 300
    )
    return a, b


def windows_of(batch: dict) -> list[int]:
    return [int(t) for t in batch["inputs"][:, 0]]


def test_batches_are_the_consecutive_windows_they_name(stores):
    batch = Loader([stores[0]], [1.0], SEQ, 8, seed=1).batch(3)
    for inputs, targets in zip(batch["inputs"], batch["targets"], strict=True):
        assert inputs[0] % SEQ == 0
        assert np.array_equal(
            inputs, np.arange(inputs[0], inputs[0] + SEQ)
        )  # windows cross shard edges
        assert np.array_equal(targets, inputs + 1)
    assert batch["inputs"].dtype == np.int32 and batch["loss_mask"].dtype == np.float32
    assert (batch["loss_mask"] == 1).all() and (batch["positions"] == np.arange(SEQ)).all()


def test_same_inputs_same_batch_across_runs_and_seeds_differ(stores):
    one, two = (
        Loader([stores[0]], [1.0], SEQ, 8, seed=7),
        Loader([stores[0]], [1.0], SEQ, 8, seed=7),
    )
    for step in (0, 5, 11, 12, 1000):
        a, b = one.batch(step), two.batch(step)
        assert all(np.array_equal(a[k], b[k]) for k in a)
    assert windows_of(one.batch(0)) != windows_of(
        Loader([stores[0]], [1.0], SEQ, 8, seed=8).batch(0)
    )


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_take_disjoint_slices_of_the_same_global_batch(stores, processes):
    whole = Loader([stores[0]], [1.0], SEQ, 8, seed=3)
    for step in (0, 1, 13):
        parts = [
            Loader(
                [stores[0]], [1.0], SEQ, 8, seed=3, process_index=p, process_count=processes
            ).batch(step)
            for p in range(processes)
        ]
        assert all(len(p["inputs"]) == 8 // processes for p in parts)
        assert np.array_equal(
            np.concatenate([p["inputs"] for p in parts]), whole.batch(step)["inputs"]
        )
    seen = [set() for _ in range(processes)]
    for p in range(processes):
        loader = Loader(
            [stores[0]], [1.0], SEQ, 8, seed=3, process_index=p, process_count=processes
        )
        for step in range(loader.steps_per_epoch):
            seen[p].update(windows_of(loader.batch(step)))
    assert all(a.isdisjoint(b) for i, a in enumerate(seen) for b in seen[i + 1 :])
    assert sum(len(s) for s in seen) == N_WINDOWS


def test_every_window_once_per_epoch_reshuffled_each_epoch(stores):
    loader = Loader([stores[0]], [1.0], SEQ, 8, seed=0)
    assert loader.steps_per_epoch == N_WINDOWS // 8
    epochs = []
    for epoch in range(3):
        served = [
            w for s in range(epoch * 12, epoch * 12 + 12) for w in windows_of(loader.batch(s))
        ]
        assert sorted(served) == [i * SEQ for i in range(N_WINDOWS)]
        epochs.append(served)
    assert epochs[0] != epochs[1] != epochs[2]


def test_any_step_is_found_directly(stores, monkeypatch):
    """Step 10**12 costs what step 0 costs: its rows' windows come from the permutation of its
    own epoch alone, evaluated once at those rows, with no earlier epoch or step computed."""
    from theseus.data import loader as loader_module

    keys_for, permuted = [], []

    def spy_keys(*path):
        keys_for.append(path)
        return round_keys(*path)

    def spy_permute(index, n, keys):
        permuted.append(len(index))
        return permute(index, n, keys)

    monkeypatch.setattr(loader_module, "round_keys", spy_keys)
    monkeypatch.setattr(loader_module, "permute", spy_permute)
    loader = Loader([stores[0]], [1.0], SEQ, 8, seed=0)
    loader.batch(0)
    assert (keys_for, permuted) == ([(0, 0, 0)], [8])
    keys_for.clear()
    permuted.clear()
    far = loader.batch(10**12)
    epoch = (10**12 * 8) // N_WINDOWS
    assert (10**12 * 8) % N_WINDOWS + 8 <= N_WINDOWS  # all 8 rows fall in that one epoch
    assert (keys_for, permuted) == ([(0, 0, epoch)], [8])
    first = (epoch * N_WINDOWS) // 8  # a step that starts that epoch
    served = [w for s in range(first, first + 12) for w in windows_of(loader.batch(s))]
    assert sorted(served) == [i * SEQ for i in range(N_WINDOWS)] and windows_of(far)[0] in served


def test_mixture_rows_follow_the_rates(stores):
    loader = Loader(list(stores), [3.0, 1.0], SEQ, 16, seed=2)
    counts = Counter()
    for step in range(256):  # one full period of the mixture table
        counts.update("a" if w < 10**6 else "b" for w in windows_of(loader.batch(step)))
    assert counts == {"a": 3072, "b": 1024}
    per_step = [sum(w >= 10**6 for w in windows_of(loader.batch(s))) for s in range(50)]
    assert set(per_step) <= {3, 4, 5}
    b_windows = [w for s in range(10) for w in windows_of(loader.batch(s)) if w >= 10**6]
    assert len(b_windows) == len(set(b_windows)) == 40  # store b served each of its windows once
    table, counts_per_period, _ = mixture_table([0.2, 0.5, 0.3], period=10)
    assert counts_per_period.tolist() == [2, 5, 3] and sorted(Counter(table.tolist()).values()) == [
        2,
        3,
        5,
    ]


def test_document_boundaries_reset_positions_and_mask(tmp_path: Path):
    eot = 9
    tokens = np.array([1, 2, eot, 3, 4, 5, eot, 6, 7])
    store = write_stream_store(tmp_path / "d", {"train": tokens}, 10, eot)
    batch = Loader([store], [1.0], 8, 1, reset_at_eot=True).batch(0)
    assert batch["positions"][0].tolist() == [0, 1, 2, 0, 1, 2, 3, 0]
    assert batch["loss_mask"][0].tolist() == [1, 1, 0, 1, 1, 1, 0, 1]


def test_validation_split_and_bad_requests(stores):
    val = Loader([stores[0]], [1.0], SEQ, 2, split="val")
    assert windows_of(val.batch(0)) + windows_of(val.batch(1)) != [] and val.steps_per_epoch == 2
    with pytest.raises(UserError, match="does not split over 3 processes"):
        Loader([stores[0]], [1.0], SEQ, 8, process_count=3)
    with pytest.raises(UserError, match="no val window"):
        Loader([stores[1]], [1.0], SEQ, 8, split="val")
    with pytest.raises(UserError, match="no train window of 2001 tokens"):
        Loader([stores[1]], [1.0], 2000, 8)
    with pytest.raises(UserError, match="one rate per store"):
        Loader(list(stores), [1.0], SEQ, 8)


def test_prefetch_stays_bounded_and_matches_direct_batches(stores):
    """With a queue of 2, the producer computes step s only once s - 2 batches past the start
    have been taken (the queue full, the batch after it waiting to be put): checked at each
    call, whatever the threads' timing, and it does run that far ahead."""
    calls, taken, too_early = [], [0], []
    reached = threading.Event()

    class Counting(Loader):
        def batch(self, step: int) -> dict:
            if step > 7 + taken[0] + 2:
                too_early.append((step, taken[0]))
            calls.append(step)
            if len(calls) == 1 + 2 + 1:  # the one taken, a full queue, one waiting to be put
                reached.set()
            return super().batch(step)

    loader = Counting([stores[0]], [1.0], SEQ, 8, seed=5)
    stream = loader.iterate(start_step=7, prefetch=2)
    taken[0] = 1  # counted before the take: a batch computed after it is allowed
    step, batch = next(stream)
    assert step == 7 and np.array_equal(
        batch["inputs"], Loader([stores[0]], [1.0], SEQ, 8, seed=5).batch(7)["inputs"]
    )
    assert reached.wait(timeout=60)
    assert calls == [7, 8, 9, 10]
    steps = []
    for _ in range(3):
        taken[0] += 1
        steps.append(next(stream)[0])
    assert steps == [8, 9, 10] and too_early == []
    loader.close()
    stream.close()
    assert not any(t.name == "theseus-loader" and t.is_alive() for t in threading.enumerate())


def test_left_padded_rows_train_as_right_padded_ones(tmp_path: Path):
    """A causal model with no padding mask attends to everything before a token: left padding
    would be seen from every real token, so the loader moves it to the end."""
    seq_len, eot = 8, 99
    ids, learned = [1, 2, 3, 4, eot], [False, False, True, True, True]  # 5 real tokens, 4 of pad
    batches = {}
    for padding in ("right", "left"):
        manifest = Manifest(
            kind="blockwise",
            vocab_size=100,
            eot_id=eot,
            dtype=token_dtype(100),
            tokenizer={"backend": "bytes", "name": "test", "hash": "vocab-100"},
            source={"name": "synthetic"},
            settings={},
            splits={},
            seq_len=seq_len,
            padding=padding,
        )
        writer = StoreWriter(tmp_path / padding, manifest, 10)
        writer.resume()
        tokens, mask, length, _ = example(ids, learned, seq_len, eot, padding)
        writer.add(
            "train",
            {
                "tokens": tokens[None].astype(manifest.dtype),
                "loss_mask": mask[None],
                "lengths": np.array([length], dtype=np.int32),
            },
        )
        writer.commit(1, {})
        batches[padding] = Loader([writer.finish()], [1.0], seq_len, 1).batch(0)
    right, left = batches["right"], batches["left"]
    assert right["inputs"][0, :4].tolist() == [1, 2, 3, 4]
    assert right["positions"][0].tolist() == list(range(seq_len))
    assert right["loss_mask"][0].tolist() == [0, 1, 1, 1, 0, 0, 0, 0]  # targets 3, 4, eot
    for key in right:
        np.testing.assert_array_equal(left[key], right[key], err_msg=key)


def test_a_mixture_takes_stores_of_one_tokenizer_reached_by_two_paths(tmp_path: Path):
    """Stores match by the tokenizer's vocabulary hash, not by the path it was read from."""
    tokens = np.arange(300) % 50
    for name, file, digest in (
        ("a", "/one", "same"),
        ("b", "/two", "same"),
        ("c", "/one", "other"),
    ):
        identity = {"backend": "huggingface", "name": f"{file}/tokenizer.json", "hash": digest}
        write_stream_store(tmp_path / "data" / name, {"train": tokens}, 64, 63, tokenizer=identity)
    assert len(open_mixture(tmp_path, [DatasetMix("a"), DatasetMix("b")])) == 2
    with pytest.raises(UserError, match="token stores a and c use different tokenizers"):
        open_mixture(tmp_path, [DatasetMix("a"), DatasetMix("c")])
