import math
import textwrap

import numpy as np
import pytest

from lrscan.errors import LrscanError
from lrscan.spec import Spec, load_spec, parse_override, preset_names


def paper_plr_grid():
    return np.concatenate(
        [np.logspace(-4.5, -2.25, 10)[:-1], np.logspace(-2.25, -1.25, 9)[:-1], np.logspace(-1.25, 0, 6)]
    )


@pytest.mark.parametrize("preset", ["synthetic", "synthetic-paper"])
def test_synthetic_presets_carry_the_paper_grids(preset):
    spec = load_spec(preset)
    np.testing.assert_allclose(spec.plr, paper_plr_grid(), rtol=1e-12)
    paper_flr = paper_plr_grid()[:11]
    # The default thins the paper's FLR grid to every decade, below its convergence threshold.
    np.testing.assert_allclose(spec.flr, paper_flr if preset == "synthetic-paper" else paper_flr[:9:4], rtol=1e-12)
    assert spec.batch_size == 16
    assert spec.pretrain_epochs * 32 == 40_000 and spec.finetune_epochs * 32 == 20_000
    assert spec.swa == (2, 5, 10, 20, 50)
    assert spec.radius == 1.0


def test_paper_preset_has_all_seeds_and_default_fewer():
    paper, default = load_spec("synthetic-paper"), load_spec()
    assert len(paper.seeds) * len(paper.data_seeds) == 50
    assert len(default.seeds) * len(default.data_seeds) < 50
    assert default == load_spec("synthetic")


def test_every_preset_loads():
    for name in preset_names():
        assert isinstance(load_spec(name), Spec)


def test_overrides_reach_every_table():
    spec = load_spec(overrides=["seeds=[3, 7]", "batch_size=8", "model.width=16", "data.seeds=2", "device=cpu"])
    assert spec.seeds == (3, 7) and spec.batch_size == 8 and spec.device == "cpu"
    assert spec.model_options["width"] == 16
    assert spec.data_seeds == (0, 1)


def test_seed_count_expands_and_grids_sort():
    spec = load_spec(overrides=["seeds=3", "plr=[0.1, 0.01]"])
    assert spec.seeds == (0, 1, 2)
    assert spec.plr == (0.01, 0.1)


