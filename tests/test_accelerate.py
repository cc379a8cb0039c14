"""Models placed by Accelerate explain exactly as the plain model does: layers spread by a device map (real
`dispatch_model` hooks, every entry "cpu" on this machine), CPU and disk offload (weights on `meta`, loaded by the
hooks at each forward; also a whole block around the embedding offloaded), `from_pretrained(device_map=...,
offload_folder=...)`, and a model built on `meta` and then loaded and dispatched. Broken placements are refused before any work, with the model left as it was."""

from __future__ import annotations

import copy

import pytest
import torch
from accelerate import cpu_offload, disk_offload, dispatch_model, init_empty_weights, load_checkpoint_and_dispatch
from transformers import AutoModelForCausalLM
from tiny_tokenizer import tiny_llama, tiny_tokenizer

import llm_attrib
from llm_attrib import InvalidInputError, UnsupportedModelError, rag
from llm_attrib.attributor import covered
from llm_attrib.core import memory
from llm_attrib.core.memory import saved_bytes
from llm_attrib.core.placement import execution_devices, input_device
from llm_attrib.core.spaces import EmbeddingSpace, make_space
from llm_attrib.core.static_prefix import prefix_length, static_prefix
from llm_attrib.patching import prepared

PROMPT, ANSWER = "w1 w2 w3 w4 w5", "w6 w7"
FAST = {"n_steps": 8, "quadrature": "gauss-legendre"}
SPREAD = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.norm": "cpu",
          "model.rotary_emb": "cpu", "lm_head": "disk"}


def build(placement: str, folder) -> torch.nn.Module:
    """The tiny Llama, placed as named (`folder`: a fresh temporary directory)."""
    model = tiny_llama()
    if placement == "plain":
        return model
    if placement == "device_map":
        return dispatch_model(model, {k: "cpu" for k in SPREAD}, force_hooks=True)
    if placement == "block_offload":  # the embedding's weights held by the hook of the block around it
        return dispatch_model(model, {"model": "disk", "lm_head": "cpu"}, offload_dir=str(folder / "offload"))
    if placement == "cpu_offload":
        return cpu_offload(model, execution_device="cpu")
    if placement == "disk_offload":
        return disk_offload(model, str(folder / "offload"), execution_device="cpu")
    model.save_pretrained(folder / "saved")
    if placement == "from_pretrained":
        return AutoModelForCausalLM.from_pretrained(folder / "saved", device_map=SPREAD,
                                                    offload_folder=str(folder / "offload")).eval()
    assert placement == "meta_dispatched"
    with init_empty_weights():
        empty = type(model)(model.config).eval()
    return load_checkpoint_and_dispatch(empty, str(folder / "saved"), device_map=SPREAD,
                                        offload_folder=str(folder / "offload"))


PLACED = ["device_map", "block_offload", "cpu_offload", "disk_offload", "from_pretrained", "meta_dispatched"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    built = {name: build(name, tmp_path_factory.mktemp(name)) for name in ["plain", *PLACED]}
    return built, tiny_tokenizer()


def scores(model, tokenizer, **kwargs) -> torch.Tensor:
    return llm_attrib.Attributor(model, tokenizer, show_progress=False).explain(PROMPT, ANSWER, **kwargs).scores


def test_placements_are_real(models):
    """Each placed model is what its name says: hooks on every placed module, and under offload weights on meta."""
    built, _ = models
    for name in PLACED:
        model = built[name]
        assert hasattr(model.model.embed_tokens if name != "block_offload" else model.model, "_hf_hook"), name
        assert input_device(model) == torch.device("cpu") and execution_devices(model) == [torch.device("cpu")]
    assert all(p.device.type == "cpu" for p in built["device_map"].parameters())
    assert built["disk_offload"].lm_head.weight.device.type == "meta"
    assert built["block_offload"].model.embed_tokens.weight.device.type == "meta"
    assert built["cpu_offload"].model.embed_tokens.weight.device.type == "meta"
    assert built["from_pretrained"].model.layers[1].mlp.up_proj.weight.device.type == "meta"
    assert built["meta_dispatched"].lm_head.weight.device.type == "meta"


@pytest.mark.parametrize("placement", PLACED)
@pytest.mark.parametrize("space", ["embeddings", "attention", "mask"])
def test_every_space_equals_the_plain_model(models, placement, space):
    built, tokenizer = models
    expected = scores(built["plain"], tokenizer, method="ig", space=space, **FAST)
    got = scores(built[placement], tokenizer, method="ig", space=space, **FAST)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method, params", [
    ("ig2", {"references": ["w9 w10 w11", "w12 w13", "w20 w21 w22 w23"], "n_references": 2, "n_steps": 4,
             "quadrature": "gauss-legendre", "segment_steps": 1}),
    ("rpi", {"space": "embeddings", "n_baselines": 2, "seed": 3, **FAST}),
    ("rpi", {"space": "attention", "n_baselines": 2, "seed": 3, **FAST}),
    ("saliency", {}),
    ("input_x_gradient", {"space": "mask"}),
    ("attention", {}),
])
def test_every_method_equals_the_plain_model_under_disk_offload(models, method, params):
    """Disk offload is the hardest placement: every weight, the embedding's included, lives on disk between forwards."""
    built, tokenizer = models
    expected = scores(built["plain"], tokenizer, method=method, **params)
    got = scores(built["disk_offload"], tokenizer, method=method, **params)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("space", ["embeddings", "mask"])
