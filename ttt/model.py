"""The base transformer (Flax NNX): decoder-only, pre-norm, SwiGLU, RoPE.

`Transformer(model_config, adapter_config, rngs)` maps tokens `int32[B, L]`
to logits `float32[B, L, V]`. Blocks are pre-norm (RMSNorm), multi-head
causal attention through `jax.nn.dot_product_attention` (cuDNN flash
attention on GPU when shapes allow: bf16, head dim a multiple of 8, batch
axis first, causal mask without an explicit mask array), and a SwiGLU MLP.
Parameters are float32 (master weights); compute runs in `dtype` (default
'auto': float32 on CPU, bfloat16 on GPU/TPU); logits come out in float32.

Positions: `rope='1d'` rotates by the 1-D position; `rope='3d'` splits each
head's rotary pairs into three groups rotated by the (row, column, segment)
coordinates from `ttt.tokens`.

The architecture fields of `ModelConfig` also cover the pretrained language
models `ttt.pretrained` loads (Llama, Mistral, Qwen2, Qwen3): grouped-query
attention (`num_kv_heads`), an explicit head width (`head_dim_override`), q/k/v
biases (`qkv_bias`), RMSNorm of each query and key head before RoPE
(`qk_norm`), an output head tied to the embedding (`tie_embeddings`) and
Llama-3 RoPE scaling (`rope_scaling`). At their defaults the model is the
project's own, parameter for parameter and bit for bit.

Layers: by default `blocks` is an `nnx.List` of `Block`s run in a Python
loop (every jitted program unrolls them). With `scan_layers=True` it is ONE
`Block` whose every variable carries a leading layer axis (`kernel`
[num_layers, din, dout], `lora_a` [num_layers, din, r], ...: still
`nnx.Param` / `nnx.LoRAParam`, so `ttt.lora` splits it the same way), and
`__call__` / `step` run the layers with `jax.lax.scan` over that axis: one
layer is compiled however deep the model is. The KV cache is then (k, v)
stacked as [num_layers, B, K, C, D] instead of a tuple over layers of (k, v)
[B, K, C, D]; in both layouts the length axis is -2 and the batch axis -4.
The two layouts compute the same numbers; their parameter trees differ (a
checkpoint is read in the layout it was written in).

Adapters live inside the modules as `nnx.LoRAParam` variables, so
`nnx.split(model, nnx.LoRAParam, ...)` separates them from the frozen base
(`ttt.lora`): LoRA factors `lora_a` (random) and `lora_b` (zero) on the
projections named in `adapter_config.targets`, and an optional learned prefix
(`PrefixParam`, prompt tuning: P vectors prepended to the token embeddings,
visible to every position). A fresh adapter leaves the outputs unchanged for
LoRA (B = 0); a prefix changes them by construction.

This module computes logits; training loops live in `ttt.inner_loop` and
`ttt.pretrain`, decoding in `ttt.decoders`.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from ttt import configlib

LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The transformer's shape (fields mirror `config.model`).

  The defaults of the fields after `norm_eps` give the project's own model;
  a checkpoint whose stored config lacks them loads unchanged.
  """

  vocab_size: int = 16  # ttt.tokens.VOCAB_SIZE
  num_layers: int = 2  # transformer blocks
  d_model: int = 64  # residual width
  num_heads: int = 4  # query heads
  mlp_dim: int = 128  # SwiGLU hidden width
  rope: str = "3d"  # '1d' (1-D positions) or '3d' (row, column, segment)
  rope_base: float = 10000.0  # RoPE wavelength base (HF `rope_theta`)
  dtype: str = "auto"  # compute dtype: 'auto' (f32 on CPU, bf16 on
  # GPU/TPU), 'bfloat16' or 'float32' (exact tests)
  norm_eps: float = 1e-6  # RMSNorm epsilon
  num_kv_heads: int = 0  # key/value heads (grouped-query attention; a
  #   divisor of num_heads); 0: num_heads
  head_dim_override: int = 0  # per-head width; 0: d_model // num_heads
  qkv_bias: bool = False  # biases on the q, k, v projections (Qwen2)
  qk_norm: bool = False  # RMSNorm over head_dim of q and k before RoPE
  #   (Qwen3)
  tie_embeddings: bool = False  # output head = embedding transposed (no
  #   separate head parameter)
  rope_scaling: tuple[float, ...] = ()  # Llama-3 RoPE scaling: (factor,
  #   low_freq_factor, high_freq_factor, original_max_position_embeddings);
  #   () for none
  scan_layers: bool = False  # blocks stacked on a leading layer axis and
  #   run by lax.scan (compiles one layer, not num_layers); another
  #   parameter tree and KV-cache layout (see the module docstring)
  remat: bool = False  # with scan_layers: recompute each block in the
  #   backward pass (jax.checkpoint), holding one layer's activations
  #   instead of every layer's (long TTT rows on a large base)
  attention_block: int = -1  # causal attention over a full sequence in
  #   query blocks of this many positions, each against only the keys up
  #   to its end (skips the masked upper triangle: at 4 blocks 62% of the
  #   work); 0: one call over the whole sequence (cuDNN's flash attention
  #   on GPU); -1 'auto': 0 on GPU/TPU, on CPU `auto_attention_block`
  #   (decided where the program is lowered)

  def validate(self) -> None:
    if self.remat and not self.scan_layers:
      raise ValueError("model.remat needs model.scan_layers=True (it "
                       "recomputes the scanned block)")
    names = ("auto", "float32", "bfloat16", "float16")
    if self.dtype not in names:
      raise ValueError(f"model.dtype must be one of {names}, got "
                       f"{self.dtype!r}")
    for name in ("rope_base", "norm_eps"):
      v = getattr(self, name)
      if not math.isfinite(v) or v <= 0:
        raise ValueError(f"model.{name} must be a finite number > 0, got "
                         f"{v!r}")
    if self.attention_block < -1:
      raise ValueError("model.attention_block must be -1 (auto), 0 (one "
                       f"block) or a block length, got "
                       f"{self.attention_block!r}")
    if not all(math.isfinite(v) for v in self.rope_scaling):
      raise ValueError("model.rope_scaling must hold finite numbers, got "
                       f"{self.rope_scaling!r}")
    if not self.head_dim_override and self.d_model % self.num_heads:
      raise ValueError("d_model must be a multiple of num_heads (or set "
                       "head_dim_override)")
    head = self.head_dim
    if head % 2 or (self.rope == "3d" and head < 6):
      raise ValueError(f"head dim {head} too small/odd for rope={self.rope}")
    if self.rope not in ("1d", "3d"):
      raise ValueError(f"rope must be '1d' or '3d', got {self.rope!r}")
    if self.num_kv_heads < 0 or self.num_heads % self.kv_heads:
      raise ValueError(f"num_kv_heads {self.num_kv_heads} must divide "
                       f"num_heads {self.num_heads}")
    if self.rope_scaling:
      if len(self.rope_scaling) != 4 or self.rope != "1d":
        raise ValueError("rope_scaling is (factor, low_freq_factor, "
                         "high_freq_factor, original_max_position_embeddings)"
                         f" with rope='1d', got {self.rope_scaling!r} with "
                         f"rope={self.rope!r}")
      factor, low, high, _ = self.rope_scaling
      if factor <= 0 or high <= low:
        raise ValueError(f"rope_scaling {self.rope_scaling!r} needs factor "
                         "> 0 and high_freq_factor > low_freq_factor")

  @property
  def head_dim(self) -> int:
    return self.head_dim_override or self.d_model // self.num_heads

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads


