"""The ``ucrn`` command: it works end to end, and every user mistake is one clear line."""

import json

import h5py
import numpy as np
import pytest

from ucrn.cli import main
from ucrn.metrics import SENTIMENT_METRICS

FAST = ["--set", "urm_layers=1", "--set", "crm_layers=1", "--set", "width=12"]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ucrn: error: ")
    return lines[0]


def test_synth_train_evaluate_end_to_end(tmp_path, capsys):
    data, run = tmp_path / "mosi.h5", tmp_path / "run"
    assert main(["data", "synth", "--preset", "mosi", "--scale", "0.05", "-o", str(data)]) == 0
    assert main(["data", "inspect", str(data)]) == 0
    assert "64×50×300" in capsys.readouterr().out
    assert main(["train", "--data", str(data), "--epochs", "2", "--seed", "1", *FAST,
                 "--out", str(run)]) == 0
    record = json.loads((run / "metrics.json").read_text())
    assert set(SENTIMENT_METRICS) <= set(record["valid"]) and set(SENTIMENT_METRICS) <= set(
        record["test"])
    assert record["epochs"] == 2 and record["params"] > 0
    assert json.loads((run / "config.json").read_text())["train"]["seed"] == 1
    capsys.readouterr()

    assert main(["evaluate", "--checkpoint", str(run), "--data", str(data), "--json"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert full["MAE"] == pytest.approx(record["test"]["MAE"], abs=1e-6)
    assert main(["evaluate", "--checkpoint", str(run), "--data", str(data), "--modalities",
                 "l,v", "--mask", "v", "--noise", "0.5", "--json"]) == 0
    perturbed = json.loads(capsys.readouterr().out)
    assert set(SENTIMENT_METRICS) <= set(perturbed) and perturbed["MAE"] != full["MAE"]


def _spoiled(write_small, how):
    def spoil(splits):
        if how == "nan":
            splits["train"]["l"][0, 0, 0] = np.nan
        elif how == "labels":
            splits["valid"]["labels"][1] = -4.0
        elif how == "empty":
            splits["valid"] = {key: value[:0] for key, value in splits["valid"].items()}
        elif how == "split":
            splits.pop("valid")

    path = write_small(spoil)
    if how == "shape":
        with h5py.File(path, "a") as file:
            data = file["test/a"][:4]
            del file["test/a"]
            file["test/a"] = data
    return path


@pytest.mark.parametrize("how, message", [
    ("nan", "split 'train' key 'l' has 1 NaN or infinite values"),
    ("labels", "split 'valid' key 'labels' column 'sentiment': 1 values outside [-3, 3]"),
    ("empty", "split 'valid' is empty"),
    ("split", "split 'valid' is missing"),
    ("shape", "split 'test' key 'a' has 4 samples but labels has 6"),
])
def test_a_broken_data_file_is_one_line_and_nothing_is_written(
        write_small, tmp_path, capsys, how, message):
    path = _spoiled(write_small, how)
    out = tmp_path / "out"
    assert main(["train", "--data", str(path), "--out", str(out)]) == 2
    line = _error_line(capsys)
    assert message in line and str(path) in line
    assert not out.exists()


def test_a_missing_data_file_is_one_line(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nope.h5"), "--out", str(tmp_path / "o")]) == 2
    assert "nope.h5 does not exist" in _error_line(capsys)


def test_a_file_that_is_not_hdf5_is_one_line(tmp_path, capsys):
    path = tmp_path / "x.h5"
    path.write_bytes(b"\x00not hdf5")
    assert main(["train", "--data", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "is not an HDF5 file" in _error_line(capsys)


def test_an_hdf5_file_of_another_layout_is_one_line(tmp_path, capsys):
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as file:
        file["features"] = np.zeros(3)
    assert main(["data", "inspect", str(path)]) == 2
    assert "not in the ucrn layout" in _error_line(capsys)


@pytest.mark.parametrize("args, message", [
    (["--modalities", "l,x"], "modalities l,x: give a non-empty subset"),
    (["--set", "lerning_rate=1"], "unknown setting 'lerning_rate' (did you mean learning_rate?)"),
    (["--set", "epochs=many"], "epochs='many': expected a value of type int"),
    (["--set", "heads=4"], "heads=4 does not divide width=30"),
    (["--set", "batch_size"], "write key=value"),
])
def test_a_bad_option_is_one_line_and_nothing_is_written(write_small, tmp_path, capsys, args,
                                                         message):
    out = tmp_path / "out"
    assert main(["train", "--data", str(write_small()), *args, "--out", str(out)]) == 2
    assert message in _error_line(capsys)
    assert not out.exists()


def test_evaluate_refuses_a_modality_the_model_never_saw(tmp_path, write_small, capsys):
    data, run = write_small(), tmp_path / "run"
    assert main(["train", "--data", str(data), "--modalities", "l", "--epochs", "1", *FAST,
                 "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(run), "--data", str(data), "--modalities",
                 "l,a"]) == 2
    assert "cannot take a" in _error_line(capsys)


def test_evaluate_refuses_data_of_other_feature_sizes(tmp_path, write_small, tiny_mosi, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(write_small()), "--epochs", "1", *FAST,
                 "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(run), "--data", str(tiny_mosi)]) == 2
    assert "has 300 features but the model was trained on 3" in _error_line(capsys)


def test_train_refuses_to_overwrite_a_run(tmp_path, write_small, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    assert main(["train", "--data", str(write_small()), "--out", str(out)]) == 2
    assert "--out" in _error_line(capsys)
    assert (out / "metrics.json").read_text() == "{}"


def test_without_modalities_a_language_only_file_trains_a_language_model(tmp_path, capsys):
    from helpers import small_arrays

    from ucrn.data.layout import write_dataset

    splits = {s: small_arrays(seed=i) for i, s in enumerate(("train", "valid", "test"))}
    for arrays in splits.values():
        arrays.pop("a")
        arrays.pop("v")
    data = write_dataset(tmp_path / "l.h5", splits, name="l")
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--epochs", "1", *FAST, "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["model"]["modalities"] == ["l"]
    # Asked for explicitly, a missing modality is still an error.
    capsys.readouterr()
    assert main(["train", "--data", str(data), "--modalities", "l,a", "--out",
                 str(tmp_path / "run2")]) == 2
    assert "modality a is not in this file" in _error_line(capsys)


def test_an_interrupted_train_resumes_to_the_same_result(tiny_mosi, tmp_path, monkeypatch,
                                                          capsys):
    import ucrn.engine

    arguments = ["train", "--data", str(tiny_mosi), "--epochs", "4", "--seed", "3", *FAST]
    assert main([*arguments, "--out", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert not (tmp_path / "whole" / "checkpoint.pt").exists()  # gone once the run ended

    real_fit = ucrn.engine.fit

    def fit_interrupted_after_epoch_2(*args, on_epoch, **kwargs):
        def hook(result, checkpoint):
            on_epoch(result, checkpoint)
            if result.epoch == 2:
                raise KeyboardInterrupt  # Ctrl-C
        return real_fit(*args, on_epoch=hook, **kwargs)

    monkeypatch.setattr(ucrn.engine, "fit", fit_interrupted_after_epoch_2)
    run = tmp_path / "run"
    assert main([*arguments, "--out", str(run)]) == 130
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt"]
    monkeypatch.setattr(ucrn.engine, "fit", real_fit)
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--seed", "3"]) == 2
    assert "drop --seed" in _error_line(capsys)

    assert main(["train", "--resume", "--out", str(run)]) == 0
    resumed = json.loads((run / "metrics.json").read_text())
    assert resumed["epochs"] == 4 and resumed["best_epoch"] == whole["best_epoch"]
    assert resumed["test"] == pytest.approx(whole["test"])  # as if never interrupted
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "metrics.json", "model.pt"]


def test_resume_without_a_resume_point_says_so(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["train", "--resume", "--out", str(tmp_path / "run")]) == 2
    assert "checkpoint.pt does not exist" in _error_line(capsys)
