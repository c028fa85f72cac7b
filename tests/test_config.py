"""One config object: paper defaults, checked overrides, JSON round trips."""

import json

import pytest

from ucrn.config import (
    ABLATIONS,
    Config,
    apply_overrides,
    config_from_dict,
    load_config,
    parse_modalities,
    parse_set_options,
)
from ucrn.errors import UcrnError


def test_defaults_are_the_papers():
    config = Config()
    assert (config.model.urm_layers, config.model.crm_layers, config.model.heads) == (5, 5, 3)
    assert (config.train.lambda_m, config.train.lambda_c) == (1.0, 1.0)
    assert (config.train.batch_size, config.train.learning_rate) == (16, 1e-3)


def test_overrides_are_typed_from_strings():
    config = apply_overrides(Config(), parse_set_options(
        ["width=36", "lambda_m=0.25", "use_crm=false", "modalities=v,l", "train.seed=3"]))
    assert config.model.width == 36 and config.train.lambda_m == 0.25
    assert config.model.use_crm is False and config.train.seed == 3
    assert config.model.modalities == ("l", "v")  # canonical order


def test_an_unknown_key_names_the_closest_one():
    with pytest.raises(UcrnError, match="did you mean learning_rate"):
        apply_overrides(Config(), {"learning_rat": "1e-3"})


@pytest.mark.parametrize("key, value", [
    ("epochs", "ten"), ("epochs", "2.5"), ("use_urm", "maybe"), ("learning_rate", "fast"),
])
def test_a_value_of_the_wrong_type_is_refused(key, value):
    with pytest.raises(UcrnError, match=key):
        apply_overrides(Config(), {key: value})


@pytest.mark.parametrize("pairs", [["width"], ["=3"]])
def test_set_needs_key_equals_value(pairs):
    with pytest.raises(UcrnError, match="key=value"):
        parse_set_options(pairs)


def test_heads_that_do_not_divide_the_width_are_refused_with_a_suggestion():
    with pytest.raises(UcrnError, match="heads=4 does not divide width=30.*multiple of 4"):
        apply_overrides(Config(), {"heads": 4})


@pytest.mark.parametrize("value", ["x", "l,l", "", "l,a,v,t"])
def test_unknown_modality_letters_are_refused(value):
    with pytest.raises(UcrnError, match="subset of l"):
        parse_modalities(value)


def test_nested_and_flat_dicts_give_the_same_config(tmp_path):
    nested = {"model": {"width": 33}, "train": {"epochs": 7}}
    flat = {"width": 33, "epochs": 7}
    assert config_from_dict(nested) == config_from_dict(flat)
    path = tmp_path / "config.json"
    config_from_dict(nested).save(path)
    assert load_config(path) == config_from_dict(nested)


def test_a_search_record_in_a_config_file_is_ignored(tmp_path):
    path = tmp_path / "best.json"
    path.write_text(json.dumps({"model": {"heads": 3}, "search": {"trial": "x"},
                                "metrics": {"valid": {}}}))
    assert load_config(path).model.heads == 3


def test_a_bad_config_file_names_itself(tmp_path):
    with pytest.raises(UcrnError, match="does not exist"):
        load_config(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(UcrnError, match="broken.json is not valid JSON"):
        load_config(broken)


def test_every_ablation_is_a_valid_override():
    for name, overrides in ABLATIONS.items():
        assert apply_overrides(Config(), overrides), name
    assert apply_overrides(Config(), ABLATIONS["no_mjs"]).train.lambda_m == 0.0


def test_every_way_of_choosing_the_modalities_counts():
    from ucrn.config import config_from_options

    for pairs, options in ((["model.modalities=l"], {}), (["modalities=l,a"], {}),
                           ([], {"modalities": "l"})):
        config, chosen = config_from_options(None, pairs, **options)
        assert chosen and "v" not in config.model.modalities
    config, chosen = config_from_options(None, ["lambda_m=0.5"], epochs=3, seed=None)
    assert not chosen and config.train.lambda_m == 0.5 and config.train.epochs == 3


def test_a_config_file_chooses_the_modalities_only_when_it_names_them(tmp_path):
    from ucrn.config import config_from_options

    silent = tmp_path / "empty.json"
    silent.write_text("{}")
    assert config_from_options(str(silent), None)[1] is False  # the data's own, then
    for named in ('{"model": {"modalities": ["l", "a"]}}', '{"modalities": "l"}'):
        (tmp_path / "named.json").write_text(named)
        assert config_from_options(str(tmp_path / "named.json"), None)[1] is True
