"""UCRN: Unimodal and Crossmodal Refinement Network (Guo et al., EMNLP 2021, §3).

Data flows as in the paper's Figure 1: per modality a projection and a URM (eq. 2–6), the
multimodal Jensen–Shannon regulariser on the URM outputs (eq. 7–8, in ``ucrn.losses``),
SQIL (eq. 9), the CRM over the concatenated weighted representations (eq. 10–11) and two
fully connected layers to the output (eq. 12). Where the paper is silent, DESIGN.md says
what we chose: inputs standardised with train-split statistics, sinusoidal positions,
block-diagonal heads with no output projection other than FC1, SQIL shared across
modalities (its parameters θs carry no modality index), and one CRM token per present
modality, read by a learned fusion token, so that the same weights serve any subset.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ucrn import MODALITIES
from ucrn.config import ModelConfig
from ucrn.tasks import get_task


def sinusoidal_positions(length: int, width: int) -> torch.Tensor:
    """The fixed positional encoding of Vaswani et al. (2017), as MulT uses it."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)  # (T, 1)
    frequency = torch.exp(
        torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width)
    )
    table = torch.zeros(length, width)  # (T, d)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: width // 2])
    return table


def key_padding_mask(lengths: torch.Tensor | None, steps: int) -> torch.Tensor | None:
    """``True`` where a key may be attended: (B, 1, 1, T), or None when nothing is padded."""
    if lengths is None or bool((lengths >= steps).all()):
        return None
    valid = torch.arange(steps, device=lengths.device) < lengths.unsqueeze(1)  # (B, T)
    return valid[:, None, None, :]


class ByteDropout(nn.Module):
    """Inverted dropout; on the CPU its mask is made of random bytes, eight per 64-bit draw.

    PyTorch's CPU kernel draws one random number per element, which took 15 % of a training
    step of this small model; bytes make p a multiple of 1/256 (0.1 becomes 26/256).
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.threshold = min(255, round(p * 256))  # a byte below this drops its element

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        count = x.numel()
        draws = torch.randint(_INT64.min, _INT64.max, ((count + 7) // 8,), dtype=torch.int64)
        random_bytes = draws.view(torch.uint8)[:count].view(x.shape)
        keep_scale = 256.0 / (256 - self.threshold)
        return x * torch.where(random_bytes >= self.threshold, keep_scale, 0.0)


_INT64 = torch.iinfo(torch.int64)


class HeadSliceAttention(nn.Module):
    """Eq. (3): each head attends within its own slice of the width, plus a residual."""

    def __init__(self, width: int, heads: int, attention_dropout: float, dropout: float):
        super().__init__()
        self.heads, self.head_width = heads, width // heads
        scale = 1.0 / math.sqrt(self.head_width)
        # Block-diagonal query/key/value maps: head k only sees slice k (paper Fig. 1b).
        self.qkv_weight = nn.Parameter(
            torch.empty(heads, 3 * self.head_width, self.head_width).uniform_(-scale, scale)
        )
        self.qkv_bias = nn.Parameter(torch.zeros(3 * width))
        self.attention_dropout = attention_dropout
        # On the heads' output before the residual joins it (Vaswani et al.'s placement):
        # eq. (4) has no residual around FC1, so dropout after the join would hit the only
        # path through every layer (it kept deep, narrow or heavily regularised models from
        # training at all).
        self.dropout = ByteDropout(dropout)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, last: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, T, d) → (B, T, d); with ``last`` (B,) indices, only those steps: (B, 1, d)."""
        batch, steps, width = x.shape
        slices = x.view(batch, steps, self.heads, self.head_width).transpose(1, 2)  # (B,H,T,dh)
        # One GEMM with the block-diagonal matrix is faster than a batched matmul per head.
        weight = torch.block_diag(*self.qkv_weight.unbind(0))  # (3d, d)
        qkv = F.linear(x, weight, self.qkv_bias)  # (B, T, 3d)
        qkv = qkv.view(batch, steps, self.heads, 3 * self.head_width).transpose(1, 2)
        query, key, value = qkv.chunk(3, dim=-1)  # each (B, H, T, dh)
        if last is not None:  # only the pooled step is needed from the last layer (eq. 6)
            rows = torch.arange(batch, device=x.device)
            query = query[rows, :, last].unsqueeze(2)  # (B, H, 1, dh)
            slices = slices[rows, :, last].unsqueeze(2)  # (B, H, 1, dh)
        attended = F.scaled_dot_product_attention(
            query, key, value, attn_mask=mask,
            dropout_p=self.attention_dropout if self.training else 0.0,
        )  # (B, H, T or 1, dh)
        joined = self.dropout(attended) + slices
        return joined.transpose(1, 2).reshape(batch, joined.shape[2], width)  # ⊕ over heads


