"""llama.cpp's GGUF block types, encoded in torch: the bytes of each block exactly as
ggml lays them out, and the values they decode to (what the `gguf` package's
`gguf.quants.dequantize` and llama.cpp compute from those bytes, bit for bit).

The gguf grid (`QuantScheme(grid="gguf")`, exported by `gguf-plan`) quantizes a weight
with the type `kernels.scheme.gguf_type(bits, K)` gives it; Q_b(W) is the decoded
result, so the sensitivity tables, the measured methods and the evaluation all see the
type's real error, scales and offsets included.

* k-quants (rows of whole 256-value super-blocks): Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, our own
  encoders below. Each sub-block takes the scale (and, for Q2_K/Q4_K/Q5_K, the offset)
  of its own range clipped by the best of a few ratios (`CLIP_RATIOS`: 1.0 down to 0.8
  for Q2_K/Q3_K/Q4_K, least squared error, round to nearest); the sub-block scales are
  then quantized to the type's 4/6/8-bit codes against one fp16 super-block scale, and
  the codes are rounded to
  nearest under the quantized scales. This is simpler than llama.cpp's
  `quantize_row_q*_K_ref` (`make_qkx2_quants` / `make_qx_quants`, which search more
  candidate scales per sub-block and refit them by least squares), so `llama-quantize`
  run on the same weights may reach a slightly lower error than the one measured here;
  the bytes we write are valid blocks of the type all the same.
* Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (32-value blocks): the `gguf` package's own encoders,
  which reproduce ggml's reference quantizers.
* F16: the weight rounded to fp16; F32: unchanged.

A weight is viewed as (rows, K), K along the input: GGUF rows are the input dimension
(ne[0]), so a Linear's (out, in) weight and an Embedding's (vocab, dim) table are
blocked along their last dimension, as the converter writes them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from kernels.scheme import QK_K, QuantConfig, gguf_type

ROWS_PER_CHUNK_VALUES = 1 << 22  # rows are encoded in chunks of about this many values
ENCODED_IN_TORCH = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
ENCODED_BY_GGUF = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
# the k-quants' clip search: each sub-block's range scaled by these, the least error kept
# (it pays at 2–4 bits: Q2_K's error falls by a quarter, Q4_K's by 6 %; not at 5–6)
CLIPPED = (1.0, 0.95, 0.9, 0.85, 0.8)
CLIP_RATIOS = {"Q2_K": CLIPPED, "Q3_K": CLIPPED, "Q4_K": CLIPPED, "Q5_K": (1.0,), "Q6_K": (1.0,)}


def gguf_qtype(name: str):
    """The `gguf.GGMLQuantizationType` of a type name ("Q4_K")."""
    import gguf

    return gguf.GGMLQuantizationType[name]


def encode(weight: torch.Tensor, type_name: str) -> tuple[np.ndarray, torch.Tensor]:
    """(bytes, values) of `weight` (any shape, viewed as (rows, K)) in GGUF type
    `type_name`: bytes (rows, K / block · block bytes) uint8 in ggml's layout, values
    (rows, K) float32, what those bytes decode to."""
    w = weight.detach().reshape(weight.shape[0], -1).float()
    rows, k = w.shape
    raw, values = [], []
    step = max(1, ROWS_PER_CHUNK_VALUES // max(k, 1))
    for start in range(0, rows, step):
        b, v = _encode_rows(w[start:start + step], type_name)
        raw.append(b)
        values.append(v)
    return np.concatenate(raw, axis=0), torch.cat(values, dim=0)


def decode(raw: np.ndarray, type_name: str) -> torch.Tensor:
    """The `gguf` package's decoding of GGUF bytes (rows, row bytes) to float32 (rows, K)."""
    import gguf

    return torch.from_numpy(np.ascontiguousarray(gguf.quants.dequantize(raw, gguf_qtype(type_name))))


def fake_quantize(weight: torch.Tensor, config: QuantConfig) -> torch.Tensor:
    """Q_b(W) on the gguf grid: `weight` through its GGUF type and back, same shape and dtype."""
    w = weight.detach()
    k = math.prod(w.shape[1:])
    _, values = encode(w, gguf_type(config.bits, k).name)
    return values.reshape(w.shape).to(w.dtype)


def quantization_error(weight: torch.Tensor, config: QuantConfig) -> float:
    """‖Q_b(W) − W‖² on the gguf grid, accumulated in float64."""
    w = weight.detach().reshape(weight.shape[0], -1)
    _, values = encode(w, gguf_type(config.bits, w.shape[1]).name)
    return float(torch.linalg.vector_norm(values.double() - w.double()) ** 2)


# --- per type ----------------------------------------------------------------------


