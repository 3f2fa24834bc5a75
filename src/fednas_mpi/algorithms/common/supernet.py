"""What the NAS methods share: building the search network a spec describes, loading a
global state into it, restricting a state to a derived spec, and reporting the state of
the architecture.

A global model's spec is the dict form of a ``nas.ArchSpec`` (what the runtime sends and
checkpoints store); the methods read it through ``ArchSpec.of``.
"""

from __future__ import annotations

import json
from functools import lru_cache

import torch

from ...flat import State
from ...nas import CELL_TYPES, ArchSpec, CellMasks, CellSpace, SearchNetwork, logit_signal
from ...nas.derive import restrict_state
from ...nas.mixing import relaxed_weights
from ...nas.space import entropy
from ...seeding import SERVER, SETUP, derive_seed
from ..base import Algorithm, GlobalModel
from .dispersion import PREFIX as NOISE_PREFIX
from .perturbation import PREFIX as PT_PREFIX
from .training import evaluate


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
        """Every op and combination alive, nothing derived (in dict form)."""
        ops, combos = self.space.full_masks()
        return ArchSpec({c: CellMasks(ops, combos) for c in CELL_TYPES}, self.inputs).to_dict()

    def init_global(self, server_state: State | None = None) -> GlobalModel:
        """The supernet of the initial spec with its seeded initial weights; a method
        that keeps server state (a temperature, a reward baseline) passes its round-0
        values."""
        spec = self.initial_spec()
        return GlobalModel(spec, state_of(self.fresh(spec)), server_state or {})

    def _model_key(self) -> str:
        d = self.cfg.model.darts
        return json.dumps(
            {
                "in": self.info.input_shape,
                "classes": self.info.num_classes,
                "C": d.init_channels,
                "layers": d.layers,
                "nodes": d.nodes,
                "k": d.input_k,
                "stem": d.stem_multiplier,
                "prims": list(d.primitives),
                "seed": self.cfg.run.seed,
            }
        )

    def build(self, spec: ArchSpec | dict) -> SearchNetwork:
        """The (cached, reused) network of a spec on this rank's device; its tensors are
        overwritten on load (``load_state_dict`` copies CPU states to the device)."""
        net = _build(ArchSpec.of(spec).to_json(), self._model_key(), "model.init")
        net.set_execution(self.cfg.kernels.supernet)  # the cache is shared by every config
        net.set_compile(self.cfg.kernels.compile)  # keeps a cell's compiled forward
        return net.to(self.device)

    def fresh(self, spec: ArchSpec | dict, purpose: str = "model.init") -> SearchNetwork:
        """A newly initialised network of a spec, from the stream (seed, purpose)."""
        net = _build.__wrapped__(ArchSpec.of(spec).to_json(), self._model_key(), purpose)
        net.set_execution(self.cfg.kernels.supernet)
        net.set_compile(self.cfg.kernels.compile)
        return net.to(self.device)

    def restrict(self, spec: ArchSpec | dict, state: State) -> State:
        """The part of ``state`` the network of ``spec`` holds (after a derivation or a
        pruning step removed ops)."""
        return restrict_state(state, self.build(spec))

    @staticmethod
    def live_logits(spec: ArchSpec | dict) -> dict[str, torch.Tensor]:
        """Boolean masks of the logits a spec keeps, by state name: ``alpha_*`` its ops,
        ``beta_*`` its input combinations (pruned entries are False)."""
        masks = ArchSpec.of(spec).masks
        out = {}
        for c in CELL_TYPES:
            out[f"alpha_{c}"] = torch.tensor(masks[c].ops, dtype=torch.bool)
            out[f"beta_{c}"] = torch.tensor(masks[c].combos, dtype=torch.bool)
        return out

    def _net(self, model: GlobalModel) -> SearchNetwork:
        net = self.build(model.spec)
        # The runtime's model "before" an architecture change is the raw average, which
        # also carries the round's dispersion sums (``prune_rule: z``) and perturbation
        # scores (``derive_rule: perturbation``): not weights.
        state = {
            k: v for k, v in model.state.items() if not k.startswith((NOISE_PREFIX, PT_PREFIX))
        }
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"global state does not fit the network of its spec: "
                f"missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        return net

    def arch_metrics(
        self, spec: ArchSpec | dict, state: State, temperature: float
    ) -> dict[str, float]:
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
        space, spec = self.space, ArchSpec.of(spec)
        for c in CELL_TYPES:
            om = torch.tensor(spec.masks[c].ops)
            cm = torch.tensor(spec.masks[c].combos)
            live = space.live_edges(spec.masks[c].combos)
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
                q = relaxed_weights(state[f"beta_{c}"][seg].double(), temperature, None, cm[seg])
                ent_inputs.append(entropy(q[None]))
                if len(combos) > 1:  # a node with one combination has nothing to learn
                    sig_combos.append(logit_signal(state[f"beta_{c}"][seg][None], cm[seg][None]))
        out = {
            "ops_alive": float(ops_alive),
            "arch_entropy_ops": sum(ent_ops) / len(ent_ops),
            "alpha_range": _mean(sig_ops, "range"),
            "alpha_gap": _mean(sig_ops, "gap"),
            "argmax_agreement": _mean(sig_ops, "agreement"),
        }
        if spec.inputs == "combinations":
            out.update(
                combos_alive=float(combos_alive),
                arch_entropy_inputs=sum(ent_inputs) / len(ent_inputs),
            )
            if sig_combos:
                out.update(
                    beta_gap=_mean(sig_combos, "gap"),
                    combo_agreement=_mean(sig_combos, "agreement"),
                )
        return out


class GumbelSupernetMethod(SupernetMethod):
    """A supernet relaxed with Gumbel-softmax (eq. 1, 8) at a temperature the server anneals
    and keeps in its server state (``temperature``). Evaluated without noise at that
    temperature: the network the clients train, less the sampling."""

    def evaluate(self, model: GlobalModel, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        net = self._net(model)
        net.set_sampling(float(model.server_state.get("temperature", 1.0)), None)
        return evaluate(net, x, y)


def _mean(rows: list[dict[str, float]], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


@lru_cache(maxsize=4)
def _build(spec_json: str, model_key: str, purpose: str) -> SearchNetwork:
    """Networks are cached per (spec, model shape): each client reloads the state into the
    same module instead of rebuilding it. Init is seeded and leaves the global RNG alone."""
    spec, key = ArchSpec.from_json(spec_json), json.loads(model_key)
    space = CellSpace(key["nodes"], key["k"], tuple(key["prims"]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(key["seed"], SETUP, SERVER, purpose))
        net = SearchNetwork(
            key["in"][0],
            key["classes"],
            key["C"],
            key["layers"],
            space,
            key["stem"],
            spec.masks,
            spec.inputs,
        )
        with torch.no_grad():
            for p in net.arch_parameters():
                p.normal_(0.0, 1e-3)
    return net