class RefinementLayer(nn.Module):
    """One multi-head transformer layer of the URM and the CRM: eq. (3), (4) and (5)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        width = config.width
        self.attention = HeadSliceAttention(
            width, config.heads, config.attention_dropout, config.dropout
        )
        self.fc1 = nn.Linear(width, width)
        # Eq. (4) has no residual around FC1: an orthogonal FC1 keeps the signal's scale
        # through a stack of layers (PyTorch's default init shrinks it about 3× per layer).
        nn.init.orthogonal_(self.fc1.weight)
        nn.init.zeros_(self.fc1.bias)
        self.norm = nn.LayerNorm(width)
        self.fc2 = nn.Linear(width, config.ffn_multiplier * width)
        self.fc3 = nn.Linear(config.ffn_multiplier * width, width)
        self.dropout = ByteDropout(config.dropout)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, last: torch.Tensor | None = None
    ) -> torch.Tensor:
        heads = self.attention(x, mask, last)  # eq. (3)  (B, T, d), or (B, 1, d) with last
        x_hat = self.fc1(heads)  # eq. (4)
        hidden = F.relu(self.fc2(self.norm(x_hat)))  # (B, T, ffn·d)
        return self.dropout(self.fc3(hidden)) + x_hat  # eq. (5)


class InputStandardisation(nn.Module):
    """x' = (x − mean) / scale with statistics of the train split, kept as buffers so that
    they travel with the weights (real features come on wildly different scales)."""

    def __init__(self, input_dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(input_dim))
        self.register_buffer("scale", torch.ones(input_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale  # (B, T, d_m)


class URM(nn.Module):
    """Eq. (2)–(6): project one modality to width d, refine it, keep the last valid step."""

    def __init__(self, input_dim: int, config: ModelConfig):
        super().__init__()
        self.width = config.width
        self.standardise = InputStandardisation(input_dim)
        self.projection = nn.Linear(input_dim, config.width)
        layer_count = config.urm_layers if config.use_urm else 0
        self.layers = nn.ModuleList(RefinementLayer(config) for _ in range(layer_count))
        self.dropout = ByteDropout(config.dropout)
        self._position_table = sinusoidal_positions(64, config.width)  # grown on demand

    def _positions(self, steps: int, device: torch.device) -> torch.Tensor:
        table = self._position_table
        if table.shape[0] < steps or table.device != device:
            table = sinusoidal_positions(max(steps, table.shape[0]), self.width).to(device)
            self._position_table = table
        return table[:steps]  # (T, d)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        if lengths is not None:  # padding after the batch's longest sequence changes nothing
            x = x[:, : max(1, int(lengths.max()))]
        batch, steps, _ = x.shape
        hidden = self.projection(self.standardise(x))  # eq. (2)  (B, T, d)
        if lengths is None:
            last = torch.full((batch,), steps - 1, device=x.device)  # (B,)
        else:
            last = (lengths.clamp(1, steps) - 1).to(torch.long)  # (B,) last valid step
        if not self.layers:
            return hidden[torch.arange(batch, device=x.device), last]  # (B, d)
        hidden = self.dropout(hidden + self._positions(steps, x.device))
        mask = key_padding_mask(lengths, steps)
        for layer in self.layers[:-1]:
            hidden = layer(hidden, mask)  # (B, T, d)
        # Eq. (6): the last time step; the last layer computes that step alone.
        return self.layers[-1](hidden, mask, last).squeeze(1)  # (B, d)


class SQIL(nn.Module):
    """Eq. (9): x^S = x^U ⊙ W_S with W_S = F_S(x^U), stacked; shared by all modalities."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        width = config.width
        count = config.sqil_layers if config.use_sqil else 0
        self.gates = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
            for _ in range(count)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for gate in self.gates:
            x = x * torch.sigmoid(gate(x))  # (…, d)
        return x


