"""The embedded default data: synthetic CMU-MOSI / CMU-MOSEI of the real shapes.

Each sample has a sentiment s in [-3, 3] on a 1/3 grid. Each modality m sees its own noisy
view of it, v_m = s + σ_m·ε_m, with σ_m smallest for language and largest for vision, so
that language is the strongest single predictor and fusing all three beats any one of them.
In a fraction of samples one modality contradicts the others (v_m = -s/2 + noise; sarcasm,
a forced smile), which only the other modalities can correct.

A view is planted at 1–3 random valid time steps of the sequence (signal at varying steps,
with per-step noise), along a fixed direction of a few informative feature dimensions plus
a marker; everything else is nuisance: random word vectors for language, AR(1) processes
with a per-sample offset (speaker identity) for audio and vision, and high-variance
dimensions that carry no signal. Sequences have random valid lengths (padding at the end).
MOSEI's six emotions are intensities driven partly by s and partly by their own signal in
audio and vision. Everything follows from ``seed``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ucrn.config import MAX_SEED
from ucrn.data.layout import SENTIMENT, SPLITS, create_dataset_file
from ucrn.errors import UcrnError
from ucrn.metrics import EMOTIONS


@dataclass(frozen=True)
class Preset:
    name: str
    counts: tuple[int, int, int]  # train, valid, test
    steps: int
    dims: dict[str, int]
    emotions: bool


PRESETS = {
    "mosi": Preset("mosi", (1284, 229, 686), 50, {"l": 300, "a": 5, "v": 20}, emotions=False),
    "mosei": Preset(
        "mosei", (16326, 1871, 4659), 50, {"l": 300, "a": 74, "v": 35}, emotions=True
    ),
}

GENERATOR_VERSION = 1  # bump when the data change, so that cached default files are remade
VIEW_NOISE = {"l": 2.0, "a": 2.6, "v": 3.2}  # σ_m: language strongest, vision weakest
INFORMATIVE_DIMS = {"l": 300, "a": 2, "v": 4}  # dimensions along which the view is planted
PLANT_GAIN = {"l": 1.5, "a": 1.5, "v": 1.5}
CONFLICT_RATE = 0.15  # samples in which one modality contradicts the others
CONFLICT_WEIGHTS = {"l": 0.5, "a": 0.25, "v": 0.25}  # which modality contradicts
STEP_NOISE = 0.5  # noise of the view at each planted step
VOCABULARY = 2000
CHUNK = 2048
# Emotion intensity = relu(slope·s + bias + N(0, 1)); prevalence near MOSEI's.
EMOTION_SLOPE = {"happy": 0.6, "sad": -0.5, "anger": -0.45, "surprise": 0.1, "disgust": -0.45,
                 "fear": -0.1}
EMOTION_BIAS = {"happy": 0.0, "sad": -0.7, "anger": -0.9, "surprise": -1.3, "disgust": -0.9,
                "fear": -1.4}


@dataclass
class _World:
    """What every split shares: directions, markers, vocabulary."""

    vocabulary: np.ndarray  # (V, d_l)
    direction: dict[str, np.ndarray]  # modality → (d_m,) unit vector on informative dims
    marker: dict[str, np.ndarray]  # modality → (d_m,) what a planted step looks like
    nuisance_scale: dict[str, np.ndarray]  # modality → (d_m,) per-dimension noise scale
    emotion_direction: dict[str, np.ndarray]  # modality → (6, d_m)


def _make_world(preset: Preset, rng: np.random.Generator) -> _World:
    direction, marker, scale, emotion_direction = {}, {}, {}, {}
    for modality, dim in preset.dims.items():
        informative = min(INFORMATIVE_DIMS[modality], dim)
        vector = np.zeros(dim)
        vector[:informative] = rng.normal(size=informative)
        direction[modality] = vector / np.linalg.norm(vector)
        marker_vector = rng.normal(size=dim)
        marker_vector -= marker_vector @ direction[modality] * direction[modality]
        marker[modality] = marker_vector / np.linalg.norm(marker_vector)
        # Nuisance dimensions (those after the informative ones) get more variance.
        scale[modality] = np.where(np.arange(dim) < informative, 1.0, 2.0)
        emotion_direction[modality] = rng.normal(size=(len(EMOTIONS), dim)) / np.sqrt(dim)
    vocabulary = rng.normal(0.0, 0.35, size=(VOCABULARY, preset.dims["l"]))
    scale["l"] = np.ones(preset.dims["l"])
    return _World(vocabulary, direction, marker, scale, emotion_direction)


def _sentiments(count: int, rng: np.random.Generator) -> np.ndarray:
    """Bimodal like MOSI's labels, clipped to [-3, 3], on a 1/3 grid (so some are 0)."""
    sign = np.where(rng.random(count) < 0.45, -1.0, 1.0)
    scores = sign * np.abs(rng.normal(1.3, 0.9, size=count))
    scores = np.round(np.clip(scores, -3, 3) * 3) / 3
    neutral = rng.random(count) < 0.05
    scores[neutral] = 0.0
    return scores


