"""PyTorch reference for one distillation step, to compare with candle's
(`train bench step`, `train/src/bench/step.rs`): the same student (timm VisionTransformer), the last block
run only to LN1 + qkv with RELATION_HEADS heads, relation logits, the KL loss of TINYMIM.md,
backward and an AdamW step.

    python scripts/bench_torch_step.py [--preset vit-tiny] [--batch 8] [--heads 12] [--iters 5]
        [--device cpu|cuda[:N]] [--precision f32|bf16|tf32] [--compile] [--json] [--profile]

bf16 is `torch.autocast(dtype=torch.bfloat16)` around the forward, as candle's bf16 autocast
(products in bf16, the loss in f32); tf32 sets `allow_tf32` for float32 products. --compile
wraps the step's forward in `torch.compile`. Prints images/s of the step (after two warm-up
steps; the device synchronised before the clock starts and stops), the thread count and the
BLAS PyTorch uses; with --json one JSON line. --profile (CPU) adds where one step's time goes:
torch.profiler's self CPU time per op, in the categories scripts/profile_step.py gives candle's.
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

PRESETS = {"vit-tiny": (192, 12, 3), "vit-small": (384, 12, 6), "vit-base": (768, 12, 12)}

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--preset", default="vit-tiny", choices=sorted(PRESETS))
parser.add_argument("--batch", type=int, default=8)
parser.add_argument("--heads", type=int, default=12, help="relation heads of the last block")
parser.add_argument("--iters", type=int, default=5)
parser.add_argument("--device", default="cpu")
parser.add_argument("--precision", default="f32", choices=["f32", "bf16", "tf32"])
parser.add_argument("--compile", action="store_true")
parser.add_argument("--json", action="store_true")
parser.add_argument("--profile", action="store_true", help="self time per op category of one step")
args = parser.parse_args()

device = torch.device(args.device)
torch.backends.cuda.matmul.allow_tf32 = args.precision == "tf32"
torch.backends.cudnn.allow_tf32 = args.precision == "tf32"
dim, depth, heads = PRESETS[args.preset]
batch, rel_heads = args.batch, args.heads
torch.manual_seed(0)
model = VisionTransformer(img_size=224, patch_size=16, embed_dim=dim, depth=depth, num_heads=heads,
                          mlp_ratio=4, qkv_bias=True, num_classes=0, drop_path_rate=0.1).to(device)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
x = torch.randn(batch, 3, 224, 224, device=device)
n, d = 197, dim // rel_heads
t_qk = torch.softmax(torch.randn(batch, rel_heads, n, n, device=device), -1)
t_vv = torch.softmax(torch.randn(batch, rel_heads, n, n, device=device), -1)


def relation_logits(a, b):
    return a @ b.transpose(-2, -1) * d ** -0.5


def loss_of(x, t_qk, t_vv):
    h = model.patch_embed(x)
    h = torch.cat([model.cls_token.expand(batch, -1, -1), h], 1) + model.pos_embed
    for blk in model.blocks[:-1]:
        h = blk(h)
    last = model.blocks[-1]
    qkv = last.attn.qkv(last.norm1(h)).reshape(batch, n, 3, rel_heads, d).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    loss = 0
    for s, t in ((relation_logits(q, k), t_qk), (relation_logits(v, v), t_vv)):
        s = s.float()
        loss = loss + (t * (t.clamp_min(1e-30).log() - F.log_softmax(s, -1))).sum(-1).mean()
    return loss


forward = torch.compile(loss_of) if args.compile else loss_of


def step():
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
        loss = forward(x, t_qk, t_vv)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize(device)


began = time.perf_counter()
step()
step()
sync()
warm_up_s = time.perf_counter() - began
start = time.perf_counter()
for _ in range(args.iters):
    step()
sync()
elapsed = time.perf_counter() - start
blas = "cuBLAS" if device.type == "cuda" else (
    "MKL" if torch.backends.mkl.is_available() else "other (no MKL)")
result = {
    "check": "student_step",
    "engine": "pytorch-compile" if args.compile else "pytorch-eager",
    "torch": torch.__version__,
    "device": str(device),
    "preset": args.preset,
    "batch": batch,
    "relation_heads": rel_heads,
    "precision": args.precision,
    "reps": args.iters,
    "step_s": elapsed / args.iters,
    "images_per_s": batch * args.iters / elapsed,
    "warm_up_s": warm_up_s,
    "threads": torch.get_num_threads(),
    "blas": blas,
}

def category(op):
    """The category of a torch op (scripts/profile_step.py has the same names for candle's)."""
    name = op.removeprefix("aten::")
    if name.startswith("_foreach") or name in ("lerp_", "addcdiv_", "addcmul_") or "AdamW" in name:
        return "AdamW"
    if "scaled_dot_product" in name or "flash_attention" in name:
        return "attention, fused (products + softmax)"
    if name in ("mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "convolution", "_convolution",
                "mkldnn_convolution", "convolution_backward", "_mkldnn_convolution"):
        return "matrix products"
    if any(k in name for k in ("softmax", "gelu", "layer_norm", "log", "xlogy", "exp")):
        return "softmax, GELU, LayerNorm, loss"
    if name in ("copy_", "clone", "contiguous", "cat", "empty", "empty_strided", "zeros", "zero_",
                "fill_", "to", "_to_copy", "empty_like", "zeros_like", "new_zeros", "resize_",
                "as_strided", "unfold"):
        return "copies and allocation"
    if name in ("add", "add_", "mul", "mul_", "sub", "div", "div_", "neg", "sum", "mean", "clamp_min",
                "clamp", "where", "sqrt", "rsqrt", "expand", "fill", "threshold_backward"):
        return "element-wise and reductions"
    if name.startswith("autograd::") or name in ("view", "t", "transpose", "permute", "reshape",
                                                  "select", "slice", "unbind", "split", "detach"):
        return "framework (autograd, views)"
    return "other"


if args.profile and device.type == "cpu":
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    totals = {}
    for evt in prof.key_averages():
        totals[category(evt.key)] = totals.get(category(evt.key), 0.0) + evt.self_cpu_time_total
    whole = sum(totals.values())
    result["profile_share"] = {k: v / whole for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}
    if not args.json:
        print(f"pytorch eager step profile ({args.preset}, batch {batch}, relation heads {rel_heads}; "
              f"torch.profiler, self time per op):")
        for k, share in result["profile_share"].items():
            print(f"  {k:<40} {100 * share:5.1f} %")

if args.json:
    print(json.dumps(result))
else:
    print(f"pytorch {'compiled' if args.compile else 'eager'} step: {result['images_per_s']:.2f} "
          f"images/s ({args.preset}, batch {batch}, relation heads {rel_heads}, {args.precision} "
          f"on {device}, {result['threads']} threads, BLAS {blas})")
