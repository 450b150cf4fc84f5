"""PyTorch eager reference for one distillation step on the CPU, to compare with candle's
(`train/examples/student_speed.rs`): the same student (timm VisionTransformer, vit-tiny by
default: D 192, depth 12, 3 heads), the last block run only to LN1 + qkv with RELATION_HEADS
heads, relation logits, the KL loss of TINYMIM.md, backward and an AdamW step.

    python scripts/bench_torch_step.py [BATCH] [RELATION_HEADS] [ITERS] [DIM DEPTH HEADS]

Prints images/s of the step (after one warm-up step) and the torch thread count."""
import sys
import time

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

batch = int(sys.argv[1]) if len(sys.argv) > 1 else 8
rel_heads = int(sys.argv[2]) if len(sys.argv) > 2 else 12
iters = int(sys.argv[3]) if len(sys.argv) > 3 else 5
dim, depth, heads = (int(v) for v in sys.argv[4:7]) if len(sys.argv) > 6 else (192, 12, 3)
torch.manual_seed(0)
model = VisionTransformer(img_size=224, patch_size=16, embed_dim=dim, depth=depth, num_heads=heads,
                          mlp_ratio=4, qkv_bias=True, num_classes=0, drop_path_rate=0.1)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
x = torch.randn(batch, 3, 224, 224)
n, d = 197, dim // rel_heads
t_qk = torch.softmax(torch.randn(batch, rel_heads, n, n), -1)
t_vv = torch.softmax(torch.randn(batch, rel_heads, n, n), -1)


def relation_logits(a, b):
    return a @ b.transpose(-2, -1) * d ** -0.5


def step():
    h = model.patch_embed(x)
    h = torch.cat([model.cls_token.expand(batch, -1, -1), h], 1) + model.pos_embed
    for blk in model.blocks[:-1]:
        h = blk(h)
    last = model.blocks[-1]
    qkv = last.attn.qkv(last.norm1(h)).reshape(batch, n, 3, rel_heads, d).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    loss = 0
    for s, t in ((relation_logits(q, k), t_qk), (relation_logits(v, v), t_vv)):
        loss = loss + (t * (t.clamp_min(1e-30).log() - F.log_softmax(s, -1))).sum(-1).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


step()
start = time.perf_counter()
for _ in range(iters):
    step()
elapsed = time.perf_counter() - start
print(f"pytorch eager step: {batch * iters / elapsed:.2f} images/s "
      f"(batch {batch}, D {dim}, depth {depth}, relation heads {rel_heads}, {torch.get_num_threads()} threads)")