def _views(sentiment: np.ndarray, modalities: list[str], rng: np.random.Generator) -> dict:
    count = len(sentiment)
    views = {m: sentiment + VIEW_NOISE[m] * rng.normal(size=count) for m in modalities}
    conflicted = rng.random(count) < CONFLICT_RATE
    weights = np.array([CONFLICT_WEIGHTS[m] for m in modalities])
    who = rng.choice(len(modalities), size=count, p=weights / weights.sum())
    for index, modality in enumerate(modalities):
        flip = conflicted & (who == index)
        views[modality][flip] = -0.5 * sentiment[flip] + rng.normal(size=int(flip.sum()))
    return views


def _planted_steps(lengths: np.ndarray, steps: int, rng: np.random.Generator) -> np.ndarray:
    """(N, T) bool: 1–3 random valid steps per sample (varying positions)."""
    count = len(lengths)
    keys = rng.random((count, steps))
    keys[np.arange(steps)[None, :] >= lengths[:, None]] = np.inf
    rank = np.argsort(np.argsort(keys, axis=1), axis=1)
    how_many = rng.integers(1, 4, size=count)
    return rank < how_many[:, None]


def _ar1(count: int, steps: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    noise = rng.normal(size=(count, steps, dim))
    series = np.empty_like(noise)
    series[:, 0] = noise[:, 0]
    for t in range(1, steps):
        series[:, t] = 0.8 * series[:, t - 1] + 0.6 * noise[:, t]  # stationary, unit variance
    return series


def _emotions(sentiment: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 6) latent emotion scores (before the relu and the grid)."""
    slope = np.array([EMOTION_SLOPE[e] for e in EMOTIONS])
    bias = np.array([EMOTION_BIAS[e] for e in EMOTIONS])
    return sentiment[:, None] * slope + bias + rng.normal(size=(len(sentiment), len(EMOTIONS)))


def _features(
    modality: str,
    view: np.ndarray,
    emotion: np.ndarray | None,
    planted: np.ndarray,
    valid: np.ndarray,
    world: _World,
    rng: np.random.Generator,
    strength: float = 1.0,
) -> np.ndarray:
    count, steps = planted.shape
    dim = len(world.direction[modality])
    if modality == "l":
        words = rng.integers(0, VOCABULARY, size=(count, steps))
        x = world.vocabulary[words]  # (N, T, d)
    else:
        offset = rng.normal(0.0, 0.5, size=(count, 1, dim))  # speaker identity
        x = (_ar1(count, steps, dim, rng) + offset) * world.nuisance_scale[modality]
    step_view = view[:, None] + STEP_NOISE * rng.normal(size=(count, steps))  # (N, T)
    amplitude = strength * PLANT_GAIN[modality] * step_view * planted  # (N, T)
    x += amplitude[..., None] * world.direction[modality]
    x += 3.0 * planted[..., None] * world.marker[modality]
    if emotion is not None and modality != "l":
        intensity = np.maximum(emotion, 0.0)  # (N, 6)
        emotion_view = strength * intensity @ world.emotion_direction[modality]  # (N, d)
        x += planted[..., None] * emotion_view[:, None, :]
    return (x * valid[..., None]).astype(np.float32)


def synthesize(
    preset_name: str, path: str | Path, *, scale: float = 1.0, seed: int = 0,
    signal: dict[str, float] | None = None,
) -> Path:
    """Write the synthetic data set of ``preset_name`` to ``path`` (in chunks; atomic).

    ``signal`` scales how strongly each modality's view is planted (1 by default; 0 leaves
    the modality pure noise: same shapes, nuisance and markers, no sentiment or emotion).
    """
    if preset_name not in PRESETS:
        raise UcrnError(f"unknown preset {preset_name!r}; choose one of {', '.join(PRESETS)}")
    if not 0 < scale <= 1:
        raise UcrnError(f"--scale {scale}: must be in (0, 1]")
    if not 0 <= seed <= MAX_SEED:
        raise UcrnError(f"--seed {seed}: give a whole number from 0 to {MAX_SEED:,}")
    preset = PRESETS[preset_name]
    signal = {m: 1.0 for m in preset.dims} | (signal or {})
    wrong = {m: g for m, g in signal.items() if m not in preset.dims or not 0 <= g < 1e6}
    if wrong:
        raise UcrnError(f"--signal {wrong}: give modality=strength for l, a, v, strength ≥ 0")
    counts = [max(2, round(n * scale)) for n in preset.counts]
    modalities = list(preset.dims)
    label_names = [SENTIMENT, *EMOTIONS] if preset.emotions else [SENTIMENT]
    root = np.random.SeedSequence(seed)
    world_seed, *split_seeds = root.spawn(1 + len(SPLITS))
    world = _make_world(preset, np.random.default_rng(world_seed))

    with create_dataset_file(
        path, name=f"synthetic-{preset.name}", task="regression", modalities=modalities,
        label_names=label_names, source="synthetic",
        extra_attrs={"preset": preset.name, "scale": scale, "seed": seed, "signal": signal,
                     "generator_version": GENERATOR_VERSION},
    ) as writer:
        for split, count, split_seed in zip(SPLITS, counts, split_seeds, strict=True):
            rng = np.random.default_rng(split_seed)
            shapes = {m: (preset.steps, d) for m, d in preset.dims.items()}
            writer.create_split(split, count, shapes, len(label_names), with_lengths=True)
            for start in range(0, count, CHUNK):
                size = min(CHUNK, count - start)
                writer.write(split, start, _chunk(preset, world, signal, size, start, split,
                                                   rng))
    return Path(path)


def _chunk(
    preset: Preset, world: _World, signal: dict[str, float], size: int, start: int, split: str,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """``size`` samples of ``split``, numbered from ``start``, as arrays of our layout."""
    modalities = list(preset.dims)
    steps = preset.steps
    sentiment = _sentiments(size, rng)
    views = _views(sentiment, modalities, rng)
    emotion = _emotions(sentiment, rng) if preset.emotions else None
    lengths = rng.integers(steps // 5, steps + 1, size=size)
    valid = np.arange(steps)[None, :] < lengths[:, None]  # (N, T)
    planted = _planted_steps(lengths, steps, rng)
    arrays: dict[str, np.ndarray] = {}
    for modality in modalities:
        arrays[modality] = _features(
            modality, views[modality], emotion, planted, valid, world, rng, signal[modality]
        )
        arrays[f"{modality}_len"] = lengths.astype(np.int32)
    if emotion is None:
        arrays["labels"] = sentiment.astype(np.float32)  # (N,)
    else:
        intensity = np.clip(np.round(np.maximum(emotion, 0.0) * 3) / 3, 0, 3)  # (N, 6)
        arrays["labels"] = np.concatenate([sentiment[:, None], intensity], 1).astype(np.float32)
    arrays["ids"] = np.array(
        [f"{split}_{start + i:06d}[1]" for i in range(size)], dtype=object
    )
    return arrays


def default_data_path(preset_name: str = "mosi", seed: int = 0) -> Path:
    """Where the embedded default data lives: ``$UCRN_DATA_DIR`` or ``~/.cache/ucrn``."""
    root = Path(os.environ.get("UCRN_DATA_DIR", Path.home() / ".cache" / "ucrn"))
    return root / f"synthetic-{preset_name}-seed{seed}-v{GENERATOR_VERSION}.h5"


def data_or_default(data: str | Path | None) -> Path:
    """The data file a command was given, else the embedded synthetic MOSI (made once)."""
    return Path(data) if data else ensure_default_data()


def ensure_default_data(preset_name: str = "mosi", seed: int = 0) -> Path:
    """The embedded default data set, made on first use and reused afterwards."""
    path = default_data_path(preset_name, seed)
    if not path.exists():
        synthesize(preset_name, path, seed=seed)
    return path