class CRM(nn.Module):
    """Eq. (10)–(11): a multi-head transformer over the concatenated weighted modalities."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        layer_count = config.crm_layers if config.use_crm else 0
        self.layers = nn.ModuleList(RefinementLayer(config) for _ in range(layer_count))
        if self.layers:
            # One learned embedding per modality tells the tokens apart, whichever are present.
            self.modality_embedding = nn.Parameter(torch.zeros(len(MODALITIES), config.width))
            # A learned fusion token reads the modalities through attention, and its final
            # state is x^C_j. (A mean over the modality tokens gave a noisy modality a fixed
            # share of x^C_j, so that fusing it could only hurt.)
            self.fusion_token = nn.Parameter(0.02 * torch.randn(config.width))

    def forward(self, tokens: torch.Tensor, modality_index: torch.Tensor) -> torch.Tensor:
        if not self.layers:
            return tokens.mean(dim=1)  # ablation "without CRM": mean of tokens  (B, d)
        x = tokens + self.modality_embedding[modality_index]  # (B, M, d)
        x = torch.cat([self.fusion_token.expand(len(x), 1, -1), x], dim=1)  # (B, 1 + M, d)
        for layer in self.layers[:-1]:
            x = layer(x, None)
        first = torch.zeros(len(x), dtype=torch.long, device=x.device)
        return self.layers[-1](x, None, first).squeeze(1)  # the fusion token alone  (B, d)


class UCRNOutput(NamedTuple):
    prediction: torch.Tensor  # (B,) regression score, or (B, K) logits
    unimodal: dict[str, torch.Tensor]  # x^U_m per present modality, (B, d), for L_M


class UCRN(nn.Module):
    """The whole network; accepts any non-empty subset of its modalities at any time."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.urms = nn.ModuleDict({m: URM(config.input_dims[m], config) for m in config.modalities})
        self.sqil = SQIL(config)
        self.crm = CRM(config)
        width = config.width
        self.head = nn.Sequential(  # the two fully connected layers F_fc of eq. (12)
            nn.Linear(width, width), nn.ReLU(), ByteDropout(config.dropout),
            nn.Linear(width, get_task(config.task).output_size),
        )

    def set_input_statistics(
        self, statistics: dict[str, tuple[torch.Tensor, torch.Tensor]]
    ) -> None:
        """Standardise each modality's inputs with (mean, scale) of the train split."""
        for modality, urm in self.urms.items():
            mean, scale = statistics[modality]
            urm.standardise.mean.copy_(mean)
            urm.standardise.scale.copy_(scale)

    def input_means(self) -> dict[str, torch.Tensor]:
        """The train means of the inputs (d_m,): what a masked modality is filled with."""
        return {m: urm.standardise.mean.detach().cpu() for m, urm in self.urms.items()}

    def forward(
        self,
        features: dict[str, torch.Tensor],
        lengths: dict[str, torch.Tensor | None] | None = None,
    ) -> UCRNOutput:
        present = [m for m in self.config.modalities if m in features]
        if not present or len(present) != len(features):
            raise ValueError(
                f"model takes a non-empty subset of {self.config.modalities}, got {list(features)}"
            )
        lengths = lengths or {}
        unimodal = {m: self.urms[m](features[m], lengths.get(m)) for m in present}  # x^U_m
        tokens = self.sqil(torch.stack([unimodal[m] for m in present], dim=1))  # (B, M, d)
        index = torch.tensor([MODALITIES.index(m) for m in present], device=tokens.device)
        fused = self.crm(tokens, index)  # x^C_j  (B, d)
        prediction = self.head(fused)  # (B, K)
        if get_task(self.config.task).scalar_output:
            prediction = prediction.squeeze(-1)  # (B,)
        return UCRNOutput(prediction, unimodal)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, the way the paper's Table 7 counts them."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