def test_config_file_with_option_tables(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(textwrap.dedent("""
        [sweep]
        plr = [0.01, 0.1]
        flr = [0.001]
        pretrain_epochs = 8
        [model]
        width = 8
        [data]
        n_train = 64
    """))
    spec = load_spec(config=path, overrides=["flr=[0.002]"])
    assert spec.plr == (0.01, 0.1) and spec.flr == (0.002,)
    assert spec.model_options == {"width": 8, "depth": 2, "head_norm": 10.0, "eps": 1e-7}
    assert spec.data_options["n_train"] == 64 and spec.data_options["n_test"] == 2000
    assert spec.finetune_from == 8  # defaults to the end of pre-training


def test_round_trip_through_the_stored_form():
    spec = load_spec()
    assert Spec.from_dict(spec.to_dict()) == spec
    assert spec.differences(Spec.from_dict(spec.to_dict())) == []
    other = load_spec(overrides=["seeds=5", "data.n_test=10"])
    assert spec.differences(other) == ["seeds", "data.n_test"]
    assert spec.differences(load_spec(overrides=["device=cpu"])) == []


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["plrr=[0.1]"], r"unknown sweep field 'plrr' \(did you mean 'plr'\?\)"),
        (["model.widht=3"], r"unknown key 'widht'.*did you mean 'width'"),
        (["data.n_trian=3"], r"unknown key 'n_trian'.*did you mean 'n_train'"),
        (["plr=[0.1, -0.1]"], r"plr\[1\] = -0.1: learning rates must be positive and finite"),
        (["flr=[0.0]"], r"flr\[0\] = 0.0: learning rates must be positive"),
        (["plr=[0.1, \"fast\"]"], r"^plr\[1\] must be a number, got .fast.$"),
        (["plr=[true]"], r"^plr\[0\] must be a number, got True$"),
        (["plr=[nan]"], r"positive and finite"),
        (["flr=[inf]"], r"positive and finite"),
        (["plr=[]"], r"plr grid is empty"),
        (["flr=[]"], r"flr grid is empty"),
        (["plr=[0.1, 0.1]"], r"repeated"),
        (["finetune_from=2000"], r"finetune_from = 2000 is beyond pretrain_epochs = 1250"),
        (["pretrain_epochs=0"], r"pretrain_epochs must be positive"),
        (["pretrain_epochs=inf"], r"pretrain_epochs must be finite"),
        (["batch_size=0"], r"batch_size must be at least 1"),
        (["batch_size=2.5"], r"batch_size must be a whole number"),
        (["seeds=0"], r"seeds must be at least 1"),
        (["seeds=[]"], r"seeds is empty"),
        (["log_every=-1"], r"log_every must be positive"),
        (["swa=[0]"], r"swa\[0\] must be at least 1"),
        (["checkpoint_epochs=[5000]"], r"checkpoint epoch 5000 is beyond the end of training"),
        (["model=resnet"], r"unknown model 'resnet'"),
        (["dataset=tiks"], r"unknown dataset 'tiks' \(did you mean 'ticks'\?\)"),
        (["device=gpu"], r"device must be"),
        (["compile=yes"], r"compile must be true or false"),
        (["model.width=0"], r"\[model\] width must be at least 1, got 0"),
        (["model.eps=0"], r"\[model\] eps must be positive, got 0"),
        (["data.label_noise=2"], r"label_noise"),
        (["data.shape=tik"], r"shape"),
        (["nonsense"], r"--set expects FIELD=VALUE"),
        (["foo.bar=1"], r"unknown table 'foo'"),
        (["radius=-1"], r"radius must be positive"),
    ],
)
def test_bad_values_give_one_line_errors(overrides, message):
    with pytest.raises(LrscanError, match=message) as info:
        load_spec(overrides=overrides)
    assert "\n" not in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(LrscanError, match="cannot read config"):
        load_spec(config=tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[sweep\nplr = 1")
    with pytest.raises(LrscanError, match="not valid TOML"):
        load_spec(config=bad)
    typo = tmp_path / "typo.toml"
    typo.write_text("[swep]\nplr = [0.1]\n")
    with pytest.raises(LrscanError, match=r"unknown table \[swep\].*did you mean 'sweep'"):
        load_spec(config=typo)
    with pytest.raises(LrscanError, match="unknown preset 'synthetc'.*did you mean 'synthetic'"):
        load_spec("synthetc")
    with pytest.raises(LrscanError, match="either a preset or a config"):
        load_spec("synthetic", typo)


def test_override_values_are_toml_or_bare_strings():
    assert parse_override("plr=[1e-3, 2e-3]") == ("sweep", "plr", [1e-3, 2e-3])
    assert parse_override("model=mlp") == ("sweep", "model", "mlp")
    assert parse_override("data.informative=0.5") == ("data", "informative", 0.5)
    assert math.isnan(parse_override("plr=nan")[2])


def test_checkpoint_forms():
    table = load_spec(overrides=["checkpoint_epochs={start = 1240, stop = 1250, step = 2.5}"])
    assert table.checkpoint_epochs == (1240.0, 1242.5, 1245.0, 1247.5, 1250.0)
    stride = load_spec(overrides=["pretrain_epochs=10", "finetune_epochs=0", "finetune_from=10", "checkpoint_epochs=5"])
    assert stride.checkpoint_epochs == (0.0, 5.0, 10.0)
    listed = load_spec(overrides=["checkpoint_epochs=[3, 1]"])
    assert listed.checkpoint_epochs == (1.0, 3.0)


def test_shared_validators_take_numpy_integers_and_suggest_choices():
    # One set of validators serves the spec, the model and dataset tables and the generators.
    from lrscan.options import choice, integer

    assert integer("n", np.int64(3), minimum=1) == 3 and type(integer("n", np.int64(3), minimum=1)) is int
    assert integer("n", 4.0, minimum=1) == 4
    with pytest.raises(LrscanError, match=r"^n must be a whole number, got True$"):
        integer("n", True, minimum=1)
    with pytest.raises(LrscanError, match=r"^mode must be one of 'eval', 'train', got 'evl' \(did you mean 'eval'\?\)$"):
        choice("mode", "evl", ("eval", "train"))
    with pytest.raises(LrscanError, match=r"^mode must be one of 'eval', 'train', got 3$"):
        choice("mode", 3, ("eval", "train"))