def test_the_static_prefix_runs_from_the_cache_under_offload(models, space):
    """Tokens no path point moves run once and later chunks reuse their cache: under disk offload the cached
    forward reproduces the model's logits (so the prefix is used), and the scores equal the plain model's."""
    built, tokenizer = models
    prompt = "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12"
    span = [(prompt.index("w10"), len(prompt))]
    model = built["disk_offload"]
    seq = llm_attrib.Attributor(model, tokenizer).sequence(prompt, ANSWER)
    seq.keep = seq.keep | ~covered(seq, span)
    chosen = make_space(space)
    with prepared(model, hook_attention=chosen.uses_attention_hook):
        assert static_prefix(model, seq, chosen, chosen.point(model, seq), prefix_length(seq)) is not None
    expected, got = (llm_attrib.Attributor(m, tokenizer, show_progress=False).explain(
        prompt, ANSWER, space=space, attribute_to=span, **FAST).scores for m in (built["plain"], model))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_explaining_an_offloaded_model_leaves_it_as_it_was(models):
    """Offload hooks replace a module's parameter objects at each forward: the flags come back all the same."""
    built, tokenizer = models
    model = built["disk_offload"]
    before = state_of(model)
    scores(model, tokenizer, method="ig", space="attention", **FAST)
    assert_unchanged(before, state_of(model))


def test_offloaded_point_keeps_the_bytes_of_the_plain_one(models):
    """The memory measurement counts activations only: weights an offload hook loads for a forward are not
    charged to every path point (they would make a big offloaded model refuse any chunk)."""
    built, tokenizer = models
    attributor = llm_attrib.Attributor(built["plain"], tokenizer)
    seq = attributor.sequence(PROMPT, ANSWER)
    space = EmbeddingSpace()

    def measured(model) -> int:
        return saved_bytes(lambda p: space.logits(model, seq, p).sum(-1), space.point(model, seq), model)

    assert measured(built["disk_offload"]) == measured(built["plain"])


def test_the_budget_is_read_on_the_device_with_the_least_free_memory(monkeypatch):
    """A chunk's activations pass through every device the model computes on: the budget is the smallest share.
    The second device is a hook's execution device as Accelerate records it (an index means a GPU); nothing runs
    on it here."""
    model = dispatch_model(tiny_llama(), {k: "cpu" for k in SPREAD}, force_hooks=True)
    model.lm_head._hf_hook.execution_device = 1
    free = {torch.device("cpu"): 10 * 2**30, torch.device("cuda", 1): 2**30}
    monkeypatch.setattr(memory, "available_bytes", lambda device: free[device])
    assert execution_devices(model) == [torch.device("cpu"), torch.device("cuda", 1)]
    assert memory.budget_bytes(model) == int(memory.HEADROOM * 2**30)


def test_the_budget_leaves_room_for_the_offloaded_weights_a_backward_holds(models, monkeypatch):
    """Autograd keeps every layer's weights from the forward until the backward: under offload they are all
    loaded at once, so the budget is the free share less their bytes, and a model whose weights cannot all be
    held is refused with what to do (the attention method, without a backward, still runs)."""
    built, tokenizer = models
    model = built["disk_offload"]
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    monkeypatch.setattr(memory, "available_bytes", lambda device: 10 * weights)
    assert memory.budget_bytes(model) == int(memory.HEADROOM * 10 * weights) - weights
    assert memory.budget_bytes(built["plain"]) == int(memory.HEADROOM * 10 * weights)
    monkeypatch.setattr(memory, "available_bytes", lambda device: weights)
    attributor = llm_attrib.Attributor(model, tokenizer, show_progress=False)
    with pytest.raises(InvalidInputError, match="holds all its weights offloaded to cpu at once"):
        attributor.explain(PROMPT, ANSWER, **FAST)
    assert attributor.explain(PROMPT, ANSWER, method="attention").scores.shape[0] == 2


