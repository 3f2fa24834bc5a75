"""What the NAS methods share: building the search network a spec describes, loading a
global state into it, and reporting the state of the architecture.

A spec is plain JSON: per cell type the op mask (edges x ops) and the input-combination
mask, how a node combines its inputs ("combinations": eq. 8's relaxation over
k-combinations; "sum": DARTS's plain sum over live edges), and the genotype once derived.
"""

from __future__ import annotations

import json
from functools import lru_cache

import torch

from ..flat import State
from ..nas import CellSpace, SearchNetwork, logit_signal, prune
from ..nas.mixing import relaxed_weights
from ..nas.single_path import CELL_TYPES as CELLS
from ..nas.space import entropy
from ..seeding import SERVER, SETUP, derive_seed
from .base import Algorithm, GlobalModel


def state_of(net: torch.nn.Module) -> State:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


class SupernetMethod(Algorithm):
    """Base of the methods that search the DARTS space (``model.name: darts``)."""

    inputs = "combinations"

    @property
    def space(self) -> CellSpace:
        d = self.cfg.model.darts
        return CellSpace(d.nodes, d.input_k, tuple(d.primitives))

    def initial_spec(self) -> dict:
        ops, combos = self.space.full_masks()
        return {"masks": {c: {"ops": ops, "combos": combos} for c in CELLS},
                "inputs": self.inputs, "genotype": None}

    def _model_key(self) -> str:
        d = self.cfg.model.darts
        return json.dumps({"in": self.info.input_shape, "classes": self.info.num_classes,
                           "C": d.init_channels, "layers": d.layers, "nodes": d.nodes,
                           "k": d.input_k, "stem": d.stem_multiplier,
                           "prims": list(d.primitives), "seed": self.cfg.run.seed})

    def build(self, spec: dict) -> SearchNetwork:
        """The (cached, reused) network of a spec on this rank's device; its tensors are
        overwritten on load (``load_state_dict`` copies CPU states to the device)."""
        return _build(json.dumps(spec, sort_keys=True), self._model_key(),
                      "model.init").to(self.device)

    def fresh(self, spec: dict, purpose: str = "model.init") -> SearchNetwork:
        """A newly initialised network of a spec, from the stream (seed, purpose)."""
        return _build.__wrapped__(json.dumps(spec, sort_keys=True), self._model_key(),
                                  purpose).to(self.device)

    def _net(self, model: GlobalModel) -> SearchNetwork:
        net = self.build(model.spec)
        missing, unexpected = net.load_state_dict(model.state, strict=False)
        if missing or unexpected:
            raise ValueError(f"global state does not fit the network of its spec: "
                             f"missing {missing[:3]}, unexpected {unexpected[:3]}")
        return net

    def soft_prune(self, spec: dict, state: State, op_gap: float, combo_gap: float,
                   round_: int) -> tuple[dict, dict[str, float]]:
        """One soft-pruning step (``nas.prune``) of every cell type on the averaged logits.

        Returns the spec (the same object when nothing changed; otherwise with the new masks
        and every removal appended to ``spec["prune_log"]``: round, cell, edge or node, op
        or inputs, and the logit gap that condemned it) and the round's metrics
        ``ops_pruned``, ``combos_pruned`` and ``pruned_gap_min`` (the smallest gap among
        this round's removals: why they went; NaN when none did)."""
        space, masks, log = self.space, {}, []
        for c in CELLS:
            m = spec["masks"][c]
            r = prune(space, state[f"alpha_{c}"], state.get(f"beta_{c}"), m["ops"],
                      m["combos"], op_gap, combo_gap)
            masks[c] = {"ops": r.ops, "combos": r.combos}
            for e, k, g in r.removed_ops:
                j, i = space.edge_nodes(e)
                log.append({"round": round_ + 1, "cell": c, "edge": f"s{i}->s{j + 2}",
                            "op": space.primitives[k], "gap": round(g, 4)})
            for j, k, g in r.removed_combos:
                log.append({"round": round_ + 1, "cell": c, "node": f"s{j + 2}",
                            "inputs": [f"s{i}" for i in space.combos[j][k]],
                            "gap": round(g, 4)})
        gaps = [x["gap"] for x in log]
        metrics = {"ops_pruned": float(sum("op" in x for x in log)),
                   "combos_pruned": float(sum("node" in x for x in log)),
                   "pruned_gap_min": min(gaps) if gaps else float("nan")}
        if masks == spec["masks"]:
            return spec, metrics
        return {**spec, "masks": masks, "prune_log": [*spec.get("prune_log", []), *log]}, metrics

    def arch_metrics(self, spec: dict, state: State, temperature: float) -> dict[str, float]:
        """Surviving ops and combinations on live edges, the entropy of the mixing at
        ``temperature``, and what the logits have learned (``nas.logit_signal`` over the
        live edges and nodes, averaged over the cell types): ``alpha_range``, ``alpha_gap``,
        ``argmax_agreement`` (the probability that a Gumbel sample's argmax is the
        deterministic argmax; 1/8 for nothing learned over 8 ops) and, with input
        combinations, ``beta_gap`` and ``combo_agreement``."""
        state = {k: v.detach().cpu() for k, v in state.items() if k.startswith(("alpha_", "beta_"))}
        ops_alive = combos_alive = 0
        ent_ops, ent_inputs = [], []
        sig_ops, sig_combos = [], []
        space = self.space
        for c in CELLS:
            om = torch.tensor(spec["masks"][c]["ops"])
            cm = torch.tensor(spec["masks"][c]["combos"])
            live = space.live_edges(spec["masks"][c]["combos"])
            edges = [space.edge(j, i) for j in range(space.nodes) for i in sorted(live[j])]
            w = relaxed_weights(state[f"alpha_{c}"].double(), temperature, None, om)
            ops_alive += int(om[edges].sum())
            ent_ops.append(entropy(w[edges]))
            sig_ops.append(logit_signal(state[f"alpha_{c}"][edges], om[edges]))
            combos_alive += int(cm.sum())
            if f"beta_{c}" not in state:
                continue
            for j, combos in enumerate(space.combos):
                lo = space.combo_offsets[j]
                seg = slice(lo, lo + len(combos))
                q = relaxed_weights(state[f"beta_{c}"][seg].double(), temperature, None,
                                    cm[seg])
                ent_inputs.append(entropy(q[None]))
                if len(combos) > 1:  # a node with one combination has nothing to learn
                    sig_combos.append(logit_signal(state[f"beta_{c}"][seg][None],
                                                   cm[seg][None]))
        out = {"ops_alive": float(ops_alive), "arch_entropy_ops": sum(ent_ops) / len(ent_ops),
               "alpha_range": _mean(sig_ops, "range"), "alpha_gap": _mean(sig_ops, "gap"),
               "argmax_agreement": _mean(sig_ops, "agreement")}
        if spec.get("inputs", "combinations") == "combinations":
            out.update(combos_alive=float(combos_alive),
                       arch_entropy_inputs=sum(ent_inputs) / len(ent_inputs))
            if sig_combos:
                out.update(beta_gap=_mean(sig_combos, "gap"),
                           combo_agreement=_mean(sig_combos, "agreement"))
        return out


def _mean(rows: list[dict[str, float]], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


@lru_cache(maxsize=4)
def _build(spec_json: str, model_key: str, purpose: str) -> SearchNetwork:
    """Networks are cached per (spec, model shape): each client reloads the state into the
    same module instead of rebuilding it. Init is seeded and leaves the global RNG alone."""
    spec, key = json.loads(spec_json), json.loads(model_key)
    space = CellSpace(key["nodes"], key["k"], tuple(key["prims"]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(key["seed"], SETUP, SERVER, purpose))
        net = SearchNetwork(key["in"][0], key["classes"], key["C"], key["layers"], space,
                            key["stem"], spec["masks"], spec.get("inputs", "combinations"))
        with torch.no_grad():
            for p in net.arch_parameters():
                p.normal_(0.0, 1e-3)
    return net
