"""``fednas-mpi export``: every method's model as a torch.export file that computes what the
method evaluates, with BatchNorm that works in eval mode on any batch, loadable by torch
alone in a process that never imports fednas_mpi."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from methods import METHODS
from methods import run_config as _config
from torch import nn

from fednas_mpi.cli import main
from fednas_mpi.export import artifact, deploy
from fednas_mpi.export.build import PERSONAL
from fednas_mpi.models.cnn import SmallCNN
from fednas_mpi.nas import CellSpace, SearchNetwork
from fednas_mpi.nas.single_path import path_forward
from fednas_mpi.store import list_checkpoints, read_checkpoint

# ------------------------------------------------------------------ units


def test_macs_and_parameters_of_the_small_cnn_by_hand():
    net = SmallCNN((1, 8, 8), 10, [8, 16], 32)
    # conv 1->8 on 8x8, pool to 4x4, conv 8->16 on 4x4, pool to 2x2, 64->32->10
    assert artifact.count_macs(net, (1, 8, 8)) == 8 * 64 * 9 + 16 * 16 * 9 * 8 + 64 * 32 + 32 * 10
    assert artifact.count_params(net) == (8 * 9 + 8) + (16 * 8 * 9 + 16) + (64 * 32 + 32) + 330


def test_macs_count_grouped_and_strided_convolutions():
    net = nn.Sequential(
        nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4, bias=False),
        nn.Conv2d(4, 6, 1, bias=False),
    )
    # depthwise: 4 x 4x4 outputs x 9 taps x 1 input channel; pointwise: 6 x 16 x 4
    assert artifact.count_macs(net, (4, 8, 8)) == 4 * 16 * 9 + 6 * 16 * 4


def test_recalibration_gives_the_mean_of_batch_statistics():
    bn = nn.Sequential(nn.BatchNorm2d(3, affine=False, track_running_stats=False))
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(5, 3, 4, 4, generator=g) * (i + 1) + i for i in range(3)]
    assert deploy.recalibrate(bn, batches) == 15
    layer = bn[0]
    assert layer.track_running_stats and not layer.training
    mean = torch.stack([b.mean((0, 2, 3)) for b in batches]).mean(0)
    var = torch.stack([b.var((0, 2, 3), unbiased=True) for b in batches]).mean(0)
    torch.testing.assert_close(layer.running_mean, mean)
    torch.testing.assert_close(layer.running_var, var)
    x = torch.randn(1, 3, 4, 4, generator=g)  # one image: normalised by the estimates
    torch.testing.assert_close(
        bn(x), (x - mean[None, :, None, None]) / (var[None, :, None, None] + layer.eps).sqrt()
    )


def _search_net(seed: int = 0) -> SearchNetwork:
    space = CellSpace(3, 2)
    torch.manual_seed(seed)
    ops, combos = space.full_masks()
    ops = [[k != 3 or e % 2 == 0 for k in range(len(space.primitives))] for e in range(len(ops))]
    combos = [c % 3 != 1 for c in range(len(combos))]
    masks = {c: {"ops": ops, "combos": combos} for c in ("normal", "reduce")}
    net = SearchNetwork(1, 5, 4, 3, space, 2, masks)
    with torch.no_grad():
        for p in net.arch_parameters():
            p.normal_()
    return net.eval()


def test_frozen_mixture_equals_the_search_network():
    net = _search_net()
    net.set_sampling(0.7, None)
    with torch.no_grad():
        w = {c: net.mixing_weights(c) for c in ("normal", "reduce")}
        plans = [
            deploy.mixture_plan(net, cell, *w["reduce" if cell.reduction else "normal"])
            for cell in net.cells
        ]
        frozen = deploy.freeze(net, plans)
        x = torch.randn(6, 1, 8, 8)
        torch.testing.assert_close(frozen(x), net(x), rtol=0, atol=1e-6)


def test_frozen_path_equals_path_forward_with_a_zero_node():
    net = _search_net(1)
    space = net.space
    none, pool = space.primitives.index("none"), space.primitives.index("max_pool_3x3")
    # node 0 of every cell gets `none` on both its edges: a zero state
    choices = {
        c: [none if e < 2 else pool if e % 2 else 4 for e in range(space.num_edges)]
        for c in ("normal", "reduce")
    }
    plans = [
        deploy.path_plan(net, cell, choices["reduce" if cell.reduction else "normal"])
        for cell in net.cells
    ]
    assert all(plan[0] == [] for plan in plans)
    with torch.no_grad():
        frozen = deploy.freeze(net, plans)
        x = torch.randn(4, 1, 8, 8)
        torch.testing.assert_close(frozen(x), path_forward(net, x, choices), rtol=0, atol=1e-6)


# ------------------------------------------------------------------ every method


def test_export_knows_how_every_registered_method_evaluates():
    from fednas_mpi.algorithms import REGISTRY
    from fednas_mpi.export.build import FIXED, MIXTURE, PATH

    assert sorted(FIXED + MIXTURE + PATH) == sorted(REGISTRY) == sorted(METHODS)


def _run(tmp_path, method):
    cfg = _config(tmp_path / f"{method}.yaml", method)
    out = tmp_path / method
    assert main([str(cfg), "--out", str(out)]) == 0
    return out


def _export(run, out, *extra):
    assert main(["export", str(run), "--out", str(out), *extra]) == 0
    model, meta = artifact.load(out)
    assert json.loads(out.with_suffix(".json").read_text())["round"] == meta["round"]
    return model, meta


def _check_batches(model, x):
    """One image at a time gives the logits of the batch (eval-mode BatchNorm)."""
    with torch.no_grad():
        batched = model(x)
        single = torch.cat([model(x[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(single, batched, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_exports_what_it_evaluates(tmp_path, method):
    run = _run(tmp_path, method)
    ckpt = read_checkpoint(list_checkpoints(run)[-1][1])
    x = torch.randn(5, 1, 8, 8)
    exports = []
    if method != "fedrep":  # FedRep has no global head: per client only
        exports.append(("global", []))
    if method in PERSONAL:
        client = min(ckpt.client_states) if ckpt.client_states else 0
        exports.append((f"client{client}", ["--client", str(client)]))
    for name, extra in exports:
        model, meta = _export(run, tmp_path / f"{name}.pt2", *extra)
        acc = meta["accuracy"]
        assert meta["method"] == method and meta["round"] == ckpt.round
        assert meta["params"] > 0 and meta["macs"] > 0 and meta["size_bytes"] > 0
        if acc["frozen_batch_statistics"] is None:  # fixed model: the same function
            assert meta["batchnorm"]["kind"].startswith("running statistics of the run")
            assert abs(acc["exported"] - acc["method_evaluation"]) < 1e-9
        else:  # search network: frozen exactly, then recalibrated on train data
            assert acc["frozen_batch_statistics"] == acc["method_evaluation"]
            assert meta["batchnorm"]["samples"] > 0 and meta["cells"]
            # a discrete architecture has its genotype; FedPNAS's mixture has only cells
            assert (meta["genotype"] is None) == (method in ("fedpnas", "meta_fedpnas"))
            assert meta["batchnorm"]["data"] == (
                "all clients' train splits"
                if name == "global"
                else f"client {extra[1]}'s train split"
            )
        if name == "global":
            assert acc["method_evaluation"] == pytest.approx(acc["run_global_acc"], abs=1e-9)
        _check_batches(model, x)


def test_requests_a_run_cannot_satisfy_are_one_clear_error(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "m.pt2")]) == 2
    assert "no such run directory" in capsys.readouterr().err


# ------------------------------------------------------------------ a fresh process

FRESH = textwrap.dedent("""
    import json, sys
    import torch
    path, data = sys.argv[1], torch.load(sys.argv[2])
    extra = {"fednas_export.json": ""}
    model = torch.export.load(path, extra_files=extra).module()
    meta = json.loads(extra["fednas_export.json"])
    x, y = data["x"], data["y"]
    with torch.no_grad():
        batched = model(x)
        single = torch.cat([model(x[i:i + 1]) for i in range(len(x))])
    assert "fednas_mpi" not in sys.modules, "the artifact pulled in fednas_mpi"
    print(json.dumps({"acc": (batched.argmax(1) == y).float().mean().item(),
                      "same_argmax": bool((single.argmax(1) == batched.argmax(1)).all()),
                      "max_diff": (single - batched).abs().max().item(),
                      "genotype": meta["genotype"] is not None,
                      "modules": sorted(m for m in sys.modules if m.startswith("fednas"))}))
