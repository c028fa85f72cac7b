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


def key_padding_mask(lengths: torch.Tensor, steps: int, always: bool = False
                     ) -> torch.Tensor | None:
    """What attention adds to its scores: 0 where a key may be attended and −∞ after each
    sequence's end, (B, 1, 1, T); made once for all layers (each attention call would turn
    a boolean mask into it again). None when nothing is padded (unless ``always``: finding
    that out waits for the device)."""
    if not always and bool((lengths >= steps).all()):
        return None
    padded = torch.arange(steps, device=lengths.device) >= lengths.unsqueeze(1)  # (B, T)
    scores = torch.zeros(padded.shape, device=lengths.device).masked_fill_(padded, -math.inf)
    return scores[:, None, None, :]


class ByteDropout(nn.Module):
    """Inverted dropout; on the CPU its mask is made of random bytes, eight per 64-bit draw.

    PyTorch's CPU kernel draws one random number per element, which took 15 % of a training
    step of this small model; bytes make p a multiple of 1/256 (0.1 becomes 26/256).
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.threshold = min(255, round(p * 256))  # a byte below this drops its element
        self.kept = torch.tensor(256.0 / (256 - self.threshold))  # what a kept element is
        self.dropped = torch.tensor(0.0)  # scaled by (tensors: no scalar made per call)
        self.native = False  # the device's own dropout, as on a GPU (for the static step)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu" or self.native:  # the fused kernel F.dropout takes on a GPU
            return torch.native_dropout(x, self.p, True)[0]
        if self.threshold == 0:
            return x
        count = x.numel()
        draws = torch.randint(_INT64.min, _INT64.max, ((count + 7) // 8,), dtype=torch.int64)
        random_bytes = draws.view(torch.uint8)[:count].view(x.shape)
        return x * torch.where(random_bytes >= self.threshold, self.kept, self.dropped)


_INT64 = torch.iinfo(torch.int64)


def stacked(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The same parameter of G modules as one (G, …) tensor; a view when G is 1, or when
    the G are the slices of one (``stacked_in``, as ``ucrn.flat`` lays stacks out), and one
    concatenation when they are the slices of several in a row."""
    wholes, at = [], 0
    while at < len(tensors):
        whole = getattr(tensors[at], "stacked_in", None)
        if whole is None or at + len(whole) > len(tensors) or not all(
                getattr(t, "stacked_in", None) is whole and t.stacked_index == i
                for i, t in enumerate(tensors[at:at + len(whole)])):
            break
        wholes.append(whole)
        at += len(whole)
    if at == len(tensors):
        return wholes[0] if len(wholes) == 1 else torch.cat(wholes)
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)


def block_diagonal(blocks: torch.Tensor, eye: torch.Tensor) -> torch.Tensor:
    """(G, H, r, c) blocks → (G, H·r, H·c) block-diagonal matrices, with ``eye`` the H × H
    identity: one product, whose gradient comes back in the blocks' own layout."""
    groups, heads, rows, columns = blocks.shape
    matrix = blocks.unsqueeze(3) * eye.view(1, heads, 1, heads, 1)  # (G, H, r, H, c)
    return matrix.view(groups, heads * rows, heads * columns)


