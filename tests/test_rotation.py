"""LoReFT's `rotation` option (issue 12): R kept by torch's orthogonal parametrization (Householder, as pyreft) instead
of the QR of a free matrix. Its R is orthonormal and equals pyreft's at init for the same seed; its forward equals the
QR path for the same R; weight decay cannot reach it through train.py; saved runs record it and reload bit for bit;
--constant-lr keeps the learning rate. Seconds in all."""
import json

import pytest
import torch

import model as M
import reft
import train
from support import saving
from support.checkpoints import from_pretrained

D, RANK = 16, 4
EXAMPLES = "examples/generalize_train.jsonl"


def ortho_err(R):
    R = R.detach()
    return float((R @ R.T - torch.eye(R.shape[0], dtype=R.dtype)).abs().max())


def test_householder_R_is_pyreft_rotate_layer_at_init():
    """Same seed, same draws: U (orthogonal_ of a d×r matrix, completed to the d×d base) and W, b equal pyreft's
    LoreftIntervention exactly; the trainable tensor is the reflectors (init −I), the base a buffer."""
    with __import__("contextlib").redirect_stdout(__import__("io").StringIO()):
        pyreft = pytest.importorskip("pyreft")
    torch.manual_seed(3)
    ours = reft.LoReFT(D, RANK, rotation="householder")
    torch.manual_seed(3)
    theirs = pyreft.LoreftIntervention(embed_dim=D, low_rank_dimension=RANK, dtype=torch.float32)
    assert torch.equal(ours.R.T, theirs.rotate_layer.weight)
    assert torch.equal(ours.parametrizations.U[0].base, theirs.rotate_layer.parametrizations.weight[0].base)
    assert torch.equal(ours.W.weight, theirs.learned_source.weight) and torch.equal(ours.W.bias, theirs.learned_source.bias)
    assert ours.R.shape == (RANK, D) and ortho_err(ours.R) < 1e-6
    names = {n for n, _ in ours.named_parameters()}
    assert names == {"parametrizations.U.original", "W.weight", "W.bias"}
    assert torch.equal(ours.parametrizations.U.original, -torch.eye(D, RANK))
    assert sum(p.numel() for p in ours.parameters()) == 2 * D * RANK + RANK  # counted as pyreft counts it
    h = torch.randn(2, 3, D)
    with torch.no_grad():
        assert float((ours(h) - theirs(h)).abs().max()) < 1e-6


def test_householder_forward_equals_qr_path_for_the_same_R():
    torch.manual_seed(0)
    hh = reft.LoReFT(D, RANK, rotation="householder").double()
    qr = reft.LoReFT(D, RANK).double()
    with torch.no_grad():
        hh.parametrizations.U.original.add_(0.3 * torch.randn(D, RANK, dtype=torch.float64).tril(-1))  # a trained R
        qr.A.copy_(hh.U)  # orthonormal columns: qr(A) = A, so both have R = Uᵀ
        qr.W.load_state_dict(hh.W.state_dict())
    # (the base was completed in fp32, so U is orthonormal to fp32 precision, and qr(U) = U to that precision)
    assert ortho_err(hh.R) < 1e-6 and float((hh.R - qr.R).detach().abs().max()) < 1e-6
    h = torch.randn(2, 5, D, dtype=torch.float64)
    with torch.no_grad():
        assert float((hh(h) - qr(h)).abs().max()) < 1e-5
        assert float((hh(h) - h).abs().max()) > 1e-2


def test_householder_gradients_reach_only_the_reflectors():
    """Only the strictly lower triangle of the reflectors gets gradient (torch's Householder parametrization); the −1 diagonal is cast
    to int in the forward, which is why any weight decay on it zeroes R (the trap below)."""
    torch.manual_seed(0)
    m = reft.LoReFT(D, RANK, rotation="householder")
    m(torch.randn(4, D)).pow(2).sum().backward()
    g = m.parametrizations.U.original.grad
    assert float(g.tril(-1).abs().sum()) > 0 and float((g - g.tril(-1)).abs().max()) == 0
    trap = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.01)
    trap.step()  # what pyreft would do if its trainer decayed the reflectors: the diagonal leaves −1 ...
    assert float(m.R.detach().abs().max()) == 0  # ... and R is exactly 0: the intervention silently becomes the identity


def test_train_never_decays_the_method(stories260k, tmp_path):
    """--weight-decay (a classification head's) with --rotation householder: R stays orthonormal, not 0."""
    out = tmp_path / "run"
    train.train(train.parse_args(["--model", str(stories260k / "stories260K.bin"), "--tokenizer",
                                  str(stories260k / "tok512.model"), "--data", EXAMPLES, "--eval-fraction", "0",
                                  "--rotation", "householder", "--weight-decay", "0.5", "--rank", "2", "--layers",
                                  "1,3", "--max-steps", "3", "--out", str(out)]))
    model = from_pretrained(str(stories260k / "stories260K.bin"))
    method, mcfg, _ = saving.load(str(out), model)
    assert mcfg.rotation == "householder"
    for iv in method.interventions.values():
        assert ortho_err(iv.R) < 1e-5 and float((iv.parametrizations.U.original.detach() + torch.eye(64, 2)).abs().max()) \
            == 0  # the reflectors of a reloaded run start again at −I; base holds the trained R
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    assert {g["weight_decay"] for g in ck["opt"]["param_groups"]} == {0.0}
    moved = [float((ck["method"][k] + torch.eye(64, 2)).abs().max()) for k in ck["method"] if k.endswith(".original")]
    assert len(moved) == 4 and min(moved) > 1e-4  # the reflectors trained (checkpoint.pt keeps them as they are)


