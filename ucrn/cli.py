"""The ``ucrn`` command: ``ucrn data synth|inspect``, ``ucrn train``, ``ucrn evaluate``.

A mistake a user can make ends with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ucrn import MODALITY_NAMES, __version__
from ucrn.config import config_from_options, parse_modalities
from ucrn.display import metrics_table
from ucrn.errors import UcrnError, exit_status
from ucrn.files import LOCK_FILE, check_directory, check_output_path, hold_folder, load_tensors

console = Console(stderr=True)
stdout = Console()


# ------------------------------------------------------------------------------------ data


def command_synth(args: argparse.Namespace) -> None:
    from ucrn.data.synthetic import synthesize

    check_output_path(args.output, "-o", overwrite=args.force)
    started = time.perf_counter()
    with console.status(f"writing synthetic {args.preset} data to {args.output}"):
        path = synthesize(args.preset, args.output, scale=args.scale, seed=args.seed,
                          signal=_signal_strengths(args.signal or []))
    console.print(f"wrote {path} in {time.perf_counter() - started:.1f} s")
    _print_summary(path)


def _signal_strengths(pairs: list[str]) -> dict[str, float]:
    strengths = {}
    for pair in filter(None, ",".join(pairs).split(",")):
        modality, sep, value = pair.partition("=")
        try:
            strength = float(value)
        except ValueError:
            strength = -1.0
        if not sep or modality.strip() not in ("l", "a", "v") or not 0 <= strength < 1e6:
            raise UcrnError(f"--signal {pair!r}: write modality=strength, e.g. a=0 (pure "
                            "noise) or v=0.5; strength ≥ 0, 1 is the default")
        strengths[modality.strip()] = strength
    return strengths


def _feature_files(pairs: list[str]) -> dict[str, str]:
    files = {}
    for pair in pairs:
        modality, sep, path = pair.partition("=")
        if not sep or modality not in ("l", "a", "v") or not path:
            raise UcrnError(f"--features {pair!r}: write modality=FILE, e.g. l=WORDS.csd")
        files[modality] = path
    return files


def command_convert(args: argparse.Namespace) -> None:
    from ucrn.data.convert import convert_pickle
    from ucrn.data.csd import convert_csd, read_folds, standard_folds

    output = check_output_path(args.output, "-o", overwrite=args.force)
    inputs = [args.labels, *_feature_files(args.features).values()] if args.format == "csd" \
        else [args.path]
    for source in map(Path, inputs):
        if output.exists() and source.exists() and output.samefile(source):
            raise UcrnError(f"-o {output} is the input {source}; write the output elsewhere")
    started = time.perf_counter()
    if args.format == "csd":
        if args.folds and args.dataset:
            raise UcrnError("give --folds or --dataset, not both")
        if args.folds:
            folds = read_folds(args.folds)
        else:
            guess = next((d for d in ("mosei", "mosi") if d in Path(args.labels).name.lower()),
                         None)
            if not (args.dataset or guess):
                raise UcrnError("give --folds FILE.json or --dataset mosi|mosei")
            folds = standard_folds(args.dataset or guess)
        files = _feature_files(args.features)
        align = None if args.align == "none" else args.align
        with console.status(f"converting {args.labels} and {len(files)} feature files"):
            summary = convert_csd(args.labels, files, args.output, folds=folds,
                                  seq_len=args.seq_len, align=align,
                                  allow_missing=args.allow_missing, name=args.name)
    else:
        with console.status(f"converting {args.path} ({args.format}) to {args.output}"):
            summary = convert_pickle(args.format, args.path, args.output, name=args.name)
    console.print(f"wrote {summary['output']} in {time.perf_counter() - started:.1f} s")
    console.print("modalities found: " + ", ".join(
        f"{m} ({MODALITY_NAMES[m]}, {summary['dims'][m]} features)"
        for m in summary["modalities"]))
    for what, count in summary["cleaned"].items():
        console.print(f"cleaned: {what} ({count:,} values)")
    for what, count in summary["skipped"].items():
        console.print(f"skipped: {what} ({count:,})")
    for note in summary["notes"]:
        console.print(f"note: {note}")
    _print_summary(Path(args.output))


def command_inspect(args: argparse.Namespace) -> None:
    from ucrn.data.layout import load_dataset

    load_dataset(args.file)  # checked as training reads it: what inspect accepts, train reads
    _print_summary(Path(args.file))
    console.print(f"{args.file}: every split, key and value checked as training reads them")


def _print_summary(path: Path) -> None:
    from ucrn.data.layout import describe

    summary = describe(path)
    attrs = summary["attrs"]
    stdout.print(
        f"[bold]{path}[/bold]: {attrs.get('name', '')} · task {attrs['task']} · modalities "
        f"{','.join(attrs['modalities'])} · source {attrs.get('source', '') or '—'}"
    )
    table = Table()
    for column in ("split", "samples", *attrs["modalities"], "padded", *(
            f"{name} mean±std [min, max]" for name in attrs["label_names"][:2])):
        table.add_column(column)
    for split, info in summary["splits"].items():
        label_cells = [
            f"{s['mean']:.2f}±{s['std']:.2f} [{s['min']:.2f}, {s['max']:.2f}]"
            for s in list(info["labels"].values())[:2]
        ]
        table.add_row(
            split, str(info["count"]),
            *("×".join(map(str, info["shapes"].get(m, ()))) for m in attrs["modalities"]),
            ",".join(info["padded"]) or "—", *label_cells,
        )
    stdout.print(table)
    if len(attrs["label_names"]) > 2:
        stdout.print(f"label columns: {', '.join(attrs['label_names'])}")
    if "source_format" in attrs:  # a converted file: where it came from
        files = json.loads(attrs["source_files"])
        stdout.print(f"converted from {attrs['source_format']} on {attrs['converted_at']}:")
        for source in files:
            stdout.print(f"  {source['path']} (sha256 {source['sha256'][:16]}…)")
        for key in ("cleaned", "skipped"):
            for what, count in json.loads(attrs[key]).items():
                stdout.print(f"  {key}: {what} ({count:,})")
        for note in json.loads(attrs["notes"]):
            stdout.print(f"  note: {note}")
        for key, text in json.loads(attrs.get("source_metadata", "{}")).items():
            stdout.print(f"  source metadata {key!r}: {text[:300]}"
                         + ("…" if len(text) > 300 else ""))


# ----------------------------------------------------------------------------------- train


def _data_path(args: argparse.Namespace) -> Path:
    from ucrn.data.synthetic import data_or_default, default_data_path

    if args.data or default_data_path().exists():
        return data_or_default(args.data)
    with console.status(f"making the embedded synthetic MOSI data at {default_data_path()}"):
        return data_or_default(None)


RESUME_FILE = "checkpoint.pt"  # the last epoch's state, while ``ucrn train`` runs


def _new_training(args: argparse.Namespace, out_dir: Path):
    """(config, dataset, data path, None) for a new run into ``out_dir``."""
    from ucrn.engine import load_training_data, resolve_device

    config, modalities_chosen = config_from_options(
        args.config, args.set, modalities=args.modalities, epochs=args.epochs, seed=args.seed)
    if out_dir.is_dir() and any(p.name != LOCK_FILE for p in out_dir.iterdir()) \
            and not args.overwrite:
        raise UcrnError(f"--out {out_dir} is not empty; choose another directory, --overwrite, "
                        "or --resume an interrupted run")
    resolve_device(args.device)
    check_directory(out_dir, "--out", create=False)  # before any work: no result is lost
    data_path = _data_path(args)
    config, dataset = load_training_data(config, data_path, modalities_chosen)
    return config, dataset, data_path, None


def _resumed_training(args: argparse.Namespace, out_dir: Path):
    """(config, dataset, data path, state) of the interrupted run in ``out_dir``."""

    from ucrn.config import apply_overrides
    from ucrn.engine import load_training_data, resolve_device
    from ucrn.state import TrainingState

    given = [f"--{name}" for name in ("data", "modalities", "seed", "set", "config")
             if getattr(args, name)]
    if given:
        raise UcrnError(f"--resume continues the run as it was started; drop {', '.join(given)}"
                        " (only --epochs and --device may change)")
    path = out_dir / RESUME_FILE
    if not path.is_file():
        raise UcrnError(f"--resume: {path} does not exist (ucrn train writes it after every "
                        "epoch and removes it when the run ends)")
    saved = load_tensors(path, "--resume:")
    try:
        state, data_path = TrainingState.from_dict(saved["state"]), Path(saved["data"])
    except (KeyError, TypeError, UcrnError) as error:
        raise UcrnError(f"--resume: {path} is not a resume point of ucrn train "
                        f"({' '.join(str(error).split())[:200]})") from None
    resolve_device(args.device)
    config = state.config
    if args.epochs is not None:
        config = apply_overrides(config, {"epochs": args.epochs})
    config, dataset = load_training_data(config, data_path, True)
    return config, dataset, data_path, state


def command_train(args: argparse.Namespace) -> None:
    if args.resume and not args.out:
        raise UcrnError("--resume needs --out: the run directory to continue")
    out_dir = Path(args.out or time.strftime("runs/train-%Y%m%d-%H%M%S"))
    from ucrn.engine import check_memory, resolve_device

    start = _resumed_training if args.resume else _new_training
    prepared = start(args, out_dir)  # every input checked; nothing written yet
    check_memory(prepared[0], prepared[1], resolve_device(args.device))
    with hold_folder(out_dir, "--out"):  # one run per folder: a second one is refused
        _train_in(args, out_dir, *prepared)


def _train_in(args: argparse.Namespace, out_dir: Path, config, dataset, data_path,
              state) -> None:
    from ucrn.engine import fit, save_run, select_metric

    metric = select_metric(config)
    console.print(
        f"{'resuming' if state else 'training'} UCRN on {data_path} · modalities "
        f"{'+'.join(MODALITY_NAMES[m] for m in config.model.modalities)} · task "
        f"{config.model.task} · selecting on valid {metric}"
    )
    progress = Progress(
        TextColumn("epoch"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"), console=console,
    )
    with progress:
        bar = progress.add_task("train", total=config.train.epochs,
                                completed=state.epoch if state else 0, status="")

        def on_epoch(result, checkpoint) -> None:
            _save_resume_point(out_dir, checkpoint(), data_path)
            star = " *" if result.improved else ""
            progress.update(
                bar, completed=result.epoch,
                status=f"loss {result.train_loss:.4f} · valid {metric} "
                f"{result.valid[metric]:.4f}{star} · best epoch {result.best_epoch}",
            )

        result = fit(config, dataset, on_epoch=on_epoch, device=args.device, resume=state)
    save_run(out_dir, result, extra={"data": str(data_path)})
    (out_dir / RESUME_FILE).unlink(missing_ok=True)
    stdout.print(metrics_table(
        f"UCRN · best epoch {result.best_epoch} of {result.epochs_run} · "
        f"{result.params:,} parameters",
        {"valid": result.valid, "test": result.test or {}},
    ))
    stdout.print(f"wrote {out_dir}/metrics.json, config.json, model.pt ({result.seconds:.1f} s)")


def _save_resume_point(out_dir: Path, state, data_path: Path) -> None:
    import torch

    from ucrn.files import atomic_write

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / RESUME_FILE, lambda path: torch.save(
        {"state": state.to_dict(), "data": str(data_path)}, path))


# -------------------------------------------------------------------------------- evaluate


def command_evaluate(args: argparse.Namespace) -> None:
    from ucrn.data.batches import bernoulli_noise, drop_modalities, mask_modalities
    from ucrn.data.layout import load_dataset
    from ucrn.engine import check_model_fits, evaluate, load_run

    config, model = load_run(args.checkpoint, device=args.device)
    used = parse_modalities(args.modalities) if args.modalities else config.model.modalities
    extra = [m for m in used if m not in config.model.modalities]
    if extra:
        raise UcrnError(
            f"--modalities {','.join(used)}: the model was built for "
            f"{','.join(config.model.modalities)} and cannot take {','.join(extra)}"
        )
    masked = parse_modalities(args.mask) if args.mask else ()
    not_used = [m for m in masked if m not in used]
    if not_used:
        raise UcrnError(f"--mask {','.join(masked)}: {','.join(not_used)} is not evaluated")
    noisy = parse_modalities(args.noise_modalities) if args.noise_modalities else used
    dataset = load_dataset(args.data, splits=[args.split], modalities=used)
    check_model_fits(config, dataset)

    split = drop_modalities(dataset.split(args.split), used)
    if masked:
        split = mask_modalities(split, masked, fill=model.input_means())
    if args.noise is not None:
        split = bernoulli_noise(split, args.noise, noisy, seed=args.noise_seed)
    metrics = evaluate(model, split, dataset, config, device=args.device)
    if args.json:
        print(json.dumps(metrics))
        return
    condition = "+".join(used) + (f", {','.join(masked)} masked" if masked else "") + (
        f", noise p={args.noise:g} on {','.join(noisy)}" if args.noise is not None else "")
    stdout.print(metrics_table(f"{args.checkpoint} on {args.data}", {
        f"{args.split} ({condition})": metrics}))


# ---------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ucrn", description="UCRN for multimodal sentiment analysis (EMNLP 2021)."
    )
    parser.add_argument("--version", action="version", version=f"ucrn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="make, convert and inspect data files")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    synth = data_commands.add_parser("synth", help="write a synthetic data set of real shapes")
    synth.add_argument("--preset", choices=("mosi", "mosei"), default="mosi")
    synth.add_argument("--scale", type=float, default=1.0, help="shrink every split (0, 1]")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--signal", action="append", metavar="M=STRENGTH",
                       help="how strongly a modality carries the sentiment (default 1; "
                       "a=0: audio is pure noise); e.g. --signal a=0,v=0.5")
    synth.add_argument("-o", "--output", required=True, help="the .h5 file to write")
    synth.add_argument("--force", action="store_true", help="replace an existing -o file")
    synth.set_defaults(run=command_synth)
    convert = data_commands.add_parser(
        "convert", help="convert MulT / MMSA pickles or CMU-SDK .csd files to our layout")
    formats = convert.add_subparsers(dest="format", required=True)
    for kind, what in (("mult-pkl", "MulT's mosi_data.pkl / mosei_senti_data.pkl"),
                       ("mmsa-pkl", "an MMSA pickle (aligned or unaligned)")):
        pickle_parser = formats.add_parser(kind, help=what)
        pickle_parser.add_argument("path", help="the pickle file")
    csd = formats.add_parser("csd", help="CMU-SDK computational sequences")
    csd.add_argument("--labels", required=True, help="the labels .csd")
    csd.add_argument("--features", nargs="+", required=True, metavar="M=FILE",
                     help="l=WORDS.csd a=COVAREP.csd v=FACET.csd (any subset)")
    csd.add_argument("--folds", help="a JSON file of train/valid/test video ids")
    csd.add_argument("--dataset", choices=("mosi", "mosei"),
                     help="use the standard folds shipped with ucrn")
    csd.add_argument("--seq-len", type=int, default=50)
    csd.add_argument("--align", default="l", choices=("l", "a", "v", "none"),
                     help="average the others over this modality's rows (default l); none "
                     "keeps each at its own rate")
    csd.add_argument("--allow-missing", action="store_true",
                     help="convert without videos that lack features (they are counted)")
    for sub in formats.choices.values():
        sub.add_argument("-o", "--output", required=True, help="the .h5 file to write")
        sub.add_argument("--force", action="store_true", help="replace an existing -o file")
        sub.add_argument("--name", help="data set name (default: the file's stem)")
        sub.set_defaults(run=command_convert)
    inspect = data_commands.add_parser(
        "inspect", help="check a file as training reads it; splits, shapes, label statistics "
        "and provenance")
    inspect.add_argument("file")
    inspect.set_defaults(run=command_inspect)

    train = commands.add_parser("train", help="train UCRN; select on valid, score test once")
    train.add_argument("--data", help="an .h5 data file (default: the embedded synthetic MOSI)")
    train.add_argument("--modalities", help="e.g. l,a,v (default) or l")
    train.add_argument("--epochs", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="any model or training setting, e.g. --set lambda_m=0.5 (repeatable)")
    train.add_argument("--config",
                       help="a config JSON (config.json of a run, best.json of a search)")
    train.add_argument("--out", help="run directory (default: runs/train-<time>)")
    train.add_argument("--overwrite", action="store_true", help="allow a non-empty --out")
    train.add_argument("--resume", action="store_true",
                       help="continue the interrupted run in --out from its last epoch")
    train.add_argument("--device", help="cpu, cuda, cuda:1 (default: a GPU when there is one)")
    train.set_defaults(run=command_train)

    evaluate = commands.add_parser("evaluate", help="score a trained model on a split")
    evaluate.add_argument("--checkpoint", required=True, help="a run directory of ucrn train")
    evaluate.add_argument("--data", required=True)
    evaluate.add_argument("--split", default="test", choices=("train", "valid", "test"))
    evaluate.add_argument("--modalities", help="evaluate on this subset (others are dropped)")
    evaluate.add_argument("--mask", help="blank these modalities (their train means: zero "
                          "after standardisation), e.g. a")
    evaluate.add_argument("--noise", type=float, metavar="P",
                          help="Bernoulli noise with probability P (see ucrn.data.batches)")
    evaluate.add_argument("--noise-modalities", help="where to add noise (default: all used)")
    evaluate.add_argument("--noise-seed", type=int, default=0)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--device")
    evaluate.set_defaults(run=command_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_status(lambda: args.run(args), "ucrn",
                       "nothing was finished (ucrn train --resume --out DIR continues a run)")


if __name__ == "__main__":
    sys.exit(main())
