"""Class-activation maps inside the exported graph: an extra ``cam`` output, exact for a GAP + linear head.

For a backbone that ends in a global average pool of a feature map ``F`` (C, h, w) followed only by
identity-like layers (Flatten, Dropout in eval, Identity) and a linear head ``(W, b)``, the head's
logit ``k`` is ``mean_{i,j}(sum_c W[k, c] F[c, i, j]) + b[k]``, so the map
``M_k = sum_c W[k, c] F[c]`` explains that logit exactly: its spatial mean plus the bias *is* it.

    net, explain = explained_net(models, tta=("hflip",))   # ExplainedNet, or a plain EnsembleNet + reason
    export_onnx(net, "model.onnx", metadata=replace(meta, explain=explain))

Maps: the single head gives one per class (18); the multi head one per head value (mask 3, gender 2,
age 3, in that order). A TTA view's maps are un-flipped before averaging; an ensemble averages its
members' maps (and ``explain["bias"]`` is the members' mean bias). The graph's ``cam`` output is
float32 ``(N, K, h, w)``; ``explain`` in the metadata says what each map is (docs/ARCHITECTURE.md).
"""
from __future__ import annotations

import torch
from torch import nn

from export.graph import EnsembleNet
from maskdata import labels

CAM_OUTPUT = "cam"
# views whose maps must be mirrored back before averaging (the image was mirrored along its width)
_UNFLIP = {"hflip": lambda m: torch.flip(m, dims=[-1])}


def gap_pool(model: nn.Module) -> nn.Module:
    """The backbone's final global-average pool, checked to feed the head unchanged; else ValueError."""
    pools = [m for m in model.backbone.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    if not pools or pools[-1].output_size not in (1, (1, 1)):
        raise ValueError(f"{model.arch}: the backbone has no global average pool before its head")
    pool, seen = pools[-1], []
    handle = pool.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    was_training = model.training
    try:
        model.eval()
        pre = model.preprocess
        x = torch.randint(0, 256, (2, pre.height, pre.width, 3), dtype=torch.uint8)
        with torch.no_grad():
            feats = model.backbone(model.normalize(x))
    finally:
        handle.remove()
        model.train(was_training)
    pooled = seen[0].mean(dim=(2, 3)) if len(seen) == 1 else None
    if pooled is None or pooled.shape != feats.shape or not torch.allclose(pooled, feats, atol=1e-5):
        raise ValueError(f"{model.arch}: layers between the global average pool and the head change the "
                         f"features (e.g. a hidden layer or a norm), so a class-activation map is not exact")
    return pool


def head_weights(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """(W (K, C), b (K,), what each map is) of a MaskNet's head(s)."""
    if model.head_type == "single":
        table = labels.label_table_dicts()
        maps = [{"head": "class", "index": r["index"], "value": f"{r['mask']}/{r['gender']}/{r['age']}"}
                for r in table]
        return model.head.weight, model.head.bias, maps
    names = {"mask": labels.MASK_NAMES, "gender": labels.GENDER_NAMES, "age": labels.AGE_NAMES}
    maps = [{"head": h, "index": i, "value": v} for h in labels.HEAD_SIZES for i, v in enumerate(names[h])]
    weight = torch.cat([model.head[h].weight for h in labels.HEAD_SIZES])
    bias = torch.cat([model.head[h].bias for h in labels.HEAD_SIZES])
    return weight, bias, maps


class ExplainedNet(EnsembleNet):
    """``forward(uint8 NHWC) -> (logits, probs, cam)``: the ensemble's answer plus its mean maps."""

    extra_outputs = (CAM_OUTPUT,)

    def __init__(self, models: list[nn.Module], tta: tuple[str, ...] = ()):
        super().__init__(models, tta)
        self.pools = [gap_pool(m) for m in models]   # plain list: the pools are already submodules

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        seen: list[torch.Tensor] = []
        handles = [p.register_forward_hook(lambda mod, inp, out: seen.append(inp[0])) for p in self.pools]
        try:
            logits, probs = super().forward(x)
        finally:
            for h in handles:
                h.remove()
        views = ("",) + self.tta
        maps = []
        for member, feats in zip(self.members, seen):   # members run in order, one pool call each
            weight, _, _ = head_weights(member)
            cam = torch.einsum("kc,nchw->nkhw", weight.float(), feats.float())
            per_view = cam.reshape(len(views), x.shape[0], *cam.shape[1:])
            maps += [_UNFLIP[v](per_view[i]) if v in _UNFLIP else per_view[i] for i, v in enumerate(views)]
        return logits, probs, torch.stack(maps).mean(dim=0)


def explained_net(models: list[nn.Module], tta: tuple[str, ...] = ()) -> tuple[EnsembleNet, dict]:
    """An :class:`ExplainedNet` and its ``explain`` metadata, or a plain ensemble and the reason why not."""
    try:
        net = ExplainedNet(models, tta)
    except ValueError as e:
        return EnsembleNet(models, tta), {"available": False, "reason": str(e)}
    with torch.no_grad():
        biases = torch.stack([head_weights(m)[1].float() for m in models]).mean(dim=0)
    _, _, maps = head_weights(models[0])
    return net, {"available": True, "output": CAM_OUTPUT, "method": "cam: global-average-pool + linear head",
                 "head": models[0].head_type, "maps": maps, "bias": [float(b) for b in biases],
                 "members": len(models), "tta": list(net.tta)}
