"""The whole pipeline on the tiny random Llama: outputs, their invariants, and exact resume."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import time
import traceback
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

import basel_app
from basel_app import pipeline
from basel_app.cli import run_validated
from basel_app.config.errors import ConfigError, Preempted
from basel_app.config.schema import TrainerConfig
from basel_app.lit.module import CompressionModule
from basel_app.lit.trainer import resolve_precision
from basel_app.lowrank import count_parameters
from basel_app.models import is_compressed_dir, verify_checksums
from basel_app.pipeline import run

TINY = [
    "model=tiny_random",
    "model.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,lm_head]",
    "logger=csv",
    "task.max_train_samples=16",
    "task.max_eval_samples=8",
    "task.max_length=640",
    "method.compression_ratio=null",  # scale=cpu budgets by compression_ratio; the tiny runs by keep_ratio
    "method.keep_ratio=0.5",
    "method.pruning_times=4",
    "method.post_finetune_epochs=1",
    "method.additional_dim=4",
    "eval.max_new_tokens=8",
    "trainer.enable_progress_bar=false",
]


def tiny_config(compose_config, out, *overrides):
    return OmegaConf.to_object(compose_config(*TINY, *overrides, output_dir=str(out)))


def crash_in_training_step(monkeypatch, at_step: int, lr: float | None = None) -> None:
    """Make the training step at `at_step` raise (only in the stage trained at `lr`, if given)."""
    original_step = CompressionModule.training_step

    def crash(self, batch, batch_idx):
        if self.trainer.global_step == at_step and lr in (None, self.lr):
            raise RuntimeError("simulated crash")
        return original_step(self, batch, batch_idx)

    monkeypatch.setattr(CompressionModule, "training_step", crash)


def test_end_to_end_on_tiny_random_under_a_minute(compose_config, tmp_path):
    start = time.monotonic()
    metrics = run(tiny_config(compose_config, tmp_path))
    assert time.monotonic() - start < 60

    saved = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("method", "params_original", "params_compressed", "compression_ratio", "size_bytes_original",
                "size_bytes_compressed", "ranks", "eval", "wall_time_s"):
        assert key in saved, key
    assert saved["method"] == "basel"
    assert saved["precision"] == resolve_precision(TrainerConfig()) == saved["eval"]["before"]["precision"]
    assert set(saved["eval"]) == {"before", "after"}
    for when in ("before", "after"):  # the task's benchmarks ran on the scale=cpu limit of 8 items
        assert saved["eval"][when]["benchmarks"]["gsm8k"]["n"] == 8
        assert 0.0 <= saved["eval"][when]["benchmarks"]["math"]["accuracy"] <= 1.0
    assert saved["params_original"] / saved["params_compressed"] == pytest.approx(saved["compression_ratio"])
    assert {"keep", "prune", "recompose", "post_finetune"} <= set(saved["wall_time_s"])
    # 2 layers x 7 projections (the tied head is left alone), each thin or dense after recomposition.
    assert len(saved["ranks"]) == 14
    assert {r["kind"] for r in saved["ranks"].values()} <= {"lowrank", "dense"}
    assert saved["compression_ratio"] > 1.0

    # The compressed model on disk is the one that was evaluated, loadable two ways.
    model_dir = tmp_path / "compressed_model"
    model, tokenizer = basel_app.load_compressed(model_dir)
    auto = AutoModelForCausalLM.from_pretrained(model_dir)
    assert count_parameters(model) == metrics["params_compressed"]
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model(ids).logits, auto(ids).logits, rtol=0, atol=0)
    assert not list(model_dir.glob("*.bin")) and list(model_dir.glob("*.safetensors"))
    # A finished run keeps only its outputs: the checkpoints are gone.
    assert not (tmp_path / "checkpoints").exists()
    spectra = json.loads((tmp_path / "spectra.json").read_text())
    assert {"decomposition", "relearned", "pruned", "recomposed"} <= set(spectra)


def test_quantize_int8_saves_and_evaluates_the_quantized_model_beside_the_float_one(compose_config, tmp_path):
    metrics = run(tiny_config(compose_config, tmp_path, "method=svd", "quantize=int8", "eval.benchmarks=[gsm8k]"))

    quantized = metrics["quantized"]
    assert quantized["scheme"] == "int8" and quantized["dir"] == str(tmp_path / "compressed_model_int8")
    assert quantized["size_bytes_on_disk"] < 0.6 * metrics["size_bytes_on_disk"]
    after, on_int8 = metrics["eval"]["after"], metrics["eval"]["quantized"]
    assert on_int8["benchmarks"]["gsm8k"]["n"] == 8
    assert on_int8["answer_loss"] == pytest.approx(after["answer_loss"], rel=0.02)
    model, _ = basel_app.load_compressed(quantized["dir"])
    assert basel_app.models.read_metadata(quantized["dir"])["quantize"] == "int8"
    assert type(model.model.layers[0].mlp.down_proj.up.weight).__name__ == "Int8Tensor"
    assert {"save", "quantize"} <= set(metrics["wall_time_s"])


@pytest.mark.parametrize(
    "method",
    [("method=basel",),  # keep-ratio budget, magnitude scorer
     ("method=bsi", "method.compression_ratio=1.8", "method.importance.batches=1", "method.importance.probes=2"),
     # The EMA of g and diag(H) is state carried across events: it must come back from the checkpoint.
     ("method=bsi", "method.compression_ratio=1.8", "method.importance.batches=2", "method.importance.hessian=gnb",
      "method.importance.ema=0.5")],
    ids=["basel", "bsi", "bsi_gnb_ema"],
)
def test_resume_mid_pruning_gives_the_same_final_ranks(compose_config, tmp_path, monkeypatch, method):
    overrides = ("trainer.checkpoint_every_n_steps=2", "method.post_finetune_epochs=0", "eval.enabled=false", *method)
    reference = run(tiny_config(compose_config, tmp_path / "uninterrupted", *overrides))

    # 16 samples / batch 4 = 4 steps per epoch: keep phase steps 1-4, prune phase steps 5-12.
    crash_in_training_step(monkeypatch, at_step=7)
    out = tmp_path / "interrupted"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tiny_config(compose_config, out, *overrides))
    assert list((out / "checkpoints" / "compress").glob("*.ckpt"))
    assert not (out / "metrics.json").exists()

    monkeypatch.undo()
    resumed = run(tiny_config(compose_config, out, *overrides))
    assert resumed["ranks"] == reference["ranks"]
    assert resumed["params_compressed"] == reference["params_compressed"]
    # Not only the ranks: the resumed run trained on the same batches, so it ends with the same weights.
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(3))
    logits = [basel_app.load_compressed(d / "compressed_model")[0](ids).logits for d in (tmp_path / "uninterrupted", out)]
    torch.testing.assert_close(logits[0], logits[1])


def test_a_run_killed_between_recomposition_and_saving_resumes_exactly(compose_config, tmp_path, monkeypatch):
    """Stage 1 returns its result and run() saves it: a crash in between refits from the last stage-1
    checkpoint (nothing left to train), recomposes again and ends where an uninterrupted run ends."""
    overrides = ("method.post_finetune_epochs=0", "eval.enabled=false")
    reference = run(tiny_config(compose_config, tmp_path / "uninterrupted", *overrides))

    original_save = pipeline.save_compressed

    def crash_saving_the_boundary(model, tokenizer, path, *args, **kwargs):
        if path.name == "recomposed":
            raise RuntimeError("simulated crash")
        return original_save(model, tokenizer, path, *args, **kwargs)

    monkeypatch.setattr(pipeline, "save_compressed", crash_saving_the_boundary)
    out = tmp_path / "interrupted"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tiny_config(compose_config, out, *overrides))
    assert list((out / "checkpoints" / "compress").glob("*.ckpt"))
    assert not (out / "checkpoints" / "recomposed").exists()

    monkeypatch.setattr(pipeline, "save_compressed", original_save)
    resumed = run(tiny_config(compose_config, out, *overrides))
    assert resumed["ranks"] == reference["ranks"]
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(3))
    logits = [basel_app.load_compressed(d / "compressed_model")[0](ids).logits for d in (tmp_path / "uninterrupted", out)]
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=0)
    spectra = [json.loads((d / "spectra.json").read_text()) for d in (tmp_path / "uninterrupted", out)]
    assert spectra[0] == spectra[1]
    # Each attempt logs to its own CSV: the interrupted attempt's history (stage 1) is kept, not overwritten.
    histories = {p.parent.name: p.read_text() for p in (out / "csv").glob("*/metrics.csv")}
    assert sorted(histories) == ["attempt_0", "attempt_1"]
    assert "prune/events" in histories["attempt_0"]
    kept = [json.loads((d / pipeline.KEPT_BASES_FILE).read_text()) for d in (tmp_path / "uninterrupted", out)]
    assert kept[0] == kept[1]


def test_wandb_logs_the_run_pictures_offline_without_an_account(compose_config, tmp_path, monkeypatch):
    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    run(tiny_config(compose_config, tmp_path, "logger=wandb", "method.post_finetune_epochs=0"))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    images = {p.name.split("_")[0]: p for p in runs[0].rglob("media/images/*.png")}
    assert set(images) == {"spectra", "ranks"}
    for key, logged in images.items():  # the very pictures written to the run dir
        assert logged.read_bytes() == (tmp_path / f"{key}.png").read_bytes()
    assert not list(runs[0].rglob("*.table.json"))  # no raw rows of values any more


@pytest.mark.parametrize(
    "extra",
    [("method.distill.alpha=0",),  # the teacher of a distilling run after stage 0 is the stage-0 model, reloaded on resume
     ("method.distill.alpha=0.5", "method.pre_finetune_epochs=1", "method.pre_finetune_lr=1e-3")],
    ids=["plain", "distill_after_stage_0"],
)
def test_resume_in_post_finetuning_starts_from_the_saved_recomposed_model(compose_config, tmp_path, monkeypatch, extra):
    overrides = ("trainer.checkpoint_every_n_steps=2", "method.post_finetune_lr=3e-4", *extra)
    reference = run(tiny_config(compose_config, tmp_path / "uninterrupted", *overrides))

    crash_in_training_step(monkeypatch, at_step=3, lr=3e-4)  # stage 2's learning rate
    out = tmp_path / "interrupted"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tiny_config(compose_config, out, *overrides))
    assert (out / "checkpoints" / "recomposed" / "config.json").exists()
    assert list((out / "checkpoints" / "post_finetune").glob("*.ckpt"))

    monkeypatch.undo()
    reparameterize_calls = []
    monkeypatch.setattr("basel_app.pipeline.reparameterize", lambda *a, **k: reparameterize_calls.append(1))
    resumed = run(tiny_config(compose_config, out, *overrides))
    assert not reparameterize_calls  # stage 1 was not redone
    assert resumed["ranks"] == reference["ranks"]
    assert resumed["eval"]["after"]["answer_loss"] == pytest.approx(reference["eval"]["after"]["answer_loss"], rel=1e-6)
    spectra = [json.loads((d / "spectra.json").read_text()) for d in (tmp_path / "uninterrupted", out)]
    assert spectra[0] == spectra[1]
    # Each attempt logs to its own CSV: the interrupted attempt's history (stage 1) is kept, not overwritten.
    histories = {p.parent.name: p.read_text() for p in (out / "csv").glob("*/metrics.csv")}
    assert sorted(histories) == ["attempt_0", "attempt_1"]
    assert "prune/events" in histories["attempt_0"]


# The kill test: the pipeline in a forked child (imports paid once), killed at chosen points, re-run on the same dir.
STAGE1_LR, KEEP_STEPS = 1e-3, 2  # 8 samples / batch 4 = 2 steps per epoch; the keep phase is 1 epoch
KILL_RUN = ("task.max_train_samples=8", "method.pruning_times=2", "eval.enabled=false",
            "trainer.checkpoint_every_n_steps=1", f"method.lr={STAGE1_LR}", "method.post_finetune_lr=3e-4")


def hook_events(on_event) -> None:
    """Call `on_event(key)` wherever a kill can land: every training step, recomposition, each save (its start,
    its files written but not yet renamed into place), each JSON output and each checkpoint's checksum."""
    from basel_app.lit import checkpoints
    from basel_app.models import compressed_io

    def wrap(owner, name, key_of):
        original = getattr(owner, name)

        def hooked(*args, **kwargs):
            on_event(key_of(*args, **kwargs))
            return original(*args, **kwargs)

        setattr(owner, name, hooked)

    wrap(CompressionModule, "training_step", lambda self, batch, i: ("step", self.lr, self.trainer.global_step))
    wrap(pipeline, "recompose_model", lambda *a, **k: ("recompose",))
    wrap(pipeline, "save_compressed", lambda model, tokenizer, path, *a, **k: ("save", path.name))
    wrap(compressed_io, "_check_no_pickles", lambda tmp: ("written", tmp.name.split(".partial-")[0]))
    wrap(pipeline, "atomic_write_json", lambda path, obj: ("json", path.name))
    wrap(checkpoints, "atomic_write_text", lambda path, text: ("checksum", path.name))