ADAPTER_MODES = ("lora", "prefix", "lora+prefix", "full", "full+prefix")


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
  """What is adapted per task (fields mirror `config.adapter`)."""

  # 'lora', 'prefix', 'lora+prefix', 'full' (every weight) or 'full+prefix'
  # (every weight and a fresh learned prefix: VARC's task token)
  mode: str = "lora"
  rank: int = 16  # LoRA rank r
  alpha: float = 32.0  # LoRA alpha; the update is (alpha / r) x A B
  targets: tuple[str, ...] = LORA_TARGETS  # projections that get LoRA
  prefix_len: int = 8  # learned prefix vectors (prefix modes)

  def validate(self) -> None:
    if self.mode not in ADAPTER_MODES:
      raise ValueError(f"adapter mode must be one of {ADAPTER_MODES}, got "
                       f"{self.mode!r}")
    bad = set(self.targets) - set(LORA_TARGETS)
    if bad:
      raise ValueError(f"unknown LoRA targets {sorted(bad)}; known: "
                       f"{LORA_TARGETS}")
    if "lora" in self.mode and self.rank < 1:
      raise ValueError("LoRA rank must be >= 1")
    if not math.isfinite(self.alpha) or self.alpha <= 0:
      raise ValueError(f"adapter.alpha must be a finite number > 0, got "
                       f"{self.alpha!r}")
    if "prefix" in self.mode and self.prefix_len < 1:
      raise ValueError("prefix_len must be >= 1 in a prefix mode")

  @property
  def tunes_all(self) -> bool:
    """Every weight is adapted ('full', 'full+prefix'): each task starts
    from a copy of the base weights."""
    return self.mode.startswith("full")

  @property
  def lora_rank(self) -> int:
    return self.rank if "lora" in self.mode else 0

  @property
  def num_prefix(self) -> int:
    return self.prefix_len if "prefix" in self.mode else 0