def _encode_rows(w: torch.Tensor, name: str) -> tuple[np.ndarray, torch.Tensor]:
    rows, k = w.shape
    if name == "F32":
        return w.contiguous().view(torch.uint8).numpy().copy(), w.clone()
    if name == "F16":
        h = w.half().contiguous()
        return h.view(torch.uint8).numpy().copy(), h.float()
    if name in ENCODED_BY_GGUF:
        import gguf

        raw = gguf.quants.quantize(w.numpy(), gguf_qtype(name))
        return raw, decode(raw, name)
    if name not in ENCODED_IN_TORCH:
        raise ValueError(f"no encoder for GGUF type {name}")
    if k % QK_K:
        raise ValueError(f"{name} needs rows of whole {QK_K}-value blocks, got rows of {k}")
    blocks = w.reshape(-1, QK_K)
    raw, values = _K_ENCODERS[name](blocks)
    return raw.reshape(rows, -1).numpy(), values.reshape(rows, k)


def _fp16(x: torch.Tensor) -> torch.Tensor:
    """x rounded to fp16, as float32 (what the block stores and the decoder reads)."""
    return x.half().float()


def _fp16_bytes(x: torch.Tensor) -> torch.Tensor:
    """(n,) float32 of fp16 values -> (n, 2) little-endian bytes."""
    return x.half().contiguous().view(torch.uint8).reshape(-1, 2)