""")

ROOT = Path(__file__).resolve().parents[2]
DOCS_SNIPPET = re.compile(r"## Using the searched model.*?```python\n(.*?)```", re.S)

TRAINED = {
    "run": {"name": "fresh", "seed": 1, "rounds": 8},
    "data": {"name": "digits"},
    "partition": {"scheme": "dirichlet", "alpha": 0.5, "num_clients": 6},
    "federation": {"clients_per_round": 3},
    "model": {"name": "darts", "darts": {"init_channels": 6, "layers": 3, "nodes": 2}},
    "algorithm": {
        "name": "fedmetanas",
        "local_epochs": 2,
        "batch_size": 16,
        "fedmetanas": {
            "arch_warmup_rounds": 2,
            "prune_start": 3,
            "temperature_end": 0.5,
            "meta_lr_alpha": 0.1,
            "prune_gap": 1.0,
            "combo_prune_gap": 1.0,
            "final_round": 5,
        },
    },
}


@pytest.mark.slow
@pytest.mark.timeout(1200)  # an 8-round search: about a minute on an idle 2-core machine
def test_exported_quickstart_model_loads_in_a_fresh_process(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(json.dumps(TRAINED))
    assert main([str(cfg), "--out", str(tmp_path / "run")]) == 0
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "m.pt2")]) == 0
    meta = json.loads((tmp_path / "m.json").read_text())
    from fednas_mpi.config import load
    from fednas_mpi.data import load_dataset

    c = load(cfg)
    ds = load_dataset(c.data, c.run.seed)
    torch.save({"x": ds.test_x, "y": ds.test_y}, tmp_path / "test.pt")
    script = tmp_path / "fresh.py"
    script.write_text(FRESH)
    # -I: isolated (no PYTHONPATH, no user site), so only torch's own install is reachable
    res = subprocess.run(
        [sys.executable, "-I", str(script), str(tmp_path / "m.pt2"), str(tmp_path / "test.pt")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["modules"] == [] and out["genotype"]
    assert out["same_argmax"] and out["max_diff"] < 1e-4
    run_acc = meta["accuracy"]["run_global_acc"]
    assert out["acc"] == pytest.approx(meta["accuracy"]["exported"], abs=1e-6)
    assert run_acc > 0.5  # a model that learned something
    assert abs(out["acc"] - run_acc) <= 0.01, (out["acc"], run_acc)
    # the docs' loading snippet, verbatim, in the same kind of fresh process
    snippet = DOCS_SNIPPET.search((ROOT / "docs" / "inspect-and-export.md").read_text()).group(1)
    shutil.copy(tmp_path / "m.pt2", tmp_path / "model.pt2")
    check = "\nimport sys\nassert 'fednas_mpi' not in sys.modules\n"
    res = subprocess.run(
        [sys.executable, "-I", "-c", snippet + check],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("fedmetanas 8 -> class "), res.stdout