def run_in_child(cfg, kill_at: int | None = None, timeline: list | None = None, sig=signal.SIGKILL,
                 record: Path | None = None) -> int:
    """Run the CLI's job in a forked child; with `kill_at`, the child sends itself `sig` at the first event at or
    past that index of `timeline`. Returns its exit status (-9 when SIGKILLed)."""
    pid = os.fork()
    if pid:
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    code, seen, sent = 1, [], []
    try:
        torch.set_num_threads(1)  # a forked child must not use the parent's OpenMP pool (it crashes or hangs)
        position = {key: i for i, key in enumerate(timeline or [])}

        def on_event(key):
            seen.append(key)
            if kill_at is not None and not sent and position.get(key, -1) >= kill_at:
                sent.append(key)
                os.kill(os.getpid(), sig)

        hook_events(on_event)
        try:
            run_validated(cfg, run)
            code = 0
        except SystemExit as exit_:
            code = exit_.code
        if record is not None:
            record.write_text(json.dumps(seen))
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def phase_of_events(timeline: list[tuple]) -> list[str]:
    """Each event's phase: keep, prune, recompose (through the boundary save), post_finetune, save."""
    phases, phase = [], "keep"
    for key in timeline:
        if key[0] == "step":
            phase = ("keep" if key[2] < KEEP_STEPS else "prune") if key[1] == STAGE1_LR else "post_finetune"
        elif key[0] == "recompose" or key == ("save", "compressed_model"):
            phase = "recompose" if key[0] == "recompose" else "save"
        phases.append(phase)
    return phases


