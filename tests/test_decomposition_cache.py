"""The decomposition cache: a hit is the miss bit for bit; anything that changes the result misses; a damaged
entry is caught, reported and recomputed; concurrent jobs sharing it both finish with a valid entry."""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from basel_app.config.schema import register_schema
from basel_app.decomposition_cache import DecompositionCache, fingerprint
from basel_app.evaluate import evaluate
from basel_app.files import sha256_of
from basel_app.interpret import interpret
from basel_app.methods import one_shot
from basel_app.methods.one_shot import factorize_layers, svd_bases_of
from basel_app.models import load_compressed
from basel_app.pipeline import run

from .conftest import CONF
from .lit.test_pipeline import TINY
from .lowrank.helpers import LLAMA_TARGETS, tiny_llama

DATA_AWARE = ("fwsvd", "svd_llm", "asvd")


def batches(seed: int = 0) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(2):
        ids = torch.randint(0, 128, (2, 12), generator=gen)
        mask = torch.ones_like(ids)
        mask[1, 9:] = 0
        out.append({"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)})
    return out


def targets_of(model):
    return {name: module for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name.endswith(tuple(LLAMA_TARGETS[:-1]))}


def factorize(method, model, cache, data=None, alpha=0.5):
    data = data or batches()
    return factorize_layers(method, model, targets_of(model), lambda: data, lambda m, b: m(**b).loss, alpha, cache)


class Computations:
    """Counts the SVDs and calibration passes the code under test runs."""

    def __init__(self, monkeypatch):
        self.svds = self.passes = 0
        for name in ("svd_factorization", "fwsvd_factorization", "svd_llm_factorization", "asvd_factorization",
                     "svd_bases"):
            monkeypatch.setattr(one_shot, name, self.counting(getattr(one_shot, name), "svds"))
        for name in ("activation_statistics", "row_fisher"):
            monkeypatch.setattr(one_shot, name, self.counting(getattr(one_shot, name), "passes"))

    def counting(self, fn, counter):
        def wrapped(*args, **kwargs):
            setattr(self, counter, getattr(self, counter) + 1)
            return fn(*args, **kwargs)
        return wrapped


def assert_same(a, b):
    assert list(a) == list(b)
    for name in a:
        for field in ("left", "values", "right"):
            x, y = getattr(a[name], field), getattr(b[name], field)
            assert x.dtype == y.dtype and torch.equal(x, y), (name, field)
        assert a[name].note == b[name].note


def entry_files(root: Path, kind: str) -> list[Path]:
    return sorted((root / kind).glob("*.safetensors"))


@pytest.mark.parametrize("method", ("svd", *DATA_AWARE))
def test_a_hit_is_bit_identical_to_a_miss_and_computes_nothing(tmp_path, monkeypatch, method):
    model = tiny_llama()
    uncached = factorize(method, model, None)
    counts = Computations(monkeypatch)
    cache = DecompositionCache(tmp_path)
    miss = factorize(method, model, cache)
    layers = len(targets_of(model))
    assert (counts.svds, counts.passes) == (layers, 0 if method == "svd" else 1)
    hit = factorize(method, model, cache)
    assert (counts.svds, counts.passes) == (layers, 0 if method == "svd" else 1)  # nothing more was computed
    assert_same(miss, uncached)
    assert_same(hit, miss)


def test_basel_plain_bases_hit_is_bit_identical_and_lazy(tmp_path, monkeypatch):
    model = tiny_llama()
    targets = targets_of(model)
    counts = Computations(monkeypatch)
    cache = DecompositionCache(tmp_path)
    bases = svd_bases_of(targets, cache)
    assert all(name in bases for name in targets) and counts.svds == 0  # nothing computed before it is asked for
    miss = dict(bases)
    hit = dict(svd_bases_of(targets, cache))
    assert counts.svds == len(targets)
    assert_same(hit, miss)
    assert_same(miss, dict(svd_bases_of(targets, None)))


def test_a_changed_weight_setting_or_calibration_set_misses(tmp_path, monkeypatch):
    model = tiny_llama()
    cache = DecompositionCache(tmp_path)
    factorize("asvd", model, cache)
    counts = Computations(monkeypatch)
    layers = len(targets_of(model))

    factorize("asvd", model, cache, alpha=0.25)  # a setting: every layer again, but the statistics load
    assert (counts.svds, counts.passes) == (layers, 0)
    factorize("asvd", model, cache, data=batches(seed=1))  # other calibration data: measured and factored again
    assert (counts.svds, counts.passes) == (2 * layers, 1)
    plain = factorize("svd", model, cache)  # the first plain SVD: every layer
    assert counts.svds == 3 * layers
    counts.svds = 0
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight[1, 2] -= 1e-3
    again = factorize("svd", model, cache)
    assert counts.svds == 1
    assert not torch.equal(again["model.layers.0.self_attn.q_proj"].values, plain["model.layers.0.self_attn.q_proj"].values)
    factorize("asvd", model, cache)  # any weight of the model changes the activations: measured again
    assert counts.passes == 2


@pytest.mark.parametrize("damage", ("flip a byte", "truncate"))
def test_a_damaged_entry_is_detected_reported_and_recomputed(tmp_path, monkeypatch, caplog, damage):
    model = tiny_llama()
    cache = DecompositionCache(tmp_path)
    reference = factorize("svd_llm", model, cache)
    victim = entry_files(tmp_path, "svd_llm")[3]
    data = bytearray(victim.read_bytes())
    if damage == "flip a byte":
        data[len(data) // 2] ^= 0x01
    else:
        del data[len(data) // 2:]
    victim.write_bytes(bytes(data))

    counts = Computations(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="basel_app.decomposition_cache"):
        again = factorize("svd_llm", model, cache)
    reports = [r.getMessage() for r in caplog.records if "corrupt" in r.getMessage()]
    assert len(reports) == 1 and victim.name in reports[0]
    assert (counts.svds, counts.passes) == (1, 0)  # only the damaged layer; the statistics load from their entry
    assert_same(again, reference)
    manifests = list((tmp_path / "svd_llm").glob("*.json"))
    for manifest in manifests:
        entry = json.loads(manifest.read_text())
        assert sha256_of(tmp_path / "svd_llm" / entry["file"]) == entry["sha256"]


def test_a_damaged_manifest_is_detected_and_recomputed(tmp_path, monkeypatch, caplog):
    model = tiny_llama()
    cache = DecompositionCache(tmp_path)
    reference = factorize("svd", model, cache)
    manifest = sorted((tmp_path / "svd").glob("*.json"))[0]
    manifest.write_text(manifest.read_text()[:20])
    counts = Computations(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="basel_app.decomposition_cache"):
        assert_same(factorize("svd", model, cache), reference)
    assert counts.svds == 1 and "unreadable manifest" in caplog.text


def race(cache: Path, computed: Path, start, results) -> None:
    """One job of a sweep: fetch the shared key, whose computation takes a while."""
    torch.set_num_threads(1)  # a forked child must not use the parent's OpenMP pool (it crashes or hangs)

    def compute():
        with computed.open("a") as f:
            f.write("computed\n")
        time.sleep(1.0)  # the other job arrives while this one computes
        return {"factor": torch.arange(1_000_000, dtype=torch.float64)}, {"note": "ok"}

    start.wait()
    tensors, notes = DecompositionCache(cache).fetch("race", lambda: {"same": "key"}, compute)
    results.put(torch.equal(tensors["factor"], torch.arange(1_000_000, dtype=torch.float64)) and notes == {"note": "ok"})


def test_two_concurrent_jobs_on_one_key_both_finish_and_the_entry_verifies(tmp_path):
    context = multiprocessing.get_context("fork")  # torch already imported: the jobs start in milliseconds
    start, results, computed = context.Barrier(2), context.Queue(), tmp_path / "computed.log"
    jobs = [context.Process(target=race, args=(tmp_path / "cache", computed, start, results)) for _ in range(2)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=60)
    assert [job.exitcode for job in jobs] == [0, 0]
    assert [results.get(timeout=5), results.get(timeout=5)] == [True, True]
    assert computed.read_text().count("computed") == 1  # the second job waited and loaded the first one's entry
    (manifest,) = (tmp_path / "cache" / "race").glob("*.json")
    entry = json.loads(manifest.read_text())
    assert sha256_of(tmp_path / "cache" / "race" / entry["file"]) == entry["sha256"]
    assert not list((tmp_path / "cache" / "race").glob(".*.tmp"))  # no partial file left behind


def test_a_second_run_loads_its_decomposition_and_ends_identical(compose_config, tmp_path, monkeypatch):
    overrides = ("method=svd_llm", "method.compression_ratio=1.2", "method.post_finetune_epochs=0", "eval.enabled=false")
    first = run(OmegaConf.to_object(compose_config(*TINY, *overrides, output_dir=str(tmp_path / "first"))))
    counts = Computations(monkeypatch)
    second = run(OmegaConf.to_object(compose_config(*TINY, *overrides, output_dir=str(tmp_path / "second"))))
    assert (counts.svds, counts.passes) == (0, 0)
    assert second["ranks"] == first["ranks"] and second["conditioning"] == first["conditioning"]
    states = [load_compressed(tmp_path / d / "compressed_model")[0].state_dict() for d in ("first", "second")]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_a_tensor_given_under_two_names_is_stored_once_and_loaded_shared(tmp_path):
    cache = DecompositionCache(tmp_path)
    gram, other = torch.randn(6, 6, dtype=torch.float64), torch.randn(6, 6, dtype=torch.float64)
    given = {"q_proj": gram, "k_proj": gram, "o_proj": other}
    missed, _ = cache.fetch("statistics", lambda: {"k": 1}, lambda: (given, {"note": "x"}))
    hit, notes = cache.fetch("statistics", lambda: {"k": 1}, lambda: pytest.fail("recomputed"))
    assert notes == {"note": "x"}
    assert sorted(hit) == sorted(given) and hit["q_proj"] is hit["k_proj"] and hit["o_proj"] is not hit["q_proj"]
    assert all(torch.equal(hit[k], given[k]) for k in given)
    (entry,) = entry_files(tmp_path, "statistics")
    assert entry.stat().st_size < 3 * gram.numel() * 8  # two matrices on disk, not three


class FolderWriter:
    """Writes two files into a folder entry and counts how often it was asked to."""

    def __init__(self, fail: bool = False):
        self.calls, self.fail = 0, fail

    def __call__(self, folder: Path) -> None:
        self.calls += 1
        (folder / "weights.bin").write_bytes(bytes(range(256)) * 64)
        if self.fail:
            raise RuntimeError("killed mid-write")
        (folder / "config.json").write_text('{"layers": 2}')


def test_a_folder_entry_is_written_once_and_verified_on_every_hit(tmp_path):
    cache, write = DecompositionCache(tmp_path), FolderWriter()
    miss = cache.fetch_folder("model", lambda: {"sha": "abc"}, write)
    hit = cache.fetch_folder("model", lambda: {"sha": "abc"}, write)
    assert write.calls == 1 and cache.computed == 1 and hit == miss
    assert sorted(f.name for f in hit.iterdir()) == ["config.json", "weights.bin"]
    (manifest,) = (tmp_path / "model").glob("*.json")
    entry = json.loads(manifest.read_text())
    assert entry["folder"] == hit.name and entry["key"] == {"sha": "abc"}
    assert all(sha256_of(hit / name) == sha for name, sha in entry["sha256"].items())
    other = cache.fetch_folder("model", lambda: {"sha": "abd"}, write)  # another key: another entry
    assert write.calls == 2 and other != hit


@pytest.mark.parametrize("damage", ("flip a byte", "remove a file", "add a file"))
def test_a_damaged_folder_entry_is_reported_and_written_again(tmp_path, caplog, damage):
    cache, write = DecompositionCache(tmp_path), FolderWriter()
    folder = cache.fetch_folder("model", lambda: {"sha": "abc"}, write)
    if damage == "flip a byte":
        data = bytearray((folder / "weights.bin").read_bytes())
        data[100] ^= 0x01
        (folder / "weights.bin").write_bytes(bytes(data))
    elif damage == "remove a file":
        (folder / "config.json").unlink()
    else:
        (folder / "stray.txt").write_text("?")
    with caplog.at_level(logging.WARNING, logger="basel_app.decomposition_cache"):
        again = cache.fetch_folder("model", lambda: {"sha": "abc"}, write)
    assert write.calls == 2 and "corrupt" in caplog.text
    assert sorted(f.name for f in again.iterdir()) == ["config.json", "weights.bin"]
    assert (again / "weights.bin").read_bytes() == bytes(range(256)) * 64


def test_a_folder_write_that_fails_leaves_no_entry_and_a_killed_ones_folder_is_removed(tmp_path):
    cache = DecompositionCache(tmp_path)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        cache.fetch_folder("model", lambda: {"sha": "abc"}, FolderWriter(fail=True))
    assert sorted(p.name for p in (tmp_path / "model").iterdir() if not p.name.endswith(".lock")) == []
    killed = tmp_path / "model" / f".{fingerprint('model', {'sha': 'abc'})}.x1y2.tmp"  # what a killed writer leaves
    killed.mkdir()
    (killed / "weights.bin").write_bytes(b"half")
    write = FolderWriter()
    cache.fetch_folder("model", lambda: {"sha": "abc"}, write)
    assert write.calls == 1 and not killed.exists()


def test_a_folder_entry_needs_a_cache_directory():
    with pytest.raises(ValueError, match="cache.enabled"):
        DecompositionCache(None).fetch_folder("model", lambda: {}, FolderWriter())


class Loaded(Exception):
    """Raised by a stand-in `load_model` once it has seen the cache it was given."""


@pytest.mark.parametrize("entry_point", ["evaluate", "interpret"])
@pytest.mark.parametrize("enabled", [True, False])
def test_evaluate_and_interpret_load_the_input_model_through_the_configured_cache(tmp_path, monkeypatch, entry_point,
                                                                                  enabled):
    """As the compression run does: a GGUF model is dequantised once per cache.dir, not on every call."""
    seen = []

    def load_model(cfg, cache=None):
        seen.append(cache)
        raise Loaded

    monkeypatch.setattr("basel_app.evaluate.load_model", load_model)
    register_schema()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=entry_point, overrides=["model=tiny_random", f"output_dir={tmp_path / 'out'}",
                                                          f"cache.dir={tmp_path / 'cache'}", f"cache.enabled={enabled}"])
    with pytest.raises(Loaded):
        {"evaluate": evaluate, "interpret": interpret}[entry_point](OmegaConf.to_object(cfg))
    assert [cache.root for cache in seen] == [tmp_path / "cache" if enabled else None]