class _StackedLinear(torch.autograd.Function):
    """x Wᵀ + b for G stacked layers, as batched matrix products whose weight gradient
    comes back as (G, out, in) like the weight (autograd's would be its transpose, which
    costs a copy per layer where the gradients are gathered)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return torch.baddbmm(bias, x, weight.transpose(1, 2))  # (G, N, out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad.bmm(weight) if ctx.needs_input_grad[0] else None  # (G, N, in)
        grad_weight = grad.transpose(1, 2).bmm(x) if ctx.needs_input_grad[1] else None
        grad_bias = grad.sum(1, keepdim=True) if ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


def stacked_linear(layers: list[nn.Linear], x: torch.Tensor) -> torch.Tensor:
    """Each of G linear layers on its own slice of x: (G, N, in) → (G, N, out), one GEMM."""
    weight = stacked([layer.weight for layer in layers])  # (G, out, in)
    bias = stacked([layer.bias for layer in layers]).unsqueeze(1)  # (G, 1, out)
    return _StackedLinear.apply(x, weight, bias)


def stacked_layer_norm(norms: list[nn.LayerNorm], x: torch.Tensor) -> torch.Tensor:
    """Each of G layer norms on its own slice of x: (G, N, d) → (G, N, d)."""
    first = norms[0]
    if len(norms) == 1:
        return F.layer_norm(x, first.normalized_shape, first.weight, first.bias, first.eps)
    weight = stacked([norm.weight for norm in norms]).unsqueeze(1)  # (G, 1, d)
    bias = stacked([norm.bias for norm in norms]).unsqueeze(1)  # (G, 1, d)
    return torch.addcmul(bias, F.layer_norm(x, first.normalized_shape, eps=first.eps), weight)


# The CPU's fused attention kernel is fastest at heads 16 wide: the paper's heads of 10,
# padded to 16, take 2.3 ms instead of 3.0 forward and backward at its batch, and the main
# job 9 % less time (benchmarks/train_speed.py, README "Speed").
CPU_ATTENTION_WIDTH = 16


def scaled_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     mask: torch.Tensor | None, dropout: float, padded_width: int = 0
                     ) -> torch.Tensor:
    """softmax(QKᵀ/√dh + mask)·V per head (eq. 3); a head narrower than ``padded_width`` is
    zero-padded to it for the kernel, with the same scores and values."""
    head_width = query.shape[-1]
    if head_width >= padded_width:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask,
                                              dropout_p=dropout)
    pad = (0, padded_width - head_width)
    attended = F.scaled_dot_product_attention(
        F.pad(query, pad), F.pad(key, pad), F.pad(value, pad), attn_mask=mask,
        dropout_p=dropout, scale=1.0 / math.sqrt(head_width))
    return attended[..., :head_width]


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
        self.register_buffer("head_eye", torch.eye(heads), persistent=False)  # H × H
        # On the heads' output before the residual joins it (Vaswani et al.'s placement):
        # eq. (4) has no residual around FC1, so dropout after the join would hit the only
        # path through every layer (it kept deep, narrow or heavily regularised models from
        # training at all).
        self.dropout = ByteDropout(dropout)
        self.native = False  # attention at the head's own width, as on a GPU (static step)

    @staticmethod
    def together(
        modules: list[HeadSliceAttention], x: torch.Tensor, mask: torch.Tensor | None,
        last: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """G modules, each on its own slice of x: (G, B, T, d) → (G, B, T, d); with ``last``
        (G·B,) indices, only those steps: (G, B, 1, d)."""
        first = modules[0]
        groups, batch, steps, width = x.shape
        heads, head_width = first.heads, first.head_width
        # One GEMM with the block-diagonal matrix is faster than a batched matmul per head.
        weight = block_diagonal(stacked([m.qkv_weight for m in modules]),
                                first.head_eye)  # (G, 3d, d)
        bias = stacked([m.qkv_bias for m in modules]).unsqueeze(1)  # (G, 1, 3d)
        qkv = torch.baddbmm(bias, x.view(groups, batch * steps, width), weight.transpose(1, 2))
        qkv = qkv.view(groups * batch, steps, heads, 3 * head_width).transpose(1, 2)
        query, key, value = qkv.chunk(3, dim=-1)  # each (G·B, H, T, dh)
        slices = x.view(groups * batch, steps, heads, head_width).transpose(1, 2)
        if last is not None:  # only the pooled step is needed from the last layer (eq. 6)
            rows = torch.arange(groups * batch, device=x.device)
            query = query[rows, :, last].unsqueeze(2)  # (G·B, H, 1, dh)
            slices = slices[rows, :, last].unsqueeze(2)  # (G·B, H, 1, dh)
        padded = CPU_ATTENTION_WIDTH if x.device.type == "cpu" and not first.native else 0
        attended = scaled_attention(query, key, value, mask,
                                    first.attention_dropout if first.training else 0.0,
                                    padded)  # (G·B, H, T or 1, dh)
        joined = first.dropout(attended) + slices
        return joined.transpose(1, 2).reshape(groups, batch, joined.shape[2], width)  # ⊕ heads


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
        """(B, T, d) → (B, T, d); with ``last`` (B,) indices, only those steps: (B, 1, d)."""
        return RefinementLayer.together([self], x.unsqueeze(0), mask, last).squeeze(0)

    @staticmethod
    def together(
        layers: list[RefinementLayer], x: torch.Tensor, mask: torch.Tensor | None,
        last: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """G layers, each on its own slice of x, as one computation of a third of the
        operations for three: (G, B, T, d) → (G, B, T, d), or (G, B, 1, d) with ``last``."""
        groups, batch = x.shape[:2]
        heads = HeadSliceAttention.together([layer.attention for layer in layers], x, mask,
                                            last)  # eq. (3)  (G, B, T or 1, d)
        steps = heads.shape[2]
        heads = heads.view(groups, batch * steps, -1)  # (G, N, d)
        x_hat = stacked_linear([layer.fc1 for layer in layers], heads)  # eq. (4)
        normed = stacked_layer_norm([layer.norm for layer in layers], x_hat)
        hidden = F.relu(stacked_linear([layer.fc2 for layer in layers], normed))  # (G, N, ffn·d)
        out = layers[0].dropout(stacked_linear([layer.fc3 for layer in layers], hidden)) + x_hat
        return out.view(groups, batch, steps, -1)  # eq. (5)


class InputStandardisation(nn.Module):
    """x' = (x − mean) / scale with statistics of the train split, kept as buffers so that
    they travel with the weights (real features come on wildly different scales)."""

    def __init__(self, input_dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(input_dim))
        self.register_buffer("scale", torch.ones(input_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale  # (B, T, d_m)


LONG_STEPS = 256  # longer batches run a URM in two halves on the CPU (measured there)


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
        """(B, T, d_m) → x^U_m (B, d)."""
        return URM.together([self], [x], [lengths])[0]

    @staticmethod
    def together(
        urms: list[URM], inputs: list[torch.Tensor], lengths: list[torch.Tensor | None],
        halve_long: bool = True, static: bool = False,
    ) -> list[torch.Tensor]:
        """The URMs of modalities stored with the same number of steps, as one stacked
        computation (the same result as one by one, with a third of the operations for
        three): x^U_m (B, d) for each. ``static``: the shapes depend on the stored steps
        alone and nothing waits for the device (the same result; for a GPU)."""
        batch, device = len(inputs[0]), inputs[0].device
        full = torch.full((batch,), inputs[0].shape[1], device=device)
        valid = torch.stack([full if n is None else n.long() for n in lengths])  # (G, B)
        # Padding after the group's longest sequence changes nothing: cut it (reading the
        # longest waits for the device, so the static path keeps every stored step).
        steps = inputs[0].shape[1] if static else max(1, int(valid.max()))
        if (halve_long and not static and device.type == "cpu" and steps > LONG_STEPS
                and batch > 1):
            # Long sequences run as two halves sorted by length, each cut to its own longest:
            # the short half skips most of its padding, and attention costs T². Exact, as no
            # sample sees another; on the CPU only, where the work outweighs the extra calls.
            order = valid.max(dim=0).values.argsort()  # (B,) shortest first
            halves = [URM.together(urms, [x[rows] for x in inputs], list(valid[:, rows]),
                                   halve_long=False)
                      for rows in order.tensor_split(2)]
            restore = order.argsort()
            return [torch.cat(parts)[restore] for parts in zip(*halves, strict=True)]
        hidden = URM._projected(urms, [x[:, :steps] for x in inputs])  # eq. (2)  (G, B, T, d)
        last = (valid.clamp(1, steps) - 1).to(torch.long)  # (G, B) last valid step
        first = urms[0]
        if not first.layers:
            rows = torch.arange(batch, device=device)
            return [h[rows, n] for h, n in zip(hidden, last, strict=True)]  # (B, d) each
        hidden = first.dropout(hidden + first._positions(steps, device))
        mask = key_padding_mask(valid.flatten(), steps, always=static)  # (G·B, 1, 1, T)
        for depth in range(len(first.layers) - 1):
            hidden = RefinementLayer.together([urm.layers[depth] for urm in urms], hidden, mask)
        # Eq. (6): the last time step; the last layer computes that step alone.
        pooled = RefinementLayer.together([urm.layers[-1] for urm in urms], hidden, mask,
                                          last.flatten())  # (G, B, 1, d)
        return list(pooled.squeeze(2).unbind(0))


    @staticmethod
    def _projected(urms: list[URM], inputs: list[torch.Tensor]) -> torch.Tensor:
        """Eq. (2) for each URM on its input: (G, B, T, d). URMs of one input size in a row
        (one modality of several models) run as one stacked map."""
        runs: list[list[int]] = []
        for i, urm in enumerate(urms):
            if runs and urms[runs[-1][0]].projection.weight.shape == urm.projection.weight.shape:
                runs[-1].append(i)
            else:
                runs.append([i])
        parts = []
        for run in runs:
            group = [urms[i] for i in run]
            if len(run) == 1:
                parts.append(group[0].projection(group[0].standardise(inputs[run[0]]))[None])
                continue
            x = torch.stack([inputs[i] for i in run])  # (G, B, T, d_m)
            mean = torch.stack([urm.standardise.mean for urm in group])[:, None, None]
            scale = torch.stack([urm.standardise.scale for urm in group])[:, None, None]
            groups, batch, steps, _ = x.shape
            flat = ((x - mean) / scale).view(groups, batch * steps, -1)
            parts.append(stacked_linear([urm.projection for urm in group], flat)
                         .view(groups, batch, steps, -1))
        return parts[0] if len(parts) == 1 else torch.cat(parts)


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

    @staticmethod
    def together(sqils: list[SQIL], x: torch.Tensor) -> torch.Tensor:
        """G SQILs, each on its own slice of x: (G, N, d) → (G, N, d)."""
        for depth in range(len(sqils[0].gates)):
            gates = [sqil.gates[depth] for sqil in sqils]
            hidden = F.relu(stacked_linear([gate[0] for gate in gates], x))
            x = x * torch.sigmoid(stacked_linear([gate[2] for gate in gates], hidden))
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

    @staticmethod
    def together(crms: list[CRM], tokens: torch.Tensor, modality_index: torch.Tensor
                 ) -> torch.Tensor:
        """G CRMs, each on its own slice of tokens: (G, B, M, d) → x^C (G, B, d)."""
        first = crms[0]
        if not first.layers:
            return tokens.mean(dim=2)
        groups, batch = tokens.shape[:2]
        embedding = stacked([crm.modality_embedding for crm in crms])[:, modality_index]
        x = tokens + embedding[:, None]  # (G, B, M, d)
        fusion = stacked([crm.fusion_token for crm in crms])[:, None, None]  # (G, 1, 1, d)
        x = torch.cat([fusion.expand(groups, batch, 1, -1), x], dim=2)  # (G, B, 1 + M, d)
        for depth in range(len(first.layers) - 1):
            x = RefinementLayer.together([crm.layers[depth] for crm in crms], x, None)
        pooled = torch.zeros(groups * batch, dtype=torch.long, device=x.device)
        return RefinementLayer.together([crm.layers[-1] for crm in crms], x, None,
                                        pooled).squeeze(2)  # the fusion tokens  (G, B, d)


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
        self.static_shapes = False
        self._modality_index: dict[tuple, torch.Tensor] = {}  # present modalities → index

    @property
    def static_shapes(self) -> bool:
        """Fixed shapes and no waits for the device in every step, with the device's own
        dropout kernel and attention at the heads' own width, as a GPU runs it
        (``ucrn.engine`` sets it from the config's ``static_shapes``); the same results
        either way, dropout's random draws and float rounding aside."""
        return self._static_shapes

    @static_shapes.setter
    def static_shapes(self, static: bool) -> None:
        self._static_shapes = static
        for module in self.modules():
            if isinstance(module, ByteDropout | HeadSliceAttention):
                module.native = static

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

    @staticmethod
    def urm_groups(features: dict[str, torch.Tensor], present: list[str]) -> list[list[str]]:
        """The present modalities by stored steps: each group's URMs run as one stacked
        computation (one group holding them all in aligned data)."""
        by_steps: dict[int, list[str]] = {}
        for modality in present:
            by_steps.setdefault(features[modality].shape[1], []).append(modality)
        return list(by_steps.values())

    def parameter_stacks(self) -> list[list[nn.Module]]:
        """The modules whose parameters ``URM.together`` stacks when every modality's URM
        runs in one group: the URMs' layers of each depth."""
        urms = list(self.urms.values())
        return [[urm.layers[depth] for urm in urms] for depth in range(len(urms[0].layers))]

    def runs_stacks_together(self, features: dict[str, torch.Tensor]) -> bool:
        """Whether ``features`` run every modality's URM in one group."""
        groups = self.urm_groups(features, [m for m in self.urms if m in features])
        return len(groups) == 1 and len(groups[0]) == len(self.urms)

    def refine_unimodal(
        self, features: dict[str, torch.Tensor], lengths: dict[str, torch.Tensor | None],
        present: list[str],
    ) -> dict[str, torch.Tensor]:
        """x^U_m for each present modality; modalities stored with the same number of steps
        (all of them in aligned data) run their URMs as one stacked computation."""
        unimodal: dict[str, torch.Tensor] = {}
        for group in self.urm_groups(features, present):
            outputs = URM.together([self.urms[m] for m in group], [features[m] for m in group],
                                   [lengths.get(m) for m in group], static=self.static_shapes)
            unimodal.update(zip(group, outputs, strict=True))
        return {m: unimodal[m] for m in present}

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
        unimodal = self.refine_unimodal(features, lengths, present)  # x^U_m
        tokens = self.sqil(torch.stack([unimodal[m] for m in present], dim=1))  # (B, M, d)
        fused = self.crm(tokens, self.modality_index(present, tokens.device))  # x^C_j  (B, d)
        prediction = self.head(fused)  # (B, K)
        if get_task(self.config.task).scalar_output:
            prediction = prediction.squeeze(-1)  # (B,)
        return UCRNOutput(prediction, unimodal)


    @staticmethod
    def together(
        models: list[UCRN], features: dict[str, torch.Tensor],
        lengths: dict[str, torch.Tensor | None],
    ) -> UCRNOutput:
        """G models of one architecture, each on its own batch, as one stacked computation
        (``ucrn.stack``): ``features`` (G, B, T, d_m) and ``lengths`` (G, B) per modality →
        predictions (G, B) or (G, B, K) and x^U_m (G, B, d)."""
        first = models[0]
        present = [m for m in first.config.modalities if m in features]
        count = len(models)
        unimodal: dict[str, torch.Tensor] = {}
        for group in first.urm_groups({m: features[m][0] for m in present}, present):
            urms = [model.urms[m] for m in group for model in models]  # modality by modality
            inputs = [x for m in group for x in features[m].unbind(0)]
            steps = [n for m in group for n in (
                [None] * count if lengths.get(m) is None else lengths[m].unbind(0))]
            outputs = URM.together(urms, inputs, steps, static=first.static_shapes)
            for i, modality in enumerate(group):
                unimodal[modality] = torch.stack(outputs[i * count:(i + 1) * count])
        tokens = torch.stack([unimodal[m] for m in present], dim=2)  # (G, B, M, d)
        groups, batch, kinds, width = tokens.shape
        tokens = SQIL.together([model.sqil for model in models],
                               tokens.view(groups, batch * kinds, width)).view(tokens.shape)
        fused = CRM.together([model.crm for model in models], tokens,
                             first.modality_index(present, tokens.device))  # (G, B, d)
        heads = [model.head for model in models]  # eq. (12): FC, ReLU, dropout, FC
        hidden = first.head[2](F.relu(stacked_linear([head[0] for head in heads], fused)))
        prediction = stacked_linear([head[3] for head in heads], hidden)  # (G, B, K)
        if get_task(first.config.task).scalar_output:
            prediction = prediction.squeeze(-1)  # (G, B)
        return UCRNOutput(prediction, unimodal)

    def modality_index(self, present: list[str], device: torch.device) -> torch.Tensor:
        """The present modalities' positions in ``MODALITIES`` (M,), made once per device
        (a new one each step would copy from the host every step)."""
        key = (tuple(present), device)
        if key not in self._modality_index:
            with torch.inference_mode(False):  # made while scoring, it serves training too
                self._modality_index[key] = torch.tensor(
                    [MODALITIES.index(m) for m in present], device=device)
        return self._modality_index[key]


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, the way the paper's Table 7 counts them."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
