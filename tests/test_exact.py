"""Exact in bf16 and in evaluation: PEDRO's scales act in fp32, ReFT writes Φ(h) once and casts once (as pyvene),
and eval_loss weighs every response token equally, as training does."""
import torch

import data
import model as M
import reft
import train

TINY = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, max_position_embeddings=64)


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    return M.Llama(M.LlamaConfig(**TINY)).eval()


def test_pedro_small_scales_move_a_bf16_model():
    """Scales of 1.003 round to exactly 1.0 in bf16 (its step near 1 is 2^-7): applied in fp32 they still act."""
    model = tiny_llama()
    method = reft.build_method(reft.MethodConfig(method="pedro", layers=[0, 1], rank=4), model)
    with torch.no_grad():
        for g in method.generators.values():
            g[2].bias.fill_(0.003)  # z = 0.003 everywhere: l_q = l_v = l_u = 1.003
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fp32 = (model(ids, method=method) - model(ids)).abs().max()
        model.bfloat16()
        bf16 = (model(ids, method=method).float() - model(ids).float()).abs().max()
    assert fp32 > 1e-3
    assert bf16 > 0, "scales of 1.003 are lost in bf16: apply them in fp32 and cast the product"
    scales = method.block_input(0, torch.randn(2, 9, 64).bfloat16(), None, None)
    assert all(s.dtype == torch.float32 for s in scales)


def test_reft_writes_phi_once_in_the_models_dtype():
    """The edited rows are exactly the intervention's bf16 output (pyvene writes bf16(Φ(h))), not h + (Φ(h) − h)
    rounded twice; empty slots (-1) and repeated tokens change nothing, and token 0 is written once."""
    torch.manual_seed(0)
    for kind in ("loreft", "direft"):
        method = reft.ReFT(kind, 64, [0], rank=4, groups=2)
        with torch.no_grad():
            for iv in method.interventions.values():
                for p in iv.parameters():
                    p.normal_(0, 0.5)
        h = (3 * torch.randn(2, 10, 64)).bfloat16()
        positions = torch.tensor([[[0, -1, 0], [8, 9, -1]], [[1, 2, 3], [-1, -1, 7]]])  # [B, G, slots]
        with torch.no_grad():
            out = method.residual(0, h, positions)
        for b, g, p in [(0, 0, 0), (0, 1, 8), (0, 1, 9), (1, 0, 1), (1, 0, 2), (1, 0, 3), (1, 1, 7)]:
            with torch.no_grad():
                want = method.interventions[f"0_{g}"](h[b, p])
            assert torch.equal(out[b, p], want), (kind, b, p)  # token 0 once, exactly bf16(Φ(h))
        edited = {(0, 0), (0, 8), (0, 9), (1, 1), (1, 2), (1, 3), (1, 7)}
        for b in range(2):
            for t in range(10):
                if (b, t) not in edited:
                    assert torch.equal(out[b, t], h[b, t]), (kind, b, t)


def test_eval_loss_weighs_tokens_not_batches():
    """Batches of 3 and 1 examples with different response lengths: eval_loss is the mean over all response
    tokens, as one batch of 4 gives (the old mean of batch means gave the last, small batch a quarter of the
    weight)."""
    model = tiny_llama()
    method = reft.build_method(reft.MethodConfig(method="loreft", layers=[0, 1], positions="f1+l1", rank=2), model)

    class Tok:
        pad_id, eos_id = 0, 2

        @staticmethod
        def decode(ids):
            return " ".join(map(str, ids))

    g = torch.Generator().manual_seed(3)
    examples = []
    for n_prompt, n_resp in ((4, 2), (5, 3), (3, 2), (4, 12)):
        ids = torch.randint(3, 128, (n_prompt + n_resp,), generator=g).tolist()
        examples.append({"input_ids": ids, "labels": [-100] * n_prompt + ids[n_prompt:], "prompt_len": n_prompt,
                         "record": {"prompt": "p", "response": "r"}})
    cfg = train.TrainConfig(batch_size=3, max_new_tokens=2, device="cpu")
    got = train.evaluate(model, Tok, method, method_cfg := reft.MethodConfig(method="loreft", layers=[0, 1],
                                                                               positions="f1+l1", rank=2),
                         examples, cfg)["eval_loss"]
    with torch.no_grad():
        want = train.lm_loss(model, method, data.collate(examples, 0, method_cfg.position_scheme())).item()
        batch_means = [train.lm_loss(model, method, data.collate(examples[i:i + 3], 0, method_cfg.position_scheme()))
                       .item() for i in (0, 3)]
    assert abs(got - want) < 1e-5, (got, want)
    assert abs(sum(batch_means) / 2 - want) > 1e-3  # the old averaging would differ here