def kill_points(timeline: list[tuple], rng: random.Random, per_phase: int = 2) -> list[int]:
    """`per_phase` random event indices in each of the five phases, in run order."""
    phases = phase_of_events(timeline)
    chosen = []
    for phase in ("keep", "prune", "recompose", "post_finetune", "save"):
        indices = [i for i, p in enumerate(phases) if p == phase]
        chosen += rng.sample(indices, min(per_phase, len(indices)))
    return sorted(chosen)


def assert_nothing_looks_complete_that_is_not(out: Path) -> None:
    assert not (out / "metrics.json").exists()
    for saved in (out / "compressed_model", out / "checkpoints" / "recomposed"):
        if saved.exists():  # a saved model is there whole, or not at all
            assert is_compressed_dir(saved) and (saved / "basel_metadata.json").is_file()
            verify_checksums(saved)


@pytest.mark.parametrize("method", [(), ("method=bsi", "method.compression_ratio=1.8", "method.importance.batches=1",
                                         "method.importance.probes=2")], ids=["basel", "bsi"])
def test_killed_and_preempted_runs_end_like_an_uninterrupted_one(compose_config, tmp_path, method):
    """SIGKILL, then SIGTERM, at 10 random points spread over keep, prune, recompose, post-fine-tuning and the
    final save, re-running on the same dir after each: every run ends with the uninterrupted run's ranks and
    logits, and no attempt leaves a model or metrics that look complete when they are not."""
    overrides = (*KILL_RUN, *method)
    reference_dir = tmp_path / "uninterrupted"
    record = tmp_path / "timeline.json"
    assert run_in_child(compose_config(*TINY, *overrides, output_dir=str(reference_dir)), record=record) == 0
    timeline = [tuple(key) for key in json.loads(record.read_text())]
    reference = json.loads((reference_dir / "metrics.json").read_text())
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(3))
    reference_logits = basel_app.load_compressed(reference_dir / "compressed_model")[0](ids).logits

    rng = random.Random(f"kill-{method}")
    for sig, killed_status in ((signal.SIGKILL, -signal.SIGKILL), (signal.SIGTERM, Preempted.exit_code)):
        out = tmp_path / sig.name
        cfg = compose_config(*TINY, *overrides, output_dir=str(out))
        points = kill_points(timeline, rng)
        assert {phase_of_events(timeline)[i] for i in points} == {"keep", "prune", "recompose", "post_finetune", "save"}
        for point in points:
            assert run_in_child(cfg, point, timeline, sig) == killed_status, (sig.name, timeline[point])
            assert_nothing_looks_complete_that_is_not(out)
        assert run_in_child(cfg) == 0
        resumed = json.loads((out / "metrics.json").read_text())
        assert resumed["ranks"] == reference["ranks"], sig.name
        logits = basel_app.load_compressed(out / "compressed_model")[0](ids).logits
        torch.testing.assert_close(logits, reference_logits, rtol=0, atol=0, msg=sig.name)
        assert not [p for p in out.rglob("*") if ".partial-" in p.name or ".old-" in p.name]


