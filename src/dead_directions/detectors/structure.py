"""Model structure without fx: one hooked probe pass records which module feeds which."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from dead_directions.core.fisher import check_output, eval_mode
from dead_directions.nn.surgery import producer_units

# Order p of σ(z) ~ z^p at 0 for activations with σ(0) = 0, by module class / op name.
ACTIVATION_ORDERS: dict[str, int] = {
    "relu": 1,
    "relu6": 1,
    "leaky_relu": 1,
    "elu": 1,
    "selu": 1,
    "celu": 1,
    "gelu": 1,
    "silu": 1,
    "mish": 1,
    "tanh": 1,
    "hardtanh": 1,
    "softsign": 1,
    "hardswish": 1,
    "tanhshrink": 3,
    "square": 2,
    # module classes (torch.nn and transformers.activations)
    "ReLU": 1,
    "ReLU6": 1,
    "LeakyReLU": 1,
    "ELU": 1,
    "SELU": 1,
    "CELU": 1,
    "GELU": 1,
    "SiLU": 1,
    "Mish": 1,
    "Tanh": 1,
    "Hardtanh": 1,
    "Softsign": 1,
    "Hardswish": 1,
    "Tanhshrink": 3,
    "GELUActivation": 1,
    "NewGELUActivation": 1,
    "FastGELUActivation": 1,
    "QuickGELUActivation": 1,
    "AccurateGELUActivation": 1,
    "PytorchGELUTanh": 1,
    "GELUTanh": 1,
    "SiLUActivation": 1,
    "MishActivation": 1,
    "ReLUSquaredActivation": 2,
}
# Elementwise activations whose order at 0 is not a power (σ(0) ≠ 0, or flat at 0).
OTHER_ACTIVATIONS = {"sigmoid", "softplus", "hardsigmoid", "softshrink", "hardshrink", "exp"}
IDENTITY_OPS = {
    "dropout",
    "alpha_dropout",
    "feature_alpha_dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "contiguous",
    "clone",
    "double",
    "float",
    "to",
    "type",
}
IDENTITY_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Identity)
POOL_MODULES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
POOL_OPS = {
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool3d",
    "adaptive_max_pool1d",
    "adaptive_max_pool2d",
    "adaptive_max_pool3d",
    "max_pool2d_with_indices",
}
RESHAPE_OPS = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze"}
ROW_SELECT_OPS = {"__getitem__", "select", "narrow", "index_select", "expand", "repeat"}
SPATIAL_REDUCE_OPS = {"mean", "sum", "amax"}
ATTENTION_CHILDREN = (("q", "k"), ("query", "key"), ("q_proj", "k_proj"))
HEAD_ATTRIBUTES = ("heads", "num_heads", "n_heads", "num_attention_heads", "n_head")


@dataclass(frozen=True, eq=False)
class Event:
    """One recorded call: a leaf module (``kind='module'``) or a torch op outside modules.

    ``inputs``/``outputs`` index values in :attr:`Structure.values`; ``call`` re-applies
    a single-tensor op or module to another tensor (None where the call has several
    tensor inputs or is not re-playable); ``scalars`` are the call's non-tensor arguments.
    """

    index: int
    kind: str
    name: str
    target: object
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    call: Callable | None = None
    scalars: tuple = ()


@dataclass(eq=False)
class Value:
    """A tensor value: who made it (event index, or None for a source), its snapshot."""

    producer: int | None
    tensor: torch.Tensor
    consumers: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Step:
    """What a path op does to the unit axis: ``kind`` is identity|activation|pool|flatten|
    reduce|reshape|select; ``order`` the activation order (None if unknown)."""

    kind: str
    order: float | None = None


@dataclass(frozen=True, eq=False)
class Chain:
    """A path from a value through single-input ops to the event that ends it."""

    start: int
    steps: tuple[int, ...]
    end: int
    end_input: int
    exclusive: bool


class Structure:
    """The probe-pass graph of a model: events, values and query helpers."""

    def __init__(self, events, values, output_value, used_params, module_of):
        self.events: list[Event] = events
        self.values: list[Value] = values
        self.output_value: int | None = output_value
        self.used_params: set[str] = used_params
        self.module_of = module_of
        self.calls: dict[str, list[Event]] = {}
        for e in events:
            if e.kind == "module":
                self.calls.setdefault(e.name, []).append(e)

    # -- queries -----------------------------------------------------------------------
    def chains(self, value: int, allow: Callable[[Event], bool]) -> list[Chain]:
        """Every path from ``value`` through ops ``allow`` accepts, to the first other event.

        ``exclusive``: every value on the path (``value`` included) has one consumer.
        """
        out: list[Chain] = []

        def walk(v: int, steps: tuple[int, ...], exclusive: bool, seen: int):
            consumers = self.values[v].consumers
            exclusive = exclusive and len(consumers) == 1
            for c in consumers:
                e = self.events[c]
                if seen > 64:
                    continue
                if allow(e) and len(e.outputs) == 1 and self._tensor_inputs(e) == 1:
                    walk(e.outputs[0], (*steps, c), exclusive, seen + 1)
                else:
                    out.append(Chain(value, steps, c, v, exclusive))

        walk(value, (), True, 0)
        return out

    def _tensor_inputs(self, e: Event) -> int:
        """Number of non-source tensor inputs (parameters and constants do not count)."""
        return sum(1 for i in e.inputs if self.values[i].producer is not None)

    def producer_chain(self, value: int, allow: Callable[[Event], bool]) -> Chain | None:
        """Walk back from ``value`` through ops ``allow`` accepts to the producing event."""
        steps: list[int] = []
        v = value
        for _ in range(64):
            p = self.values[v].producer
            if p is None:
                return None
            e = self.events[p]
            if allow(e) and len(e.outputs) == 1 and self._tensor_inputs(e) == 1:
                steps.append(p)
                v = next(i for i in e.inputs if self.values[i].producer is not None)
                continue
            # values from the producer's output down to ``value``: each one before ``value``
            # feeds only the next op; ``value`` itself at most one consumer (0: the output)
            path = [e.outputs[0], *(self.events[s].outputs[0] for s in reversed(steps))]
            exclusive = all(len(self.values[x].consumers) == 1 for x in path[:-1]) and (
                len(self.values[path[-1]].consumers) <= 1
            )
            return Chain(e.outputs[0], tuple(reversed(steps)), p, value, exclusive)
        return None

    def module_input(self, e: Event) -> int:
        """The data a module call acts on: its first tensor argument."""
        return e.inputs[0]


def step_of(e: Event) -> Step | None:
    """Classify a path event by what it does to a unit axis; None when unknown."""
    if e.kind == "module":
        m = e.target
        cls = type(m).__name__
        if isinstance(m, IDENTITY_MODULES):
            return Step("identity")
        if isinstance(m, POOL_MODULES):
            return Step("pool")
        if isinstance(m, nn.Flatten):
            return Step("flatten")
        order = getattr(m, "order", None)
        if isinstance(order, int | float) and not isinstance(order, bool) and order > 0:
            return Step("activation", float(order))
        if cls in ACTIVATION_ORDERS:
            return Step("activation", float(ACTIVATION_ORDERS[cls]))
        module_path = type(m).__module__
        if module_path in ("torch.nn.modules.activation", "transformers.activations"):
            if cls not in ("Softmax", "LogSoftmax", "Softmin", "MultiheadAttention", "GLU"):
                return Step("activation", None)
        return None
    name = e.name.rstrip("_") if e.name not in ("__getitem__",) else e.name
    if name in ACTIVATION_ORDERS:
        return Step("activation", float(ACTIVATION_ORDERS[name]))
    if name in ("pow", "__pow__"):
        exponent = e.scalars[0] if e.scalars else None
        if isinstance(exponent, int | float) and float(exponent).is_integer() and exponent >= 1:
            return Step("activation", float(exponent))
        return None
    if name in OTHER_ACTIVATIONS:
        return Step("activation", None)
    if name in IDENTITY_OPS:
        return Step("identity")
    if name in POOL_OPS:
        return Step("pool")
    if name in RESHAPE_OPS:
        return Step("reshape")
    if name in ROW_SELECT_OPS:
        return Step("select")
    if name in SPATIAL_REDUCE_OPS:
        return Step("reduce")
    return None


def is_attention(module: nn.Module) -> bool:
    """A module with child Linears named q/k (or query/key, q_proj/k_proj)."""
    children = dict(module.named_children())
    return any(
        isinstance(children.get(a), nn.Linear) and isinstance(children.get(b), nn.Linear)
        for a, b in ATTENTION_CHILDREN
    )


def attention_parts(module: nn.Module) -> tuple[str, str, int | None] | None:
    """(query child, key child, number of heads or None) of an attention module."""
    children = dict(module.named_children())
    for a, b in ATTENTION_CHILDREN:
        if isinstance(children.get(a), nn.Linear) and isinstance(children.get(b), nn.Linear):
            heads = None
            for attr in HEAD_ATTRIBUTES:
                h = getattr(module, attr, None)
                if isinstance(h, int) and h > 0:
                    heads = h
                    break
            return a, b, heads
    return None


def layer_type(module: nn.Module) -> str:
    """The key of ``DEFAULT_BY_LAYER_TYPE`` for a module: ``'attention'`` or its class name."""
    if is_attention(module):
        return "attention"
    return type(module).__name__


class _Recorder(TorchFunctionMode):
    """Records torch ops called outside leaf modules (the glue between modules)."""

    def __init__(self, tracer: _Tracer):
        super().__init__()
        self.tracer = tracer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.tracer.depth == 0:
            self.tracer.depth += 1
            try:
                self.tracer.record_op(func, args, kwargs, out)
            finally:
                self.tracer.depth -= 1
        return out


class _Tracer:
    def __init__(self):
        self.events: list[Event] = []
        self.values: list[Value] = []
        self.latest: dict[int, int] = {}
        self.keep: list[torch.Tensor] = []
        self.depth = 0

    def resolve(self, t: torch.Tensor) -> int:
        key = id(t)
        if key not in self.latest:
            self.keep.append(t)
            self.values.append(Value(None, t.detach()))
            self.latest[key] = len(self.values) - 1
        return self.latest[key]

    def add_event(self, kind, name, target, in_tensors, out_tensors, call=None, scalars=()):
        inputs = tuple(self.resolve(t) for t in in_tensors)
        index = len(self.events)
        outputs = []
        for t in out_tensors:
            self.keep.append(t)
            self.values.append(Value(index, t.detach().clone()))
            self.latest[id(t)] = len(self.values) - 1
            outputs.append(len(self.values) - 1)
        for i in dict.fromkeys(inputs):
            self.values[i].consumers.append(index)
        self.events.append(Event(index, kind, name, target, inputs, tuple(outputs), call, scalars))

    def record_op(self, func, args, kwargs, out):
        flat_in, _ = tree_flatten((args, kwargs))
        in_tensors = [a for a in flat_in if isinstance(a, torch.Tensor)]
        out_tensors = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        if not out_tensors or not in_tensors:
            return
        name = getattr(func, "__name__", str(func))
        scalars = tuple(a for a in flat_in if not isinstance(a, torch.Tensor))
        call = None
        if len(in_tensors) == 1 and isinstance(args[0] if args else None, torch.Tensor):
            rest = args[1:]

            def call(z, func=func, rest=rest, kwargs=kwargs):
                return func(z, *rest, **kwargs)

        self.add_event("op", name, func, in_tensors, out_tensors, call, scalars)


def trace(ctx) -> Structure:
    """Run the first probe batch once with hooks; build the value graph.

    Leaf modules are recorded as single events (their inputs: every tensor argument,
    positional and keyword); torch ops called between modules are recorded through a
    ``TorchFunctionMode``. Values are matched by tensor identity (the recorder keeps
    every tensor alive, so identities are not reused). In-place ops are followed: a
    value's producer is the latest call that returned that tensor object. Also returns
    the parameters the output depends on (autograd reachability on the probe batch).
    """
    model = ctx.model
    tracer = _Tracer()
    names = {id(m): n for n, m in ctx.modules.items()}
    leaves = {id(m) for m in ctx.modules.values() if not any(True for _ in m.children())}
    handles = []

    def pre(module, args, kwargs):
        tracer.depth += 1

    def post(module, args, kwargs, out):
        # Bookkeeping runs at depth 1, so its own torch calls are not recorded as ops.
        if tracer.depth == 1:
            flat_in = tree_flatten((args, kwargs))[0]
            in_tensors = [a for a in flat_in if isinstance(a, torch.Tensor)]
            out_tensors = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
            if in_tensors and out_tensors:
                tracer.add_event("module", names[id(module)], module, in_tensors, out_tensors)
        tracer.depth -= 1

    seen = set()
    for module in ctx.modules.values():
        if id(module) in leaves and id(module) not in seen:
            seen.add(id(module))
            handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(module.register_forward_hook(post, with_kwargs=True))
    params = {k: v.clone().requires_grad_(True) for k, v in ctx.params.items()}
    try:
        with eval_mode(model), torch.enable_grad(), _Recorder(tracer):
            args, kwargs = ctx.batches[0]
            state = {**ctx.buffers, **params}
            y = functional_call(model, state, args, kwargs, strict=False)
            if ctx.output is not None:
                y = ctx.output(y)
    finally:
        for h in handles:
            h.remove()
    y = check_output(y)
    output_value = tracer.latest.get(id(y))
    names_list = list(params)
    ct = torch.randn(y.shape, generator=torch.Generator().manual_seed(0), dtype=y.dtype)
    ct = ct.to(y.device)
    grads = (
        torch.autograd.grad(y, [params[k] for k in names_list], ct, allow_unused=True)
        if y.requires_grad
        else [None] * len(names_list)
    )
    used = {k for k, g in zip(names_list, grads, strict=True) if g is not None}
    module_of = {id(m): n for n, m in ctx.modules.items()}
    for v in tracer.values:
        v.tensor = v.tensor.detach()
    return Structure(tracer.events, tracer.values, output_value, used, module_of)


def unit_map(structure: Structure, chain: Chain, producer: nn.Module) -> tuple[int, float] | None:
    """How unit j of ``producer`` (Linear output feature / Conv output channel) reaches
    the chain's end: returns ``(block, order)`` with the end's input columns
    ``j·block … (j+1)·block − 1`` (Linear consumer) or channel ``j`` (Conv consumer,
    block 1), and the composed activation order (NaN when some activation's order is
    unknown, 0 when there is no activation). None when the path is not one this
    function can follow exactly (elementwise ops; for conv, pooling, flatten, spatial
    mean).
    """
    is_conv = isinstance(producer, nn.Conv1d | nn.Conv2d | nn.Conv3d) or (
        isinstance(producer, nn.modules.batchnorm._BatchNorm)
        and structure.values[chain.start].tensor.ndim > 2
    )
    order = 1.0
    activations = 0
    channels_last = not is_conv
    block = 1
    v = chain.start
    for index in chain.steps:
        e = structure.events[index]
        st = step_of(e)
        if st is None:
            return None
        x_in = structure.values[v].tensor
        x_out = structure.values[e.outputs[0]].tensor
        if st.kind == "activation":
            activations += 1
            order = order * st.order if st.order is not None else math.nan
            if x_in.shape != x_out.shape:
                return None
        elif st.kind == "identity":
            if x_in.shape != x_out.shape:
                return None
        elif st.kind == "pool" and not channels_last:
            if x_out.shape[:2] != x_in.shape[:2]:
                return None
        elif st.kind in ("flatten", "reshape", "reduce") and not channels_last:
            # (B, C, *S) -> (B, C·S') with channel-major order (flatten or spatial mean).
            if x_out.ndim != 2 or x_out.shape[0] != x_in.shape[0]:
                return None
            c = x_in.shape[1]
            if x_out.shape[1] % c:
                return None
            if st.kind == "reduce":
                if x_out.shape[1] != c:
                    return None
            elif x_out.shape[1] != x_in[0].numel():
                return None
            block = x_out.shape[1] // c
            channels_last = True
        elif st.kind == "reshape" and channels_last:
            if x_out.shape[-1] != x_in.shape[-1]:
                return None
        else:
            return None
        v = e.outputs[0]
    if activations == 0:
        order = 0.0
    end = structure.events[chain.end]
    if end.kind != "module":
        return None
    consumer = end.target
    if isinstance(consumer, nn.Linear):
        if not channels_last or consumer.in_features != producer_units(producer) * block:
            return None
        return block, order
    if isinstance(consumer, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        if channels_last or consumer.groups != 1:
            return None
        if consumer.in_channels != producer_units(producer):
            return None
        return 1, order
    return None
