"""attn_implementation="torch_selfattn" in Hugging Face transformers.

Tiny models with random weights (nothing is downloaded): Llama (grouped-query
attention), GPT-2, BERT, ViT, Mistral (sliding window) and T5 (learned
position bias, cross-attention). Logits and every parameter's gradient are
compared, with padding masks and without, by the float32 rule: our error
against the model run in float64 with attn_implementation="eager" is at most
twice that of attn_implementation="sdpa" (PyTorch's own SDPA), and at most
twice that of "eager" in float32, plus rounding.
"""
import copy
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

import torch_selfattn  # noqa: E402
import torch_selfattn.integrations.huggingface as hf_selfattn  # noqa: E402
from helpers.reference import assert_within_dtype_rule  # noqa: E402

NAME = hf_selfattn.register()


def tiny(kind):
    """(model, inputs, valid): a tiny model with random weights in float32
    eval mode, its inputs, and the (batch, position) entries whose outputs
    count (padding left out); valid is None for outputs without positions."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    common = dict(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    ids = torch.randint(3, 61, (2, 12), generator=g)
    # Right padding: with left padding, a causal model's padding rows see no
    # key at all, which float64 eager turns into NaN (its softmax runs in
    # float32, where the float64 mask value is -inf). Left padding is tested
    # against sdpa by generate() and against eager by output_attentions.
    pad = torch.ones(2, 12, dtype=torch.long)
    pad[1, 9:] = 0
    if kind == "llama":
        config = transformers.LlamaConfig(**common, num_key_value_heads=2)
        model, inputs, mask = transformers.LlamaForCausalLM(config), dict(input_ids=ids), pad
    elif kind == "mistral":
        config = transformers.MistralConfig(**common, num_key_value_heads=2, sliding_window=5)
        model, inputs, mask = transformers.MistralForCausalLM(config), dict(input_ids=ids), pad
    elif kind == "gemma2":
        config = transformers.Gemma2Config(**common, num_key_value_heads=2, head_dim=8, sliding_window=5,
                                           attn_logit_softcapping=0.5, final_logit_softcapping=None,
                                           query_pre_attn_scalar=8)
        model, inputs, mask = transformers.Gemma2ForCausalLM(config), dict(input_ids=ids), pad
        with torch.no_grad():  # scores of order 1, which the cap bends
            for layer in model.model.layers:
                layer.self_attn.q_proj.weight.mul_(30)
    elif kind == "gpt_oss":
        config = transformers.GptOssConfig(**common, num_key_value_heads=2, head_dim=8, sliding_window=5,
                                           num_local_experts=4, num_experts_per_tok=2,
                                           layer_types=["sliding_attention", "full_attention"])
        model, inputs, mask = transformers.GptOssForCausalLM(config), dict(input_ids=ids), pad
        model.set_experts_implementation("eager")  # grouped_mm has no float64, which the yardstick needs
        with torch.no_grad():  # sinks that take a real share of each row's weight
            for layer in model.model.layers:
                layer.self_attn.sinks.copy_(torch.randn(4, generator=g) + 2)
    elif kind == "gpt2":
        config = transformers.GPT2Config(vocab_size=61, n_embd=32, n_layer=2, n_head=4, n_positions=32)
        model, inputs, mask = transformers.GPT2LMHeadModel(config), dict(input_ids=ids), pad
    elif kind == "bert":
        config = transformers.BertConfig(**common, max_position_embeddings=32)
        model, inputs, mask = transformers.BertForMaskedLM(config), dict(input_ids=ids), pad
    elif kind == "t5":
        config = transformers.T5Config(vocab_size=61, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                       relative_attention_num_buckets=8, decoder_start_token_id=0)
        model = transformers.T5ForConditionalGeneration(config)
        inputs, mask = dict(input_ids=ids, decoder_input_ids=ids[:, :7]), pad
        return model.eval(), inputs | dict(attention_mask=mask), None
    elif kind == "vit":
        config = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32,
                                        num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                        num_labels=5)
        model = transformers.ViTForImageClassification(config)
        return model.eval(), dict(pixel_values=torch.randn(2, 3, 16, 16, generator=g)), None
    return model.eval(), inputs, mask


def masked(inputs, mask):
    return inputs | dict(attention_mask=mask)


def logits_and_grads(model, impl, inputs, valid):
    """Logits at the valid positions and the gradients of a fixed random
    weighting of them, with the given attention implementation."""
    model.set_attn_implementation(impl)
    assert model.config._attn_implementation == impl
    model.zero_grad(set_to_none=True)
    logits = model(**inputs).logits
    if valid is not None:
        logits = logits[valid.bool()]
    weight = torch.randn(logits.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    (logits * weight.to(logits.dtype)).sum().backward()
    grads = {f"grad {n}": p.grad for n, p in model.named_parameters() if p.grad is not None}
    return {"logits": logits.detach(), **grads}


def ops_called(fn):
    with torch.autograd.profiler.profile() as prof:
        result = fn()
    return result, {e.name for e in prof.function_events}


CASES = [("llama", False), ("llama", True), ("mistral", False), ("mistral", True), ("gpt2", False), ("gpt2", True),
         ("bert", False), ("bert", True), ("t5", True), ("vit", False)]


@pytest.mark.parametrize("kind, padded", CASES, ids=[f"{k}-{'padded' if p else 'unpadded'}" for k, p in CASES])
def test_logits_and_gradients_match_sdpa_and_eager(kind, padded):
    model, inputs, mask = tiny(kind)
    valid = mask if padded else None
    if padded and mask is not None:
        inputs = masked(inputs, mask)
    ours, names = ops_called(lambda: logits_and_grads(model, NAME, inputs, valid))
    assert "selfattn::attention_forward" in names and "selfattn::attention_backward" in names
    assert not any(n.startswith("aten::_scaled_dot_product") for n in names), sorted(names)
    pytorch = logits_and_grads(model, "sdpa", inputs, valid)
    eager = logits_and_grads(model, "eager", inputs, valid)
    inputs64 = {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}
    expected = logits_and_grads(copy.deepcopy(model).double(), "eager", inputs64, valid)
    assert ours.keys() == expected.keys()
    for name in expected:
        assert_within_dtype_rule(name, ours[name], pytorch[name], expected[name])
        assert_within_dtype_rule(name, ours[name], eager[name], expected[name])


def check_against_eager(kind, padded):
    """For models whose attention transformers' sdpa path lacks (soft-capping,
    sinks): ours by the float32 rule against eager, which is the yardstick.
    Returns ours, and the model and inputs it ran on."""
    model, inputs, mask = tiny(kind)
    valid = mask if padded else None
    if padded:
        inputs = masked(inputs, mask)
    ours, names = ops_called(lambda: logits_and_grads(model, NAME, inputs, valid))
    assert "selfattn::attention_forward" in names and "selfattn::attention_backward" in names
    eager = logits_and_grads(model, "eager", inputs, valid)
    expected = logits_and_grads(copy.deepcopy(model).double(), "eager", inputs, valid)
    assert ours.keys() == expected.keys()
    for name in expected:
        assert_within_dtype_rule(name, ours[name], eager[name], expected[name])
    return ours, model, inputs, valid


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
def test_gemma2_softcap_runs_in_the_kernels(padded):
    ours, model, inputs, valid = check_against_eager("gemma2", padded)
    uncapped = copy.deepcopy(model)
    for layer in uncapped.model.layers:
        layer.self_attn.attn_logit_softcapping = None
    assert not torch.allclose(logits_and_grads(uncapped, NAME, inputs, valid)["logits"], ours["logits"], atol=1e-3)


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
def test_gpt_oss_sinks_run_in_the_kernels(padded):
    # GPT-OSS passes its sinks as s_aux; they get their gradient, and they matter.
    ours, model, inputs, valid = check_against_eager("gpt_oss", padded)
    assert any(name.endswith("self_attn.sinks") for name in ours)
    sinkless = copy.deepcopy(model)
    with torch.no_grad():
        for layer in sinkless.model.layers:
            layer.self_attn.sinks.fill_(-1e4)
    assert not torch.allclose(logits_and_grads(sinkless, NAME, inputs, valid)["logits"], ours["logits"], atol=1e-3)


def test_sliding_window_reaches_the_kernels_through_the_mask():
    # Mistral's window of 5 over 12 tokens: without the window the logits change.
    model, inputs, _ = tiny("mistral")
    model.set_attn_implementation(NAME)
    windowed = model(**inputs).logits
    model.config.sliding_window = None
    model.set_attn_implementation(NAME)
    full = model(**inputs).logits
    assert not torch.allclose(windowed[:, 5:], full[:, 5:], atol=1e-4)
    torch.testing.assert_close(windowed[:, :5], full[:, :5], atol=1e-5, rtol=1e-5)


def left_padding():
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, :4] = 0
    return mask


def test_output_attentions_are_the_eager_probabilities():
    model, inputs, _ = tiny("llama")
    inputs = masked(inputs, left_padding())
    model.set_attn_implementation(NAME)
    ours = model(**inputs, output_attentions=True).attentions
    model.set_attn_implementation("eager")
    eager = model(**inputs, output_attentions=True).attentions
    assert len(ours) == len(eager) == 2
    for a, b in zip(ours, eager):
        assert a.shape == b.shape == (2, 4, 12, 12)
        # Rows of padding tokens are fully masked: 0 with us (as PyTorch's SDPA), uniform in eager.
        torch.testing.assert_close(a[0, :, 4:], b[0, :, 4:], atol=1e-6, rtol=0)
        torch.testing.assert_close(a[1], b[1], atol=1e-6, rtol=0)
        assert torch.equal(a[0, :, :4], torch.zeros(4, 4, 12))


def test_generate_gives_the_tokens_of_sdpa():
    model, inputs, _ = tiny("llama")
    inputs = masked(inputs, left_padding())
    tokens = {}
    for impl in (NAME, "sdpa"):
        model.set_attn_implementation(impl)
        tokens[impl] = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert tokens[NAME].shape == (2, 20)
    assert torch.equal(tokens[NAME], tokens["sdpa"])


def test_dropout_in_training_mode_only():
    model, inputs, _ = tiny("llama")
    model.config.attention_dropout = 0.5
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.5
    model.set_attn_implementation(NAME)
    model.train()
    torch.manual_seed(3)
    a = model(**inputs).logits
    torch.manual_seed(3)
    b = model(**inputs).logits
    torch.manual_seed(4)
    c = model(**inputs).logits
    assert torch.equal(a, b) and not torch.allclose(a, c)
    model.eval()
    eval_ours = model(**inputs).logits
    assert not torch.allclose(a, eval_ours)
    model.set_attn_implementation("sdpa")
    torch.testing.assert_close(eval_ours, model(**inputs).logits, atol=1e-5, rtol=1e-5)


def test_from_config_selects_the_registered_implementation():
    config = transformers.LlamaConfig(vocab_size=61, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                      intermediate_size=64)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=NAME)
    assert model.config._attn_implementation == NAME
    _, names = ops_called(lambda: model(input_ids=torch.tensor([[1, 2, 3]])))
    assert "selfattn::attention_forward" in names
    assert hf_selfattn.register() == NAME  # registering again is harmless


class _Layer(torch.nn.Module):
    is_causal = False


class _PagedCache:
    """What the attention function sees of transformers' paged cache: update()
    stores the new keys and values and returns those of the whole batch."""

    def __init__(self, key, value):
        self.key, self.value, self.calls = key, value, []

    def update(self, key_states, value_states, layer_idx, kwargs):
        self.calls.append(layer_idx)
        return torch.cat([self.key, key_states], 2), torch.cat([self.value, value_states], 2)


def test_a_paged_cache_is_read_through_its_update():
    g = torch.Generator().manual_seed(0)
    q, k_new, v_new = (torch.randn(1, 4, 3, 8, generator=g) for _ in range(3))
    cached_k, cached_v = torch.randn(1, 4, 6, 8, generator=g), torch.randn(1, 4, 6, 8, generator=g)
    cache = _PagedCache(cached_k, cached_v)
    layer = _Layer()
    layer.layer_idx = 1
    mask = torch.ones(9, dtype=torch.bool).expand(1, 1, 3, 9).tril(6)
    out, _ = hf_selfattn.attention_forward(layer, q, k_new, v_new, mask, cache=cache)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, torch.cat([cached_k, k_new], 2), torch.cat([cached_v, v_new], 2), attn_mask=mask)
    assert cache.calls == [1]
    torch.testing.assert_close(out, expected.transpose(1, 2))


def test_continuous_batching_runs_on_the_kernels_through_patched_sdpa(monkeypatch):
    # transformers' generate_batch (a paged cache) takes only its own implementation names.
    import torch_selfattn.patching

    calls = []
    ours = torch_selfattn.patching.scaled_dot_product_attention
    monkeypatch.setattr(torch_selfattn.patching, "scaled_dot_product_attention",
                        lambda *args: calls.append(args[0].shape) or ours(*args))
    model, _, _ = tiny("llama")
    config = transformers.GenerationConfig(max_new_tokens=4, do_sample=False, eos_token_id=-1, pad_token_id=0)
    prompts = [[5, 6, 7, 8, 9], [10, 11, 12]]
    model.set_attn_implementation("sdpa")
    expected = {k: r.generated_tokens for k, r in model.generate_batch(inputs=prompts, generation_config=config).items()}
    # The batch runs in a thread of its own, which the profiler does not see: the calls are counted instead.
    with torch_selfattn.patch_sdpa():
        got = model.generate_batch(inputs=prompts, generation_config=config)
    assert len(calls) >= 2 * config.max_new_tokens  # every layer, every step
    assert {k: r.generated_tokens for k, r in got.items()} == expected


@pytest.mark.parametrize("name, value", [("softcap", 30.0), ("s_aux", torch.zeros(4))])
def test_attention_weights_with_softcap_or_sinks_raise_clearly(name, value):
    q = torch.randn(1, 4, 5, 8)
    with pytest.raises(ValueError, match=f"cannot return attention weights with `{name}`"):
        hf_selfattn.attention_forward(_Layer(), q, q, q, None, output_attentions=True, **{name: value})


def test_position_bias_and_mask_dtypes_as_transformers_sdpa():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 6, 8, generator=g) for _ in range(3))
    bias = torch.randn(1, 4, 6, 6, generator=g)
    bool_mask = torch.rand(2, 1, 6, 6, generator=g) > 0.3
    bool_mask[..., 0] = True
    float64_mask = torch.randn(2, 1, 6, 6, generator=g, dtype=torch.float64)
    cases = [  # (our arguments, transformers' sdpa arguments)
        (dict(position_bias=bias, attention_mask=bool_mask), None),
        (dict(position_bias=bias, attention_mask=None), None),
        # A custom float mask of another dtype is cast to the query's (PyTorch's SDPA would refuse it).
        (dict(attention_mask=float64_mask), dict(attention_mask=float64_mask.float())),
    ]
    for ours_kwargs, theirs_kwargs in cases:
        ours, _ = hf_selfattn.attention_forward(_Layer(), q, k, v, **ours_kwargs)
        theirs, _ = sdpa_attention_forward(_Layer(), q, k, v, **(theirs_kwargs or ours_kwargs))
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
