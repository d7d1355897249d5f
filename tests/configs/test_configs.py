"""Every shipped config composes and validates; bad values fail fast with one line naming them."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from basel_app.config.schema import ConfigError, RunConfig

from ..conftest import CONF, REPO

GROUPS = ["model", "task", "method", "scale", "ablation", "trainer", "logger"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS if g != "ablation" for o in options(g)])
def test_every_shipped_option_composes_and_validates(compose_config, group, option):
    cfg = OmegaConf.to_object(compose_config(f"{group}={option}"))
    assert isinstance(cfg, RunConfig)


@pytest.mark.parametrize("method", options("method"))
@pytest.mark.parametrize("ablation", options("ablation"))
def test_every_method_and_ablation_compose_or_say_why_not(compose_config, method, ablation):
    # The schedule ablations change Algorithm 1, which the one-shot baselines do not run; score variants
    # are BSI's. Anything else would be a result labelled with an ablation that changed nothing.
    applies = ablation == "none" or (
        method in ("basel", "bsi") and (method == "bsi" or not ablation.startswith("score"))
    )
    overrides = (f"method={method}", f"ablation={ablation}")
    if applies:
        cfg = OmegaConf.to_object(compose_config(*overrides))
        assert (cfg.method.name, cfg.ablations) == (method, [ablation])
    else:
        with pytest.raises(ConfigError, match=f"ablation={ablation} is not allowed with method={method}"):
            OmegaConf.to_object(compose_config(*overrides))


def test_ablations_combine_from_the_command_line(compose_config):
    cfg = OmegaConf.to_object(compose_config("method=bsi", "ablation=[score_first,free_bases,additional_dim_0]"))
    assert (cfg.method.score, cfg.method.free_bases, cfg.method.additional_dim) == ("first", True, 0)
    assert cfg.ablations == ["additional_dim_0", "free_bases", "score_first"]


def test_every_group_has_options():
    for group in GROUPS:
        assert options(group), f"conf/{group}/ is empty"


def test_default_is_the_embedded_cpu_run(compose_config):
    cfg = OmegaConf.to_object(compose_config())
    assert (cfg.model.name, cfg.model.source, cfg.task.name, cfg.method.name) == ("smollm2_135m", "gguf", "math", "basel")
    assert cfg.task.max_train_samples is not None  # scale=cpu caps the data


def test_ablations_compose_with_method(compose_config):
    cfg = OmegaConf.to_object(compose_config("ablation=additional_dim_0", "method.keep_ratio=0.4"))
    assert cfg.method.additional_dim == 0 and cfg.method.keep_ratio == 0.4
    assert OmegaConf.to_object(compose_config("ablation=pruning_times_2")).method.pruning_times == 2
    assert OmegaConf.to_object(compose_config("ablation=free_bases")).method.free_bases is True


@pytest.mark.parametrize(
    "override,expected",
    [
        ("method.keep_ratio=0", "method.keep_ratio=0.0 is not allowed"),
        ("method.keep_ratio=1.5", "method.keep_ratio=1.5 is not allowed"),
        ("method.keep_ratio=-0.2", "method.keep_ratio=-0.2 is not allowed"),
        ("method.pruning_times=0", "method.pruning_times=0 is not allowed"),
        ("method.name=svd9", "method.name='svd9' is not allowed; choose one of: basel, bsi, svd, fwsvd, svd_llm, asvd"),
        ("method=bsi method.importance.probes=0", "method.importance.probes=0 is not allowed; Hutchinson needs K >= 1"),
        ("method=bsi method.importance.eps_scale=0", "method.importance.eps_scale=0.0 is not allowed; ε must be > 0"),
        ("method=bsi method.importance.eps_scale=-1e-3", "method.importance.eps_scale=-0.001 is not allowed"),
        ("method=bsi method.importance.batches=0", "method.importance.batches=0 is not allowed"),
        ("method=bsi method.importance.hessian=kfac",
         "method.importance.hessian='kfac' is not allowed; choose one of: hutchinson, fisher, gnb"),
        ("method=bsi method.importance.ema=1", "method.importance.ema=1.0 is not allowed; β must be in [0, 1)"),
        ("method=bsi method.importance.ema=-0.1", "method.importance.ema=-0.1 is not allowed"),
        ("method.pre_finetune_epochs=-1", "method.pre_finetune_epochs=-1 is not allowed; it must be >= 0"),
        ("method.pre_finetune_lr=0", "method.pre_finetune_lr=0.0 is not allowed; it must be > 0"),
        ("method.finetune_warmup=1", "method.finetune_warmup=1.0 is not allowed; it is the fraction of a fine-tuning"),
        ("method.finetune_decay=linear", "method.finetune_decay='linear' is not allowed; choose one of: constant, cosine"),
        ("method.compression_ratio=0.5", "method.compression_ratio=0.5 is not allowed; it must be > 1"),
        ("method.compression_ratio=1", "method.compression_ratio=1.0 is not allowed; it must be > 1"),
        ("method.compression_ratio=null method.target_params=-5", "method.target_params=-5 is not allowed"),
        ("method.compression_ratio=2 method.target_params=1000", "are both set; give one size budget"),
        ("method.allocation=global method.compression_ratio=2", "method.allocation=global is not allowed for method=basel"),
        ("method=bsi method.compression_ratio=null method.allocation=global", "method.allocation=global is not allowed for method=bsi with a keep_ratio"),
        ("method=bsi model.dtype=bfloat16", "model.dtype=bfloat16 is not allowed with method=bsi"),
        ("trainer.strategy=fsdp3", "trainer.strategy='fsdp3' is not allowed; choose one of: auto, ddp, fsdp"),
        ("method=bsi trainer=fsdp trainer.accelerator=cpu trainer.devices=2 method.importance.hessian=hutchinson",
         "method.importance.hessian=hutchinson is not allowed with trainer.strategy=fsdp; use gnb or fisher"),
        ("method=bsi trainer=fsdp trainer.accelerator=cpu trainer.devices=2 method.importance.batches=3",
         "method.importance.batches=3 is not allowed with trainer.strategy=fsdp on 2 processes"),
        ("method.init=random", "method.init='random' is not allowed; choose one of: svd, whitened, asvd"),
        ("method=svd_llm method.init=whitened", "method.init='whitened' is not allowed for the one-shot method=svd_llm"),
        ("task.name=poetry", "task.name='poetry' is not allowed; choose one of:"),
        ("model.path=/does/not/exist", "model.path='/does/not/exist' does not exist"),
        ("model.dtype=int3", "model.dtype='int3' is not allowed"),
        ("logger.name=tensorboard", "logger.name='tensorboard' is not allowed"),
        ("trainer.precision=bf17", "trainer.precision='bf17' is not allowed; choose one of: auto, 32-true"),
        ("method.distill.alpha=1.5", "method.distill.alpha=1.5 is not allowed; it must be in [0, 1]"),
        ("method=svd method.distill.alpha=-0.1", "method.distill.alpha=-0.1 is not allowed"),
        ("method.distill.temperature=0", "method.distill.temperature=0.0 is not allowed; it must be > 0"),
    ],
)
def test_bad_values_name_the_value_and_what_is_allowed(compose_config, override, expected):
    with pytest.raises(ConfigError) as err:
        OmegaConf.to_object(compose_config(*override.split()))
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("group", ["method", "task", "model"])
def test_unknown_group_option_lists_the_allowed_ones(compose_config, group):
    with pytest.raises(MissingConfigException) as err:
        compose_config(f"{group}=nonexistent")
    assert f"{group}/nonexistent" in str(err.value) and options(group)[0] in str(err.value)


def test_wrong_type_is_rejected_by_the_schema(compose_config):
    with pytest.raises(Exception, match="pruning_times"):
        compose_config("method.pruning_times=many")


def cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "basel_app", f"hydra.run.dir={tmp_path}", "logger=csv", *overrides],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["method.keep_ratio=1.5"], "method.keep_ratio=1.5 is not allowed; it must be in (0, 1]"),
        (["method.pruning_times=0"], "method.pruning_times=0 is not allowed"),
        (["model.path=/no/such/model"], "model.path='/no/such/model' does not exist"),
        (["method=bsi_typo"], "Could not find 'method/bsi_typo'"),
        # scale=cpu budgets by compression_ratio: a keep_ratio sweep would silently train one model N times
        (["method.keep_ratio=0.4"], "method.keep_ratio=0.4 is ignored: method.compression_ratio=1.3 is also set"),
        (["model=tiny_random", "method.lr=inf"], "method.lr=inf is not allowed; it must be a finite number"),
    ],
)
def test_cli_rejects_bad_input_before_any_work(tmp_path, overrides, expected):
    start = time.monotonic()
    result = cli(tmp_path, *overrides)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert expected in output
    assert "Converting and de-quantizing" not in output  # the model was never loaded
    assert time.monotonic() - start < 60
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "compressed_model").exists()


def test_cli_rejects_a_data_file_with_missing_fields_before_loading_the_model(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text('{"question": "1+1?", "answer": "#### 2"}\n{"question": "2+2?"}\n')
    (data / "test.jsonl").write_text('{"question": "3+3?", "answer": "#### 6"}\n')
    result = cli(tmp_path / "run", f"task.data_dir={data}", "task.source=local")
    output = result.stdout + result.stderr
    assert result.returncode == 2
    assert "train.jsonl:2: record is missing field 'answer'" in output
    assert "Converting and de-quantizing" not in output


def test_cli_rejects_a_schedule_with_more_pruning_steps_than_iterations(tmp_path):
    result = cli(tmp_path, "model=tiny_random", "method.pruning_times=1000")
    assert result.returncode == 2
    assert "method.pruning_times=1000 is more than the" in result.stdout + result.stderr


def test_cli_prints_each_log_line_once(tmp_path):
    """Lightning's own console handler is dropped: every line comes once, through Hydra's formatter."""
    result = cli(tmp_path, "model=tiny_random", "task.max_train_samples=8", "task.max_eval_samples=4",
                 "method.pruning_times=2", "method.post_finetune_epochs=0", "eval.enabled=false",
                 "trainer.enable_progress_bar=false")
    assert result.returncode == 0, result.stderr[-3000:]
    messages = [line.split("] - ", 1)[1] for line in (result.stdout + result.stderr).splitlines() if "] - " in line]
    assert any("Seed set to 0" in m for m in messages) and any("pruning event" in m for m in messages)
    assert len(messages) == len(set(messages))
    assert not [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("INFO: ")]


def test_bsi_estimator_defaults_to_gnb_within_the_papers_cost_and_scale_paper_restores_hutchinson(compose_config):
    from basel_app.config.names import HESSIAN_ESTIMATORS
    from basel_app.config.schema import DEFAULT_BATCHES, ImportanceConfig
    from basel_app.methods.importance import ESTIMATOR_COSTS

    def importance(*overrides: str) -> tuple[str, int, int]:
        config = OmegaConf.to_object(compose_config("method=bsi", *overrides)).method.importance
        return config.hessian, config.batches, config.probes

    method_file = OmegaConf.load(CONF / "method" / "bsi.yaml").importance
    assert (method_file.hessian, method_file.batches) == ("gnb", None)
    assert importance() == ("gnb", 4, 8)  # scale=cpu, the default profile (scale_method/cpu_bsi.yaml)
    assert importance("scale=paper", "method.importance.hessian=gnb") == ("gnb", 32, 8)
    assert ESTIMATOR_COSTS["gnb"](32, 8) == 64 <= ESTIMATOR_COSTS["hutchinson"](4, 8) == 68  # the paper's cost
    assert importance("scale=paper") == ("hutchinson", 4, 8)  # the paper's estimator (scale_method/paper_bsi.yaml)
    assert importance("scale=cpu")[:2] == ("gnb", 4)  # the CPU profile's cheaper setting (scale_method/cpu_bsi.yaml)
    score = {scale: OmegaConf.to_object(compose_config("method=bsi", f"scale={scale}")).method.score
             for scale in ("cpu", "paper")}
    assert score == {"cpu": "second", "paper": "both"}  # the profile's measured choice; the paper's Taylor estimate
    # Naming another estimator brings its own M, each within the paper's cost, unless M is given too.
    assert set(DEFAULT_BATCHES) == set(HESSIAN_ESTIMATORS)
    for hessian, batches in DEFAULT_BATCHES.items():
        assert ESTIMATOR_COSTS[hessian](batches, 8) <= 68, hessian
    assert importance("scale=paper", "method.importance.hessian=fisher") == ("fisher", 32, 8)
    assert ImportanceConfig(hessian="hutchinson").batches == 4 and ImportanceConfig().batches == 32
    assert importance("scale=paper", "method.importance.batches=2") == ("hutchinson", 2, 8)


def test_basis_init_defaults_to_the_papers_svd_and_every_data_aware_one_has_a_factorisation(compose_config):
    from basel_app.config.names import BASIS_INITS, ONE_SHOT_METHODS
    from basel_app.methods.one_shot import INIT_FACTORIZATIONS

    def init(*overrides: str) -> str:
        return OmegaConf.to_object(compose_config(*overrides)).method.init

    assert init("scale=paper") == init("scale=paper", "method=bsi") == "svd"  # the papers
    assert init() == init("method=bsi") == "whitened"  # scale=cpu's measured choice (scale_method/cpu_basel.yaml)
    assert {init(f"method={m}") for m in ONE_SHOT_METHODS} == {"svd"}  # their own bases: no init to refuse
    assert OmegaConf.to_object(compose_config("method=bsi", "method.init=asvd")).method.init == "asvd"
    assert set(BASIS_INITS) == {"svd", *INIT_FACTORIZATIONS}
    assert set(INIT_FACTORIZATIONS.values()) <= set(ONE_SHOT_METHODS)


def test_the_cpu_profile_trains_the_pruning_methods_at_its_measured_lr_and_the_papers_keep_theirs(compose_config):
    def lr(*overrides: str) -> float:
        return OmegaConf.to_object(compose_config(*overrides)).method.lr

    assert lr() == lr("method=bsi") == 3e-3  # scale=cpu's choice on the validation split (scale_method/cpu_basel.yaml)
    assert lr("scale=paper") == lr("scale=paper", "method=bsi") == OmegaConf.load(CONF / "method" / "basel.yaml").lr
    assert lr("method=bsi", "method.lr=0.001") == 1e-3  # the command line still wins


def test_a_budget_given_on_the_command_line_counts_once_the_stronger_one_is_nulled(compose_config):
    from basel_app.config.schema import refuse_shadowed_budget

    overrides = ["method.compression_ratio=null", "method.keep_ratio=0.4"]
    method = OmegaConf.to_object(compose_config(*overrides)).method
    refuse_shadowed_budget(method, overrides)  # nothing shadows it
    assert (method.compression_ratio, method.keep_ratio) == (None, 0.4)
    method = OmegaConf.to_object(compose_config("method.target_params=1000", "method.compression_ratio=null")).method
    with pytest.raises(ConfigError, match=r"\+method.keep_ratio=0.3 is ignored: method.target_params=1000"):
        refuse_shadowed_budget(method, ["+method.keep_ratio=0.3"])
