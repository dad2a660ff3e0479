"""Every config-group option composes and passes its value checks; bad values name their key."""

from __future__ import annotations

from pathlib import Path

import pytest

from memexp.errors import ConfigValueError
from memexp.train import CONFIG_GROUPS, check_config, config_dir

CONF = Path(config_dir())


def group_options() -> list[tuple[str, str]]:
    return [(group, path.stem) for group in CONFIG_GROUPS for path in sorted((CONF / group).glob("*.yaml"))]


@pytest.mark.parametrize(("group", "option"), group_options())
def test_every_group_option_composes_and_checks(compose, group: str, option: str) -> None:
    cfg = compose([f"{group}={option}"])
    checked = check_config(cfg)
    assert getattr(checked, group) is not None


def test_every_group_has_options() -> None:
    for group in CONFIG_GROUPS:
        assert list((CONF / group).glob("*.yaml")), f"conf/{group}/ has no options"


def test_default_config_is_the_offline_default(compose) -> None:
    cfg = compose()
    assert (cfg.optimizer.name, cfg.model.name, cfg.data.name) == ("sgd", "mlp", "digits")
    assert cfg.logger.wandb.mode in ("offline", "online", "disabled")


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["optimizer.lr=-1"], "optimizer.lr"),
        (["optimizer.lr=0"], "optimizer.lr"),
        (["optimizer.momentum=1.0"], "optimizer.momentum"),
        (["optimizer.momentum=-0.1"], "optimizer.momentum"),
        (["optimizer=adamw", "optimizer.beta2=1.5"], "optimizer.beta2"),
        (["optimizer=adamw", "optimizer.eps=0"], "optimizer.eps"),
        (["optimizer.weight_decay=-1"], "optimizer.weight_decay"),
        (["optimizer.no_decay=[bias,weights]"], "optimizer.no_decay"),
        (["trainer.max_steps=0"], "trainer.max_steps"),
        (["trainer.batch_size=0"], "trainer.batch_size"),
        (["trainer.eval_every=-5"], "trainer.eval_every"),
        (["trainer.device=tpu"], "trainer.device"),
        (["trainer.min_lr_ratio=2"], "trainer.min_lr_ratio"),
        (["trainer.grad_clip=-1"], "trainer.grad_clip"),
        (["data.val_fraction=1.0"], "data.val_fraction"),
        (["model.hidden_sizes=[64,0]"], "model.hidden_sizes"),
        (["model.activation=swish"], "model.activation"),
        (["logger.wandb.mode=sometimes"], "logger.wandb.mode"),
    ],
)
def test_bad_values_name_their_key(compose, overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigValueError) as raised:
        check_config(compose(overrides))
    assert raised.value.key == key
    message = str(raised.value)
    assert message.startswith(f"{key}=") and "\n" not in message


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("trainer.max_steps=abc", "could not be converted to Integer"),
        ("trainer.precision=fp16", "expected one of [fp32, bf16]"),
        ("optimizer.nesterov=maybe", "is not a valid bool"),
        ("trainer.lr_schedule=linear", "expected one of [constant, cosine]"),
    ],
)
def test_wrong_types_fail_at_compose_time(compose, override: str, fragment: str) -> None:
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as raised:
        compose([override])
    assert fragment in str(raised.value.__cause__)


def test_keys_of_another_optimizer_are_rejected(compose) -> None:
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose(["optimizer=adamw", "optimizer.momentum=0.5"])
