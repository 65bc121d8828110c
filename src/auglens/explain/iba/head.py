"""Running only the part of a network after the bottleneck layer (a torch.fx split), for IBA's
repeated forward passes."""

from __future__ import annotations

import torch.fx as fx
from torch import Tensor, nn

from ...models.vit import TokenGrid

#: format version written into the safetensors metadata of an `Estimator`



class _LeafTracer(fx.Tracer):
    def __init__(self, leaf: str) -> None:
        super().__init__()
        self.leaf = leaf

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name == self.leaf or super().is_leaf_module(
            m, module_qualified_name
        )


def split_head(model: nn.Module, layer: str) -> fx.GraphModule | None:
    """The part of ``model`` after ``layer`` as a module ``head(z) -> logits`` sharing the
    model's sub-modules, or None when the model does not trace with torch.fx, the layer is not
    called exactly once, or the part after it needs values from before it other than its
    output (e.g. a skip connection around the layer). Trace in the mode the head will run in
    (``self.training`` branches are frozen)."""
    try:
        graph = _LeafTracer(layer).trace(model)
    except Exception:
        return None
    calls = [n for n in graph.nodes if n.op == "call_module" and n.target == layer]
    if len(calls) != 1:
        return None
    layer_node = calls[0]
    dep_x: set[fx.Node] = set()
    dep_layer: set[fx.Node] = {layer_node}
    for n in graph.nodes:
        if n is layer_node:
            continue
        if n.op == "placeholder" or any(a in dep_x for a in n.all_input_nodes):
            dep_x.add(n)
        if any(a in dep_layer for a in n.all_input_nodes):
            dep_layer.add(n)
    output = next(n for n in graph.nodes if n.op == "output")
    if output not in dep_layer:
        return None
    head = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in graph.nodes:
        if n is layer_node:
            env[n] = head.placeholder("z")
        elif n in dep_layer:
            if any(a in dep_x and a not in dep_layer for a in n.all_input_nodes):
                return None  # needs a pre-layer value (skip connection around the layer)
            env[n] = head.node_copy(n, lambda a: env[a])
        elif n not in dep_x:  # constants and parameters (get_attr)
            env[n] = head.node_copy(n, lambda a: env[a])
    try:
        gm = fx.GraphModule(model, head)
        gm.graph.eliminate_dead_code()
        gm.recompile()
    except Exception:
        return None
    return gm



class _TokenHead:
    """The fx head of a token layer, fed a grid: z → head(tokens with z as the patch tokens).
    The class token comes from the clean pass: ``tokens`` (B, N, D) for a z of B images, else
    repeated as the noisy batch (``reps`` target sets × B images, ``n`` copies each)."""

    def __init__(self, head: fx.GraphModule, grid: TokenGrid, tokens: Tensor, reps: int,
                 n: int) -> None:
        self.head, self.grid, self.tokens = head, grid, tokens
        self.noisy = tokens.repeat(reps, 1, 1).repeat_interleave(n, 0)

    def __call__(self, z: Tensor) -> Tensor:
        t = self.tokens if z.shape[0] == self.tokens.shape[0] else self.noisy
        return self.head(self.grid.to_tokens(z, t))