def test_rag_explain_on_an_offloaded_zoo_model_equals_the_plain_one(tmp_path):
    model, tokenizer = llm_attrib.zoo.load("rag")
    example = llm_attrib.zoo.examples("rag", n=1, seed=31)[0]
    run = dict(template="zoo", space="mask", show_progress=False, n_steps=8, quadrature="gauss-legendre",
               verify=False)
    expected = rag.explain(model, tokenizer, example["question"], example["document_texts"], **run)
    offloaded = disk_offload(copy.deepcopy(model), str(tmp_path), execution_device="cpu")
    got = rag.explain(offloaded, tokenizer, example["question"], example["document_texts"], **run)
    assert got.answer == expected.answer
    torch.testing.assert_close(got.explanation.scores, expected.explanation.scores, atol=1e-5, rtol=0)


def state_of(model) -> dict:
    """Everything an explanation could leave changed: parameters and their flags, attention, hooks."""
    return {
        "parameters": {n: (p.device, p.requires_grad, None if p.device.type == "meta" else p.detach().clone())
                       for n, p in model.named_parameters()},
        "attention": model.config._attn_implementation,
        "hooks": {n: (repr(getattr(m, "_hf_hook", None)), len(m._forward_hooks), len(m._forward_pre_hooks))
                  for n, m in model.named_modules()},
    }


def assert_unchanged(before: dict, after: dict) -> None:
    assert before["attention"] == after["attention"] and before["hooks"] == after["hooks"]
    assert before["parameters"].keys() == after["parameters"].keys()
    for name, (device, grad, value) in before["parameters"].items():
        assert after["parameters"][name][:2] == (device, grad), name
        assert value is None or torch.equal(value, after["parameters"][name][2]), name


class NoGradLinear(torch.nn.Linear):
    """A layer that computes outside autograd, as a quantized kernel without a backward does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return super().forward(x)


# A kernel autograd cannot see into (as bitsandbytes' CPU 4-bit one): its output claims a gradient, and PyTorch's
# fallback for an op without an autograd kernel gives its input none.
_KERNELS = torch.library.Library("llm_attrib_test", "DEF")
_KERNELS.define("opaque_linear(Tensor x, Tensor w) -> Tensor")
_KERNELS.impl("opaque_linear", lambda x, w: torch.from_numpy(x.detach().numpy() @ w.detach().numpy().T), "CPU")


class OpaqueKernelLinear(torch.nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.llm_attrib_test.opaque_linear(x, self.weight)


def meta_without_hooks() -> torch.nn.Module:
    with init_empty_weights():
        return type(tiny_llama())(tiny_llama().config).eval()


def map_missing_a_module() -> torch.nn.Module:
    model = dispatch_model(tiny_llama(), {k: "cpu" for k in SPREAD}, force_hooks=True)
    model.hf_device_map = {k: v for k, v in model.hf_device_map.items() if k != "lm_head"}
    return model


def quantized_without_gradient(layer_class=NoGradLinear) -> torch.nn.Module:
    model = tiny_llama()
    old = model.model.layers[1].mlp.down_proj
    layer = layer_class(old.in_features, old.out_features, bias=False)
    layer.load_state_dict(old.state_dict())
    model.model.layers[1].mlp.down_proj = layer
    return model


def kernel_without_backward() -> torch.nn.Module:
    return quantized_without_gradient(OpaqueKernelLinear)


@pytest.mark.parametrize("make, error, words", [
    (meta_without_hooks, InvalidInputError, ["'meta' device", "model.embed_tokens.weight", "load_checkpoint_and_dispatch"]),
    (map_missing_a_module, InvalidInputError, ["hf_device_map gives no device to lm_head.weight", "dispatch_model"]),
    (quantized_without_gradient, UnsupportedModelError, ["gradients cannot flow", "model.layers.1.mlp.down_proj (NoGradLinear) gives no gradient",
                                                         "method='attention'"]),
    pytest.param(kernel_without_backward, UnsupportedModelError,
                 ["model.layers.1.mlp.down_proj (OpaqueKernelLinear) gives no gradient (its kernel has no backward)"],
                 marks=pytest.mark.filterwarnings("ignore:.*an autograd kernel was not registered")),
])
def test_bad_placement_is_refused_before_any_work_and_the_model_is_unchanged(make, error, words):
    model, tokenizer = make(), tiny_tokenizer()
    before = state_of(model)
    attributor = llm_attrib.Attributor(model, tokenizer, show_progress=False)
    with llm_attrib.attributor.counting_forwards(model) as forwards, pytest.raises(error) as raised:
        attributor.explain(PROMPT, method="ig", **FAST)  # no answer: generating it would be work
    message = str(raised.value)
    assert "\n" not in message and all(w in message for w in words), message
    assert forwards[0] <= 2  # at most the gradient probe (without, then with gradients), no generation
    if error is InvalidInputError:  # placement is also checked where rag.explain starts: generating the answer
        with pytest.raises(error):
            attributor.sequence(PROMPT)
    assert_unchanged(before, state_of(model))