def _safe_div(x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """x / d, 0 where d is 0 (x and d of one shape: the per-block scales)."""
    return torch.where(d != 0, x / torch.where(d != 0, d, torch.ones_like(d)), torch.zeros_like(x))


def _inverse(step: torch.Tensor) -> torch.Tensor:
    """1 / step, 0 where step is 0 (a flat sub-block then takes code 0)."""
    return torch.where(step != 0, 1 / torch.where(step != 0, step, torch.ones_like(step)),
                       torch.zeros_like(step))


def _signed_absmax(x: torch.Tensor) -> torch.Tensor:
    """The value of largest magnitude along the last dimension, with its sign."""
    return x.gather(-1, x.abs().argmax(-1, keepdim=True)).squeeze(-1)


def _affine_subblocks(x: torch.Tensor, nmax: int, scale_max: int, ratios: tuple[float, ...]):
    """Scale-and-offset sub-blocks (Q2_K, Q4_K, Q5_K): x (n, S, L) ≈ d·sc·q − dmin·m with
    q ∈ [0, nmax] and sc, m ∈ [0, scale_max]. Returns d, dmin (n,), sc, m (n, S) as
    integers in float, q (n, S, L) in float, and the decoded values."""
    lo = x.amin(-1).clamp(max=0)  # the offset stays ≥ 0, so zero is inside the range
    hi = x.amax(-1)

    def fit(r):
        scale = (hi - lo) * r / nmax
        offset = -lo * r
        q = torch.round((x + offset[..., None]) * _inverse(scale)[..., None]).clamp(0, nmax)
        return (scale, offset), scale[..., None] * q - offset[..., None]

    scale, offset = _best_clip(x, fit, ratios)
    d = _fp16(scale.amax(-1) / scale_max)
    dmin = _fp16(offset.amax(-1) / scale_max)
    sc = torch.round(_safe_div(scale, d[:, None])).clamp(0, scale_max)
    m = torch.round(_safe_div(offset, dmin[:, None])).clamp(0, scale_max)
    step = d[:, None] * sc  # float32, the decoder's order of operations
    shift = dmin[:, None] * m
    q = torch.round((x + shift[..., None]) * _inverse(step)[..., None]).clamp(0, nmax)
    values = step[..., None] * q - shift[..., None]
    return d, dmin, sc, m, q, values


def _symmetric_subblocks(x: torch.Tensor, qmin: int, qmax: int, scale_min: int, scale_max: int,
                         ratios: tuple[float, ...]):
    """Scale-only sub-blocks (Q3_K, Q6_K): x (n, S, L) ≈ d·sc·v with v ∈ [qmin, qmax] and
    sc ∈ [scale_min, scale_max]; the value of largest magnitude maps to qmin (the grid's
    long end), as ggml's make_qx_quants does. Returns d (n,), sc (n, S), v (n, S, L), values."""
    extreme = _signed_absmax(x)

    def fit(r):
        scale = extreme * r / qmin
        v = torch.round(x * _inverse(scale)[..., None]).clamp(qmin, qmax)
        return (scale,), scale[..., None] * v

    (scale,) = _best_clip(x, fit, ratios)
    d = _fp16(_signed_absmax(scale) / scale_min)
    sc = torch.round(_safe_div(scale, d[:, None])).clamp(scale_min, scale_max)
    step = d[:, None] * sc
    v = torch.round(x * _inverse(step)[..., None]).clamp(qmin, qmax)
    values = step[..., None] * v
    return d, sc, v, values


def _best_clip(x: torch.Tensor, fit, ratios: tuple[float, ...]) -> tuple[torch.Tensor, ...]:
    """Each sub-block's parameters at the clip ratio with the least squared error before
    the scales are quantized; `fit(r)` -> (parameters, values)."""
    if len(ratios) == 1:
        return fit(ratios[0])[0]
    best_params, best_err = None, None
    for r in ratios:
        params, values = fit(r)
        err = (values - x).pow(2).sum(-1)
        if best_params is None:
            best_params, best_err = params, err
            continue
        better = err < best_err
        best_params = tuple(torch.where(better, p, b) for p, b in zip(params, best_params))
        best_err = torch.where(better, err, best_err)
    return best_params


def _pack_2bit_128(q: torch.Tensor) -> torch.Tensor:
    """(n, 256) 2-bit values -> (n, 64) bytes: byte h·32 + l holds value h·128 + s·32 + l
    in bits 2s..2s+1 (Q2_K's qs, Q3_K's low bits)."""
    u = q.to(torch.uint8).reshape(-1, 2, 4, 32)
    return (u[:, :, 0] | (u[:, :, 1] << 2) | (u[:, :, 2] << 4) | (u[:, :, 3] << 6)).reshape(-1, 64)


def _pack_nibbles_32(q: torch.Tensor) -> torch.Tensor:
    """(n, 8, 32) 4-bit values -> (n, 128) bytes: sub-block 2c in the low nibbles of bytes
    32c.., sub-block 2c+1 in the high nibbles (Q4_K, Q5_K)."""
    u = (q.to(torch.uint8) & 0x0F)
    return (u[:, 0::2] | (u[:, 1::2] << 4)).reshape(-1, 128)


def _pack_scales_k4(sc: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Eight 6-bit scales and eight 6-bit offsets -> ggml's 12-byte K_SCALE layout
    (get_scale_min_k4)."""
    sc, m = sc.to(torch.uint8), m.to(torch.uint8)
    first = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    second = m[:, :4] | ((m[:, 4:] >> 4) << 6)
    third = (sc[:, 4:] & 0x0F) | ((m[:, 4:] & 0x0F) << 4)
    return torch.cat([first, second, third], dim=1)


def _q4_k(x: torch.Tensor):
    n = x.shape[0]
    d, dmin, sc, m, q, values = _affine_subblocks(x.reshape(n, 8, 32), 15, 63, CLIP_RATIOS["Q4_K"])
    raw = torch.cat([_fp16_bytes(d), _fp16_bytes(dmin), _pack_scales_k4(sc, m), _pack_nibbles_32(q)], 1)
    return raw, values


def _q5_k(x: torch.Tensor):
    n = x.shape[0]
    d, dmin, sc, m, q, values = _affine_subblocks(x.reshape(n, 8, 32), 31, 63, CLIP_RATIOS["Q5_K"])
    u = q.to(torch.uint8)
    high = (u >> 4) & 1  # (n, 8, 32): bit j of byte l is sub-block j's value l
    qh = torch.zeros(n, 32, dtype=torch.uint8)
    for j in range(8):
        qh |= high[:, j] << j
    raw = torch.cat([_fp16_bytes(d), _fp16_bytes(dmin), _pack_scales_k4(sc, m), qh,
                     _pack_nibbles_32(u & 0x0F)], 1)
    return raw, values


def _q6_k(x: torch.Tensor):
    n = x.shape[0]
    d, sc, v, values = _symmetric_subblocks(x.reshape(n, 16, 16), -32, 31, -128, 127, CLIP_RATIOS["Q6_K"])
    q = (v + 32).to(torch.uint8).reshape(n, 2, 128)  # two halves of 128 values
    ql = ((q[:, :, :64] & 0x0F) | ((q[:, :, 64:] & 0x0F) << 4)).reshape(n, 128)
    hi = ((q >> 4) & 3).reshape(n, 2, 4, 32)
    qh = (hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)).reshape(n, 64)
    scales = sc.to(torch.int8).view(torch.uint8)
    raw = torch.cat([ql, qh, scales, _fp16_bytes(d)], 1)
    return raw, values


def _q3_k(x: torch.Tensor):
    n = x.shape[0]
    d, sc, v, values = _symmetric_subblocks(x.reshape(n, 16, 16), -4, 3, -32, 31, CLIP_RATIOS["Q3_K"])
    u = (v + 4).to(torch.uint8).reshape(n, 256)  # 0..7: low two bits, and the "high" bit
    qs = _pack_2bit_128(u & 3)
    high = (u >> 2).reshape(n, 8, 32)  # bit j of hmask byte l: value j·32 + l
    hmask = torch.zeros(n, 32, dtype=torch.uint8)
    for j in range(8):
        hmask |= high[:, j] << j
    s6 = (sc + 32).to(torch.uint8)  # 6-bit, offset 32
    low = (s6[:, :8] & 0x0F) | ((s6[:, 8:] & 0x0F) << 4)
    top = (s6 >> 4).reshape(n, 4, 4)  # scale s·4 + c: bits 2s of byte 8 + c
    high_bits = top[:, 0] | (top[:, 1] << 2) | (top[:, 2] << 4) | (top[:, 3] << 6)
    raw = torch.cat([hmask, qs, low, high_bits, _fp16_bytes(d)], 1)
    return raw, values


def _q2_k(x: torch.Tensor):
    n = x.shape[0]
    d, dmin, sc, m, q, values = _affine_subblocks(x.reshape(n, 16, 16), 3, 15, CLIP_RATIOS["Q2_K"])
    scales = sc.to(torch.uint8) | (m.to(torch.uint8) << 4)
    raw = torch.cat([scales, _pack_2bit_128(q.reshape(n, 256)), _fp16_bytes(d), _fp16_bytes(dmin)], 1)
    return raw, values


_K_ENCODERS = {"Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k}
