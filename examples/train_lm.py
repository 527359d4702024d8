"""Train a small decoder-only transformer LM whose attention is jax_flash3's Flax module.

Character-level, on the generated corpus in ``examples/data/corpus.txt`` (no downloads). Runs on
CPU (jax_flash3's pure-JAX path) and GPU (the CUDA kernels on sm_90 with bf16/fp16).

    python examples/train_lm.py                          # ~300 steps, defaults sized for a GPU
    python examples/train_lm.py --steps 30 --layers 2 --d-model 64 --heads 4 --kv-heads 2 \\
        --seq-len 64 --batch 8                           # a tiny CPU run (what CI does)
    python examples/train_lm.py --mesh                   # data + sequence parallel, all devices
    python examples/train_lm.py --mesh data=4,seq=2      # an explicit mesh

``--mesh`` shards the batch over a "data" mesh axis and the sequence over a "seq" axis with
``NamedSharding``; under ``jit`` jax_flash3 turns sequence-sharded attention into ring attention
where that is available. If the sequence-parallel step fails to compile or run, the script says
why and falls back to data parallelism only.

Prints the loss every ``--log-every`` steps and tokens/s (a tqdm bar on stderr when it is a
terminal). Exits with status 1 if the final held-out loss is not below the initial one.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import pathlib
import sys
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

try:
    import jax_flash3.flax as jf3
except ImportError:  # running from a checkout that is not installed
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    import jax_flash3.flax as jf3

CORPUS = pathlib.Path(__file__).with_name("data") / "corpus.txt"


# ----------------------------------------------------------------------------------------------
# Data: a character-level tokenizer and random windows of the corpus.
# ----------------------------------------------------------------------------------------------

class CharTokenizer:
    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        return np.array([self.index[c] for c in text], np.int32)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def batches(data: np.ndarray, batch: int, seq_len: int, seed: int):
    """Endless ``(inputs, targets)`` pairs, each ``(batch, seq_len)`` int32, targets shifted by 1."""
    rng = np.random.default_rng(seed)
    while True:
        starts = rng.integers(0, len(data) - seq_len - 1, size=batch)
        window = np.stack([data[s : s + seq_len + 1] for s in starts])
        yield window[:, :-1], window[:, 1:]


# ----------------------------------------------------------------------------------------------
# Model: pre-norm decoder blocks around jax_flash3.flax.MultiHeadAttention(causal=True).
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    seq_len: int
    layers: int
    d_model: int
    heads: int
    kv_heads: int
    dtype: Any = jnp.float32
    fp8: bool = False  # FP8 attention forward (precision="fp8"); backward in `dtype`


def _constrain(x, sharding):
    return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


class Block(nn.Module):
    cfg: ModelConfig
    act_sharding: Any = None  # NamedSharding of (batch, seq, d_model) activations, or None

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        h = nn.RMSNorm(dtype=cfg.dtype, name="attn_norm")(x)
        h = jf3.MultiHeadAttention(
            num_heads=cfg.heads,
            num_kv_heads=cfg.kv_heads,
            causal=True,
            use_bias=False,
            dtype=cfg.dtype,
            fp8=cfg.fp8,
            name="attn",
        )(h)
        x = _constrain(x + h, self.act_sharding)
        h = nn.RMSNorm(dtype=cfg.dtype, name="mlp_norm")(x)
        h = nn.Dense(4 * cfg.d_model, use_bias=False, dtype=cfg.dtype, name="mlp_in")(h)
        h = nn.Dense(cfg.d_model, use_bias=False, dtype=cfg.dtype, name="mlp_out")(nn.gelu(h))
        return _constrain(x + h, self.act_sharding)


class LM(nn.Module):
    cfg: ModelConfig
    act_sharding: Any = None

    @nn.compact
    def __call__(self, tokens):
        """``tokens (B, S)`` int32 → logits ``(B, S, vocab)`` float32."""
        cfg = self.cfg
        init = nn.initializers.normal(0.02)  # small: the tied output layer starts near uniform
        embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.dtype, embedding_init=init,
                         name="embed")
        positions = nn.Embed(cfg.seq_len, cfg.d_model, dtype=cfg.dtype, embedding_init=init,
                             name="pos_embed")
        x = embed(tokens) + positions(jnp.arange(tokens.shape[-1]))[None]
        x = _constrain(x, self.act_sharding)
        for i in range(cfg.layers):
            x = Block(cfg, self.act_sharding, name=f"block_{i}")(x)
        x = nn.RMSNorm(dtype=cfg.dtype, name="final_norm")(x)
        return embed.attend(x).astype(jnp.float32)  # tied input/output embedding


def loss_fn(params, model: LM, inputs, targets):
    logits = model.apply(params, inputs)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


# ----------------------------------------------------------------------------------------------
# Mesh
# ----------------------------------------------------------------------------------------------

def parse_mesh(spec: str | None, n_devices: int, batch: int, seq_len: int) -> tuple[int, int] | None:
    """``None`` (no mesh), ``"auto"`` or ``"data=D,seq=S"`` → ``(data, seq)`` device counts."""
    if spec is None:
        return None
    if spec == "auto":
        seq = 2 if n_devices % 2 == 0 and n_devices > 1 and seq_len % 2 == 0 else 1
        data = math.gcd(n_devices // seq, batch)
        return data, seq
    sizes = {"data": 1, "seq": 1}
    for part in spec.split(","):
        name, _, value = part.partition("=")
        if name.strip() not in sizes or not value.strip().isdigit():
            raise SystemExit(f"--mesh: expected 'data=D,seq=S' or nothing, got {spec!r}")
        sizes[name.strip()] = int(value)
    data, seq = sizes["data"], sizes["seq"]
    if data * seq > n_devices:
        raise SystemExit(f"--mesh {spec}: needs {data * seq} devices, {n_devices} available")
    if batch % data or seq_len % seq:
        raise SystemExit(
            f"--mesh {spec}: --batch ({batch}) must divide by data={data} and --seq-len "
            f"({seq_len}) by seq={seq}")
    return data, seq


def make_mesh(data: int, seq: int) -> Mesh:
    devices = np.array(jax.devices()[: data * seq]).reshape(data, seq)
    return Mesh(devices, ("data", "seq"))


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------

class Trainer:
    """Model, optimizer and the jitted steps for one placement (a mesh, or one device)."""

    def __init__(self, args, cfg: ModelConfig, mesh: Mesh | None, params=None):
        self.mesh = mesh
        if mesh is None:
            self.act_sharding = self.batch_sharding = self.replicated = None
        else:
            self.act_sharding = NamedSharding(mesh, P("data", "seq", None))
            self.batch_sharding = NamedSharding(mesh, P("data", "seq"))
            self.replicated = NamedSharding(mesh, P())
        self.model = LM(cfg, self.act_sharding)
        schedule = optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=args.lr,
            warmup_steps=max(1, min(100, args.steps // 10)),
            decay_steps=max(args.steps, 2),
            end_value=args.lr / 10,
        )
        self.optimizer = optax.chain(
            optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.1))
        if params is None:
            params = LM(cfg).init(jax.random.key(args.seed), jnp.zeros((1, cfg.seq_len), jnp.int32))
        self.params = self.put(params, self.replicated)
        self.opt_state = self.put(self.optimizer.init(self.params), self.replicated)
        model, optimizer = self.model, self.optimizer

        def train_step(params, opt_state, inputs, targets):
            loss, grads = jax.value_and_grad(loss_fn)(params, model, inputs, targets)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        self.train_step = jax.jit(train_step, donate_argnums=(0, 1))
        self.eval_loss = jax.jit(lambda params, x, y: loss_fn(params, model, x, y))
        self.compiled_step = None

    @staticmethod
    def put(tree, sharding):
        return tree if sharding is None else jax.device_put(tree, sharding)

    def compile(self, inputs, targets) -> str:
        """Compile the train step ahead of time (later steps use it); returns its optimized HLO."""
        inputs, targets = self.put((inputs, targets), self.batch_sharding)
        self.compiled_step = self.train_step.lower(
            self.params, self.opt_state, inputs, targets).compile()
        return self.compiled_step.as_text()

    def step(self, inputs, targets):
        inputs, targets = self.put((inputs, targets), self.batch_sharding)
        step = self.compiled_step or self.train_step
        self.params, self.opt_state, loss = step(self.params, self.opt_state, inputs, targets)
        return loss

    def evaluate(self, inputs, targets) -> float:
        inputs, targets = self.put((inputs, targets), self.batch_sharding)
        return float(self.eval_loss(self.params, inputs, targets))


def sample(params, cfg: ModelConfig, tokenizer: CharTokenizer, prompt: str, length: int) -> str:
    """Greedy continuation. Causal attention: logits at position t only see tokens <= t, so one
    fixed-size (1, seq_len) buffer serves every step with a single compile."""
    model = LM(cfg)
    logits_at = jax.jit(lambda p, buf, t: model.apply(p, buf)[0, t])
    ids = list(tokenizer.encode(prompt))
    for _ in range(length):
        window = ids[-cfg.seq_len:]
        buf = np.zeros((1, cfg.seq_len), np.int32)
        buf[0, : len(window)] = window
        ids.append(int(jnp.argmax(logits_at(params, buf, len(window) - 1))))
    return tokenizer.decode(ids)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4, help="query heads (head_dim = d_model / heads)")
    p.add_argument("--kv-heads", type=int, default=None, help="key/value heads (GQA); default: --heads")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="compute dtype; auto: bfloat16 on GPU, float32 elsewhere (params stay float32)")
    p.add_argument("--mesh", nargs="?", const="auto", default=None, metavar="data=D,seq=S",
                   help="shard batch over 'data' and sequence over 'seq' across local devices "
                        "(bare --mesh: seq=2 where possible, data = the rest)")
    p.add_argument("--log-every", type=int, default=None, help="default: steps / 10")
    p.add_argument("--eval-batches", type=int, default=4)
    p.add_argument("--sample", type=int, default=120, help="characters to generate at the end (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fp8", action="store_true",
                   help="FP8 attention forward (q/k/v quantized to e4m3 inside the step; the "
                        "backward runs in --dtype)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    text = CORPUS.read_text()
    tokenizer = CharTokenizer(text)
    data = tokenizer.encode(text)
    split = int(0.9 * len(data))
    train_data, val_data = data[:split], data[split:]

    if args.dtype == "auto":
        dtype = jnp.bfloat16 if jax.default_backend() == "gpu" else jnp.float32
    else:
        dtype = jnp.dtype(args.dtype).type
    kv_heads = args.heads if args.kv_heads is None else args.kv_heads
    if args.d_model % args.heads or args.heads % kv_heads:
        raise SystemExit(f"--d-model ({args.d_model}) must divide by --heads ({args.heads}) and "
                         f"--heads by --kv-heads ({kv_heads})")
    cfg = ModelConfig(tokenizer.vocab_size, args.seq_len, args.layers, args.d_model, args.heads,
                      kv_heads, dtype, args.fp8)
    log_every = args.log_every or max(1, args.steps // 10)
    train_batches = batches(train_data, args.batch, args.seq_len, args.seed)
    val = [next(batches(val_data, args.batch, args.seq_len, args.seed + 1 + i))
           for i in range(args.eval_batches)]

    mesh_shape = parse_mesh(args.mesh, len(jax.devices()), args.batch, args.seq_len)
    trainer = Trainer(args, cfg, None if mesh_shape is None else make_mesh(*mesh_shape))
    n_params = sum(x.size for x in jax.tree.leaves(trainer.params))
    print(f"jax {jax.__version__} on {jax.default_backend()} ({len(jax.devices())} devices); "
          f"model: {args.layers} layers, d_model {args.d_model}, heads {args.heads}/{kv_heads} "
          f"(q/kv), head_dim {args.d_model // args.heads}, {n_params / 1e6:.2f}M params, "
          f"{jnp.dtype(dtype).name}; vocab {tokenizer.vocab_size}, corpus {len(data)} chars")

    def evaluate() -> float:
        return float(np.mean([trainer.evaluate(x, y) for x, y in val]))

    # The first step compiles. With a sequence-sharded mesh it is also where an unsupported
    # sequence-parallel path would fail: fall back to data parallelism instead of giving up.
    inputs, targets = next(train_batches)
    try:
        if mesh_shape is not None and mesh_shape[1] > 1:
            hlo = trainer.compile(inputs, targets)
            # Ring attention passes K/V blocks around the "seq" axis: collective-permutes.
            if "collective-permute" in hlo:
                print("sequence parallel: ring attention (K/V blocks rotate over 'seq')")
            else:
                print("sequence parallel: XLA-partitioned attention (no ring in the compiled step)")
        initial_eval = evaluate()
        first_loss = float(trainer.step(inputs, targets))
    except Exception as err:
        if mesh_shape is None or mesh_shape[1] == 1:
            raise
        data_only = math.gcd(len(jax.devices()), args.batch)
        print(f"sequence parallelism failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
              f"falling back to data parallelism over {data_only} devices", file=sys.stderr)
        mesh_shape = (data_only, 1)
        trainer = Trainer(args, cfg, make_mesh(*mesh_shape))
        initial_eval = evaluate()
        first_loss = float(trainer.step(inputs, targets))
    if mesh_shape is not None:
        print(f"mesh: data={mesh_shape[0]} x seq={mesh_shape[1]} "
              f"({mesh_shape[0] * mesh_shape[1]} devices)")
    print(f"step 1/{args.steps}: loss {first_loss:.4f} (held-out {initial_eval:.4f}; "
          f"includes compilation)")

    tokens_per_step = args.batch * args.seq_len
    show_bar = not args.no_progress and sys.stderr.isatty()
    bar = tqdm(range(2, args.steps + 1), initial=1, total=args.steps, disable=not show_bar,
               unit="step", dynamic_ncols=True)
    t_start = t_log = time.perf_counter()
    steps_since_log, loss = 0, first_loss
    for step in bar:
        loss = trainer.step(*next(train_batches))
        steps_since_log += 1
        if step % log_every == 0 or step == args.steps:
            loss = float(loss)  # waits for the step: the rate below is honest
            now = time.perf_counter()
            rate = steps_since_log * tokens_per_step / (now - t_log)
            t_log, steps_since_log = now, 0
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rate:,.0f}")
            tqdm.write(f"step {step}/{args.steps}: loss {loss:.4f}, {rate:,.0f} tokens/s")
    bar.close()
    loss = float(loss)
    elapsed = time.perf_counter() - t_start
    final_eval = evaluate()
    if args.steps > 1:
        print(f"trained {args.steps - 1} steps after the first in {elapsed:.1f}s: "
              f"{(args.steps - 1) * tokens_per_step / elapsed:,.0f} tokens/s")
    print(f"held-out loss: {initial_eval:.4f} -> {final_eval:.4f}; train loss {first_loss:.4f} "
          f"-> {loss:.4f}")
    if args.sample:
        params = jax.device_get(trainer.params)
        print("sample:", repr(sample(params, cfg, tokenizer, "In the morning, ", args.sample)))
    if not final_eval < initial_eval:
        print("FAILED: the held-out loss did not go down", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