class PrefixParam(nnx.LoRAParam):
  """A learned per-task prefix; an adapter like the LoRA factors."""


def _dtype(name: str):
  """The compute dtype; 'auto' is float32 on CPU (no native bfloat16 on most
  CPUs: measured faster there) and bfloat16 on GPU/TPU."""
  if name == "auto":
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  return jnp.dtype(name)


class Linear(nnx.Module):
  """y = x W (+ b) (+ (alpha / r) x A B when a LoRA rank is given).

  Shapes: x [..., din] -> y [..., dout]. W float32 [din, dout]; b float32
  [dout] (zero-initialised) only with `bias=True`; A [din, r] drawn like
  PEFT's (uniform, bound 1/sqrt(din)) and B [r, dout] zero.
  """

  def __init__(self, din: int, dout: int, *, rank: int = 0,
               alpha: float = 1.0, bias: bool = False, dtype=jnp.float32,
               rngs: nnx.Rngs):
    init = nnx.initializers.variance_scaling(1.0, "fan_in", "normal")
    self.kernel = nnx.Param(init(rngs.params(), (din, dout), jnp.float32))
    self.use_bias = bias
    if bias:
      self.bias = nnx.Param(jnp.zeros((dout,), jnp.float32))
    self.rank = rank
    self.scale = alpha / rank if rank else 0.0
    self.dtype = dtype
    if rank:
      bound = 1.0 / math.sqrt(din)
      self.lora_a = nnx.LoRAParam(jax.random.uniform(
          rngs.lora(), (din, rank), jnp.float32, -bound, bound))
      self.lora_b = nnx.LoRAParam(jnp.zeros((rank, dout), jnp.float32))

  def __call__(self, x):
    x = x.astype(self.dtype)
    y = x @ self.kernel[...].astype(self.dtype)
    if self.use_bias:
      y = y + self.bias[...].astype(self.dtype)
    if self.rank:
      y = y + lora_product(x, self.lora_a[...].astype(self.dtype),
                           self.lora_b[...].astype(self.dtype), self.scale)
    return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def lora_product(x, a, b, scale: float):
  """(x A) B * scale: x [..., din], A [din, r], B [r, dout] -> [..., dout].

  The values and gradients of the plain expression; the backward pass is
  written out so that every gradient matmul reads the large operands (x
  and the output gradient, [rows, din] / [rows, dout]) in their stored
  layout and transposes only the rank-r ones: autodiff's dA = x^T (g B^T)
  and dB = (x A)^T g made XLA:CPU copy x and g transposed for every
  adapted projection (benchmarks/RESULTS.md, "CPU speed (issue 31)").
  """
  return ((x @ a) @ b) * scale


def _lora_fwd(x, a, b, scale):
  low = x @ a
  return (low @ b) * scale, (x, a, b, low)


def _lora_bwd(scale, res, g):
  x, a, b, low = res
  rows = lambda t: t.reshape(-1, t.shape[-1])  # noqa: E731
  gs = rows(g * scale)  # the cotangent of (x A) B, [n, dout]
  x2, low2 = rows(x), rows(low)
  db = jnp.einsum("nr,no->ro", low2, gs)  # [r, dout]
  glow = jnp.einsum("no,ro->nr", gs, b)  # [n, r]
  da = jnp.einsum("nr,nd->rd", glow, x2).T  # [din, r]
  dx = jnp.einsum("nr,dr->nd", glow, a).reshape(x.shape)
  return dx.astype(x.dtype), da.astype(a.dtype), db.astype(b.dtype)


lora_product.defvjp(_lora_fwd, _lora_bwd)