def test_a_resume_under_other_settings_is_refused_before_loading_and_names_the_change(compose_config, tmp_path,
                                                                                      monkeypatch):
    overrides = ("method.post_finetune_lr=3e-4", "eval.enabled=false")
    out = tmp_path / "run"
    crash_in_training_step(monkeypatch, at_step=0, lr=3e-4)  # stage 1 done and saved, stage 2 not
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tiny_config(compose_config, out, *overrides))
    monkeypatch.undo()
    loads = []
    monkeypatch.setattr(pipeline, "load_input_model", lambda *a: loads.append(1))
    with pytest.raises(ConfigError, match=r"holds checkpoints of a run with other settings "
                                          r"\(method.post_finetune_lr=0.0003 there, 0.0001 now\)"):
        run(tiny_config(compose_config, out, "method.post_finetune_lr=1e-4", "eval.enabled=false"))
    assert loads == []
    monkeypatch.undo()
    # The same settings, with only result-neutral ones changed: resumed and finished.
    run(tiny_config(compose_config, out, *overrides, "trainer.enable_progress_bar=true"))
    assert (out / "metrics.json").exists() and not (out / "checkpoints").exists()
    # A finished run left nothing to resume: the same dir may now be run with other settings.
    run(tiny_config(compose_config, out, "method.post_finetune_lr=1e-4", "eval.enabled=false"))
    assert json.loads((out / "run_settings.json").read_text())["method"]["post_finetune_lr"] == 1e-4


