"""What a user meets when things go wrong: one line naming the thing and the fix, exit 2, no
traceback, nothing half-written, nothing replaced that must not be."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import fails_before_ray, one_error_line

from ucrn.cli import main

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--set", "urm_layers=1", "--set", "crm_layers=1", "--set", "width=12"]


def _one_line(capsys, program: str = "ucrn") -> str:
    return one_error_line(capsys, program)


def _synth(path: Path, *extra: str) -> int:
    return main(["data", "synth", "--scale", "0.02", "-o", str(path), *extra])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_mosi) -> Path:
    run = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", "--data", str(tiny_mosi), "--epochs", "1", *FAST,
                 "--out", str(run)]) == 0
    return run


# ----------------------------------------------------------------------- where files go


def test_a_file_that_is_not_regular_is_never_replaced(tmp_path, capsys):
    fifo, link = tmp_path / "fifo", tmp_path / "link.h5"
    os.mkfifo(fifo)
    link.symlink_to(tmp_path / "target.h5")
    for target in (fifo, link):
        assert _synth(target) == 2
        assert "is not a regular file" in _one_line(capsys)
    assert stat.S_ISFIFO(fifo.stat().st_mode) and link.is_symlink()
    assert not (tmp_path / "target.h5").exists()


def test_an_existing_output_is_kept_unless_forced(tmp_path, capsys):
    path = tmp_path / "data.h5"
    path.write_text("keep me")
    assert _synth(path) == 2
    assert "pass --force" in _one_line(capsys)
    assert path.read_text() == "keep me"
    assert _synth(path, "--force") == 0
    assert path.read_bytes()[:4] == b"\x89HDF"


@pytest.mark.parametrize("where, message", [
    (lambda tmp: tmp, "is a directory"),
    (lambda tmp: tmp / "a-file" / "x.h5", "is a file, so"),
    (lambda tmp: tmp / ("x" * 250 + ".h5"), "too long"),
    (lambda tmp: Path(" "), "the path is empty"),
])
def test_outputs_that_cannot_be_written_are_named(tmp_path, capsys, where, message):
    (tmp_path / "a-file").write_text("")
    assert _synth(where(tmp_path)) == 2
    assert message in _one_line(capsys)


def test_a_conversion_never_overwrites_its_input(tmp_path, capsys, reference_data):
    source = tmp_path / "mosi.pkl"
    source.write_bytes(
        (reference_data / "mosi-real-fusion" / "mosi_minilm_opensmile.pkl").read_bytes())
    before = source.read_bytes()
    assert main(["data", "convert", "mult-pkl", str(source), "-o", str(source), "--force"]) == 2
    assert "is the input" in _one_line(capsys)
    assert source.read_bytes() == before


def test_temporaries_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    output = tmp_path / "data.h5"
    stale = tmp_path / ".data.h5.999999999.0bad.part"  # no such process
    live = tmp_path / f".data.h5.{os.getpid()}.0000.part"  # a writer still running
    stale.write_bytes(b"x" * 1000)
    live.write_bytes(b"x")
    assert _synth(output) == 0
    assert not stale.exists() and live.exists()
    live.unlink()  # the test's own stand-in: no .part is left behind


def test_run_files_have_the_usual_mode(trained_run):
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.pt", "config.json", "metrics.json"):
        assert stat.S_IMODE((trained_run / name).stat().st_mode) == 0o666 & ~umask, name


def test_training_checks_its_output_before_it_trains(tmp_path, capsys, tiny_mosi):
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "a-file" / "run"
    assert main(["train", "--data", str(tiny_mosi), "--epochs", "1", *FAST,
                 "--out", str(out)]) == 2
    assert "is a file" in _one_line(capsys)


# ------------------------------------------------------------------------------ values


@pytest.mark.parametrize("setting, message", [
    ("seed=100000000000000000000000", "seed=100000000000000000000000: must be between"),
    ("urm_layers=100000", "urm_layers=100000: must be between 1 and 64"),
    ('input_dims={"l": 1e999, "a": 5, "v": 20}', "expected a value of type dict"),
    ("width=1000000", "width=1000000: must be between 1 and 4,096"),
])
def test_impossible_sizes_and_seeds_are_one_line(tmp_path, capsys, tiny_mosi, setting,
                                                 message):
    assert main(["train", "--data", str(tiny_mosi), "--set", setting,
                 "--out", str(tmp_path / "run")]) == 2
    assert message in _one_line(capsys)


@pytest.mark.parametrize("seed", ["-5", str(2**40)])
def test_a_seed_out_of_range_is_one_line_for_synthetic_data(tmp_path, capsys, seed):
    assert _synth(tmp_path / "s.h5", "--seed", seed) == 2
    assert f"--seed {seed}: give a whole number from 0 to 4,294,967,295" in _one_line(capsys)
    assert not (tmp_path / "s.h5").exists()


def test_a_noise_seed_out_of_range_is_one_line(trained_run, tiny_mosi, capsys):
    assert main(["evaluate", "--checkpoint", str(trained_run), "--data", str(tiny_mosi),
                 "--noise", "0.5", "--noise-seed", "-1"]) == 2
    assert "noise seed -1: give a whole number from 0" in _one_line(capsys)


def test_a_model_too_big_for_memory_is_refused_before_it_is_built(tmp_path, capsys, tiny_mosi):
    settings = ["width=4096", "heads=4", "urm_layers=10", "crm_layers=10", "batch_size=256"]
    arguments = [a for setting in settings for a in ("--set", setting)]
    assert main(["train", "--data", str(tiny_mosi), *arguments, "--epochs", "1",
                 "--out", str(tmp_path / "run")]) == 2
    line = _one_line(capsys)
    assert "this model needs about" in line and "free memory" in line
    assert not (tmp_path / "run").exists()  # the run wrote nothing, so left nothing


@pytest.mark.parametrize("device, message", [
    ("bogus", "not a device"), ("cuda", "no GPU"), ("meta", "runs on cpu or cuda"),
])
def test_a_device_this_machine_lacks_is_one_line(tmp_path, capsys, tiny_mosi, device,
                                                 message):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["train", "--data", str(tiny_mosi), "--device", device,
                 "--out", str(tmp_path / "run")]) == 2
    assert message in _one_line(capsys)


# ------------------------------------------------------------------------- checkpoints


class _Payload:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.parametrize("write, message", [
    (lambda path: torch.save({"config": {}, "state_dict": _Payload()}, path),
     "is not a file written by ucrn (it holds Python objects beyond tensors and plain "
     "values, and loading those could run code, so ucrn does not load it)"),
    (lambda path: path.write_text("hello"), "is not a file written by ucrn ("),
    (lambda path: torch.save(torch.zeros(3), path), "holds a Tensor"),
])
def test_a_checkpoint_that_is_not_ours_is_one_line(tmp_path, capsys, tiny_mosi, write,
                                                   message):
    run = tmp_path / "run"
    run.mkdir()
    write(run / "model.pt")
    assert main(["evaluate", "--checkpoint", str(run), "--data", str(tiny_mosi)]) == 2
    assert message in _one_line(capsys)


def test_a_checkpoint_whose_weights_do_not_fit_is_one_line(tmp_path, capsys, tiny_mosi,
                                                          trained_run):
    saved = torch.load(trained_run / "model.pt", weights_only=True)
    saved["config"]["model"]["urm_layers"] = 2  # the weights have one layer
    run = tmp_path / "run"
    run.mkdir()
    torch.save(saved, run / "model.pt")
    assert main(["evaluate", "--checkpoint", str(run), "--data", str(tiny_mosi)]) == 2
    line = _one_line(capsys)
    assert "does not fit its config" in line and "missing (e.g. urms.l.layers.1" in line


def test_inspect_checks_a_file_as_training_reads_it(write_small, capsys):
    import numpy as np

    def spoil(splits):
        splits["train"]["l"][0, 0, 0] = np.nan

    assert main(["data", "inspect", str(write_small(spoil))]) == 2
    assert "NaN or infinite" in _one_line(capsys)


def _spoiled_file(tmp_path: Path, split_arrays) -> Path:
    """A file in our layout written with h5py directly, so that any kind of array fits."""
    import h5py

    path = tmp_path / "spoiled.h5"
    with h5py.File(path, "w") as file:
        file.attrs.update(format="ucrn", version=1, name="x", task="regression",
                          modalities=json.dumps(["l"]), label_names=json.dumps(["sentiment"]),
                          source="test")
        for split in ("train", "valid", "test"):
            group = file.create_group(split)
            for key, value in split_arrays().items():
                group[key] = value
    return path


@pytest.mark.parametrize("arrays, message", [
    (lambda: {"l": torch.zeros(4, 0, 3).numpy(), "labels": [0.0] * 4,
              "ids": [b"a", b"b", b"c", b"d"]}, "no time steps"),
    (lambda: {"l": torch.zeros(4, 5, 0).numpy(), "labels": [0.0] * 4,
              "ids": [b"a", b"b", b"c", b"d"]}, "no features"),
    (lambda: {"l": torch.zeros(4, 5, 3).numpy(), "labels": [b"1.0", b"2", b"x", b"0"],
              "ids": [b"a", b"b", b"c", b"d"]}, "key 'labels' holds object values"),
])
def test_inspect_refuses_every_file_training_cannot_use(tmp_path, capsys, arrays, message):
    path = _spoiled_file(tmp_path, arrays)
    assert main(["data", "inspect", str(path)]) == 2
    line = _one_line(capsys)
    assert str(path) in line and "split 'train'" in line and message in line
    assert main(["train", "--data", str(path), "--out", str(tmp_path / "run")]) == 2
    assert message in _one_line(capsys)


def test_labels_stored_as_strings_in_a_pickle_are_one_line(tmp_path, capsys):
    import pickle

    import numpy as np

    split = {"text": np.zeros((3, 4, 2), np.float32), "audio": np.zeros((3, 4, 2), np.float32),
             "vision": np.zeros((3, 4, 2), np.float32),
             "labels": np.array([["1.5"], ["x"], ["0"]]), "id": np.array(["a", "b", "c"])}
    path = tmp_path / "strings.pkl"
    path.write_bytes(pickle.dumps({"train": split, "valid": split, "test": split}))
    assert main(["data", "convert", "mult-pkl", str(path), "-o", str(tmp_path / "o.h5")]) == 2
    assert "key 'labels' holds <U3 values; expected numbers" in _one_line(capsys)


# -------------------------------------------------------------------- search, evaluate


def _search_fails_before_ray(capsys, *args: str) -> str:
    from tuning.search import main

    return fails_before_ray(capsys, main, "search", *args)


@pytest.mark.parametrize("name", ["../../..", "a/b", "..", "~root"])
def test_an_experiment_name_is_one_folder(capsys, tiny_mosi, tmp_path, name):
    line = _search_fails_before_ray(capsys, "--data", str(tiny_mosi), "--name", name,
                                    "--storage", str(tmp_path))
    assert "give one folder name" in line
    assert list(tmp_path.iterdir()) == []


def test_storage_that_is_a_file_fails_before_ray(capsys, tiny_mosi, tmp_path):
    (tmp_path / "file").write_text("")
    line = _search_fails_before_ray(capsys, "--data", str(tiny_mosi),
                                    "--storage", str(tmp_path / "file"))
    assert "is a file" in line


def test_searching_over_the_task_fails_before_ray(capsys, tiny_mosi, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("task: {choice: [regression, binary]}\n")
    line = _search_fails_before_ray(capsys, "--data", str(tiny_mosi), "--space", str(space),
                                    "--storage", str(tmp_path))
    assert "task is set by the search's own options" in line and "--set task=" in line


def test_a_yaml_error_is_one_line(capsys, tiny_mosi, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("heads: [1, 2\nwidth: {\n")
    line = _search_fails_before_ray(capsys, "--data", str(tiny_mosi), "--space", str(space),
                                    "--storage", str(tmp_path))
    assert "cannot be parsed" in line


def test_a_finished_experiment_is_not_resumed_or_rescored(capsys, tiny_mosi, tmp_path):
    experiment = tmp_path / "done"
    experiment.mkdir()
    (experiment / "tuner.pkl").write_bytes(b"")
    (experiment / "best.json").write_text(json.dumps({"metrics": {"test": {"MAE": 1.0}}}))
    before = (experiment / "best.json").read_text()
    line = _search_fails_before_ray(capsys, "--data", str(tiny_mosi), "--storage",
                                    str(tmp_path), "--name", "done", "--resume")
    assert "is finished" in line and "nothing was changed" in line
    assert (experiment / "best.json").read_text() == before


def test_the_shipped_worker_has_no_test_path():
    source = (ROOT / "tuning" / "workers.py").read_text()
    assert "environ" not in source and "TEST" not in source


def test_the_paper_is_named_right_everywhere():
    tracked = subprocess.run(["git", "ls-files", "*.py", "*.md"], cwd=ROOT, text=True,
                             capture_output=True).stdout.split()
    if not tracked:  # not a git checkout: read the files beside this one
        tracked = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.suffix in
                   (".py", ".md") and ".git" not in p.parts]
    wrong = [name for name in tracked if "Li et al" in (ROOT / name).read_text()
             and name != "tests/test_user_faults.py"]
    assert wrong == []
    readme = (ROOT / "README.md").read_text()
    assert "Guo, Xiaobao and Kong, Adams and Zhou, Huan and Wang, Xianfeng and Wang, Min" in \
        readme


def test_the_commands_run_as_scripts_report_one_line(tmp_path):
    finished = subprocess.run(
        [sys.executable, str(ROOT / "tuning" / "search.py"), "--name", "../x",
         "--storage", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert finished.returncode == 2 and "Traceback" not in finished.stderr


def _search_subprocess(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tuning" / "search.py"), *args],
                          capture_output=True, text=True, timeout=180)


def _last_line(finished: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in finished.stderr, finished.stderr[-2000:]
    return finished.stderr.strip().splitlines()[-1]


def test_an_address_where_no_ray_answers_is_one_line(tiny_mosi, tmp_path):
    finished = _search_subprocess("--data", str(tiny_mosi), "--address", "127.0.0.1:1",
                                  "--storage", str(tmp_path))
    assert finished.returncode == 2
    assert "--address 127.0.0.1:1: no Ray cluster answers there" in _last_line(finished)


@pytest.mark.slow
def test_resources_the_cluster_can_never_give_are_one_line(tiny_mosi, tmp_path):
    finished = _search_subprocess("--data", str(tiny_mosi), "--cpus-per-worker", "64",
                                  "--storage", str(tmp_path))
    assert finished.returncode == 2
    assert "no trial could ever start" in _last_line(finished)


# ------------------------------------------------------------------ one run per folder

HOLDER = ("import sys\nfrom ucrn.files import hold_folder\n"
          "with hold_folder(sys.argv[1]):\n    print('held', flush=True)\n    sys.stdin.read()\n")


@pytest.fixture
def held_folder(tmp_path):
    """A folder that another live process holds as its run folder."""
    folder = tmp_path / "busy"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdout.readline().strip() == "held"
    yield folder
    holder.communicate("", timeout=30)  # end of input: it lets go and exits
    assert holder.returncode == 0 and not (folder / ".ucrn-lock").exists()


def test_a_folder_is_one_runs_while_it_runs_and_free_again_after(tmp_path):
    from ucrn.errors import UcrnError
    from ucrn.files import hold_folder

    with hold_folder(tmp_path / "run") as folder:
        with pytest.raises(UcrnError, match=r"in use by a run that is still going \(pid "):
            with hold_folder(folder):
                pass
    with hold_folder(tmp_path / "run"):
        pass
    assert not (tmp_path / "run").exists()  # made by the hold and left empty: removed


def test_a_killed_runs_folder_is_free_at_once(tmp_path):
    from ucrn.files import hold_folder

    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait(timeout=30)
    with hold_folder(folder):  # the operating system released its lock with it
        pass


def test_a_second_training_into_a_folder_in_use_is_one_line(held_folder, tiny_mosi, capsys):
    assert main(["train", "--data", str(tiny_mosi), "--epochs", "1", *FAST,
                 "--out", str(held_folder)]) == 2
    line = _one_line(capsys)
    assert f"--out {held_folder} is in use by a run that is still going (pid " in line
    assert not (held_folder / "metrics.json").exists()


def test_a_search_into_an_experiment_in_use_is_one_line_before_ray(held_folder, tiny_mosi,
                                                                   capsys):
    from tuning.search import main as search

    (held_folder / "tuner.pkl").write_bytes(b"")  # the running search's experiment state
    line = fails_before_ray(capsys, search, "search", "--data", str(tiny_mosi),
                            "--storage", str(held_folder.parent), "--name", held_folder.name,
                            "--resume")
    assert f"experiment {held_folder} is in use by a run that is still going" in line


def test_an_evaluation_into_a_folder_in_use_is_one_line_before_ray(held_folder, tiny_mosi,
                                                                  capsys):
    from tuning.evaluate import main as evaluate

    line = fails_before_ray(capsys, evaluate, "evaluate", "--data", str(tiny_mosi),
                            "--seeds", "1", "--ablations", "none", "--out", str(held_folder))
    assert f"--out {held_folder} is in use by a run that is still going" in line


@pytest.mark.parametrize("where, message", [("file", "is a file"), ("under", "is a file")])
def test_an_evaluation_output_that_cannot_be_a_folder_is_one_line(tmp_path, tiny_mosi,
                                                                 capsys, where, message):
    from tuning.evaluate import main as evaluate

    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" if where == "file" else tmp_path / "f" / "inner"
    line = fails_before_ray(capsys, evaluate, "evaluate", "--data", str(tiny_mosi),
                            "--seeds", "1", "--ablations", "none", "--out", str(out))
    assert message in line


@pytest.mark.parametrize("content", [b"garbage\n", bytes(range(256)) * 4])
def test_a_garbage_resume_point_is_one_line_without_torchs_advice(tmp_path, capsys, content):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(content)
    assert main(["train", "--resume", "--out", str(run)]) == 2
    line = _one_line(capsys)
    assert f"--resume: {run / 'checkpoint.pt'} is not a file written by ucrn (" in line
    assert "weights_only" not in line  # never the advice to load it as code


@pytest.mark.parametrize("key, value, message", [
    ("version", "x", "layout version 'x' is not supported"),
    ("format", [1, 2], "not in the ucrn layout"),
    ("modalities", 5, "attribute 'modalities' is not a JSON list"),
    ("task", 3, "is not one of regression"),
])
def test_file_attributes_of_the_wrong_kind_are_one_line(tmp_path, capsys, tiny_mosi, key,
                                                        value, message):
    import shutil

    import h5py

    path = tmp_path / "attrs.h5"
    shutil.copy(tiny_mosi, path)
    with h5py.File(path, "a") as file:
        file.attrs[key] = value
    assert main(["data", "inspect", str(path)]) == 2
    assert message in _one_line(capsys)