def rope_angles(config: ModelConfig, positions, coords):
  """Rotation angles float32[B, L, head_dim / 2].

  Args:
    positions: int32[B, L] 1-D positions ('1d').
    coords: int32[B, L, 3] (row, column, segment) ('3d').
  """
  pairs = config.head_dim // 2
  if config.rope == "1d":
    # 1 / base^(2i / D) in float32, the way Hugging Face computes it: at
    # positions in the thousands one ulp of a frequency shows in the logits.
    d = 2 * pairs
    inv = 1.0 / (config.rope_base ** (jnp.arange(0, d, 2, dtype=jnp.float32)
                                      / d))
    if config.rope_scaling:
      inv = llama3_scaled(inv, *config.rope_scaling)
    return positions[..., None].astype(jnp.float32) * inv
  sizes = [pairs // 3 + (1 if n < pairs % 3 else 0) for n in range(3)]
  parts = []
  for axis, n in enumerate(sizes):
    inv = config.rope_base ** (-jnp.arange(n) / n)
    parts.append(coords[..., axis, None].astype(jnp.float32) * inv)
  return jnp.concatenate(parts, axis=-1)


def llama3_scaled(inv, factor, low_freq_factor, high_freq_factor,
                  original_max_positions):
  """Llama-3 RoPE scaling of inverse frequencies float32[D / 2].

  Wavelengths 2 pi / inv shorter than original_max_positions /
  high_freq_factor are kept, those longer than original_max_positions /
  low_freq_factor divided by `factor`, and those between interpolated
  linearly in original_max_positions / wavelength.
  """
  wavelen = 2 * math.pi / inv
  smooth = ((original_max_positions / wavelen - low_freq_factor)
            / (high_freq_factor - low_freq_factor))
  mixed = (1 - smooth) * inv / factor + smooth * inv
  out = jnp.where(wavelen > original_max_positions / low_freq_factor,
                  inv / factor, inv)
  medium = ((wavelen >= original_max_positions / high_freq_factor)
            & (wavelen <= original_max_positions / low_freq_factor))
  return jnp.where(medium, mixed, out)


def apply_rope(x, angles):
  """Rotates x [B, L, H, D] by angles [B, L, D / 2] (rotate-half pairs)."""
  cos = jnp.cos(angles)[:, :, None, :].astype(x.dtype)
  sin = jnp.sin(angles)[:, :, None, :].astype(x.dtype)
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def auto_attention_block(length: int) -> int:
  """CPU's query block for causal attention over `length` positions:
  blocks of 64 from 128 positions, 4 blocks from 256 up to 512, blocks of
  128 beyond; 0 (one block) under 128 positions. Measured on a 2-core
  EPYC (AVX2; benchmarks/RESULTS.md): at 192 positions 64-query blocks
  take the forward + backward from ~70 to ~35 ms (10 tasks x 2 rows x 4
  heads); from 256 on, the Xeon's choice stays within noise of the best
  block there too."""
  if length < 128:
    return 0
  if length < 256:
    return 64
  return -(-length // 4) if length <= 512 else 128


def _segment_mask(segments, lo: int, hi: int, keys: int):
  """bool[B, 1, hi - lo, keys]: query i sees key j iff they share a
  segment or j's segment is negative (the learned prefix)."""
  q, k = segments[:, None, lo:hi, None], segments[:, None, None, :keys]
  return (q == k) | (k < 0)


def causal_attention(q, k, v, kv_valid=None, block: int = 0, segments=None):
  """Causal self-attention of q [B, L, H, D] over k, v [B, L, K, D].

  Args:
    kv_valid: None or bool[B, L], False for keys no query may see.
    segments: None or int32[B, L] (packed rows): a query sees only keys of
      its own segment, and every key whose segment is negative.
    block: queries in blocks of `block` positions, each attending to the
      keys up to the end of its block only (the masked upper triangle of
      the score matrix is never computed); 0: one call over everything;
      -1: `auto_attention_block(L)` where the program runs on CPU, 0 on
      GPU/TPU (`lax.platform_dependent`: decided when it is lowered).

  Returns:
    [B, L, H, D]. Every query sees the same keys either way (blocks only
    leave out the ones its causal mask hides).
  """
  length = q.shape[1]
  if block < 0:  # chosen where the program is lowered (jax.export too)
    auto = auto_attention_block(length)
    if not auto or auto >= length:
      return causal_attention(q, k, v, kv_valid, 0, segments)
    return jax.lax.platform_dependent(
        q, k, v, cpu=lambda *a: causal_attention(*a, kv_valid, auto,
                                                 segments),
        default=lambda *a: causal_attention(*a, kv_valid, 0, segments))
  if not block or block >= length:
    mask = None if kv_valid is None else kv_valid[:, None, None, :]
    if segments is not None:
      seg = _segment_mask(segments, 0, length, length)
      mask = seg if mask is None else mask & seg
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True)
  outs = []
  for lo in range(0, length, block):
    hi = min(lo + block, length)
    mask = (jnp.arange(hi)[None, :] <= jnp.arange(lo, hi)[:, None])[
        None, None]  # [1, 1, hi - lo, hi]
    if kv_valid is not None:
      mask = mask & kv_valid[:, None, None, :hi]
    if segments is not None:
      mask = mask & _segment_mask(segments, lo, hi, hi)
    outs.append(jax.nn.dot_product_attention(q[:, lo:hi], k[:, :hi],
                                             v[:, :hi], mask=mask))
  return jnp.concatenate(outs, axis=1)


class Attention(nnx.Module):
  """Causal self-attention with RoPE: H query heads, K key/value heads.

  K = `config.kv_heads` divides H; each group of H / K query heads shares
  one key/value head (grouped-query attention; K = H is multi-head).
  """

  def __init__(self, config: ModelConfig, adapter: AdapterConfig,
               rngs: nnx.Rngs):
    d, dt = config.d_model, _dtype(config.dtype)
    width = config.num_heads * config.head_dim
    kv_width = config.kv_heads * config.head_dim

    def lin(name, din, dout, bias=False):
      rank = adapter.lora_rank if name in adapter.targets else 0
      return Linear(din, dout, rank=rank, alpha=adapter.alpha, bias=bias,
                    dtype=dt, rngs=rngs)

    self.q = lin("q", d, width, config.qkv_bias)
    self.k = lin("k", d, kv_width, config.qkv_bias)
    self.v = lin("v", d, kv_width, config.qkv_bias)
    self.o = lin("o", width, d)
    self.qk_norm = config.qk_norm
    if config.qk_norm:
      self.q_norm = nnx.RMSNorm(config.head_dim, epsilon=config.norm_eps,
                                dtype=dt, rngs=rngs)
      self.k_norm = nnx.RMSNorm(config.head_dim, epsilon=config.norm_eps,
                                dtype=dt, rngs=rngs)
    self.num_heads = config.num_heads
    self.num_kv_heads = config.kv_heads
    self.head_dim = config.head_dim
    self.attention_block = config.attention_block

  def _qkv(self, x, angles):
    """q [B, L, H, D]; k, v [B, L, K, D] (q and k rotated)."""
    b, length, _ = x.shape
    q = self.q(x).reshape(b, length, self.num_heads, self.head_dim)
    k = self.k(x).reshape(b, length, self.num_kv_heads, self.head_dim)
    v = self.v(x).reshape(b, length, self.num_kv_heads, self.head_dim)
    if self.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    return apply_rope(q, angles), apply_rope(k, angles), v

  def __call__(self, x, angles, kv_valid=None, segments=None):
    """Full causal attention; returns (out [B, L, d], (k, v) [B, K, L, D],
    the cache layout of `step`). `segments`: see `causal_attention`."""
    b, length, _ = x.shape
    q, k, v = self._qkv(x, angles)
    out = causal_attention(q, k, v, kv_valid, self.attention_block,
                           segments)
    return (self.o(out.reshape(b, length, -1)),
            (jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)))

  def step(self, x, angles, cache, index, layer=None):
    """One new position per row against a KV cache.

    The cache is kept as [B, K, C, D] (heads before positions) so both
    attention products read it in place: q.k contracts D and p.v contracts
    C with (B, K) as leading batch dimensions, the layout XLA's dot takes
    without a copy. The [B, C, K, D] layout of `causal_attention` cost a
    transpose of the layer's whole cache per token (68% of the CPU decode's
    time, benchmarks/RESULTS.md).

    Args:
      x: [B, 1, d]; angles: [B, 1, D / 2].
      cache: (k, v) [B, K, C, D]; or, with `layer`, every layer's (k, v)
        stacked [N, B, K, C, D] (only layer `layer` is read and written).
      index: int32[B], where row b's new key goes (keys at positions <=
        index are attended to).
      layer: None, or an int32 scalar: this layer's index in a stacked
        cache.

    Returns:
      (out [B, 1, d], updated cache of the same layout).
    """
    b = x.shape[0]
    q, k, v = self._qkv(x, angles)
    rows = jnp.arange(b)
    at = ((rows, slice(None), index) if layer is None
          else (layer, rows, slice(None), index))
    k_cache = cache[0].at[at].set(k[:, 0].astype(cache[0].dtype))
    v_cache = cache[1].at[at].set(v[:, 0].astype(cache[1].dtype))
    keys, values = ((k_cache, v_cache) if layer is None
                    else (k_cache[layer], v_cache[layer]))
    kv, d = self.num_kv_heads, self.head_dim
    # query head h reads key/value head h // (H / K), as in
    # jax.nn.dot_product_attention's grouped-query path
    qg = q[:, 0].reshape(b, kv, self.num_heads // kv, d)
    logits = jnp.einsum("bkgd,bkcd->bkgc", qg, keys.astype(q.dtype),
                        preferred_element_type=jnp.float32)
    logits = logits * jnp.float32(1.0 / math.sqrt(d))
    visible = jnp.arange(keys.shape[2])[None, :] <= index[:, None]
    logits = jnp.where(visible[:, None, None, :], logits,
                       jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(q.dtype)
    out = jnp.einsum("bkgc,bkcd->bkgd", probs, values.astype(q.dtype))
    return self.o(out.reshape(b, 1, -1)), (k_cache, v_cache)


class MLP(nnx.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  def __init__(self, config: ModelConfig, adapter: AdapterConfig,
               rngs: nnx.Rngs):
    d, m, dt = config.d_model, config.mlp_dim, _dtype(config.dtype)

    def lin(name, din, dout):
      rank = adapter.lora_rank if name in adapter.targets else 0
      return Linear(din, dout, rank=rank, alpha=adapter.alpha, dtype=dt,
                    rngs=rngs)

    self.gate, self.up = lin("gate", d, m), lin("up", d, m)
    self.down = lin("down", m, d)

  def __call__(self, x):
    return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


class Block(nnx.Module):
  """Pre-norm transformer block."""

  def __init__(self, config: ModelConfig, adapter: AdapterConfig,
               rngs: nnx.Rngs):
    dt = _dtype(config.dtype)
    self.norm1 = nnx.RMSNorm(config.d_model, epsilon=config.norm_eps,
                             dtype=dt, rngs=rngs)
    self.attn = Attention(config, adapter, rngs)
    self.norm2 = nnx.RMSNorm(config.d_model, epsilon=config.norm_eps,
                             dtype=dt, rngs=rngs)
    self.mlp = MLP(config, adapter, rngs)

  def __call__(self, x, angles, kv_valid=None, segments=None):
    a, kv = self.attn(self.norm1(x), angles, kv_valid, segments)
    x = x + a.astype(x.dtype)
    return x + self.mlp(self.norm2(x)).astype(x.dtype), kv

  def step(self, x, angles, cache, index, layer=None):
    """`Attention.step` of the block (same arguments)."""
    a, cache = self.attn.step(self.norm1(x), angles, cache, index, layer)
    x = x + a.astype(x.dtype)
    return x + self.mlp(self.norm2(x)).astype(x.dtype), cache


def stack_blocks(config: ModelConfig, adapter: AdapterConfig,
                 rngs: nnx.Rngs) -> Block:
  """`config.num_layers` blocks as ONE `Block` of stacked variables.

  Layer l is initialised from the l-th of `num_layers` keys split from one
  `params` and one `lora` draw of `rngs` (so the random init differs from
  the unstacked layout's; the distributions are the same).

  Returns:
    A `Block` whose every variable has a leading layer axis [num_layers,
    ...] (same variable types as one block's: `nnx.Param`,
    `nnx.LoRAParam`). Call it only through `run_stacked` / `step_stacked`.
  """
  n = config.num_layers
  params = jax.random.split(rngs.params(), n)
  # a model without LoRA draws no `lora` key (its rngs may have no stream)
  loras = jax.random.split(rngs.lora(), n) if adapter.lora_rank else params

  def one(params, lora):
    return nnx.state(Block(config, adapter, nnx.Rngs(params=params,
                                                      lora=lora)))

  graphdef = nnx.graphdef(nnx.eval_shape(
      lambda: Block(config, adapter, nnx.Rngs(params=0, lora=1))))
  return nnx.merge(graphdef, jax.vmap(one)(params, loras))


def run_stacked(blocks: Block, x, angles, kv_valid=None,
                return_cache: bool = False, remat: bool = False,
                segments=None):
  """Stacked blocks (`stack_blocks`) applied in order by `lax.scan`.

  Args:
    blocks: a `Block` of variables stacked [N, ...].
    x: float32[B, L, d]; angles: [B, L, D / 2]; kv_valid: None or bool[B, L].
    return_cache: also return every layer's keys and values.
    remat: recompute each layer in the backward pass (`jax.checkpoint`):
      the same values, one layer's activations held at a time.
    segments: None or int32[B, L] (see `causal_attention`).

  Returns:
    x after the N blocks, and with `return_cache` the cache (k, v), each
    [N, B, K, L, D] (else None).
  """
  graphdef, stacked = nnx.split(blocks)

  def layer(x, state):
    x, kv = nnx.merge(graphdef, state)(x, angles, kv_valid, segments)
    return x, kv if return_cache else None

  return jax.lax.scan(jax.checkpoint(layer) if remat else layer, x, stacked)


def step_stacked(blocks: Block, x, angles, cache, index):
  """`Block.step` of stacked blocks in order by `lax.scan`.

  The stacked cache is carried through the scan and each layer writes its
  new key and value in place (no per-step copy of the cache).

  Args:
    blocks: a `Block` of variables stacked [N, ...].
    x: float32[B, 1, d]; angles: [B, 1, D / 2].
    cache: (k, v) [N, B, K, C, D]; index: int32[B] the position written.

  Returns:
    (x after the N blocks, the updated cache).
  """
  graphdef, stacked = nnx.split(blocks)

  def layer(carry, xs):
    x, cache = carry
    state, i = xs
    return nnx.merge(graphdef, state).step(x, angles, cache, index, i), None

  layers = jnp.arange(jax.tree.leaves(stacked)[0].shape[0], dtype=jnp.int32)
  (x, cache), _ = jax.lax.scan(layer, (x, cache), (stacked, layers))
  return x, cache


class Transformer(nnx.Module):
  """Decoder-only transformer over ARC token sequences.

  Call: `model(tokens, positions=None, coords=None, kv_valid=None,
  return_cache=False, segments=None)`:
    tokens: int32[B, L]; positions: int32[B, L] (default 0..L-1);
    coords: int32[B, L, 3] (needed for rope='3d'); kv_valid: optional
    bool[B, L], False for key positions no query may attend to (padding);
    segments: optional int32[B, L], packed rows (`ttt.data.pack`): a
    position attends only to the positions of its own segment (and to the
    learned prefix, which every position sees).
  Returns float32[B, L, vocab_size] logits, and with `return_cache` also
  the KV cache: a tuple over layers of (k, v) [B, K, P + L, D] (K =
  `config.kv_heads` key/value heads, P = `num_prefix` learned prefix
  positions first); with `config.scan_layers` one (k, v) stacked [N, B, K,
  P + L, D] over the N layers. `step` continues from it.
  """

  def __init__(self, config: ModelConfig, adapter: AdapterConfig | None = None,
               *, rngs: nnx.Rngs):
    adapter = adapter or AdapterConfig(mode="full")
    self.config = config
    self.adapter_config = adapter
    dt = _dtype(config.dtype)
    self.embed = nnx.Embed(config.vocab_size, config.d_model, dtype=dt,
                           rngs=rngs)
    if config.scan_layers:  # one Block of variables [num_layers, ...]
      self.blocks = stack_blocks(config, adapter, rngs)
    else:
      self.blocks = nnx.List([Block(config, adapter, rngs)
                              for _ in range(config.num_layers)])
    self.norm = nnx.RMSNorm(config.d_model, epsilon=config.norm_eps,
                            dtype=dt, rngs=rngs)
    if not config.tie_embeddings:
      self.head = Linear(config.d_model, config.vocab_size, dtype=dt,
                         rngs=rngs)
    self.num_prefix = adapter.num_prefix
    if self.num_prefix:
      self.prefix = PrefixParam(0.02 * jax.random.normal(
          rngs.lora(), (self.num_prefix, config.d_model), jnp.float32))

  def __call__(self, tokens, positions=None, coords=None, kv_valid=None,
               return_cache=False, segments=None):
    b, length = tokens.shape
    x = self.embed(tokens).astype(jnp.float32)  # fp32 residual stream
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32),
                                   (b, length))
    if coords is None:
      if self.config.rope == "3d":
        raise ValueError("rope='3d' needs coords (ttt.tokens)")
      coords = jnp.zeros((b, length, 3), jnp.int32)
    p = self.num_prefix
    if p:
      # [P, d] shared by the rows, or [B, P, d] one per row (the joint
      # protocol: each row under its own task's embedding)
      prefix = jnp.broadcast_to(self.prefix[...].astype(x.dtype),
                                (b, p, x.shape[-1]))
      x = jnp.concatenate([prefix, x], axis=1)
      positions = jnp.concatenate([
          jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p)),
          positions + p], axis=1)
      coords = jnp.concatenate([jnp.zeros((b, p, 3), jnp.int32), coords],
                               axis=1)
      if kv_valid is not None:
        kv_valid = jnp.concatenate([jnp.ones((b, p), bool), kv_valid], axis=1)
      if segments is not None:  # -1: the prefix, seen from every segment
        segments = jnp.concatenate(
            [jnp.full((b, p), -1, segments.dtype), segments], axis=1)
    angles = rope_angles(self.config, positions, coords)
    if self.config.scan_layers:
      x, cache = run_stacked(self.blocks, x, angles, kv_valid, return_cache,
                             self.config.remat, segments)
    else:
      kvs = []
      for block in self.blocks:
        x, kv = block(x, angles, kv_valid, segments)
        kvs.append(kv)
      cache = tuple(kvs)
    logits = self._logits(self.norm(x))
    logits = logits[:, p:] if p else logits
    return (logits, cache) if return_cache else logits

  def step(self, tokens, positions, coords, cache, index):
    """Logits for one new token per row, given the KV cache.

    Args:
      tokens: int32[B]; positions: int32[B] (1-D token positions, prefix
        not counted); coords: int32[B, 3].
      cache: from `__call__(..., return_cache=True)`, padded along its
        length axis to hold the new positions.
      index: int32[B] the token position written (prefix not counted);
        usually equal to `positions`.

    Returns:
      (float32[B, vocab_size] logits, updated cache).
    """
    p = self.num_prefix
    x = self.embed(tokens[:, None]).astype(jnp.float32)
    angles = rope_angles(self.config, (positions + p)[:, None],
                         coords[:, None, :])
    if self.config.scan_layers:
      x, new_cache = step_stacked(self.blocks, x, angles, cache, index + p)
    else:
      kvs = []
      for block, kv in zip(self.blocks, cache, strict=True):
        x, kv = block.step(x, angles, kv, index + p)
        kvs.append(kv)
      new_cache = tuple(kvs)
    logits = self._logits(self.norm(x))[:, 0]
    return logits, new_cache

  def _logits(self, x):
    """float32 logits [..., vocab_size] of normalised states x [..., d]."""
    if self.config.tie_embeddings:
      return self.embed.attend(x).astype(jnp.float32)
    return self.head(x).astype(jnp.float32)