def test_a_corrupt_stage_boundary_is_named_never_used_and_stage_1_redone(compose_config, tmp_path, monkeypatch, caplog):
    overrides = ("method.post_finetune_lr=3e-4", "eval.enabled=false")
    run(tiny_config(compose_config, tmp_path / "uninterrupted", *overrides))

    crash_in_training_step(monkeypatch, at_step=0, lr=3e-4)  # after the boundary is saved, before stage 2 saves
    out = tmp_path / "interrupted"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tiny_config(compose_config, out, *overrides))
    weights = out / "checkpoints" / "recomposed" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x40  # a high bit of the last weight: used, it would change the logits
    weights.write_bytes(bytes(data))

    monkeypatch.undo()
    reparameterize_calls = []
    original_reparameterize = pipeline.reparameterize
    monkeypatch.setattr(pipeline, "reparameterize", lambda *a, **k: (reparameterize_calls.append(1),
                                                                    original_reparameterize(*a, **k))[1])
    with caplog.at_level(logging.ERROR):
        run(tiny_config(compose_config, out, *overrides))
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(f"{weights} is corrupt" in m for m in errors)
    assert reparameterize_calls == [1]  # stage 1 ran again instead of loading the damaged boundary
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(3))
    logits = [basel_app.load_compressed(d / "compressed_model")[0](ids).logits for d in (tmp_path / "uninterrupted", out)]
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=0)
