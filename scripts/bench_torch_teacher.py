"""Throughput of the exported teacher graph's computation, run in PyTorch: what `extract teacher`
puts in the ONNX file for an MAE ViT (patch embedding, blocks 1..B-1 in full, block B's LN1 and
qkv, and the two relation maps softmax(qkᵀ/√d), softmax(vvᵀ/√d)), on random weights of the
same shape. It stands in for ONNX Runtime's CUDA provider where that library cannot be brought
to the GPU machine, to estimate the extraction rate on a GPU.

    python scripts/bench_torch_teacher.py [--arch vit-large] [--block 18] [--batch 64]
        [--iters 10] [--device cuda] [--precision f32|tf32|bf16|f16] [--json]
"""
import argparse
import json
import time

import torch
from timm.models.vision_transformer import VisionTransformer

ARCHS = {"vit-large": (1024, 24, 16), "vit-base": (768, 12, 12), "vit-small": (384, 12, 6)}

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--arch", default="vit-large", choices=sorted(ARCHS))
parser.add_argument("--block", type=int, default=18, help="target block, 1-based")
parser.add_argument("--batch", type=int, default=64)
parser.add_argument("--iters", type=int, default=10)
parser.add_argument("--device", default="cuda")
parser.add_argument("--precision", default="f32", choices=["f32", "tf32", "bf16", "f16"])
parser.add_argument("--json", action="store_true")
args = parser.parse_args()

device = torch.device(args.device)
torch.backends.cuda.matmul.allow_tf32 = args.precision == "tf32"
torch.backends.cudnn.allow_tf32 = args.precision == "tf32"
dim, depth, heads = ARCHS[args.arch]
if not 1 <= args.block <= depth:
    parser.error(f"--block must be in 1..{depth} for {args.arch}")
torch.manual_seed(0)
model = VisionTransformer(img_size=224, patch_size=16, embed_dim=dim, depth=depth, num_heads=heads,
                          mlp_ratio=4, qkv_bias=True, num_classes=0).to(device).eval()
n, d = 197, dim // heads
x = torch.randn(args.batch, 3, 224, 224, device=device)
autocast = {"bf16": torch.bfloat16, "f16": torch.float16}.get(args.precision)


@torch.inference_mode()
def teacher(x):
    with torch.autocast(device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        h = model.patch_embed(x)
        h = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), h], 1) + model.pos_embed
        for blk in model.blocks[: args.block - 1]:
            h = blk(h)
        target = model.blocks[args.block - 1]
        ln1 = target.norm1(h)
        qkv = target.attn.qkv(ln1).reshape(x.shape[0], n, 3, heads, d).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        r_qk = torch.softmax((q @ k.transpose(-2, -1)).float() * d ** -0.5, -1)
        r_vv = torch.softmax((v @ v.transpose(-2, -1)).float() * d ** -0.5, -1)
    return ln1, q, k, v, r_qk, r_vv


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize(device)


teacher(x)
sync()
start = time.perf_counter()
for _ in range(args.iters):
    teacher(x)
sync()
elapsed = time.perf_counter() - start
result = {
    "check": "teacher_forward",
    "engine": "pytorch-eager (the exported teacher graph's computation)",
    "torch": torch.__version__,
    "device": str(device),
    "arch": args.arch,
    "target_block": args.block,
    "batch": args.batch,
    "precision": args.precision,
    "views_per_s": args.batch * args.iters / elapsed,
}
print(json.dumps(result) if args.json else
      f"teacher {args.arch} to block {args.block}: {result['views_per_s']:.1f} views/s "
      f"({args.precision} on {device}, batch {args.batch})")