def make_model(config, adapter=None, key: jax.Array | None = None
               ) -> Transformer:
  """Builds a transformer from config groups (ConfigDicts or dataclasses).

  Args:
    config: `ModelConfig` fields (e.g. `config.model`).
    adapter: `AdapterConfig` fields (e.g. `config.adapter`); None: no
      adapters.
    key: PRNG key; base weights use fold_in(key, 0), adapters fold_in(key, 1).
  """
  model_config = configlib.from_config(ModelConfig, config)
  adapter_config = (AdapterConfig(mode="full") if adapter is None
                    else configlib.from_config(AdapterConfig, adapter))
  key = jax.random.key(0) if key is None else key
  rngs = nnx.Rngs(params=jax.random.fold_in(key, 0),
                  lora=jax.random.fold_in(key, 1))
  return Transformer(model_config, adapter_config, rngs=rngs)


def target_logprobs(model: Transformer, batch, with_argmax: bool = False):
  """Teacher-forced log-probabilities of each next token: the one NLL kernel.

  Args:
    model: a `Transformer` (adapters merged).
    batch: anything with `tokens`, `positions` int32[B, L], `coords`
      int32[B, L, 3] and `mask` int32[B, L] (1 on loss targets), e.g. a
      `ttt.data.TTTDataset` slice; with `segments` int32[B, L] too (packed
      rows), each row is seen alone and a target whose segment differs
      from its predecessor's (the first token of a packed row) gets
      weight 0.

  Returns:
    (logp float32[B, L-1]: log p(token t+1 | tokens <= t); weights
    float32[B, L-1]: the mask of the predicted token) -- the inner loop, the
    candidate scorer and initial training reduce these their own way. With
    `with_argmax`, a third array bool[B, L-1]: the target is the argmax.
  """
  segments = getattr(batch, "segments", None)
  logits = model(batch.tokens, batch.positions, batch.coords,
                 segments=segments)[:, :-1]
  logp = jax.nn.log_softmax(logits, axis=-1)
  targets = batch.tokens[:, 1:]
  ll = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  weights = batch.mask[:, 1:].astype(jnp.float32)
  if segments is not None:
    weights = jnp.where(segments[:, 1:] == segments[:, :-1], weights, 0.0)
  if with_argmax:
    return ll, weights, logits.argmax(-1) == targets
  return ll, weights


def count_params(state) -> int:
  """Number of scalars in a state / pytree."""
  return sum(x.size for x in jax.tree.leaves(state))