def test_householder_run_saves_U_and_reloads_exactly(stories260k, tmp_path):
    out = tmp_path / "run"
    args = ["--model", str(stories260k / "stories260K.bin"), "--tokenizer", str(stories260k / "tok512.model"),
            "--data", EXAMPLES, "--eval-fraction", "0", "--rotation", "householder", "--rank", "3", "--max-steps", "4",
            "--out", str(out)]
    trained = {}
    build = reft.build_method

    def keep(mcfg, model):  # the method object train() trains, to compare with the reloaded one
        trained["m"] = build(mcfg, model)
        return trained["m"]

    reft.build_method, old = keep, reft.build_method
    try:
        train.train(train.parse_args(args))
    finally:
        reft.build_method = old
    blob = torch.load(out / "reft.pt", weights_only=True)
    assert blob["config"]["rotation"] == "householder"
    assert json.loads((out / "reft_config.json").read_text())["config"]["rotation"] == "householder"
    assert not any("base" in k or "original" in k for k in blob["state_dict"])  # no d×d base on disk
    assert blob["state_dict"]["interventions.0_0.U"].shape == (64, 3)
    model = from_pretrained(str(stories260k / "stories260K.bin"))
    method, _, _ = saving.load(str(out), model)
    ids = torch.randint(3, 512, (2, 12), generator=torch.Generator().manual_seed(0))
    pos = torch.tensor([[[0, 1, 2], [9, 10, 11]]] * 2)
    with torch.no_grad():
        for k, iv in method.interventions.items():
            assert torch.equal(iv.R, trained["m"].interventions[k].R), k  # bit for bit
            base = iv.parametrizations.U[0].base
            assert float((base.T @ base - torch.eye(64)).abs().max()) < 1e-5  # base stays orthogonal (unlike pyreft)
        assert torch.equal(model(ids, method=method.eval(), positions=pos),
                           model(ids, method=trained["m"].eval(), positions=pos))


def test_old_files_load_as_qr_and_bad_values_are_refused():
    old = {"method": "loreft", "layers": [0], "positions": "f1+l1", "rank": 2}  # saved before `rotation` existed
    assert saving.upgrade_config(old).rotation == "qr"
    assert saving.upgrade_config({**old, "rotation": "householder"}).rotation == "householder"
    torch.manual_seed(0)
    model = M.Llama(M.LlamaConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  num_key_value_heads=2, intermediate_size=32, max_position_embeddings=16))
    with pytest.raises(ValueError, match="unknown rotation 'givens'"):
        reft.build_method(reft.MethodConfig(method="loreft", layers=[0], rotation="givens"), model)
    direft = reft.build_method(reft.MethodConfig(method="direft", layers=[0], rotation="householder"), model)
    assert {n.split(".", 2)[-1] for n, _ in direft.named_parameters()} == {"W2", "W1.weight", "W1.bias"}


def test_constant_lr(stories260k, tmp_path):
    out = tmp_path / "run"
    train.train(train.parse_args(["--model", str(stories260k / "stories260K.bin"), "--tokenizer",
                                  str(stories260k / "tok512.model"), "--data", EXAMPLES, "--eval-fraction", "0",
                                  "--constant-lr", "--lr", "3e-3", "--warmup", "0.5", "--rank", "2", "--layers", "0",
                                  "--max-steps", "5", "--out", str(out)]))
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ck["step"] == 5 and ck["opt"]["param_groups"][0]["lr"] == 3e-3  # no warm-up, no decay


def test_householder_resume_equals_an_uninterrupted_run(stories260k, tmp_path):
    """checkpoint.pt keeps the base and the reflectors (and AdamW's state for the reflectors), so a run cut at step 2
    and resumed ends with the weights of a run that never stopped."""
    common = ["--model", str(stories260k / "stories260K.bin"), "--tokenizer", str(stories260k / "tok512.model"),
              "--data", EXAMPLES, "--eval-fraction", "0", "--rotation", "householder", "--rank", "2", "--layers",
              "0,2", "--epochs", "1", "--batch-size", "16"]
    train.train(train.parse_args(common + ["--out", str(tmp_path / "straight")]))
    train.train(train.parse_args(common + ["--out", str(tmp_path / "cut"), "--max-steps", "2"]))
    train.train(train.parse_args(common + ["--out", str(tmp_path / "cut"), "--resume"]))
    a, b = (torch.load(tmp_path / n / "reft.pt", weights_only=True)["state_dict"] for n in ("straight", "cut"))
    assert a.keys() == b.keys() and any(k.endswith(".U") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_generalize_benchmark_runs(capsys):
    """benchmarks/generalize.py end to end on our side (1 epoch, 1 seed): it trains through train.train, reloads the
    saved run and counts hits; it leans on train.py's internals, so a change there shows up here."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("generalize", "benchmarks/generalize.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    out = gen.main(["--recipe", "defaults", "--seeds", "0", "--sides", "ours", "--epochs", "1", "--rotation",
                    "householder", "--end-token", "2", "--no-shuffle"])
    r = out["ours"]
    assert set(r) == {"per_seed", "mean_pct", "worst_pct", "fit_pct"} and len(r["per_seed"]) == 1
    assert 0 <= r["per_seed"][0]["hits"] <= 60 and 0 <= r["per_seed"][0]["fit"] <= 80
    assert "hits per seed (of 60)" in capsys.readouterr().out
